"""Klines into ``Tick`` messages, and the pacing of a replay against the wall clock.

Everything a tick holds is derived from the bar (never from "now"), and tick ids come from the
symbol and event time, so replaying the same files twice yields the same messages, ids and orders
(DESIGN §4.9). Only the ``Pacer`` looks at a clock, and only to decide how long to wait.
"""

from __future__ import annotations

import glob
import heapq
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from quantum_trader.contracts.messages import Tick
from quantum_trader.data.errors import DataError
from quantum_trader.data.klines import Kline, parse_kline_filename, read_klines

DEFAULT_SPREAD_BPS = 1.0
"""Full bid-ask spread in basis points put around the bar close; kline files carry no quotes."""


def kline_to_tick(kline: Kline, *, spread_bps: float = DEFAULT_SPREAD_BPS) -> Tick:
    """The tick a bar stands for: at its close, priced at the close, with a symmetric synthetic spread."""
    _check_spread(spread_bps)
    half = kline.close * spread_bps / 20_000.0
    return Tick(
        symbol=kline.symbol,
        price=kline.close,
        bid=kline.close - half,
        ask=kline.close + half,
        volume=kline.volume,
        event_time=kline.close_time,
        high=kline.high,
        low=kline.low,
        source=kline.source,
    )


def ticks_from_klines(klines: Iterable[Kline], *, spread_bps: float = DEFAULT_SPREAD_BPS) -> Iterator[Tick]:
    """One tick per bar, in the bars' order."""
    _check_spread(spread_bps)
    for kline in klines:
        yield kline_to_tick(kline, spread_bps=spread_bps)


def tick_id(tick: Tick) -> str:
    """``<symbol>:<event_time>``: one symbol has one tick per event time, so the id is unique and replayable."""
    return f"{tick.symbol}:{tick.event_time}"


def expand_files(patterns: Iterable[str]) -> list[Path]:
    """Paths and globs to a sorted list of files; a pattern that matches nothing is a mistake, not an empty replay."""
    files: set[Path] = set()
    for pattern in patterns:
        expanded = str(Path(pattern).expanduser())
        matches = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise DataError(f"no kline file matches {pattern!r}")
        files.update(Path(m) for m in matches)
    return sorted(files)


def replay_ticks(
    files: Sequence[str | Path],
    *,
    spread_bps: float = DEFAULT_SPREAD_BPS,
    skip_bars: int = 0,
    max_bars: int = 0,
) -> Iterator[Tick]:
    """Ticks of several kline files merged in event-time order (ties by symbol), one file per symbol.

    Two files of one symbol would interleave two bar series into one price history, which no
    feature or position could make sense of, so that is refused up front. ``skip_bars`` and
    ``max_bars`` (0: all) apply to each file, as in ``MarketDataSpec``.
    """
    if skip_bars < 0 or max_bars < 0:
        raise DataError("skip_bars and max_bars must not be negative")
    _check_spread(spread_bps)
    by_symbol: dict[str, Path] = {}
    for file in map(Path, files):
        symbol, _ = parse_kline_filename(file.name)
        if symbol in by_symbol:
            raise DataError(f"two files for {symbol}: {by_symbol[symbol].name} and {file.name}; replay one per symbol")
        by_symbol[symbol] = file
    streams = []
    for file in by_symbol.values():
        klines: Iterable[Kline] = read_klines(file)
        klines = itertools.islice(klines, skip_bars, skip_bars + max_bars if max_bars else None)
        streams.append(ticks_from_klines(klines, spread_bps=spread_bps))
    return heapq.merge(*streams, key=lambda t: (t.event_time, t.symbol))


class Pacer:
    """How long to wait before each event so a replay runs at ``speed`` times real time.

    It compares market time elapsed since the first event with wall time elapsed since then, so
    a slow consumer catches up instead of drifting further behind; ``speed`` 0 never waits.
    ``scale`` stretches market time first (``bar_interval_ms`` / the files' interval), e.g. to
    play hourly bars one per second at speed 1. The clock is injectable so tests need no sleeping.
    """

    def __init__(self, speed: float, *, scale: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if speed < 0:
            raise DataError(f"replay speed must be 0 (full speed) or positive, got {speed}")
        if scale <= 0:
            raise DataError(f"pacing scale must be positive, got {scale}")
        self.speed = speed
        self.scale = scale
        self._clock = clock
        self._start_market: int | None = None
        self._start_wall = 0.0

    def delay(self, market_time_ms: int) -> float:
        """Seconds to sleep before emitting the event at ``market_time_ms``; the first event starts the clock."""
        if self.speed == 0:
            return 0.0
        now = self._clock()
        if self._start_market is None:
            self._start_market = market_time_ms
            self._start_wall = now
            return 0.0
        market_elapsed = (market_time_ms - self._start_market) / 1000.0 * self.scale
        due = self._start_wall + market_elapsed / self.speed
        return max(0.0, due - now)


def _check_spread(spread_bps: float) -> None:
    if not 0 <= spread_bps < 20_000:
        raise DataError(f"spread_bps must be in [0, 20000), got {spread_bps}")
