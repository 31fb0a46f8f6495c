"""Whether apply-layer reaches the exchange, and what it knows of it: the symbols' rules and leverages.

An exchange unreachable at start, or lost later (connection refused or dropped), is waited for:
retried with backoff (``EXCHANGE_RETRY_*``), /readyz not ready, no approval read (``started`` is
False), nothing sent. apply-layer never exits for it, and an approval in hand stays pending, to be
looked up first once the exchange is back.

The rules of the allowlist are shared in ``exchange:filters`` (intent-bridge sizes with them): at
start, and again while an allowlisted symbol has none yet (the simulator lists a symbol once it has
its first price), so a symbol priced later becomes tradable without a restart. The leverage each
symbol has is read once at start (one request), so an order sets it only when its plan wants another.
"""

from __future__ import annotations

import json
import time

from quantum_trader.exchange.client import ExchangeClient
from quantum_trader.exchange.errors import ExchangeError
from quantum_trader.exchange.filters import SymbolFilters
from quantum_trader.runtime.service import Service
from quantum_trader.services.apply_layer.fees import START_WARM_SECONDS, CommissionRates, rate_read_interval

FILTERS_REPUBLISH_SECONDS = 10.0
"""while an allowlisted symbol has no exchange rules (not priced yet), look again this often; each look
that finds nothing new doubles the wait, up to ``FILTERS_REPUBLISH_MAX_SECONDS``"""
FILTERS_REPUBLISH_MAX_SECONDS = 60.0
FILTERS_MISS_SECONDS = 1.0
"""an approval for a symbol without rules re-reads exchangeInfo at most this often"""
EXCHANGE_RETRY_FIRST_SECONDS = 0.5
EXCHANGE_RETRY_MAX_SECONDS = 30.0
"""an exchange unreachable at start is tried again after 0.5 s, doubling up to 30 s"""
UNREACHABLE_MIN_WAIT_SECONDS = 0.05


