"""Out-of-sample evaluation: classification quality, calibration, and a simulated PnL after costs.

Every number comes from walk-forward test rows only (predictions of models that never saw them).

The PnL simulation is deliberately simple and stated in the report: on each out-of-sample bar a
strategy holds a position of -1, 0 or +1 from that bar's close to the next one's; every change of
position pays ``cost`` (taker fee + slippage) per unit traded, and the last position is closed at the
end. Symbols are equally weighted. Compared on exactly the same bars:

- ``ensemble``: the equal-weight ensemble's signal at the evaluation threshold opens a position that is held
  for the label horizon (what the models were trained to predict), or until a newer signal;
- ``buy_and_hold``: long throughout (one entry, one exit);
- ``baseline``: ``baseline-trend``'s EMA-crossover position (long after its BUY, short after its SELL).

Stops and take-profits are not simulated here; ``qt backtest`` runs the whole pipeline for that.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from quantum_trader.contracts.policy import ModelRef
from quantum_trader.ml.ensemble import combine, signals
from quantum_trader.ml.labels import CLASSES, DOWN, UP
from quantum_trader.ml.models import log_loss
from quantum_trader.research.dataset import Pooled, SymbolSeries

THRESHOLDS = tuple(round(0.34 + 0.02 * i, 2) for i in range(24))
CALIBRATION_BINS = 10
YEAR_MS = 365 * 86_400_000


def _r(value: float) -> float:
    return round(float(value), 6)


def evaluate(
    series: list[SymbolSeries],
    rows: Pooled,
    tested: np.ndarray,
    p_xgb: np.ndarray,
    p_mlp: np.ndarray,
    *,
    threshold: float,
    cost: float,
    step_ms: int,
    hold_bars: int,
) -> dict[str, Any]:
    idx = np.flatnonzero(tested)
    y = rows.y[idx]
    px, pm = p_xgb[idx], p_mlp[idx]
    pe = combine(px, pm, ModelRef())
    frequencies = np.bincount(y, minlength=len(CLASSES)) / len(y)
    summary: dict[str, Any] = {
        "out_of_sample_rows": len(idx),
        "out_of_sample_range": {"start": int(rows.times[idx].min()), "end": int(rows.times[idx].max())},
        "class_frequencies": {c: _r(f) for c, f in zip(CLASSES, frequencies, strict=True)},
        "accuracy": {
            "xgboost": _r(np.mean(px.argmax(1) == y)),
            "torch": _r(np.mean(pm.argmax(1) == y)),
            "ensemble": _r(np.mean(pe.argmax(1) == y)),
            "always_most_frequent": _r(frequencies.max()),
        },
        "log_loss": {
            "xgboost": _r(log_loss(px, y)),
            "torch": _r(log_loss(pm, y)),
            "ensemble": _r(log_loss(pe, y)),
            "uniform": _r(math.log(len(CLASSES))),
            "class_frequencies_in_hindsight": _r(log_loss(np.tile(frequencies, (len(y), 1)), y)),
        },
        "calibration": {CLASSES[c]: calibration_curve(pe[:, c], y == c) for c in (UP, DOWN)},
        "precision_by_threshold": precision_by_threshold(pe, y),
        "threshold": threshold,
        "cost_per_unit_traded": cost,
    }
    pnl, curves = simulate(series, rows, idx, pe, threshold=threshold, cost=cost, step_ms=step_ms, hold_bars=hold_bars)
    summary["hold_bars"] = hold_bars
    summary["pnl"] = pnl
    summary["_curves"] = curves
    return summary


def calibration_curve(predicted: np.ndarray, happened: np.ndarray) -> dict[str, list[float]]:
    """Reliability diagram: per probability bin, the mean prediction and how often the class occurred."""
    bins = np.minimum((predicted * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    out: dict[str, list[float]] = {"predicted": [], "observed": [], "count": []}
    for b in range(CALIBRATION_BINS):
        mask = bins == b
        if mask.sum() == 0:
            continue
        out["predicted"].append(_r(predicted[mask].mean()))
        out["observed"].append(_r(happened[mask].mean()))
        out["count"].append(int(mask.sum()))
    return out


def precision_by_threshold(probabilities: np.ndarray, y: np.ndarray) -> list[dict[str, float]]:
    """For each threshold: how many bars signal, and how often the signalled direction was the label."""
    out = []
    for threshold in THRESHOLDS:
        s = signals(probabilities, threshold)
        longs, shorts = s == 1, s == -1
        n = int(longs.sum() + shorts.sum())
        hits = int((longs & (y == UP)).sum() + (shorts & (y == DOWN)).sum())
        against = int((longs & (y == DOWN)).sum() + (shorts & (y == UP)).sum())
        out.append(
            {
                "threshold": threshold,
                "signals": n,
                "coverage": _r(n / len(y)),
                "precision": _r(hits / n) if n else None,
                "wrong_direction": _r(against / n) if n else None,
                "flat": _r(1 - (hits + against) / n) if n else None,
                "long_precision": _r((longs & (y == UP)).sum() / longs.sum()) if longs.sum() else None,
                "short_precision": _r((shorts & (y == DOWN)).sum() / shorts.sum()) if shorts.sum() else None,
            }
        )
    return out


def held(signal: np.ndarray, hold_bars: int) -> np.ndarray:
    """The position a signal opens, kept for ``hold_bars`` bars (the label's horizon) unless a newer signal comes."""
    out = np.zeros(len(signal))
    position, since = 0, hold_bars
    for i, s in enumerate(signal):
        if s != 0:
            position, since = int(s), 0
        elif since >= hold_bars - 1:
            position = 0
        else:
            since += 1
        out[i] = position
    return out


def simulate(
    series: list[SymbolSeries],
    rows: Pooled,
    idx: np.ndarray,
    probabilities: np.ndarray,
    *,
    threshold: float,
    cost: float,
    step_ms: int,
    hold_bars: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    ensemble_signal = signals(probabilities, threshold)
    names = ("ensemble", "buy_and_hold", "baseline")
    by_time: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in names}
    stats: dict[str, dict[str, float]] = {n: {"fees": 0.0, "turnover": 0.0, "exposure": 0.0, "bars": 0} for n in names}
    for s_index, s in enumerate(series):
        mine = rows.series[idx] == s_index
        bars = rows.bar[idx][mine]
        order = np.argsort(bars)
        bars = bars[order]
        keep = bars + 1 < len(s.close)
        bars = bars[keep]
        if len(bars) == 0:
            continue
        ret = s.close[bars + 1] / s.close[bars] - 1.0
        positions = {
            "ensemble": held(ensemble_signal[mine][order][keep], hold_bars),
            "buy_and_hold": np.ones(len(bars)),
            "baseline": s.baseline_position[bars].astype(float),
        }
        for name, pos in positions.items():
            change = np.abs(np.diff(np.concatenate(([0.0], pos))))
            change[-1] += abs(pos[-1])  # close out at the end
            fees = change * cost
            by_time[name].append((s.times[bars], pos * ret - fees))
            stats[name]["fees"] += float(fees.sum())
            stats[name]["turnover"] += float(change.sum())
            stats[name]["exposure"] += float(np.abs(pos).sum())
            stats[name]["bars"] += len(bars)
    pnl: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    bars_per_year = YEAR_MS / step_ms
    for name in names:
        times = np.concatenate([t for t, _ in by_time[name]])
        returns = np.concatenate([r for _, r in by_time[name]])
        unique, inverse = np.unique(times, return_inverse=True)
        mean = np.bincount(inverse, weights=returns) / np.bincount(inverse)
        equity = np.cumprod(1.0 + mean)
        peak = np.maximum.accumulate(equity)
        sd = mean.std()
        pnl[name] = {
            "total_return": _r(equity[-1] - 1.0),
            "annualised_sharpe": _r(mean.mean() / sd * math.sqrt(bars_per_year)) if sd > 0 else 0.0,
            "max_drawdown": _r((1 - equity / peak).max()),
            "fees_paid": _r(stats[name]["fees"] / len(series)),
            "turnover": _r(stats[name]["turnover"] / len(series)),
            "exposure": _r(stats[name]["exposure"] / max(stats[name]["bars"], 1)),
        }
        curves[name] = {"times": unique, "equity": equity}
    return pnl, curves
