"""market-data: the policy's market data (kline replay or the seeded synthetic generator) onto ``market.tick``.

Publishing is exactly-once across restarts: each batch of ticks and the count published so far are
written in one MULTI, and a restart skips that many ticks of the same deterministic sequence. At
full speed it holds back while any reader lags far behind, so trimming never drops unread ticks.
In lockstep it publishes one tick at a time, each once everything the last one caused is done,
so a replay makes the same orders at the same prices however fast each component happens to be.

Live (``source: live``): Binance's USDⓈ-M kline and mark-price streams (``data.binance_feed``),
one tick per closed bar, as a replay would make it. Gaps are found from the bars' open times and
filled over REST before the next bar goes out; each bar is published once (the last published
open time per symbol is written in the MULTI with the tick, so restarts neither repeat nor skip).

The stale-data alarm holds signals, fail closed: while the feed is stale (websocket down, a
symbol silent for ``STALE_AFTER_SECONDS``, bars missing) market-data raises the automatic halt
``market-data`` in the instance's ``halts`` hash, which every entry path already obeys — the
governor rejects ENTRY plans (``killswitch_entries``) and apply-layer refuses them — while exits
stay possible. It reports not ready and counts ``stale`` in its heartbeat. The halt is cleared
only once the feed is fresh again and every stream has drained the backfilled bars, so no
signal computed from catch-up bars can open a position.
"""

from __future__ import annotations

import itertools
import os
import queue
import time
from collections.abc import Iterator

from quantum_trader.bus.codec import text, text_dict
from quantum_trader.bus.drain import groups_by_stream, groups_drained
from quantum_trader.bus.publish import publish
from quantum_trader.bus.step import Output
from quantum_trader.contracts.messages import Tick
from quantum_trader.contracts.policy import MarketDataSource
from quantum_trader.contracts.registry import COMPONENTS, STREAMS
from quantum_trader.data.binance_feed import KlinesRest, StreamFeed
from quantum_trader.data.klines import Kline, interval_ms
from quantum_trader.data.live import (
    Action,
    FeedDown,
    KlineEvent,
    LiveDataError,
    StaleHold,
    interval_name,
    next_step,
    select_backfill,
    stale_reasons,
    stream_names,
)
from quantum_trader.data.replay import Pacer, kline_to_tick, tick_id
from quantum_trader.data.source import market_ticks
from quantum_trader.runtime.service import ComponentContext, Service
from quantum_trader.runtime.settings import SettingsError

BATCH = 200
LOCKSTEP_POLL_SECONDS = 0.002
"""How often lockstep checks that the last bar's effects are done. Polling every 0.5 ms was slower (98-105
against 125-133 bars/s in a 500-bar backtest): on two shared cores the checks take CPU from the components
they wait for."""


def watched_symbols(allowlist: list[str], held: list[str]) -> list[str]:
    """The allowlist, then any symbol with an open position that is not (or no longer) on it, sorted.

    A symbol taken off the allowlist while a position is open still needs prices: its stop-loss and
    take-profit are watched from ticks, and a stop that never sees a price never fires."""
    allowed = set(allowlist)
    return [*allowlist, *sorted({s for s in held if s not in allowed})]


class MarketData(Service):
    def __init__(self, ctx: ComponentContext) -> None:
        super().__init__(ctx)
        self.spec = ctx.policy.market_data
        self.max_len = ctx.policy.streams.max_len
        self.progress_key = ctx.keys.component_state("market-data", "progress")
        self.pacer = Pacer(self.spec.speed)
        self.readers = {
            stream: {c for c in ctx.policy.enabled_components() if stream in COMPONENTS[c].inputs} for stream in STREAMS
        }
        """stream -> the enabled components that read it (lockstep waits for each of their groups)"""
        self.ticks: Iterator[Tick] = iter(())
        self.published = 0
        self.finished = False
        self._pending: Tick | None = None

    def start(self) -> None:
        self.published = int(self.ctx.client.hget(self.progress_key, "published") or 0)
        self.ticks = itertools.islice(market_ticks(self.spec, self.symbols_to_publish()), self.published, None)
        self.counters["published"] = self.published
        self.ctx.log.info("market data starting", extra={"source": self.spec.source.value, "resume_at": self.published})

    def symbols_to_publish(self) -> list[str]:
        held = [text(s) for s in self.ctx.client.hkeys(self.ctx.keys.open_positions)]
        return watched_symbols(list(self.ctx.policy.symbols), held)

    def ready(self) -> tuple[bool, str]:
        return True, "finished" if self.finished else f"{self.published} ticks published"

    def readers_lag(self) -> int:
        """The largest lag of any group on ``market.tick`` (entries not yet delivered to it)."""
        try:
            groups = self.ctx.client.xinfo_groups(self.ctx.keys.stream("market.tick"))
        except Exception:  # no stream yet: nobody lags
            return 0
        lags = [int(g["lag"]) for g in groups if g.get("lag") is not None]
        return max(lags, default=0)

    def drained(self) -> bool:
        """Every enabled reader's group exists and every group of every stream has read and acked
        everything: the last tick's effects are done."""
        for stream, groups in groups_by_stream(self.ctx.client, self.ctx.keys).items():
            names = {text(g["name"]) for g in groups}  # no stream yet: its readers must still show up
            if not self.readers[stream] <= names or not groups_drained(groups):
                return False
        return True

    def idle(self) -> float:
        if self.finished:
            return 1.0
        lockstep = self.spec.lockstep
        if lockstep and not self.drained():
            return LOCKSTEP_POLL_SECONDS
        if not lockstep and self.spec.speed == 0 and self.readers_lag() > self.max_len // 4:  # drained: no lag
            return 0.05
        batch: list[Tick] = []
        while len(batch) < (1 if self.spec.lockstep else BATCH):
            tick = self._pending or next(self.ticks, None)
            self._pending = None
            if tick is None:
                self.finished = True
                self.counters["finished"] = 1
                self.ctx.log.info("market data finished", extra={"published": self.published + len(batch)})
                break
            wait = self.pacer.delay(tick.event_time)
            if wait > 0:
                self._pending = tick
                self._flush(batch)
                return min(wait, 0.5)
            batch.append(tick)
        self._flush(batch)
        if lockstep and batch:  # no reader is done with a bar this soon: a check right away would only cost
            return LOCKSTEP_POLL_SECONDS
        return 0.0

    def _flush(self, batch: list[Tick]) -> None:
        if not batch:
            return
        with self.ctx.client.pipeline(transaction=True) as pipe:
            for tick in batch:
                publish(pipe, self.ctx.keys, Output("market.tick", tick, id=tick_id(tick)), self.max_len)
            pipe.hset(self.progress_key, "published", str(self.published + len(batch)))
            pipe.execute()
        self.published += len(batch)
        self.counters["published"] = self.published
        self.counters["last_event_ms"] = self.ctx.now_ms()
        self.count("processed", len(batch))


