"""Seeded synthetic klines — for tests and demos only, never for judging a strategy.

Tests need market data that is small, endless, and identical on every machine, with trends a
trend follower can catch and ranges where it whipsaws. Prices follow geometric Brownian motion
whose drift and volatility switch between up, down and range regimes (a Markov chain). Every
bar and tick is labelled ``synthetic:<seed>`` so nothing downstream can mistake it for a market.
The output depends only on the seed, the symbol and the parameters: no clock, no global random
state, no ``hash()`` (which Python salts per process).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from quantum_trader.contracts.messages import Tick
from quantum_trader.data.errors import DataError
from quantum_trader.data.klines import Kline, interval_ms, merge_by_time
from quantum_trader.data.replay import DEFAULT_SPREAD_BPS, ticks_from_klines

SYNTHETIC_START_MS = 1_704_067_200_000
"""2024-01-01 00:00 UTC: a fixed start, so a series never depends on when it was generated."""

_SUBSTEPS = 6
"""Price steps simulated inside a bar; their extremes make the bar's high and low."""


@dataclass(frozen=True, slots=True)
class Regime:
    """Per-bar log drift and volatility of one market state."""

    name: str
    drift: float
    volatility: float


REGIMES: tuple[Regime, ...] = (
    Regime("up", drift=0.0006, volatility=0.0025),
    Regime("down", drift=-0.0006, volatility=0.0030),
    Regime("range", drift=0.0, volatility=0.0015),
)


def symbol_seed(seed: int, symbol: str) -> int:
    """A per-symbol seed that is stable across processes and Python versions."""
    digest = hashlib.sha256(f"{seed}:{symbol}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def synthetic_klines(
    symbol: str,
    *,
    seed: int,
    bars: int,
    start_price: float = 100.0,
    interval: str = "1m",
    start_time_ms: int = SYNTHETIC_START_MS,
    mean_regime_bars: float = 300.0,
) -> Iterator[Kline]:
    """``bars`` consecutive bars of ``symbol``, all 12 columns filled, labelled ``synthetic:<seed>``."""
    if bars < 0:
        raise DataError(f"bars must not be negative, got {bars}")
    if not (start_price > 0 and math.isfinite(start_price)):
        raise DataError(f"start_price must be a positive number, got {start_price}")
    if mean_regime_bars < 1:
        raise DataError(f"mean_regime_bars must be at least 1, got {mean_regime_bars}")
    step_ms = interval_ms(interval)
    rng = random.Random(symbol_seed(seed, symbol))
    regime = rng.choice(REGIMES)
    switch_probability = 1.0 / mean_regime_bars
    close = start_price
    source = f"synthetic:{seed}"
    for index in range(bars):
        if rng.random() < switch_probability:
            regime = rng.choice([r for r in REGIMES if r is not regime])
        open_ = close
        price, high, low = open_, open_, open_
        step_drift = (regime.drift - regime.volatility**2 / 2) / _SUBSTEPS
        step_vol = regime.volatility / math.sqrt(_SUBSTEPS)
        for _ in range(_SUBSTEPS):
            price *= math.exp(step_drift + step_vol * rng.gauss(0.0, 1.0))
            high, low = max(high, price), min(low, price)
        high *= 1 + abs(rng.gauss(0.0, 1.0)) * regime.volatility * 0.25
        low /= 1 + abs(rng.gauss(0.0, 1.0)) * regime.volatility * 0.25
        open_, close = _round_price(open_), _round_price(price)
        high = max(_round_price(high), open_, close)
        low = min(_round_price(low), open_, close)
        bar_return = abs(math.log(close / open_))
        volume = round(1000.0 * math.exp(0.5 * rng.gauss(0.0, 1.0)) * (1 + bar_return / regime.volatility), 3)
        buy_share = min(0.9, max(0.1, 0.5 + rng.gauss(0.0, 0.1)))
        vwap = (high + low + close) / 3
        open_time = start_time_ms + index * step_ms
        yield Kline(
            open_time=open_time,
            open=open_,
            high=high,
            low=low,
            close=close,
            volume=volume,
            close_time=open_time + step_ms - 1,
            quote_volume=round(volume * vwap, 4),
            trades=max(1, int(volume / 5)),
            taker_buy_volume=round(volume * buy_share, 3),
            taker_buy_quote_volume=round(volume * buy_share * vwap, 4),
            symbol=symbol,
            interval=interval,
            source=source,
        )


def synthetic_ticks(
    symbols: Sequence[str],
    *,
    seed: int,
    bars: int,
    start_price: float = 100.0,
    interval: str = "1m",
    spread_bps: float = DEFAULT_SPREAD_BPS,
    skip_bars: int = 0,
) -> Iterator[Tick]:
    """Ticks of one synthetic series per symbol, merged by time like a replay of several files."""
    if skip_bars < 0:
        raise DataError(f"skip_bars must not be negative, got {skip_bars}")
    streams = []
    for symbol in sorted(set(symbols)):
        klines = synthetic_klines(symbol, seed=seed, bars=bars, start_price=start_price, interval=interval)
        for _ in range(skip_bars):
            if next(klines, None) is None:
                break
        streams.append(klines)
    return ticks_from_klines(merge_by_time(streams), spread_bps=spread_bps)


def _round_price(value: float) -> float:
    """Eight significant digits, like an exchange price: files stay short and read back exactly."""
    return float(f"{value:.8g}")
