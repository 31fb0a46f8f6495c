"""Kline files -> the arrays training and evaluation use, through the same ticks the pipeline replays.

Bars become ``Tick`` messages with ``data.replay.kline_to_tick`` (the function market-data uses), so
the features training sees are computed from exactly what the features component receives.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantum_trader.contracts.policy import StrategySpec
from quantum_trader.data.errors import DataError
from quantum_trader.data.klines import read_klines
from quantum_trader.data.replay import kline_to_tick
from quantum_trader.ml.baseline import StrategyState, decide
from quantum_trader.ml.features import FeatureState
from quantum_trader.ml.labels import NO_LABEL, LabelSpec, make_labels
from quantum_trader.ml.market_features import ATR_PCT_INDEX, batch_features


@dataclass
class SymbolSeries:
    """One kline file: prices, features, labels and the baseline strategy's position per bar."""

    symbol: str
    interval: str
    file: str
    sha256: str
    times: np.ndarray
    close: np.ndarray
    high: np.ndarray
    low: np.ndarray
    volume: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    baseline_position: np.ndarray

    @property
    def usable(self) -> np.ndarray:
        """Bars with every feature and a label."""
        return ~np.isnan(self.features).any(axis=1) & (self.labels != NO_LABEL)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def load_series(path: str | Path, labels: LabelSpec, *, max_bars: int = 0) -> SymbolSeries:
    """A kline file's bars (the last ``max_bars`` if set) with features, labels and baseline positions."""
    file = Path(path)
    klines = list(read_klines(file))
    if max_bars:
        klines = klines[-max_bars:]
    if not klines:
        raise DataError(f"{file}: no bars")
    ticks = [kline_to_tick(k) for k in klines]
    times = np.array([t.event_time for t in ticks], dtype=np.int64)
    close = np.array([t.price for t in ticks], dtype=np.float64)
    high = np.array([t.high for t in ticks], dtype=np.float64)
    low = np.array([t.low for t in ticks], dtype=np.float64)
    volume = np.array([t.volume for t in ticks], dtype=np.float64)
    features = batch_features(times, close, high, low, volume)
    return SymbolSeries(
        symbol=klines[0].symbol,
        interval=klines[0].interval,
        file=file.name,
        sha256=file_sha256(file),
        times=times,
        close=close,
        high=high,
        low=low,
        volume=volume,
        features=features,
        labels=make_labels(close, features[:, ATR_PCT_INDEX], labels),
        baseline_position=baseline_positions(ticks),
    )


def baseline_positions(ticks: list) -> np.ndarray:
    """``baseline-trend``'s position after each bar: +1 after a BUY intent, -1 after a SELL, 0 before the first."""
    spec = StrategySpec()
    features = FeatureState(ticks[0].symbol, fast=spec.fast, slow=spec.slow, atr=spec.atr)
    state = StrategyState()
    position = 0
    out = np.zeros(len(ticks), dtype=np.int64)
    for i, tick in enumerate(ticks):
        vector = features.update(tick)
        if vector is not None:
            intent = decide(vector, state, spec)
            if intent is not None:
                position = 1 if intent.side.value == "BUY" else -1
        out[i] = position
    return out


@dataclass
class Pooled:
    """The usable bars of every series, ordered by (time, series): the rows models train and test on."""

    x: np.ndarray
    y: np.ndarray
    times: np.ndarray
    series: np.ndarray
    """Index into the list of series."""
    bar: np.ndarray
    """Index of the bar inside its series."""


def pool(series: list[SymbolSeries]) -> Pooled:
    parts = []
    for s_index, s in enumerate(series):
        bars = np.flatnonzero(s.usable)
        parts.append((s.times[bars], np.full(len(bars), s_index), bars))
    times = np.concatenate([p[0] for p in parts])
    s_idx = np.concatenate([p[1] for p in parts])
    bars = np.concatenate([p[2] for p in parts])
    order = np.lexsort((s_idx, times))
    times, s_idx, bars = times[order], s_idx[order], bars[order]
    x = np.stack([series[s].features[b] for s, b in zip(s_idx, bars, strict=True)]) if len(bars) else np.zeros((0, 0))
    y = np.array([series[s].labels[b] for s, b in zip(s_idx, bars, strict=True)], dtype=np.int64)
    return Pooled(x=x, y=y, times=times, series=s_idx, bar=bars)
