"""market-data: the policy's market data (kline replay or the seeded synthetic generator) onto ``market.tick``.

Publishing is exactly-once across restarts: each batch of ticks and the count published so far are
written in one MULTI, and a restart skips that many ticks of the same deterministic sequence. At
full speed it holds back while any reader lags far behind, so trimming never drops unread ticks.
In lockstep it publishes one tick at a time, each once everything the last one caused is done,
so a replay makes the same orders at the same prices however fast each component happens to be.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from quantum_trader.bus.publish import publish
from quantum_trader.bus.step import Output
from quantum_trader.contracts.messages import Tick
from quantum_trader.contracts.registry import COMPONENTS, STREAMS
from quantum_trader.data.replay import Pacer, tick_id
from quantum_trader.data.source import market_ticks
from quantum_trader.runtime.service import ComponentContext, Service

BATCH = 200


class MarketData(Service):
    def __init__(self, ctx: ComponentContext) -> None:
        super().__init__(ctx)
        self.spec = ctx.policy.market_data
        self.max_len = ctx.policy.streams.max_len
        self.progress_key = ctx.keys.component_state("market-data", "progress")
        self.pacer = Pacer(self.spec.speed)
        self.ticks: Iterator[Tick] = iter(())
        self.published = 0
        self.finished = False
        self._pending: Tick | None = None

    def start(self) -> None:
        self.published = int(self.ctx.client.hget(self.progress_key, "published") or 0)
        self.ticks = itertools.islice(market_ticks(self.spec, self.ctx.policy.symbols), self.published, None)
        self.counters["published"] = self.published
        self.ctx.log.info("market data starting", extra={"source": self.spec.source.value, "resume_at": self.published})

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
        expected = {
            stream: {c for c in self.ctx.policy.enabled_components() if stream in COMPONENTS[c].inputs}
            for stream in STREAMS
        }
        with self.ctx.client.pipeline(transaction=False) as pipe:
            for stream in STREAMS:
                pipe.xinfo_groups(self.ctx.keys.stream(stream))
            replies = pipe.execute(raise_on_error=False)
        for stream, groups in zip(STREAMS, replies, strict=True):
            if isinstance(groups, Exception):
                groups = []  # no stream yet: it holds nothing, but its readers must still show up
            names = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"] for g in groups}
            if not expected[stream] <= names:
                return False
            for group in groups:
                if int(group.get("pending", 0)) or int(group.get("lag") or 0):
                    return False
        return True

    def idle(self) -> float:
        if self.finished:
            return 1.0
        if self.spec.lockstep and not self.drained():
            return 0.002
        if self.spec.speed == 0 and self.readers_lag() > self.max_len // 4:
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


def build(ctx: ComponentContext) -> Service:
    return MarketData(ctx)
