"""The one gateway to Binance USDⓈ-M futures: python-binance's sync ``Client``, wrapped.

Why a wrapper:
- one place enforces invariant 5 — :meth:`ExchangeClient.send_order` refuses every order type
  but MARKET before any request and counts the refusals;
- one place maps python-binance/requests exceptions to :class:`ExchangeError` with
  ``retryable`` and ``unknown_outcome``, so callers never guess;
- one place points the library at the simulator (paper), the testnet or the live exchange —
  paper mode overrides every base URL on the instance, so no path leaves for the internet;
- the API key and secret live only inside the library client: this object's ``repr`` and
  its log lines never contain them (invariant 10).

Calls are blocking; an asyncio caller runs them with ``asyncio.to_thread``. Orders and order lookups
(the per-order requests) go out through :class:`~quantum_trader.exchange.transport.SignedTransport`:
the same signed bytes python-binance would send, on one kept-alive connection per thread, without
requests' per-request machinery, and callable from several threads at once. Everything else goes
through python-binance, under a lock because a ``requests.Session`` is not meant to be shared
between threads. Behind a proxy (from the environment) orders go through python-binance too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import requests
from binance.client import Client
from binance.exceptions import BinanceAPIException, BinanceRequestException

from quantum_trader.contracts.messages import OrderType, Side
from quantum_trader.exchange.errors import (
    INVALID_SYMBOL,
    ORDER_DOES_NOT_EXIST,
    ConditionalOrderRefused,
    ExchangeError,
    answer_error,
    disconnected_error,
    timeout_error,
    unreadable_error,
)
from quantum_trader.exchange.filters import SymbolFilters, plain, to_decimal
from quantum_trader.exchange.models import AccountInfo, ExchangePosition, MarketOrder, OrderResult
from quantum_trader.exchange.order_ids import is_valid_client_order_id
from quantum_trader.exchange.transport import SignedTransport

log = logging.getLogger(__name__)

FEE_QUANTUM = Decimal("0.00000001")
"""Binance reports commissions with 8 decimals"""

# python-binance keeps one base URL per API family as class attributes; paper mode overrides
# each on the instance with a path under the simulator's base URL.
_URL_ATTRIBUTES = {
    "API_URL": "/api",
    "API_TESTNET_URL": "/api",
    "API_DEMO_URL": "/api",
    "MARGIN_API_URL": "/sapi",
    "WEBSITE_URL": "",
    "FUTURES_URL": "/fapi",
    "FUTURES_TESTNET_URL": "/fapi",
    "FUTURES_DEMO_URL": "/fapi",
    "FUTURES_DATA_URL": "/futures/data",
    "FUTURES_DATA_TESTNET_URL": "/futures/data",
    "FUTURES_COIN_URL": "/dapi",
    "FUTURES_COIN_TESTNET_URL": "/dapi",
    "FUTURES_COIN_DEMO_URL": "/dapi",
    "FUTURES_COIN_DATA_URL": "/futures/data",
    "FUTURES_COIN_DATA_TESTNET_URL": "/futures/data",
    "OPTIONS_URL": "/eapi",
    "OPTIONS_TESTNET_URL": "/eapi",
    "PAPI_URL": "/papi",
}


MAX_BATCH_ORDERS = 5
"""Binance's limit of orders per POST /fapi/v1/batchOrders"""


@dataclass(frozen=True, slots=True)
class CommissionRate:
    """An account's commission rates for one symbol (fractions of the filled notional)."""

    symbol: str
    maker: Decimal
    taker: Decimal

    def taker_fee(self, qty: float, avg_price: float) -> float:
        """The commission of a taker fill (every MARKET order is one): notional x rate, to 8 decimals."""
        notional = Decimal(repr(float(qty))) * Decimal(repr(float(avg_price)))
        return float((notional * self.taker).quantize(FEE_QUANTUM))


