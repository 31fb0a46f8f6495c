"""Live market data, the pure part: Binance USDⓈ-M stream messages, bar sequencing and the stale verdict.

market-data turns a live feed into the same ticks a replay makes: one tick per *closed* bar, at its
close, so features and models see live bars exactly as they saw recorded ones. Between bar
closes the feed proves it is alive with kline updates of the open bar and mark-price updates.

Sequencing (``next_step``): the bars of a symbol are published once each, in open-time order,
without holes. A closed bar at or before the last published one is a duplicate (a reconnect
replays the current bar) and is dropped; a bar after a hole waits until the missing bars are
fetched over REST (backfill) and published before it. An update of the open bar at ``t`` says
every bar before ``t`` has closed, so a hole left by a dropped connection is found on the
first message after the reconnect, not only at the next bar close.

Freshness (``stale_reasons``): the feed is fresh only when the websocket is up, every symbol has
been heard from within ``stale_after_ms`` and no symbol waits for a backfill. Anything else is
stale and market-data holds signals (see ``services.market_data``). ``StaleHold`` says when the
halt that holds them is written: at once when the feed goes stale, then re-asserted at most once
per ``HALT_REASSERT_MS`` while it stays stale. Nothing here reads a clock: times come in as
arguments, so every rule is tested without sleeping.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from quantum_trader.data.errors import DataError
from quantum_trader.data.klines import INTERVALS, Kline, interval_ms

SOURCE_STREAM = "live"
SOURCE_BACKFILL = "live:backfill"
MARK_PRICE_SPEED = "1s"
"""``<symbol>@markPrice@1s``: one update a second per symbol, the feed's heartbeat between bar closes"""


class LiveDataError(DataError):
    """A stream message or REST row that does not follow Binance's format."""


@dataclass(frozen=True, slots=True)
class KlineEvent:
    """A ``kline`` stream message: the bar so far, ``closed`` once the interval has ended."""

    kline: Kline
    closed: bool
    event_time: int

    @property
    def symbol(self) -> str:
        return self.kline.symbol


@dataclass(frozen=True, slots=True)
class MarkPriceEvent:
    symbol: str
    price: float
    event_time: int


@dataclass(frozen=True, slots=True)
class FeedDown:
    """The websocket closed or failed (python-binance reports it as ``{"e": "error", ...}``)."""

    reason: str


StreamEvent = KlineEvent | MarkPriceEvent | FeedDown


def stream_names(symbols: Iterable[str], interval: str) -> list[str]:
    """Binance's combined-stream names for the symbols: ``btcusdt@kline_1m`` and ``btcusdt@markPrice@1s``."""
    interval_ms(interval)
    names = []
    for symbol in sorted(set(symbols)):
        lower = symbol.lower()
        names += [f"{lower}@kline_{interval}", f"{lower}@markPrice@{MARK_PRICE_SPEED}"]
    return names


def interval_name(bar_interval_ms: int) -> str:
    """The Binance interval of a bar length in ms (``60000`` -> ``1m``); 0 means one minute."""
    if bar_interval_ms == 0:
        return "1m"
    for name, length in INTERVALS.items():
        if length == bar_interval_ms:
            return name
    raise LiveDataError(f"no Binance kline interval is {bar_interval_ms} ms long (marketData.barIntervalMs)")


