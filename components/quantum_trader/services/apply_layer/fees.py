"""The fee of a fill: its notional times the account's taker commission rate, read once per symbol.

The rate (``GET /fapi/v1/commissionRate``) is read for every symbol with exchange rules, ahead of its
first fill, and refreshed hourly — instead of a ``userTrades`` request per order. Against a real
exchange the reads ahead are paced (``RATE_READ_INTERVAL_SECONDS``).
"""

from __future__ import annotations

import time
from collections import deque

from quantum_trader.exchange.client import CommissionRate, ExchangeClient
from quantum_trader.exchange.errors import ExchangeError
from quantum_trader.exchange.models import OrderResult
from quantum_trader.runtime.service import Service

COMMISSION_REFRESH_SECONDS = 3600.0
START_WARM_SECONDS = 15.0
"""paper mode: the start reads the commission rates of the tradable allowlist for at most this long"""
IDLE_WARM_SECONDS = 0.02
"""time idle() may spend per call reading commission rates (the loop must keep serving approvals)"""
STALE_SCAN_SECONDS = 60.0
RATE_READ_INTERVAL_SECONDS = {"paper": 0.0, "testnet": 2.0, "live": 2.0}
"""Binance weighs GET /fapi/v1/commissionRate 20 (of 2,400 a minute per IP): against a real exchange,
reading ahead is paced to one request every 2 s (a quarter of the budget); a symbol's first fill
reads its rate at once if it is still unknown"""
DEFAULT_RATE_READ_INTERVAL_SECONDS = 2.0


def rate_read_interval(mode: str) -> float:
    """Seconds between two reads ahead against an exchange in ``mode`` (0: no pacing, as in paper mode)."""
    return RATE_READ_INTERVAL_SECONDS.get(mode, DEFAULT_RATE_READ_INTERVAL_SECONDS)


class CommissionRates:
    """The account's commission rate per symbol, and the fee of a fill from it."""

    def __init__(self, service: Service, exchange: ExchangeClient) -> None:
        self.service = service
        self.ctx = service.ctx
        self.exchange = exchange
        self.rates: dict[str, tuple[CommissionRate, float]] = {}
        """symbol -> (the account's commission rates, when read: monotonic s)"""
        self._queue: deque[str] = deque()
        """symbols whose commission rate is to be read (they have rules; no rate, or an old one)"""
        self._next_read = 0.0
        self._next_stale_scan = time.monotonic() + STALE_SCAN_SECONDS

    def queue(self, symbol: str) -> None:
        """Read ``symbol``'s rate ahead of its first fill (it has exchange rules now)."""
        self._queue.append(symbol)

    def warm(self, budget_seconds: float) -> int:
        """Read queued commission rates (symbols with rules but no rate, or an hour-old one) for at most
        ``budget_seconds``, and against a real exchange one request per ``RATE_READ_INTERVAL_SECONDS``."""
        now = time.monotonic()
        if now >= self._next_stale_scan and not self._queue:
            self._next_stale_scan = now + STALE_SCAN_SECONDS
            self._queue.extend(
                s for s, (_, read_at) in self.rates.items() if now - read_at >= COMMISSION_REFRESH_SECONDS
            )
        deadline = now + budget_seconds
        interval = rate_read_interval(self.exchange.mode)
        read = 0
        while self._queue:
            now = time.monotonic()
            if now >= deadline or now < self._next_read:
                break
            symbol = self._queue[0]
            known = self.rates.get(symbol)
            if known is not None and now - known[1] < COMMISSION_REFRESH_SECONDS:
                self._queue.popleft()  # read meanwhile (a first fill)
                continue
            self._next_read = now + interval
            try:
                self.rates[symbol] = (self.exchange.commission_rate(symbol), time.monotonic())
            except ExchangeError as error:
                self.ctx.log.warning("commission rate not read", extra={"symbol": symbol, "error": str(error)})
                break  # stays queued: the next call tries again
            self._queue.popleft()
            read += 1
        self.service.counters["commission_rates"] = len(self.rates)
        return read

    def order_fee(self, order: OrderResult) -> float:
        """The commission of a filled MARKET order: filled notional x the taker rate of the account.

        The rate is read once per symbol (a miss reads it now). If it cannot be read, the fee is
        asked of the exchange for this order (``userTrades``), as the only way left to know it.
        """
        if order.fee is not None:
            return order.fee
        known = self.rates.get(order.symbol)
        if known is None:
            try:
                known = (self.exchange.commission_rate(order.symbol), time.monotonic())
            except ExchangeError:
                self.service.count("fee_from_user_trades")
                return self.exchange.order_fee(order.symbol, order.order_id)
            self.rates[order.symbol] = known
        return known[0].taker_fee(order.executed_qty, order.avg_price)
