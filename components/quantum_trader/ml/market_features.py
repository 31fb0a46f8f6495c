"""Feature set ``market-v1``: the inputs of the learned models, for training and inference alike.

Every value is scale-free (a return, a ratio, an oscillator, a z-score or a clock angle), so one model
serves symbols of any price level. Two implementations of the same definitions live here:

- ``MarketFeatureState``: incremental, one per symbol, O(1) per bar (fixed windows and recursive
  smoothers), JSON-serialisable so the features component can be killed between any two ticks;
- ``batch_features``: the whole history at once with numpy, which training uses.

A test proves they agree on real data, and ``FEATURE_HASH`` (sha256 over the set's name, the feature
names in order and the parameters) travels in every vector, so a model never reads vectors of another
definition: a renamed, reordered or re-parameterised feature changes the hash.

Smoothing follows the usual charting definitions: EMAs with alpha 2/(n+1), ATR and RSI with Wilder's
1/n, each seeded with the mean of its first n inputs; MACD's signal line is an EMA of the MACD line
seeded once the slow EMA exists; Bollinger bands use the population standard deviation.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from quantum_trader.contracts.messages import FeatureVector, Tick
from quantum_trader.ml.features import (
    ema,
    feature_hash,
    pack_floats,
    restore_windows,
    rsi,
    sample_stdev,
    volume_z,
    wilder,
)

FEATURE_SET = "market-v1"
RETURN_HORIZONS: tuple[int, ...] = (1, 3, 6, 12, 24)
VOL_WINDOW = 24
RSI_LENGTH = 14
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
ATR_LENGTH = 14
BB_WINDOW, BB_WIDTH = 20, 2.0
VOLUME_WINDOW = 24
DAY_MS = 86_400_000

FEATURE_NAMES: tuple[str, ...] = (
    *(f"ret_{h}" for h in RETURN_HORIZONS),
    f"vol_{VOL_WINDOW}",
    f"rsi_{RSI_LENGTH}",
    "macd",
    "macd_signal",
    "macd_hist",
    "atr_pct",
    "bb_pct_b",
    f"volume_z_{VOLUME_WINDOW}",
    "range_pct",
    "tod_sin",
    "tod_cos",
)
PARAMETERS: dict[str, Any] = {
    "return_horizons": list(RETURN_HORIZONS),
    "vol_window": VOL_WINDOW,
    "rsi_length": RSI_LENGTH,
    "macd": [MACD_FAST, MACD_SLOW, MACD_SIGNAL],
    "atr_length": ATR_LENGTH,
    "bollinger": [BB_WINDOW, BB_WIDTH],
    "volume_window": VOLUME_WINDOW,
}
WARMUP_BARS = max(MACD_SLOW + MACD_SIGNAL - 1, max(RETURN_HORIZONS) + 1, VOL_WINDOW + 1, VOLUME_WINDOW + 1, BB_WINDOW)
"""Bars before the first vector: the MACD signal line is the last feature to exist (34 bars)."""


FEATURE_HASH = feature_hash(FEATURE_SET, FEATURE_NAMES, PARAMETERS)
ATR_PCT_INDEX = FEATURE_NAMES.index("atr_pct")


def time_of_day(event_time_ms: int) -> tuple[float, float]:
    """The UTC time of day as a point on the unit circle: 23:59 and 00:00 are neighbours."""
    angle = 2.0 * math.pi * (event_time_ms % DAY_MS) / DAY_MS
    return math.sin(angle), math.cos(angle)


class MarketFeatureState:
    """The running ``market-v1`` features of one symbol; ``update`` per bar, ``to_dict`` to persist."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.bars = 0
        self.last_time: int | None = None
        self._ema_fast = ema(MACD_FAST)
        self._ema_slow = ema(MACD_SLOW)
        self._signal = ema(MACD_SIGNAL)
        self._atr = wilder(ATR_LENGTH)
        self._gain = wilder(RSI_LENGTH)
        self._loss = wilder(RSI_LENGTH)
        self._closes: deque[float] = deque(maxlen=max(RETURN_HORIZONS) + 1)
        self._returns: deque[float] = deque(maxlen=VOL_WINDOW)
        self._volumes: deque[float] = deque(maxlen=VOLUME_WINDOW + 1)

    def update(self, tick: Tick) -> FeatureVector | None:
        """Fold in one bar's tick; the vector once warm, else ``None``. An old or repeated tick changes nothing."""
        if tick.symbol != self.symbol:
            raise ValueError(f"tick for {tick.symbol} given to the {self.symbol} feature state")
        if self.last_time is not None and tick.event_time <= self.last_time:
            return None
        values = self._fold(tick.event_time, tick.price, tick.high, tick.low, tick.volume)
        if values is None:
            return None
        return FeatureVector(
            symbol=self.symbol,
            time=tick.event_time,
            feature_set=FEATURE_SET,
            feature_hash=FEATURE_HASH,
            names=FEATURE_NAMES,
            values=values,
            price=tick.price,
        )

    def _fold(
        self, event_time: int, close: float, high: float | None, low: float | None, volume: float
    ) -> tuple[float, ...] | None:
        high = close if high is None else high
        low = close if low is None else low
        previous = self._closes[-1] if self._closes else None
        self.last_time = event_time
        self.bars += 1
        fast = self._ema_fast.update(close)
        slow = self._ema_slow.update(close)
        macd = None if fast is None or slow is None else fast - slow
        signal = None if macd is None else self._signal.update(macd)
        true_range = high - low
        if previous is not None:
            true_range = max(true_range, abs(high - previous), abs(low - previous))
            change = close - previous
            self._gain.update(max(change, 0.0))
            self._loss.update(max(-change, 0.0))
            self._returns.append(math.log(close / previous))
        atr = self._atr.update(true_range)
        self._closes.append(close)
        self._volumes.append(volume)
        if self.bars < WARMUP_BARS:
            return None
        assert macd is not None and signal is not None and atr is not None
        closes = list(self._closes)
        window = closes[-BB_WINDOW:]
        mean = math.fsum(window) / BB_WINDOW
        spread = math.sqrt(math.fsum((x - mean) ** 2 for x in window) / BB_WINDOW)
        bb_pct_b = 0.5 if spread == 0.0 else (close - (mean - BB_WIDTH * spread)) / (2 * BB_WIDTH * spread)
        tod_sin, tod_cos = time_of_day(event_time)
        return (
            *(math.log(close / closes[-1 - h]) for h in RETURN_HORIZONS),
            sample_stdev(self._returns),
            rsi(self._gain.value, self._loss.value),
            macd / close,
            signal / close,
            (macd - signal) / close,
            atr / close,
            bb_pct_b,
            volume_z(list(self._volumes)),
            (high - low) / close,
            tod_sin,
            tod_cos,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state; ``from_dict`` of it continues exactly where this one stands."""
        return {
            "feature_set": FEATURE_SET,
            "feature_hash": FEATURE_HASH,
            "symbol": self.symbol,
            "bars": self.bars,
            "last_time": self.last_time,
            "ema_fast": self._ema_fast.dump(),
            "ema_slow": self._ema_slow.dump(),
            "signal": self._signal.dump(),
            "atr": self._atr.dump(),
            "gain": self._gain.dump(),
            "loss": self._loss.dump(),
            "closes": pack_floats(self._closes),
            "volumes": pack_floats(self._volumes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MarketFeatureState:
        """Restore a persisted state; a state of another definition (hash) is refused, not misread."""
        if data.get("feature_hash") != FEATURE_HASH:
            raise ValueError(
                f"state of feature set {data.get('feature_set')!r} with another hash, expected {FEATURE_SET}"
            )
        state = cls(str(data["symbol"]))
        state.bars = int(data["bars"])
        state.last_time = None if data["last_time"] is None else int(data["last_time"])
        for name in ("ema_fast", "ema_slow", "signal", "atr", "gain", "loss"):
            getattr(state, f"_{name}").load(data[name])
        restore_windows(data, state._closes, state._returns, state._volumes)
        return state


# --- batch -----------------------------------------------------------------------------------------


def _smooth(x: np.ndarray, length: int, alpha: float) -> np.ndarray:
    """The seeded exponential average of ``x`` (NaN before it exists); NaN inputs before the first value are skipped."""
    out = np.full(len(x), np.nan)
    start = int(np.argmax(~np.isnan(x))) if (~np.isnan(x)).any() else len(x)
    if len(x) - start < length:
        return out
    value = float(np.mean(x[start : start + length]))
    out[start + length - 1] = value
    for i in range(start + length, len(x)):
        value += alpha * (float(x[i]) - value)
        out[i] = value
    return out


def _rolling(x: np.ndarray, window: int) -> np.ndarray:
    """Windows ending at each index from ``window - 1`` on, as rows."""
    return np.lib.stride_tricks.sliding_window_view(x, window)


def batch_features(
    times: np.ndarray, close: np.ndarray, high: np.ndarray, low: np.ndarray, volume: np.ndarray
) -> np.ndarray:
    """``market-v1`` for one symbol's bars at once: shape (bars, features), NaN rows during warm-up."""
    n = len(close)
    out = np.full((n, len(FEATURE_NAMES)), np.nan)
    if n < WARMUP_BARS:
        return out
    previous = np.concatenate(([np.nan], close[:-1]))
    true_range = high - low
    true_range[1:] = np.maximum.reduce(
        [true_range[1:], np.abs(high[1:] - previous[1:]), np.abs(low[1:] - previous[1:])]
    )
    change = np.concatenate(([np.nan], np.diff(close)))
    fast = _smooth(close, MACD_FAST, 2.0 / (MACD_FAST + 1))
    slow = _smooth(close, MACD_SLOW, 2.0 / (MACD_SLOW + 1))
    macd = fast - slow
    signal = _smooth(macd, MACD_SIGNAL, 2.0 / (MACD_SIGNAL + 1))
    atr = _smooth(true_range, ATR_LENGTH, 1.0 / ATR_LENGTH)
    gain = _smooth(np.where(np.isnan(change), np.nan, np.maximum(change, 0.0)), RSI_LENGTH, 1.0 / RSI_LENGTH)
    loss = _smooth(np.where(np.isnan(change), np.nan, np.maximum(-change, 0.0)), RSI_LENGTH, 1.0 / RSI_LENGTH)
    with np.errstate(divide="ignore", invalid="ignore"):
        rsi = np.where(loss == 0.0, np.where(gain > 0.0, 100.0, 50.0), 100.0 - 100.0 / (1.0 + gain / loss))
    columns: list[np.ndarray] = []
    for h in RETURN_HORIZONS:
        ret = np.full(n, np.nan)
        ret[h:] = np.log(close[h:] / close[:-h])
        columns.append(ret)
    one_bar = np.full(n, np.nan)
    one_bar[1:] = np.log(close[1:] / close[:-1])
    vol = np.full(n, np.nan)
    vol[VOL_WINDOW:] = _rolling(one_bar[1:], VOL_WINDOW).std(axis=1, ddof=1)
    columns += [vol, rsi, macd / close, signal / close, (macd - signal) / close, atr / close]
    bands = _rolling(close, BB_WINDOW)
    mean, spread = bands.mean(axis=1), bands.std(axis=1)
    pct_b = np.full(n, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        pct_b[BB_WINDOW - 1 :] = np.where(
            spread == 0.0, 0.5, (close[BB_WINDOW - 1 :] - (mean - BB_WIDTH * spread)) / (2 * BB_WIDTH * spread)
        )
    columns.append(pct_b)
    history = _rolling(volume[:-1], VOLUME_WINDOW)
    h_mean, h_spread = history.mean(axis=1), history.std(axis=1, ddof=1)
    volume_z = np.full(n, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        volume_z[VOLUME_WINDOW:] = np.where(h_spread == 0.0, 0.0, (volume[VOLUME_WINDOW:] - h_mean) / h_spread)
    columns.append(volume_z)
    columns.append((high - low) / close)
    angle = 2.0 * np.pi * (times % DAY_MS) / DAY_MS
    columns += [np.sin(angle), np.cos(angle)]
    out[:] = np.column_stack(columns)
    out[: WARMUP_BARS - 1] = np.nan
    return out