STALE_AFTER_SECONDS = float(os.environ.get("QT_MARKET_STALE_SECONDS") or 10.0)
"""a symbol silent this long is stale; its mark price arrives every second"""
WARMUP_BARS = 200
"""bars of history fetched on the very first start, so features are warm from the first live bar"""
HALT_SOURCE = "market-data"
BACKFILL_RETRY_SECONDS = 2.0


class LiveMarketData(MarketData):
    """Binance's streams onto ``market.tick``; see the module docstring for gaps, duplicates and staleness.

    ``QT_MARKET_STREAM_URL`` and ``QT_MARKET_REST_URL`` replace Binance's base URLs (a local server in
    tests); ``marketData.barIntervalMs`` picks the kline interval (0: one minute).
    """

    def __init__(self, ctx: ComponentContext) -> None:
        super().__init__(ctx)
        try:
            self.interval = interval_name(self.spec.bar_interval_ms)
        except LiveDataError as error:  # a bad setting: one line and exit 2, never half-started
            raise SettingsError(str(error)) from None
        self.step_ms = interval_ms(self.interval)
        self.symbols = self.symbols_to_publish()
        self.state_key = ctx.keys.component_state("market-data", "live")
        self.feed = StreamFeed(
            stream_names(self.symbols, self.interval), self.interval, stream_url=os.environ.get("QT_MARKET_STREAM_URL")
        )
        self.rest = KlinesRest(
            os.environ.get("QT_MARKET_REST_URL"), timeout=ctx.policy.exchange.request_timeout_seconds
        )
        self.last_open: dict[str, int] = {}
        self.last_heard: dict[str, int] = {}
        self.held: dict[str, KlineEvent] = {}
        """per symbol: a closed bar waiting for its backfill, or the open bar that revealed a hole"""
        self.connected = False
        self.halted = False
        self.hold = StaleHold()
        self.stale_reason = "starting"
        self._retry_at = 0.0
        for name in ("stale", "reconnects", "duplicates", "gaps", "backfilled", "malformed"):
            self.counters[name] = 0

    def start(self) -> None:
        stored = text_dict(self.ctx.client.hgetall(self.state_key))
        self.last_open = {s: int(v) for s, v in stored.items() if s in self.symbols}
        self.published = int(self.ctx.client.hget(self.progress_key, "published") or 0)
        self._raise_halt("starting: no data yet", self.ctx.now_ms())
        self.feed.start()
        self.ctx.log.info(
            "live market data starting",
            extra={"interval": self.interval, "symbols": self.symbols, "resume_after": self.last_open},
        )

    def ready(self) -> tuple[bool, str]:
        if self.halted:
            return False, f"stale: {self.stale_reason}"
        return True, f"live, {self.published} bars published"

    def idle(self) -> float:
        for _ in range(1000):
            try:
                arrived, event = self.feed.events.get_nowait()
            except queue.Empty:
                break
            self._on_event(arrived, event)
        if self.held and time.monotonic() >= self._retry_at:
            for symbol in sorted(self.held):
                self._handle_kline(self.held.pop(symbol))
        self.counters["reconnects"] = self.feed.reconnects
        self.counters["malformed"] = self.feed.malformed
        self._assess()
        return 0.05

    def _on_event(self, arrived_ms: int, event: object) -> None:
        if isinstance(event, FeedDown):
            if self.connected:
                self.ctx.log.warning("market stream down", extra={"reason": event.reason})
            self.connected = False
            return
        symbol = getattr(event, "symbol", "")
        if symbol not in self.symbols:
            return
        self.connected = True
        self.last_heard[symbol] = arrived_ms
        if isinstance(event, KlineEvent):
            waiting = self.held.get(symbol)
            if waiting is not None:
                if waiting.kline.open_time > event.kline.open_time:
                    return
                # the newer event supersedes the one waiting: its backfill covers the waiting bar too
                del self.held[symbol]
            self._handle_kline(event)

    def _handle_kline(self, event: KlineEvent) -> None:
        symbol = event.symbol
        bar = event.kline
        first_start = symbol not in self.last_open
        step = next_step(self.last_open.get(symbol), bar.open_time, event.closed, self.step_ms, warmup_bars=WARMUP_BARS)
        if step.action is Action.DUPLICATE:
            self.count("duplicates")
            return
        if step.action is Action.BACKFILL:
            assert step.missing is not None
            first, last = step.missing
            if not first_start:
                self.count("gaps")
                self.ctx.log.warning(
                    "bars missing, backfilling", extra={"symbol": symbol, "first_open": first, "last_open": last}
                )
            try:
                fetched = select_backfill(self.rest.fetch(symbol, self.interval, first, last), first, last)
            except Exception as error:  # REST down too: hold the bar, stay stale, retry
                self.held[symbol] = event
                self._retry_at = time.monotonic() + BACKFILL_RETRY_SECONDS
                self.ctx.log.warning("backfill failed", extra={"symbol": symbol, "error": f"{error}"[:300]})
                return
            expected = (last - first) // self.step_ms + 1
            if not first_start and len(fetched) < expected:
                self.held[symbol] = event  # the exchange has not all of them yet: never publish across a hole
                self._retry_at = time.monotonic() + BACKFILL_RETRY_SECONDS
                self.ctx.log.warning(
                    "backfill incomplete", extra={"symbol": symbol, "expected": expected, "got": len(fetched)}
                )
                return
            self._publish_bars(fetched)
            self.count("backfilled", len(fetched))
            if first_start and not event.closed:
                self.last_open.setdefault(symbol, bar.open_time - self.step_ms)
                self.ctx.client.hset(self.state_key, symbol, str(self.last_open[symbol]))
        if event.closed and step.action is not Action.NOTHING:
            self._publish_bars([bar])

    def _publish_bars(self, bars: list[Kline]) -> None:
        """Ticks of the bars and each symbol's last open time in one MULTI: a restart resumes after them."""
        fresh = [b for b in bars if b.open_time > self.last_open.get(b.symbol, -1)]
        if not fresh:
            return
        with self.ctx.client.pipeline(transaction=True) as pipe:
            for bar in fresh:
                tick = kline_to_tick(bar)
                publish(pipe, self.ctx.keys, Output("market.tick", tick, id=tick_id(tick)), self.max_len)
            for bar in fresh:
                self.last_open[bar.symbol] = bar.open_time
            pipe.hset(self.state_key, mapping={s: str(t) for s, t in self.last_open.items()})
            pipe.hincrby(self.progress_key, "published", len(fresh))
            pipe.execute()
        self.published += len(fresh)
        self.counters["published"] = self.published
        self.counters["last_event_ms"] = self.ctx.now_ms()
        self.count("processed", len(fresh))

    def _assess(self) -> None:
        now = self.ctx.now_ms()
        reasons = stale_reasons(
            now_ms=now,
            connected=self.connected,
            symbols=self.symbols,
            last_heard_ms=self.last_heard,
            behind=self.held,
            stale_after_ms=int(STALE_AFTER_SECONDS * 1000),
        )
        if reasons:
            self._raise_halt("; ".join(reasons), now)
        elif self.halted and self.drained():
            self.ctx.client.hdel(self.ctx.keys.halts, HALT_SOURCE)
            self.halted = False
            self.hold.release()
            self.counters["stale"] = 0
            self.ctx.log.info("market data fresh: entries released")

    def _raise_halt(self, reason: str, now_ms: int) -> None:
        """Hold entries: at once when the feed goes stale, then re-asserted at most once a second
        (``StaleHold``), since a person's ``qt killswitch release`` clears halts and stale is still stale."""
        reason = f"stale market data: {reason}"[:300]
        if self.hold.due(now_ms):
            self.ctx.client.hset(self.ctx.keys.halts, HALT_SOURCE, reason)
            if not self.halted:
                self.ctx.log.warning("market data stale: entries halted", extra={"reason": reason})
        self.halted = True
        self.stale_reason = reason
        self.counters["stale"] = 1

    def close(self) -> None:
        self.feed.stop()
        self.rest.close()


def build(ctx: ComponentContext) -> Service:
    if ctx.policy.market_data.source is MarketDataSource.LIVE:
        return LiveMarketData(ctx)
    return MarketData(ctx)
