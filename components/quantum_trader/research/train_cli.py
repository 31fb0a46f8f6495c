"""``qt train --data <kline files> --out models/<name>``: train, evaluate and write a digest-pinned artifact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click


@click.command("train")
@click.option("--data", "patterns", multiple=True, required=True, help="kline CSV files (paths or globs; repeatable)")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="artifact folder, models/<name>")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=7, show_default=True, help="every random choice")
@click.option("--horizon", type=click.IntRange(1, 500), default=6, show_default=True, help="label horizon in bars")
@click.option("--band-atr", type=click.FloatRange(0, 20), default=0.5, show_default=True, help="no-trade band in ATRs")
@click.option("--folds", type=click.IntRange(1, 20), default=4, show_default=True, help="walk-forward test windows")
@click.option("--embargo", type=click.IntRange(0, 10_000), default=24, show_default=True, help="extra gap bars")
@click.option("--max-bars", type=click.IntRange(0), default=0, help="use only the last N bars of each file (0: all)")
@click.option("--xgb-rounds", type=click.IntRange(1, 5000), default=300, show_default=True)
@click.option("--epochs", type=click.IntRange(1, 1000), default=30, show_default=True, help="torch MLP epochs")
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True, help="xgboost threads (fixed)")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="evaluation threshold")
@click.option("--quiet", is_flag=True, help="no progress bars")
def train(
    patterns: tuple[str, ...],
    out: str,
    seed: int,
    horizon: int,
    band_atr: float,
    folds: int,
    embargo: int,
    max_bars: int,
    xgb_rounds: int,
    epochs: int,
    threads: int,
    threshold: float,
    quiet: bool,
) -> None:
    """Train the xgboost + torch ensemble on kline files; print the artifact's digest.

    \b
    Example:
      qt train --data '../shared/data/klines/LTCUSDT-1h-*.csv' --out models/my-model
    """
    from quantum_trader.cli import UserError
    from quantum_trader.data.errors import DataError
    from quantum_trader.data.replay import expand_files
    from quantum_trader.ml.models import TrainConfig
    from quantum_trader.ml.splits import LeakError
    from quantum_trader.research.train import TrainSettings
    from quantum_trader.research.train import train as run_training

    folder = Path(out)
    name = folder.name
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise UserError(f"--out {out}: the folder name is the model name and must be letters, digits, '-', '_' or '.'")
    settings = TrainSettings(
        name=name,
        horizon=horizon,
        band_atr=band_atr,
        folds=folds,
        embargo=embargo,
        max_bars=max_bars,
        threshold=threshold,
        model=TrainConfig(seed=seed, xgb_rounds=xgb_rounds, mlp_epochs=epochs, xgb_threads=threads),
    )
    try:
        files = expand_files(patterns)
        with _progress(quiet) as progress:
            outcome = run_training(files, folder, settings, progress)
    except (DataError, LeakError, ValueError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    pnl = outcome.summary["pnl"]
    click.echo(f"model   {folder}")
    click.echo(f"digest  {outcome.digest}")
    click.echo(
        "out-of-sample  accuracy {acc:.3f}  log-loss {ll:.3f}  return {ens:+.2%} (buy-and-hold {bh:+.2%}, "
        "baseline {base:+.2%})".format(
            acc=outcome.summary["accuracy"]["ensemble"],
            ll=outcome.summary["log_loss"]["ensemble"],
            ens=pnl["ensemble"]["total_return"],
            bh=pnl["buy_and_hold"]["total_return"],
            base=pnl["baseline"]["total_return"],
        )
    )
    click.echo(f"report  {outcome.report}")


class _progress:
    """Rich progress bars, one task per stage; ``--quiet`` (or no terminal) keeps output to the result lines."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bars = None

    def __enter__(self) -> Callable[[str, int, int], Callable[[int], None]]:
        if self.quiet:
            return lambda description, total, *_: (lambda n: None)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bars = Progress(
            TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            transient=False,
        )
        self.bars.start()

        def open_task(description: str, total: int, *_: int) -> Callable[[int], None]:
            assert self.bars is not None
            task = self.bars.add_task(description, total=total)
            return lambda n: self.bars.advance(task, n)  # type: ignore[union-attr]

        return open_task

    def __exit__(self, *exc: object) -> None:
        if self.bars is not None:
            self.bars.stop()
