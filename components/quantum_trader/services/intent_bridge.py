"""intent-bridge: ``trade.intent`` -> ``apply.plan``. Sizing and side rules live in ``execution.sizing``.

Round trips per batch of intents, not per intent: the sides of the batch's positions are read in one
pipeline before the intents are planned (:class:`Prepared`), and the plans' steps go in one pipeline
(``independent_steps``). Exchange filters are parsed once per published version of a symbol's entry,
not on every re-read.
"""

from __future__ import annotations

import json
import time

from quantum_trader.bus.codec import text
from quantum_trader.bus.consumer import Delivery, Handler, Prepared, independent_steps, no_done_precheck
from quantum_trader.bus.step import Step
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.messages import PositionSide, TradeIntent
from quantum_trader.exchange.filters import SymbolFilters
from quantum_trader.execution.sizing import Skip, plan_for_intent
from quantum_trader.runtime.service import ComponentContext, Service

FILTERS_TTL_SECONDS = 60.0
FILTERS_MISSING_RETRY_SECONDS = 1.0
"""a symbol without published filters re-reads them at most this often, not on every intent of it"""
FILTERS_WAIT_SECONDS = 120.0


class FiltersNotPublished(RuntimeError):
    """apply-layer has not shared any exchange rules yet: hold the intent (it stays pending, nothing is lost)."""


class IntentBridge(Service):
    def __init__(self, ctx: ComponentContext) -> None:
        super().__init__(ctx)
        self.allowlist = frozenset(ctx.policy.symbols)
        self._filters: dict[str, SymbolFilters] = {}
        self._published: dict[str, bytes | str] = {}
        """each symbol's filters as published (raw), so an unchanged entry is not parsed again"""
        self._filters_read = 0.0
        self._sides: dict[str, tuple[bytes | str | None, bytes | str | None]] = {}
        """``position:<symbol>.side`` of the current batch's symbols, read for it in one round trip"""

    def handlers(self) -> dict[str, Handler]:
        return {"trade.intent": Prepared(self.on_intent, self.read_sides)}

    def filters(self, symbol: str) -> SymbolFilters | None:
        """The symbol's exchange filters as apply-layer published them (re-read every minute)."""
        age = time.monotonic() - self._filters_read
        if age > FILTERS_TTL_SECONDS or (symbol not in self._filters and age > FILTERS_MISSING_RETRY_SECONDS):
            raw = {text(k): v for k, v in self.ctx.client.hgetall(self.ctx.keys.exchange_filters).items()}
            self._filters = {
                name: self._filters[name]
                if self._published.get(name) == value and name in self._filters
                else SymbolFilters.from_exchange_info(json.loads(value))
                for name, value in raw.items()
            }
            self._published = raw
            self._filters_read = time.monotonic()
        return self._filters.get(symbol)

    def start(self) -> None:
        """Wait for apply-layer's exchange rules so the first intents are not skipped for want of them."""
        deadline = time.monotonic() + FILTERS_WAIT_SECONDS
        while not self.ctx.client.exists(self.ctx.keys.exchange_filters) and not self.ctx.stop.is_set():
            if time.monotonic() > deadline:
                self.ctx.log.warning("no exchange rules published yet; intents are held until there are")
                return
            self.ctx.stop.wait(0.2)

    def ready(self) -> tuple[bool, str]:
        if not self.ctx.client.exists(self.ctx.keys.exchange_filters):
            return False, "waiting for exchange rules from apply-layer"
        return True, "ready"

    def read_sides(self, envelopes: list[Envelope[TradeIntent]], deliveries: list[Delivery]) -> None:
        """The batch's positions (side, last close), in one pipeline (the handler reads each one it misses itself)."""
        self._sides = self._read_positions(sorted({e.message.symbol for e in envelopes}))

    def _read_positions(self, symbols: list[str]) -> dict[str, tuple[bytes | str | None, bytes | str | None]]:
        with self.ctx.client.pipeline(transaction=False) as pipe:
            for symbol in symbols:
                pipe.hget(self.ctx.keys.position(symbol), "side")
                pipe.hget(self.ctx.keys.cooldowns, symbol)
            answers = pipe.execute()
        return {s: (answers[2 * i], answers[2 * i + 1]) for i, s in enumerate(symbols)}

    def position(self, symbol: str) -> tuple[PositionSide, int | None]:
        """The symbol's position side and the market time of its last close (None: never closed)."""
        # read for this batch and used once, so a later intent of the symbol reads it again
        side, closed = self._sides.pop(symbol) if symbol in self._sides else self._read_positions([symbol])[symbol]
        last_close = int(text(closed)) if closed is not None and text(closed).isdigit() else None
        return (PositionSide.FLAT if side is None else PositionSide(text(side))), last_close

    @no_done_precheck  # its only effect is its step, which finds the done key and only acks
    @independent_steps  # its step only emits apply.plan, which no intent of the batch reads
    def on_intent(self, envelope: Envelope[TradeIntent], delivery: Delivery) -> Step:
        intent = envelope.message
        filters = self.filters(intent.symbol)
        if filters is None and not self._filters:
            raise FiltersNotPublished("no exchange rules published yet")
        side, last_close = self.position(intent.symbol)
        result = plan_for_intent(
            intent,
            allowlist=self.allowlist,
            limits=self.ctx.policy.risk,
            filters=filters,
            position_side=side,
            last_close=last_close,
        )
        if isinstance(result, Skip):
            self.count(f"skipped_{result.reason.split(':')[0]}")
            self.ctx.log.info("intent skipped", extra={"intent": intent.intent_id, "reason": result.reason})
            return Step()
        self.count("plans")
        return Step().emit(
            "apply.plan", result.model_copy(update={"corr": envelope.corr}), id=result.plan_id, corr=envelope.corr
        )


def build(ctx: ComponentContext) -> Service:
    return IntentBridge(ctx)