def _number(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LiveDataError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise LiveDataError(f"{what} {value!r} must be finite and not negative")
    return number


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise LiveDataError(f"{what} {value!r} is not an integer")
    try:
        return int(value)
    except ValueError:
        raise LiveDataError(f"{what} {value!r} is not an integer") from None


def _bar(
    symbol: str, interval: str, source: str, open_time: int, fields: Sequence[Any], close_time: int, trades: int
) -> Kline:
    open_, high, low, close, volume, quote, taker_base, taker_quote = (
        _number(v, name)
        for v, name in zip(fields, ("open", "high", "low", "close", "volume", "quote volume", "taker buy volume",
                                      "taker buy quote volume"), strict=True)
    )  # fmt: skip
    step = interval_ms(interval)
    if close_time != open_time + step - 1:
        raise LiveDataError(f"{symbol} bar at {open_time}: close time {close_time} is not open + {interval} - 1 ms")
    if not 0 < low <= min(open_, close) <= max(open_, close) <= high:
        raise LiveDataError(f"{symbol} bar at {open_time}: prices out of order (o {open_} h {high} l {low} c {close})")
    return Kline(
        open_time=open_time,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        close_time=close_time,
        quote_volume=quote,
        trades=trades,
        taker_buy_volume=taker_base,
        taker_buy_quote_volume=taker_quote,
        symbol=symbol,
        interval=interval,
        source=source,
    )


def parse_stream_message(message: Mapping[str, Any], interval: str) -> StreamEvent | None:
    """One message of a combined stream (``{"stream": ..., "data": {...}}``) or python-binance's error
    marker. Other event types are ignored (None); a malformed kline or mark price raises."""
    if message.get("e") == "error":
        return FeedDown(f"{message.get('type', 'error')}: {message.get('m', '')}".strip())
    data = message.get("data", message)
    if not isinstance(data, Mapping):
        raise LiveDataError(f"stream message data is not an object: {data!r}"[:200])
    kind = data.get("e")
    if kind == "kline":
        bar = data.get("k")
        if not isinstance(bar, Mapping):
            raise LiveDataError("kline message without its bar ('k')")
        symbol = str(data.get("s") or bar.get("s") or "")
        if bar.get("i") != interval:
            raise LiveDataError(f"{symbol} kline of interval {bar.get('i')!r}, subscribed to {interval!r}")
        kline = _bar(
            symbol,
            interval,
            SOURCE_STREAM,
            _integer(bar.get("t"), "open time"),
            [bar.get(k) for k in ("o", "h", "l", "c", "v", "q", "V", "Q")],
            _integer(bar.get("T"), "close time"),
            _integer(bar.get("n", 0), "trade count"),
        )
        return KlineEvent(kline, closed=bar.get("x") is True, event_time=_integer(data.get("E"), "event time"))
    if kind == "markPriceUpdate":
        price = _number(data.get("p"), "mark price")
        if price <= 0:
            raise LiveDataError(f"mark price {data.get('p')!r} must be above 0")
        return MarkPriceEvent(str(data.get("s")), price, _integer(data.get("E"), "event time"))
    return None


def kline_from_rest(row: Sequence[Any], symbol: str, interval: str) -> Kline:
    """A row of ``GET /fapi/v1/klines``: ``[open time, o, h, l, c, v, close time, quote, trades, taker base,
    taker quote, ignore]``."""
    if not isinstance(row, Sequence) or len(row) < 11:
        raise LiveDataError(f"{symbol} kline row {row!r} has not the 12 fields of /fapi/v1/klines"[:200])
    return _bar(
        symbol,
        interval,
        SOURCE_BACKFILL,
        _integer(row[0], "open time"),
        [row[i] for i in (1, 2, 3, 4, 5, 7, 9, 10)],
        _integer(row[6], "close time"),
        _integer(row[8], "trade count"),
    )


class Action(StrEnum):
    PUBLISH = "publish"
    """the event's bar is the next one: publish it"""
    DUPLICATE = "duplicate"
    """already published: drop it"""
    BACKFILL = "backfill"
    """bars are missing before it: fetch ``missing`` first (then publish it, if it is closed)"""
    NOTHING = "nothing"
    """an open bar with nothing missing before it"""


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    missing: tuple[int, int] | None = None
    """open times of the first and last missing bar, inclusive"""


def next_step(last_open: int | None, bar_open: int, closed: bool, step_ms: int, *, warmup_bars: int = 0) -> Step:
    """What to do with a kline event of ``bar_open`` when ``last_open`` was the last bar published.

    With nothing published yet, ``warmup_bars`` bars of history before the first bar seen are
    fetched, so features start warm instead of after an hour of live bars.
    """
    if last_open is None:
        needed_through = bar_open - step_ms
        if warmup_bars > 0:
            return Step(Action.BACKFILL, (bar_open - warmup_bars * step_ms, needed_through))
        return Step(Action.PUBLISH if closed else Action.NOTHING)
    if closed and bar_open <= last_open:
        return Step(Action.DUPLICATE)
    if not closed and bar_open <= last_open + step_ms:
        return Step(Action.NOTHING)
    first_missing = last_open + step_ms
    last_missing = bar_open - step_ms
    if first_missing > last_missing:
        return Step(Action.PUBLISH)
    return Step(Action.BACKFILL, (first_missing, last_missing))


def select_backfill(bars: Iterable[Kline], first_open: int, last_open: int) -> list[Kline]:
    """The REST bars that fill ``[first_open, last_open]``: in range, one per open time, in order."""
    chosen: dict[int, Kline] = {}
    for bar in bars:
        if first_open <= bar.open_time <= last_open:
            chosen.setdefault(bar.open_time, bar)
    return [chosen[t] for t in sorted(chosen)]


def stale_reasons(
    *,
    now_ms: int,
    connected: bool,
    symbols: Iterable[str],
    last_heard_ms: Mapping[str, int],
    behind: Iterable[str],
    stale_after_ms: int,
) -> list[str]:
    """Why the feed cannot be trusted right now; empty means fresh.

    ``last_heard_ms`` is when each symbol's last message arrived (wall clock, by the receiver),
    ``behind`` the symbols with missing bars not yet backfilled.
    """
    reasons = []
    if not connected:
        reasons.append("websocket disconnected")
    waiting = set(behind)
    for symbol in sorted(set(symbols)):
        heard = last_heard_ms.get(symbol)
        if heard is None:
            reasons.append(f"{symbol}: no data yet")
        elif now_ms - heard > stale_after_ms:
            reasons.append(f"{symbol}: no data for {(now_ms - heard) / 1000:.1f}s")
        if symbol in waiting:
            reasons.append(f"{symbol}: bars missing, backfilling")
    return reasons


HALT_REASSERT_MS = 1_000
"""while the feed stays stale, its halt is written again at most this often: a person's ``qt killswitch
release`` clears every halt, and stale data must hold entries again within a second; market-data's idle
loop (every 50 ms) writing it each time would be twenty Redis writes a second for nothing new"""


@dataclass
class StaleHold:
    """When market-data writes the halt that holds entries while the feed is stale.

    ``due`` on every assessment the feed is stale: True at once when the hold engages, then once per
    ``reassert_ms`` while it lasts (the caller writes the halt, with the newest reason, each time it
    is True). ``release`` when the feed is fresh again and the caller lifted the halt: the next stale
    assessment engages the hold at once again.
    """

    reassert_ms: int = HALT_REASSERT_MS
    asserted_ms: int | None = None
    """when the halt was last written; None while the hold is released"""

    @property
    def engaged(self) -> bool:
        return self.asserted_ms is not None

    def due(self, now_ms: int) -> bool:
        """The feed is stale at ``now_ms``: must the halt be written now?"""
        if self.asserted_ms is not None and 0 <= now_ms - self.asserted_ms < self.reassert_ms:
            return False
        self.asserted_ms = now_ms
        return True

    def release(self) -> None:
        self.asserted_ms = None
