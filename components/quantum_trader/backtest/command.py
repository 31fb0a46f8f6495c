"""``qt backtest --data <kline files> -f policy.yaml --report out/``: the click command and its progress bar."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from quantum_trader.cli_types import RedisUrl


@click.command()
@click.option(
    "--data",
    "data",
    multiple=True,
    required=True,
    help="kline CSV file or glob (repeatable), one file per symbol",
)
@click.option("-f", "--file", "policy_file", type=click.Path(dir_okay=False), help="policy YAML (TradingPolicy spec)")
@click.option(
    "--report", "report_dir", required=True, type=click.Path(file_okay=False), help="directory for the report"
)
@click.option("--max-bars", type=click.IntRange(min=0), default=0, help="replay at most this many bars per file")
@click.option(
    "--skip-bars", type=click.IntRange(min=0), default=0, help="skip this many bars at the start of each file"
)
@click.option("--redis-url", type=RedisUrl(), help="use this Redis instead of starting an embedded one")
@click.option(
    "--redis",
    "redis_kind",
    type=click.Choice(["embedded", "redis-server"]),
    default="embedded",
    show_default=True,
    help="which server binary to start when no --redis-url is given",
)
def backtest(
    data: tuple[str, ...],
    policy_file: str | None,
    report_dir: str,
    max_bars: int,
    skip_bars: int,
    redis_url: str | None,
    redis_kind: str,
) -> None:
    """Replay kline files through the whole pipeline at full speed, deterministically, and write a report.

    The same component processes as `qt run`, the exchange simulator with the policy's fees and
    slippage, in lockstep: the ledger is the same on every run. The files' symbols are the allowlist.

    \b
    Example:
      qt backtest --data ../shared/data/klines/ETHUSDT-1h-2023-01-01_2024-05-13.csv --report out/
    """
    from quantum_trader.cli import user_errors

    sys.exit(user_errors(_run)(data, policy_file, Path(report_dir), max_bars, skip_bars, redis_url, redis_kind))


def _run(
    data: tuple[str, ...],
    policy_file: str | None,
    out: Path,
    max_bars: int,
    skip_bars: int,
    redis_url: str | None,
    redis_kind: str,
) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from quantum_trader.backtest.run import Backtest, BacktestFailed, backtest_policy
    from quantum_trader.contracts.policy import PolicySpec, load_policy
    from quantum_trader.local.app import check_reachable

    policy = backtest_policy(
        load_policy(policy_file) if policy_file else PolicySpec(), data, skip_bars=skip_bars, max_bars=max_bars
    )
    if redis_url is not None:
        check_reachable(redis_url)  # before the banner and the progress bar: a Redis that is not there is one line
    console = Console(stderr=True)
    job = Backtest(policy, out, redis_url=redis_url, redis_kind=redis_kind)
    console.print(f"qt: backtest of {job.total:,} bars ({', '.join(policy.symbols)}), model {policy.model.name}")
    columns = (
        TextColumn("[bold]replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8} bars/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=console, refresh_per_second=4) as bar:
            task = bar.add_task("replay", total=job.total, rate="-")

            def show(published: int, total: int, _supervisor: object) -> None:
                bar.update(task, completed=published)
                speed = bar.tasks[task].speed
                bar.update(task, rate=f"{speed:,.0f}" if speed else "-")

            result = job.run(progress=show)
    except BacktestFailed as error:
        console.print(f"qt: error: backtest failed: {error}")
        return 1
    except KeyboardInterrupt:
        console.print("qt: backtest interrupted; components stopped")
        return 130
    h = result.headline
    click.echo(
        f"bars {h['bars']:,} at {result.run['bars_per_second']:,.0f} bars/s · trades {h['trades']} · "
        f"return {h['return_pct']:+.2f} % · max drawdown {h['max_drawdown_pct']:.2f} % · fees {h['fees_paid']:,.2f}"
    )
    for name in ("report", "summary", "ledger"):
        click.echo(f"{name}: {result.files[name]}")
    return 0