class ExchangeClient:
    """Orders, order lookups, positions, account, filters and leverage on USDⓈ-M futures.

    Exactly one target: ``base_url`` (paper: the simulator), ``testnet=True`` or ``live=True`` —
    forgetting ``base_url`` can never fall through to the live exchange.
    """

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        base_url: str | None = None,
        testnet: bool = False,
        live: bool = False,
        timeout: float = 10.0,
        recv_window: int = 5000,
    ) -> None:
        if sum((base_url is not None, testnet, live)) != 1:
            raise ValueError("choose exactly one exchange: base_url=... (paper), testnet=True or live=True")
        if not api_key or not api_secret:
            raise ValueError("an API key and secret are required")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if not 0 < recv_window <= 60_000:
            raise ValueError(f"recv_window must be 1..60000 ms, got {recv_window}")
        self._base_url: str | None = None
        if base_url is not None:
            if not base_url.startswith(("http://", "https://")):
                raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
            self._base_url = base_url.rstrip("/")
        self.mode = "paper" if base_url is not None else "testnet" if testnet else "live"
        self.timeout = float(timeout)
        self._client = Client(api_key, api_secret, testnet=testnet, ping=False)
        if self._base_url is not None:
            for attribute, path in _URL_ATTRIBUTES.items():
                setattr(self._client, attribute, self._base_url + path)
        self._client.REQUEST_TIMEOUT = self.timeout
        self._client.REQUEST_RECVWINDOW = int(recv_window)
        futures_url = self._client.FUTURES_TESTNET_URL if testnet else self._client.FUTURES_URL
        _settle_environment(self._client.session, self._base_url or futures_url)
        self._orders: SignedTransport | None = None
        """the lean path for orders and order lookups (None behind a proxy: python-binance sends them)"""
        if not self._client.session.proxies:
            self._orders = SignedTransport(
                futures_url,
                api_key,
                api_secret,
                timeout=self.timeout,
                recv_window=int(recv_window),
                offset_ms=lambda: int(self._client.timestamp_offset),
                verify=self._client.session.verify,
            )
        self._lock = threading.Lock()
        self._filters: dict[str, SymbolFilters] = {}
        self._library_requests = 0
        self.refused_orders = 0
        """orders refused before any request because their type is not MARKET (invariant 5)"""
        self.refused_by_type: Counter[str] = Counter()

    @property
    def requests_sent(self) -> int:
        """HTTP requests attempted through this client (refused orders never count)."""
        return self._library_requests + (self._orders.requests if self._orders is not None else 0)

    def __repr__(self) -> str:
        target = f", base_url={self._base_url!r}" if self._base_url else ""
        return f"ExchangeClient(mode={self.mode!r}{target}, timeout={self.timeout})"

    __str__ = __repr__

    # ---- orders ------------------------------------------------------------------------------

    def send_order(self, order_type: OrderType | str, order: MarketOrder) -> OrderResult:
        """Send an order of ``order_type``: MARKET goes out, every other type is refused and counted."""
        kind = str(order_type.value if isinstance(order_type, OrderType) else order_type).upper()
        if kind != OrderType.MARKET.value:
            self.refused_orders += 1
            self.refused_by_type[kind] += 1
            log.warning(
                "refused %s order for %s (client order id %s): only MARKET orders are sent",
                kind,
                order.symbol,
                order.client_order_id,
            )
            raise ConditionalOrderRefused(kind)
        return self.market_order(*order)

    @staticmethod
    def _market_params(order: MarketOrder) -> dict[str, str]:
        """A MARKET order's parameters, checked before any request."""
        order_side = Side(order.side)
        if not is_valid_client_order_id(order.client_order_id):
            raise ValueError(f"client order id {order.client_order_id!r} is not 1-36 of [.A-Za-z0-9:/_-]")
        amount = to_decimal(order.qty)
        if amount <= 0:
            raise ValueError(f"order quantity must be positive, got {order.qty!r}")
        params = {
            "symbol": order.symbol,
            "side": order_side.value,
            "type": OrderType.MARKET.value,
            "quantity": plain(amount),
            "newClientOrderId": order.client_order_id,
            "newOrderRespType": "RESULT",
        }
        if order.reduce_only:
            params["reduceOnly"] = "true"
        return params

    def market_order(
        self,
        symbol: str,
        side: Side | str,
        qty: Decimal | float | str,
        client_order_id: str,
        reduce_only: bool = False,
    ) -> OrderResult:
        """One MARKET order with our client order id; the answer is the fill (``newOrderRespType=RESULT``).

        ``qty`` must already be on the symbol's step (see :func:`filters.round_qty_down`).
        """
        params = self._market_params(MarketOrder(symbol, side, qty, client_order_id, reduce_only))
        if self._orders is not None:
            return OrderResult.from_binance(self._orders.call("POST", "/v1/order", params))
        return OrderResult.from_binance(self._call(self._client.futures_create_order, **params))

    def market_orders(self, orders: Sequence[MarketOrder]) -> list[OrderResult | ExchangeError]:
        """Up to ``MAX_BATCH_ORDERS`` MARKET orders in one request (``POST /fapi/v1/batchOrders``).

        Each order gets its own answer, in order: its fill, or the exchange's refusal of that order
        alone (an :class:`ExchangeError`; a refusal is never retryable unless its code is a transient
        one). A failure of the request as a whole raises, as for one order: with ``unknown_outcome``
        every order of the batch must be looked up before any is sent again.
        """
        if not 1 <= len(orders) <= MAX_BATCH_ORDERS:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH_ORDERS} orders, got {len(orders)}")
        entries = [self._market_params(order) for order in orders]
        if self._orders is not None:
            raw = self._orders.batch_orders(entries)
        else:
            raw = self._call(self._client.futures_place_batch_order, batchOrders=entries)
        if not isinstance(raw, list) or len(raw) != len(entries):
            raise unreadable_error(f"Invalid Response: batchOrders answered {str(raw)[:120]}")
        results: list[OrderResult | ExchangeError] = []
        for answer in raw:
            if isinstance(answer, dict) and "code" in answer and "orderId" not in answer:
                results.append(answer_error(400, int(answer.get("code") or 0), str(answer.get("msg") or "")))
            else:
                results.append(OrderResult.from_binance(answer))
        return results

    def get_order(self, symbol: str, client_order_id: str) -> OrderResult | None:
        """The order with ``client_order_id``, or None when the exchange has none (-2013)."""
        try:
            if self._orders is not None:
                raw = self._orders.call("GET", "/v1/order", {"symbol": symbol, "origClientOrderId": client_order_id})
            else:
                raw = self._call(self._client.futures_get_order, symbol=symbol, origClientOrderId=client_order_id)
        except ExchangeError as error:
            if error.code == ORDER_DOES_NOT_EXIST:
                return None
            raise
        return OrderResult.from_binance(raw)

    def order_fee(self, symbol: str, order_id: int) -> float:
        """Commission paid for an order, summed over its fills (GET /fapi/v1/userTrades)."""
        trades = self._call(self._client.futures_account_trades, symbol=symbol, orderId=order_id)
        return float(sum(Decimal(str(t.get("commission", "0"))) for t in trades))

    def commission_rate(self, symbol: str) -> CommissionRate:
        """The account's maker and taker commission rates for ``symbol`` (GET /fapi/v1/commissionRate)."""
        raw = self._call(self._client.futures_commission_rate, symbol=symbol)
        return CommissionRate(
            symbol=str(raw.get("symbol") or symbol),
            maker=to_decimal(str(raw["makerCommissionRate"])),
            taker=to_decimal(str(raw["takerCommissionRate"])),
        )

    # ---- positions, account, rules -----------------------------------------------------------

    def positions(self, symbol: str | None = None) -> list[ExchangePosition]:
        """Positions as the exchange reports them (v3 positionRisk: open ones, or the named symbol)."""
        params = {"symbol": symbol} if symbol else {}
        raw = self._call(self._client.futures_position_information, **params)
        return [ExchangePosition.from_binance(entry) for entry in raw]

    def account(self) -> AccountInfo:
        return AccountInfo.from_binance(self._call(self._client.futures_account))

    def filters(self, symbol: str) -> SymbolFilters:
        """The symbol's lot/price/notional rules; exchangeInfo is cached and re-read on a miss."""
        found = self._filters.get(symbol)
        if found is None:
            self.refresh_filters()
            found = self._filters.get(symbol)
        if found is None:
            raise ExchangeError(INVALID_SYMBOL, f"Invalid symbol. {symbol} is not in exchangeInfo", retryable=False)
        return found

    def cached_filters(self, symbol: str) -> SymbolFilters | None:
        """The symbol's rules from the last exchangeInfo read, without a request (None: not listed then)."""
        return self._filters.get(symbol)

    def refresh_filters(self) -> None:
        info = self._call(self._client.futures_exchange_info)
        parsed = {}
        for entry in info.get("symbols", ()):
            try:
                parsed[entry["symbol"]] = SymbolFilters.from_exchange_info(entry)
            except (KeyError, ValueError) as error:
                log.warning("skipping exchangeInfo entry %s: %s", entry.get("symbol"), error)
        self._filters = parsed

    def leverages(self) -> dict[str, int]:
        """The account's current leverage of every symbol, in one request (GET /fapi/v1/symbolConfig)."""
        raw = self._call(self._client.futures_symbol_config)
        return {str(entry["symbol"]): int(entry["leverage"]) for entry in raw}

    def set_leverage(self, symbol: str, leverage: int) -> int:
        """Set the symbol's initial leverage; returns what the exchange applied."""
        raw = self._call(self._client.futures_change_leverage, symbol=symbol, leverage=int(leverage))
        return int(raw["leverage"])

    # ---- time --------------------------------------------------------------------------------

    def server_time(self) -> int:
        return int(self._call(self._client.futures_time)["serverTime"])

    def sync_time(self) -> int:
        """Align request timestamps with the exchange clock (after -1021); returns the offset in ms."""
        before = time.time() * 1000
        server = self.server_time()
        after = time.time() * 1000
        offset = int(server - (before + after) / 2)
        self._client.timestamp_offset = offset
        return offset

    @property
    def timestamp_offset(self) -> int:
        return int(self._client.timestamp_offset)

    @timestamp_offset.setter
    def timestamp_offset(self, value: int) -> None:
        self._client.timestamp_offset = int(value)

    def ping(self) -> None:
        self._call(self._client.futures_ping)

    def close(self) -> None:
        self._client.session.close()
        if self._orders is not None:
            self._orders.close()

    # ---- internals ---------------------------------------------------------------------------

    def _call(self, method: Callable[..., Any], **params: Any) -> Any:
        with self._lock:
            self._library_requests += 1
            try:
                return method(**params)
            except BinanceAPIException as error:
                raise api_error(error) from None
            except requests.Timeout:
                raise timeout_error(self.timeout) from None
            except requests.ConnectionError as error:
                raise disconnected_error(type(error).__name__) from None
            except BinanceRequestException as error:
                raise unreadable_error(error.message) from None


def _settle_environment(session: requests.Session, url: str) -> None:
    """Resolve what requests reads from the environment once, instead of on every request.

    With ``trust_env`` a session re-reads the proxy variables (and ``no_proxy``), the CA-bundle
    variables and ``~/.netrc`` on every request: about a sixth of a request's client CPU here.
    Every request of this client goes to one host, so the answer is the same each time: take it
    now (proxies and CA bundle as requests would have chosen them for ``url``) and stop looking.
    Authentication is the API key header, never netrc.
    """
    settings = session.merge_environment_settings(url, {}, None, None, None)
    session.proxies.update(settings["proxies"] or {})
    session.verify = settings["verify"]
    session.trust_env = False


def api_error(error: BinanceAPIException) -> ExchangeError:
    """Map python-binance's HTTP error answer (see :func:`errors.answer_error`)."""
    return answer_error(int(error.status_code), int(error.code or 0), str(error.message or ""))