class ExchangeLink:
    def __init__(self, service: Service, exchange: ExchangeClient, fees: CommissionRates) -> None:
        self.service = service
        self.ctx = service.ctx
        self.exchange = exchange
        self.fees = fees
        self.filters: dict[str, SymbolFilters] = {}
        self.leverage: dict[str, int] = {}
        self.started = False
        """the exchange's rules were read: approvals are read from then on"""
        self.problem = ""
        """why the exchange is not reached ("" while it is)"""
        self._allowlist = frozenset(service.ctx.policy.symbols)
        self._wait = EXCHANGE_RETRY_FIRST_SECONDS
        self._next_try = 0.0
        self.next_filters = time.monotonic() + FILTERS_REPUBLISH_SECONDS
        """when the rules of symbols still without any are looked for again (monotonic s)"""
        self._filters_wait = FILTERS_REPUBLISH_SECONDS
        self._last_filters_miss = 0.0

    # ---- reaching the exchange -------------------------------------------------------------------

    def reach(self) -> bool:
        """Read the exchange's rules and leverages; True once done. An unreachable exchange is not a
        reason to exit: apply-layer stays up, not ready and not reading approvals, and
        :meth:`retry_wait` tries again with backoff until the exchange answers."""
        try:
            self.publish_filters()
            self.read_leverages()
        except ExchangeError as error:
            self.problem = str(error)
            self._next_try = time.monotonic() + self._wait
            self.service.count("exchange_unreachable")
            self.ctx.log.warning(
                "exchange unreachable: waiting, no approval is read",
                extra={"error": str(error), "retry_in_s": self._wait},
            )
            self._wait = min(self._wait * 2, EXCHANGE_RETRY_MAX_SECONDS)
            return False
        if not rate_read_interval(self.exchange.mode):
            self.fees.warm(START_WARM_SECONDS)
        if self.problem:
            self.ctx.log.info("exchange reached", extra={"after": self.problem})
        self.problem = ""
        self.started = True
        return True

    def retry_wait(self, now: float) -> float | None:
        """While the exchange is not reached: try again when due; the seconds to wait, None once reached."""
        if self.started:
            return None
        if now < self._next_try or not self.reach():
            return max(UNREACHABLE_MIN_WAIT_SECONDS, self._next_try - time.monotonic())
        return None

    def lost(self, error: ExchangeError) -> None:
        """The exchange stopped answering: read no more approvals until it does (as at start), so an
        outage costs each pending approval one delivery, not one per reclaim until the DLQ."""
        self.started = False
        self.problem = str(error)
        self._wait = EXCHANGE_RETRY_FIRST_SECONDS
        self._next_try = time.monotonic() + self._wait
        self.service.count("exchange_lost")
        self.ctx.log.warning("exchange unreachable: waiting, no approval is read", extra={"error": str(error)})

    def read_leverages(self) -> None:
        """What leverage each symbol already has at the exchange (one request), so an order only sets
        it when its plan wants another. Unknown (the request failed): set before the first order."""
        try:
            current = self.exchange.leverages()
        except ExchangeError as error:
            self.ctx.log.warning("current leverages not read", extra={"error": str(error)})
            return
        self.leverage.update(current)

    # ---- the symbols' rules ----------------------------------------------------------------------

    def republish_when_due(self, now: float) -> None:
        """Look for the rules of allowlisted symbols still without any, every ``FILTERS_REPUBLISH_SECONDS``
        (doubling while nothing new is found)."""
        if now < self.next_filters:
            return
        if any(symbol not in self.filters for symbol in self.ctx.policy.symbols):
            known = len(self.filters)
            try:
                self.publish_filters()
            except ExchangeError as error:
                self.ctx.log.warning("exchange rules not re-read", extra={"error": str(error)})
            found_new = len(self.filters) > known
            self._filters_wait = (
                FILTERS_REPUBLISH_SECONDS if found_new else min(self._filters_wait * 2, FILTERS_REPUBLISH_MAX_SECONDS)
            )
        self.next_filters = now + self._filters_wait

    def publish_filters(self) -> None:
        """Read the exchange's rules for the allowlist and share them. Only symbols not published by
        this process before are written again."""
        self.exchange.refresh_filters()
        published = {}
        for symbol in self.ctx.policy.symbols:
            if symbol in self.filters:
                continue
            found = self.exchange.cached_filters(symbol)
            if found is None:
                continue
            self._learn(symbol, found)
            published[symbol] = filters_record(symbol, found)
        missing = [s for s in self.ctx.policy.symbols if s not in self.filters]
        if missing:
            self.ctx.log.warning(
                "no exchange rules for symbols yet", extra={"symbols": missing[:20], "missing": len(missing)}
            )
        if published:
            self.ctx.client.hset(self.ctx.keys.exchange_filters, mapping=published)
        self.service.counters["symbols_with_rules"] = len(self.filters)

    def symbol_filters(self, symbol: str) -> SymbolFilters | None:
        """The symbol's rules; a symbol without any is looked up again (at most every ``FILTERS_MISS_SECONDS``)."""
        found = self.filters.get(symbol)
        if found is not None:
            return found
        found = self.exchange.cached_filters(symbol)
        if found is None and time.monotonic() - self._last_filters_miss >= FILTERS_MISS_SECONDS:
            self._last_filters_miss = time.monotonic()
            try:
                found = self.exchange.filters(symbol)
            except ExchangeError:
                return None
        if found is not None:
            self._learn(symbol, found)
            if symbol in self._allowlist:
                self.ctx.client.hset(self.ctx.keys.exchange_filters, symbol, filters_record(symbol, found))
        return found

    def _learn(self, symbol: str, found: SymbolFilters) -> None:
        self.filters[symbol] = found
        self.fees.queue(symbol)


def filters_record(symbol: str, found: SymbolFilters) -> str:
    """A symbol's field of ``exchange:filters``: its rules as exchangeInfo lists them."""
    return json.dumps({"symbol": symbol, "filters": found.to_exchange_info()["filters"]})
