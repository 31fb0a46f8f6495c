"""``qt train``: kline files -> walk-forward evaluation -> a digest-pinned artifact and its report.

1. Each file becomes a series (``dataset.load_series``): ``market-v1`` features, labels, baseline positions.
   The feature computation is audited for look-ahead on the first series (``splits.audit_causality``).
2. Walk-forward: ``folds`` expanding-window folds with a gap of ``horizon + embargo`` bars. In each fold
   the training rows are split again in time (fit, gap, calibration); both models are fitted, their
   temperatures fitted on the calibration rows, and the fold's test rows predicted. ``check_rows`` proves
   for every split that no training label reaches its test rows. Every metric comes from these
   out-of-sample predictions only.
3. The shipped models are fitted the same way on all rows (fit, gap, calibration at the end).
4. The artifact (``artifact.write_artifact``) and the report (``report.write_report``).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from quantum_trader.data.errors import DataError
from quantum_trader.data.klines import interval_ms
from quantum_trader.ml.labels import CLASSES, LabelSpec
from quantum_trader.ml.market_features import (
    FEATURE_HASH,
    FEATURE_NAMES,
    FEATURE_SET,
    PARAMETERS,
    batch_features,
)
from quantum_trader.ml.models import (
    Ensemble,
    TrainConfig,
    fit_temperature,
    mlp_logits,
    mlp_to_bytes,
    train_mlp,
    train_xgboost,
    xgb_margins,
    xgb_to_bytes,
)
from quantum_trader.ml.splits import Fold, audit_causality, check_folds, check_rows, walk_forward
from quantum_trader.research.artifact import FORMAT, write_artifact
from quantum_trader.research.dataset import Pooled, SymbolSeries, load_series, pool
from quantum_trader.research.evaluate import evaluate

Progress = Callable[[str, int, int], Callable[[int], None]]
"""``progress(description, total, ...)`` opens a task and returns its ``advance(n)``."""


@dataclass(frozen=True)
class TrainSettings:
    name: str
    horizon: int = 6
    band_atr: float = 0.5
    folds: int = 4
    embargo: int = 24
    calibration_fraction: float = 0.15
    max_bars: int = 0
    threshold: float = 0.5
    fee_rate: float = 0.0004
    slippage_bps: float = 1.0
    model: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class TrainOutcome:
    digest: str
    folder: Path
    manifest: dict[str, Any]
    summary: dict[str, Any]
    report: Path


def _no_progress(description: str, total: int, *_: int) -> Callable[[int], None]:
    return lambda n: None


def train(
    files: Sequence[Path], out: Path, settings: TrainSettings, progress: Progress = _no_progress
) -> TrainOutcome:
    labels = LabelSpec(settings.horizon, settings.band_atr)
    advance = progress("load and featurise", len(files), 0)
    series: list[SymbolSeries] = []
    for path in files:
        series.append(load_series(path, labels, max_bars=settings.max_bars))
        advance(1)
    intervals = sorted({s.interval for s in series})
    if len(intervals) != 1:
        raise DataError(f"every file must have one bar interval, got {', '.join(intervals)}")
    step = interval_ms(intervals[0])
    _audit(series[0])
    rows = pool(series)
    if len(rows.y) < 500:
        raise DataError(f"only {len(rows.y)} usable bars after warm-up and labelling; need at least 500")
    horizon_ms = settings.horizon * step
    gap_ms = (settings.horizon + settings.embargo) * step
    folds = walk_forward(rows.times, folds=settings.folds, gap_ms=gap_ms)
    check_folds(folds, horizon_ms)

    per_fold = settings.model.xgb_rounds + settings.model.mlp_epochs
    advance = progress("walk-forward folds", per_fold * settings.folds, 0)
    tested = np.zeros(len(rows.y), dtype=bool)
    p_xgb = np.zeros((len(rows.y), len(CLASSES)))
    p_mlp = np.zeros((len(rows.y), len(CLASSES)))
    fold_notes = []
    for fold in folds:
        train_rows = np.flatnonzero(rows.times <= fold.train_end)
        test_rows = np.flatnonzero((rows.times >= fold.test_start) & (rows.times < fold.test_end))
        check_rows(rows.times[train_rows], rows.times[test_rows], horizon_ms, what=f"fold {fold.index}")
        ensemble, note = _fit(rows, train_rows, settings, gap_ms, horizon_ms, advance)
        px, pm = ensemble.probabilities(rows.x[test_rows])
        p_xgb[test_rows], p_mlp[test_rows] = px, pm
        tested[test_rows] = True
        fold_notes.append({**_fold_info(fold), **note, "test_rows": len(test_rows)})

    advance = progress("final models", per_fold, 0)
    final, final_note = _fit(rows, np.arange(len(rows.y)), settings, gap_ms, horizon_ms, advance)

    summary = evaluate(
        series,
        rows,
        tested,
        p_xgb,
        p_mlp,
        threshold=settings.threshold,
        cost=settings.fee_rate + settings.slippage_bps / 10_000,
        step_ms=step,
        hold_bars=settings.horizon,
    )
    summary["folds"] = fold_notes
    manifest = _manifest(settings, series, rows, intervals[0], final_note, summary)
    files_out = {"xgboost.json": xgb_to_bytes(final.booster), "torch.pt": mlp_to_bytes(final.mlp)}
    digest = write_artifact(out, manifest, files_out)
    from quantum_trader.research.report import write_report

    report = write_report(out / "report", settings.name, digest, summary, manifest)
    return TrainOutcome(digest=digest, folder=out, manifest=manifest, summary=summary, report=report)


def _audit(series: SymbolSeries) -> None:
    """Cut the first series' history at a few places: no feature value before a cut may change."""
    n = len(series.times)

    def compute(k: int) -> np.ndarray:
        return batch_features(series.times[:k], series.close[:k], series.high[:k], series.low[:k], series.volume[:k])

    audit_causality(compute, n, [n // 4, n // 2, (3 * n) // 4], names=FEATURE_NAMES)


def _fit(
    rows: Pooled,
    train_rows: np.ndarray,
    settings: TrainSettings,
    gap_ms: int,
    horizon_ms: int,
    advance: Callable[[int], None],
) -> tuple[Ensemble, dict[str, Any]]:
    """Fit on the earlier part of ``train_rows``, calibrate on the last ``calibration_fraction`` after a gap."""
    times = rows.times[train_rows]
    distinct = np.unique(times)
    calibration_start = int(distinct[int(len(distinct) * (1 - settings.calibration_fraction))])
    fit_rows = train_rows[times <= calibration_start - gap_ms - 1]
    calibration_rows = train_rows[times >= calibration_start]
    check_rows(rows.times[fit_rows], rows.times[calibration_rows], horizon_ms, what="calibration split")
    x, y = rows.x[fit_rows], rows.y[fit_rows]
    booster = train_xgboost(x, y, settings.model, progress=advance)
    mlp = train_mlp(x, y, settings.model, progress=advance)
    xc, yc = rows.x[calibration_rows], rows.y[calibration_rows]
    t_xgb = fit_temperature(xgb_margins(booster, xc), yc)
    t_mlp = fit_temperature(mlp_logits(mlp, xc), yc)
    note = {
        "fit_rows": len(fit_rows),
        "calibration_rows": len(calibration_rows),
        "fit_end": int(rows.times[fit_rows].max()),
        "calibration_start": calibration_start,
        "xgboost_temperature": t_xgb,
        "torch_temperature": t_mlp,
    }
    return Ensemble(booster, mlp, t_xgb, t_mlp), note


def _fold_info(fold: Fold) -> dict[str, Any]:
    return {"fold": fold.index, "train_end": fold.train_end, "test_start": fold.test_start, "test_end": fold.test_end}


def _manifest(
    settings: TrainSettings,
    series: list[SymbolSeries],
    rows: Pooled,
    interval: str,
    final: dict[str, Any],
    summary: dict[str, Any],
) -> dict[str, Any]:
    import torch

    return {
        "format": FORMAT,
        "name": settings.name,
        "feature_set": {
            "name": FEATURE_SET,
            "hash": FEATURE_HASH,
            "names": list(FEATURE_NAMES),
            "parameters": PARAMETERS,
        },
        "label": LabelSpec(settings.horizon, settings.band_atr).describe(),
        "training": {
            "interval": interval,
            "range": {"start": int(rows.times.min()), "end": int(rows.times.max())},
            "rows": len(rows.y),
            "data": [
                {
                    "file": s.file,
                    "symbol": s.symbol,
                    "sha256": s.sha256,
                    "bars": len(s.times),
                    "first_bar_close": int(s.times[0]),
                    "last_bar_close": int(s.times[-1]),
                }
                for s in series
            ],
            "seed": settings.model.seed,
            "config": asdict(settings.model),
            "walk_forward": {
                "folds": settings.folds,
                "gap_bars": settings.horizon + settings.embargo,
                "embargo_bars": settings.embargo,
                "calibration_fraction": settings.calibration_fraction,
                "max_bars_per_file": settings.max_bars,
            },
            "final_fit": final,
        },
        "models": {
            "xgboost": {"file": "xgboost.json", "format": "xgboost-json", "temperature": final["xgboost_temperature"]},
            "torch": {
                "file": "torch.pt",
                "format": "torch-state-dict",
                "class": "MarketMLP",
                "hidden": settings.model.mlp_hidden,
                "n_features": len(FEATURE_NAMES),
                "temperature": final["torch_temperature"],
            },
        },
        "metrics": {k: summary[k] for k in ("out_of_sample_rows", "accuracy", "log_loss", "pnl") if k in summary},
        "evaluation": {
            "threshold": settings.threshold,
            "fee_rate": settings.fee_rate,
            "slippage_bps": settings.slippage_bps,
        },
        "versions": {
            "xgboost": xgb.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
