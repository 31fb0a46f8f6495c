"""The simulator's HTTP face: Binance USDⓈ-M REST paths served by aiohttp over the engine.

Why real HTTP: paper mode runs python-binance unchanged — its URL building, signing, error
parsing and timeouts are exercised exactly as against Binance. The engine is touched only from
the aiohttp event loop (handlers, ``on_tick``), so it needs no locks.

Paths (what python-binance 1.0.37 calls):
- public: GET /fapi/v1/ping, /fapi/v1/time, /fapi/v1/exchangeInfo, /api/v3/ping, /api/v3/time
- SIGNED: POST/GET /fapi/v1/order, POST /fapi/v1/batchOrders (up to 5 orders), GET /fapi/v3/positionRisk
  (and v2), GET /fapi/v2/account (and v3), POST /fapi/v1/leverage, GET /fapi/v1/symbolConfig, GET /fapi/v1/userTrades,
  GET /fapi/v1/commissionRate, GET /fapi/v1/leverageBracket;
  POST /fapi/v1/algoOrder (where python-binance sends conditional orders) is logged and
  refused — it must never be reached.
- admin (unsigned, loopback only): POST /sim/price, POST /sim/adjust-position, POST /sim/faults,
  GET /sim/state, GET /sim/orders[?clientOrderId=...]

Every other path or method answers as Binance does: HTTP 404 with ``{"code": -5000, "msg": "Path ...,
Method ... is invalid"}``, so a client's error handling (python-binance raises ``BinanceAPIException``
with the code) meets the same JSON it would meet at Binance, never a plain-text page. An unexpected
failure inside the simulator is Binance's 500 ``-1000``, logged with its cause.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from aiohttp import web
from pydantic import ValidationError

from quantum_trader.contracts.messages import Tick
from quantum_trader.contracts.policy import FaultSpec, SimulatorSpec
from quantum_trader.exchange.filters import SymbolFilters, plain
from quantum_trader.exchange.simulator.auth import HttpRejection, mandatory, parse_params, verify_signed
from quantum_trader.exchange.simulator.engine import (
    INVALID_SYMBOL,
    MAINT_MARGIN_RATE,
    MAX_LEVERAGE,
    MatchingEngine,
    SimOrder,
    SimRejection,
)
from quantum_trader.exchange.simulator.faults import FaultInjector
from quantum_trader.exchange.simulator.order_log import OrderLog
from quantum_trader.exchange.simulator.ticks import TICK_GROUP, follow_ticks

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RATE_LIMITED = HttpRejection(
    429,
    -1003,
    "Too many requests; current limit of IP is 2400 requests per minute. "
    "Please use the websocket for live updates to avoid polling the API.",
)
OVERLOADED = HttpRejection(
    503, -1008, "Server is currently overloaded with other requests. Please try again in a few minutes."
)
NOT_WITH_MARKET = ("price", "timeInForce", "stopPrice", "activationPrice", "callbackRate")
MAX_NOTIONAL_VALUE = 1_000_000
"""the largest position notional at any leverage: the one leverage bracket's cap"""
UNKNOWN_ERROR = HttpRejection(500, -1000, "An unknown error occurred while processing the request.")
MAX_BATCH_ORDERS = 5
"""Binance's limit of orders per POST /fapi/v1/batchOrders"""


def invalid_path(method: str, path: str) -> HttpRejection:
    """Binance's answer to a path it does not serve, or a method a path does not take."""
    return HttpRejection(404, -5000, f"Path {path}, Method {method} is invalid")


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


def _batch_entries(raw: str | None) -> list[dict[str, str]] | None:
    """The orders of a ``batchOrders`` parameter (a JSON list of objects), values as the strings a form
    carries (``true``/``false`` for booleans); None when it is absent or not such a list."""
    if raw is None:
        return None
    try:
        decoded = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(decoded, list) or not all(isinstance(order, dict) for order in decoded):
        return None
    orders = []
    for order in decoded:
        entry = {}
        for name, value in order.items():
            if isinstance(value, bool):
                entry[str(name)] = "true" if value else "false"
            elif isinstance(value, str | int | float):
                entry[str(name)] = str(value)
            else:
                return None
        orders.append(entry)
    return orders


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "msg": message}, status=status)


ADMIN_INPUT_ERRORS = (ValueError, KeyError, TypeError, ValidationError, SimRejection, ArithmeticError, RecursionError)
"""what bad admin input raises, answered 400 (never the 500 of a bug): ArithmeticError for a time of 1e400
(OverflowError) or decimal's InvalidOperation, RecursionError for a body nested too deeply to parse"""


def _rejection_response(error: SimRejection) -> web.Response:
    return _error(error.status if isinstance(error, HttpRejection) else 400, error.code, error.message)


async def _raw(request: web.Request) -> tuple[str, str]:
    body = await request.text() if request.body_exists else ""
    return request.rel_url.raw_query_string, body


class SimulatorApp:
    """One simulated account behind the Binance REST API.

    ``credentials`` maps API key -> secret (the keys the simulator accepts). ``clock`` gives the
    server's wall time in ms (request timestamps are checked against it); fills use market time.
    """

    def __init__(
        self,
        settings: SimulatorSpec,
        *,
        symbols: Sequence[str],
        credentials: Mapping[str, str],
        order_log_path: Path | str | None = None,
        filters: Mapping[str, SymbolFilters] | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        admin_loopback_only: bool = True,
    ) -> None:
        if not credentials:
            raise ValueError("the simulator needs at least one API key and secret")
        self.settings = settings
        self.engine = MatchingEngine(settings, symbols, filters)
        self.faults = FaultInjector(settings.faults, settings.seed)
        self.order_log = OrderLog(order_log_path)
        self._credentials = dict(credentials)
        self._clock = clock
        self._admin_loopback_only = admin_loopback_only
        self._withholding: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"SimulatorApp(symbols={list(self.engine.symbols)}, keys={len(self._credentials)})"

    def on_tick(self, tick: Tick) -> bool:
        """Apply a ``market.tick`` message: the symbol's last price and market time."""
        return self.engine.on_tick(tick.symbol, tick.price, tick.event_time)

    def close(self) -> None:
        self.order_log.close()

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.on_shutdown.append(self._release_withheld)
        add = app.router.add_route
        add("GET", "/fapi/v1/ping", self._ping)
        add("GET", "/api/v3/ping", self._ping)
        add("GET", "/fapi/v1/time", self._time)
        add("GET", "/api/v3/time", self._time)
        add("GET", "/fapi/v1/exchangeInfo", self._exchange_info)
        add("POST", "/fapi/v1/order", self._new_order)
        add("POST", "/fapi/v1/algoOrder", self._new_order)
        add("POST", "/fapi/v1/batchOrders", self._batch_orders)
        add("GET", "/fapi/v1/order", self._signed(self._query_order, order=True))
        add("GET", "/fapi/v2/positionRisk", self._signed(self._position_risk_v2))
        add("GET", "/fapi/v3/positionRisk", self._signed(self._position_risk_v3))
        add("GET", "/fapi/v2/account", self._signed(self._account))
        add("GET", "/fapi/v3/account", self._signed(self._account))
        add("POST", "/fapi/v1/leverage", self._signed(self._leverage))
        add("GET", "/fapi/v1/symbolConfig", self._signed(self._symbol_config))
        add("GET", "/fapi/v1/userTrades", self._signed(self._user_trades))
        add("GET", "/fapi/v1/commissionRate", self._signed(self._commission_rate))
        add("GET", "/fapi/v1/leverageBracket", self._signed(self._leverage_bracket))
        add("POST", "/sim/price", self._admin(self._set_price))
        add("POST", "/sim/adjust-position", self._admin(self._adjust_position))
        add("POST", "/sim/faults", self._admin(self._set_faults))
        add("GET", "/sim/state", self._admin(self._state))
        add("GET", "/sim/orders", self._admin(self._orders))
        return app

    async def _release_withheld(self, app: web.Application) -> None:
        """On shutdown, end handlers still withholding an answer (their clients gave up long ago)."""
        tasks = list(self._withholding)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- plumbing ----------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(("/fapi/", "/api/")) and self.faults.latency_seconds > 0:
            await asyncio.sleep(self.faults.latency_seconds)
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            return _rejection_response(invalid_path(request.method, request.path))
        except web.HTTPException:
            raise
        except Exception:
            log.exception("simulator failed on %s %s", request.method, request.path)
            return _rejection_response(UNKNOWN_ERROR)

    def _injected_fault(self, *, order: bool) -> tuple[str, HttpRejection] | None:
        if self.faults.rate_limited():
            return "rate_limit", RATE_LIMITED
        if order and self.faults.server_error():
            return "error", OVERLOADED
        return None

    def _signed(self, handler: Callable[[dict[str, str]], Any], *, order: bool = False) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            raw_query, raw_body = await _raw(request)
            fault = self._injected_fault(order=order)
            if fault is not None:
                return _rejection_response(fault[1])
            try:
                params = verify_signed(
                    raw_query, raw_body, request.headers.get("X-MBX-APIKEY"), self._credentials, self._clock()
                )
                return web.json_response(handler(params))
            except SimRejection as error:
                return _rejection_response(error)

        return wrapped

    def _admin(self, handler: Callable[[web.Request], Awaitable[Any]]) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            remote = request.remote or ""
            if self._admin_loopback_only and not (remote.startswith("127.") or remote == "::1"):
                return web.json_response({"error": "admin endpoints answer loopback only"}, status=403)
            try:
                return web.json_response(await handler(request))
            except ADMIN_INPUT_ERRORS as error:
                return web.json_response({"error": f"{type(error).__name__}: {error}"[:1000]}, status=400)

        return wrapped

    # ---- public ------------------------------------------------------------------------------

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self._clock()})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.engine.exchange_info(self._clock()))

    # ---- orders ------------------------------------------------------------------------------

    async def _new_order(self, request: web.Request) -> web.StreamResponse:
        """Place an order: log every request, inject faults, verify, fill, maybe withhold."""
        raw_query, raw_body = await _raw(request)
        parsed: dict[str, str] | None
        try:
            parsed = parse_params(raw_query, raw_body)  # once: verify_signed reuses it
        except HttpRejection:
            parsed = None  # verify_signed reads them again and refuses them in Binance's order of checks
        params = parsed or {}
        now = self._clock()

        def record(**fields: Any) -> None:
            self.order_log.record(time=now, method=request.method, path=request.path, params=params, **fields)

        fault = self._injected_fault(order=True)
        if fault is not None:
            kind, error = fault
            record(outcome="fault", fault=kind, status=error.status, code=error.code, msg=error.message)
            await self.order_log.written()
            return _rejection_response(error)
        try:
            verified = verify_signed(
                raw_query, raw_body, request.headers.get("X-MBX-APIKEY"), self._credentials, now, parsed
            )
            if request.path.endswith("/algoOrder"):
                raise SimRejection(-1116, "Invalid orderType.")
            order = self._place(verified)
        except SimRejection as error:
            status = error.status if isinstance(error, HttpRejection) else 400
            record(outcome="rejected", status=status, code=error.code, msg=error.message)
            await self.order_log.written()
            return _rejection_response(error)
        body = order.to_binance()
        withhold = self.faults.withhold_answer()
        record(outcome="accepted", fault="timeout" if withhold else None, status=200, order=body)
        await self.order_log.written()
        if withhold:
            log.info(
                "withholding the answer to order %s for %ss",
                order.client_order_id,
                self.faults.spec.timeout_seconds,
            )
            await self._withhold()
        return web.json_response(body)

    async def _batch_orders(self, request: web.Request) -> web.StreamResponse:
        """POST /fapi/v1/batchOrders: up to ``MAX_BATCH_ORDERS`` orders in one signed request.

        As Binance: ``batchOrders`` is a JSON list of order objects (the parameters of
        ``POST /fapi/v1/order``, values as strings); the request is signed once; the answer lists, in
        the same order, each placed order or that order's own ``{"code", "msg"}`` — one order's
        refusal does not refuse the others. A request refused as a whole (signature, timestamp, a
        malformed or too long list, an injected fault) answers one error, and logs every order it
        carried with that outcome. Each order is one entry of the order log.
        """
        raw_query, raw_body = await _raw(request)
        parsed: dict[str, str] | None
        try:
            parsed = parse_params(raw_query, raw_body)
        except HttpRejection:
            parsed = None
        now = self._clock()
        carried = _batch_entries((parsed or {}).get("batchOrders"))

        def record_all(orders: Sequence[Mapping[str, str]], **fields: Any) -> None:
            for order in orders or ({},):
                self.order_log.record(time=now, method="POST", path=request.path, params=dict(order), **fields)

        fault = self._injected_fault(order=True)
        if fault is not None:
            kind, error = fault
            record_all(
                carried or [], outcome="fault", fault=kind, status=error.status, code=error.code, msg=error.message
            )
            await self.order_log.written()
            return _rejection_response(error)
        try:
            verified = verify_signed(
                raw_query, raw_body, request.headers.get("X-MBX-APIKEY"), self._credentials, now, parsed
            )
            orders = _batch_entries(verified.get("batchOrders"))
            if orders is None:
                if "batchOrders" not in verified:
                    raise mandatory("batchOrders")
                raise HttpRejection(400, -1130, "Data sent for parameter 'batchOrders' is not valid.")
            if not 1 <= len(orders) <= MAX_BATCH_ORDERS:
                raise HttpRejection(
                    400, -1130, f"Data sent for parameter 'batchOrders' is not valid (1 to {MAX_BATCH_ORDERS} orders)."
                )
        except SimRejection as error:
            status = error.status if isinstance(error, HttpRejection) else 400
            record_all(carried or [], outcome="rejected", status=status, code=error.code, msg=error.message)
            await self.order_log.written()
            return _rejection_response(error)
        answers: list[dict[str, Any]] = []
        placed = 0
        outcomes: list[tuple[Mapping[str, str], dict[str, Any] | SimRejection]] = []
        for order_params in orders:
            try:
                body = self._place(dict(order_params)).to_binance()
            except SimRejection as error:
                outcomes.append((order_params, error))
                answers.append({"code": error.code, "msg": error.message})
                continue
            placed += 1
            outcomes.append((order_params, body))
            answers.append(body)
        # decided before the log is written, so a withheld batch's fills are logged as "timeout" as a single
        # order's are (what a test that kills between a fill and its answer looks for)
        withhold = placed > 0 and self.faults.withhold_answer()
        for order_params, outcome in outcomes:
            if isinstance(outcome, SimRejection):
                status = outcome.status if isinstance(outcome, HttpRejection) else 400
                record_all([order_params], outcome="rejected", status=status, code=outcome.code, msg=outcome.message)
            else:
                fault = "timeout" if withhold else None
                record_all([order_params], outcome="accepted", fault=fault, status=200, order=outcome)
        await self.order_log.written()
        if withhold:
            log.info(
                "withholding the answer to a batch of %d orders for %ss", len(orders), self.faults.spec.timeout_seconds
            )
            await self._withhold()
        return web.json_response(answers)

    async def _withhold(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._withholding.add(task)
        try:
            await asyncio.sleep(self.faults.spec.timeout_seconds)
        finally:
            self._withholding.discard(task)

    def _place(self, params: dict[str, str]) -> SimOrder:
        symbol = params.get("symbol") or ""
        side = params.get("side") or ""
        order_type = params.get("type") or ""
        quantity = params.get("quantity") or ""
        for name, value in (("symbol", symbol), ("side", side), ("type", order_type), ("quantity", quantity)):
            if not value:
                raise mandatory(name)
        if order_type != "MARKET":
            raise SimRejection(-1116, "Invalid orderType.")
        for name in (*NOT_WITH_MARKET, "closePosition"):
            if name in params:
                raise SimRejection(-1106, f"Parameter '{name}' sent when not required.")
        if params.get("positionSide", "BOTH") != "BOTH":
            raise SimRejection(-4061, "Order's position side does not match user's setting.")
        reduce_only = params.get("reduceOnly", "false").lower()
        if reduce_only not in ("true", "false"):
            raise mandatory("reduceOnly")
        return self.engine.submit_market(symbol, side, quantity, params.get("newClientOrderId"), reduce_only == "true")

    def _query_order(self, params: dict[str, str]) -> dict[str, Any]:
        symbol = params.get("symbol") or ""
        if not symbol:
            raise mandatory("symbol")
        client_id = params.get("origClientOrderId") or None
        order_id = params.get("orderId") or None
        if client_id is None and order_id is None:
            raise SimRejection(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        if order_id is not None and not order_id.isdigit():
            raise mandatory("orderId")
        found = self.engine.order(symbol, client_id, int(order_id) if order_id else None)
        return found.to_binance(query=True)

    def _user_trades(self, params: dict[str, str]) -> list[dict[str, Any]]:
        symbol = params.get("symbol") or ""
        if not symbol:
            raise mandatory("symbol")
        order_id = params.get("orderId")
        if order_id is not None and not order_id.isdigit():
            raise mandatory("orderId")
        trades = self.engine.trades(symbol, int(order_id) if order_id else None)
        return [t.to_binance() for t in trades]

    def _commission_rate(self, params: dict[str, str]) -> dict[str, str]:
        symbol = params.get("symbol") or ""
        if not symbol:
            raise mandatory("symbol")
        return self.engine.commission_rate(symbol)

    # ---- account -----------------------------------------------------------------------------

    def _position_risk_v3(self, params: dict[str, str]) -> list[dict[str, Any]]:
        return self.engine.position_risk(params.get("symbol") or None, version=3)

    def _position_risk_v2(self, params: dict[str, str]) -> list[dict[str, Any]]:
        return self.engine.position_risk(params.get("symbol") or None, version=2)

    def _account(self, params: dict[str, str]) -> dict[str, Any]:
        return self.engine.account(self._clock())

    def _leverage(self, params: dict[str, str]) -> dict[str, Any]:
        symbol = params.get("symbol") or ""
        raw = params.get("leverage") or ""
        if not symbol:
            raise mandatory("symbol")
        if not raw.isdigit():
            raise mandatory("leverage")
        applied = self.engine.set_leverage(symbol, int(raw))
        return {"leverage": applied, "maxNotionalValue": str(MAX_NOTIONAL_VALUE), "symbol": symbol}

    def _leverage_bracket(self, params: dict[str, str]) -> list[dict[str, Any]] | dict[str, Any]:
        """GET /fapi/v1/leverageBracket: one bracket per symbol, the engine's own margin rules.

        Binance answers a list for every symbol, and the bare object when ``symbol`` is sent.
        """
        symbol = params.get("symbol")
        if symbol is not None and symbol not in self.engine.symbols:
            raise SimRejection(*INVALID_SYMBOL)
        names = [symbol] if symbol is not None else list(self.engine.symbols)
        entries = [
            {
                "symbol": name,
                "brackets": [
                    {
                        "bracket": 1,
                        "initialLeverage": MAX_LEVERAGE,
                        "notionalCap": MAX_NOTIONAL_VALUE,
                        "notionalFloor": 0,
                        "maintMarginRatio": float(MAINT_MARGIN_RATE),
                        "cum": 0.0,
                    }
                ],
            }
            for name in names
        ]
        return entries[0] if symbol is not None else entries

    def _symbol_config(self, params: dict[str, str]) -> list[dict[str, Any]]:
        return self.engine.symbol_config(params.get("symbol") or None)

    # ---- admin -------------------------------------------------------------------------------

    async def _set_price(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        symbol = str(body["symbol"])
        event_time = int(body.get("time", self._clock()))
        if not self.engine.on_tick(symbol, body["price"], event_time):
            raise ValueError(f"{symbol} is not traded by this simulator")
        return {"symbol": symbol, "price": plain(self.engine.last_price(symbol) or 0), "time": event_time}

    async def _adjust_position(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        symbol = str(body["symbol"])
        self.engine.adjust_position(symbol, body["qty"], body.get("entryPrice", 0))
        return self.engine.position_risk(symbol)[0]

    async def _set_faults(self, request: web.Request) -> dict[str, Any]:
        spec = FaultSpec.model_validate(await request.json())
        self.faults.replace(spec)
        return spec.model_dump(mode="json", by_alias=True)

    async def _state(self, request: web.Request) -> dict[str, Any]:
        engine = self.engine
        return {
            "serverTime": self._clock(),
            "walletBalance": plain(engine.wallet_balance),
            "availableBalance": plain(engine.available_balance()),
            "feesPaid": plain(engine.fees_paid),
            "prices": {s: plain(p) for s in engine.symbols if (p := engine.last_price(s)) is not None},
            "positions": engine.position_risk(),
            "orders": len(engine.orders()),
            "orderRequests": len(self.order_log.entries()),
            "ignoredTicks": engine.ignored_ticks,
            "faultsInjected": dict(self.faults.injected),
        }

    async def _orders(self, request: web.Request) -> dict[str, Any]:
        return {"orders": self.order_log.entries(request.query.get("clientOrderId"))}


# ---- running it ------------------------------------------------------------------------------


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


async def start_server(
    app: SimulatorApp, host: str, port: int, *, shutdown_timeout: float = 1.0
) -> tuple[web.AppRunner, str]:
    """Listen on ``host:port`` (0: any free port); returns the runner (cleanup stops it) and base URL."""
    runner = web.AppRunner(app.application(), access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, _url(host, bound)


async def serve(
    settings: SimulatorSpec,
    host: str,
    port: int | None = None,
    *,
    symbols: Sequence[str],
    credentials: Mapping[str, str],
    order_log_path: Path | str | None = None,
    filters: Mapping[str, SymbolFilters] | None = None,
    redis_url: str | None = None,
    tick_stream: str | None = None,
    consumer: str = "exchange-sim",
    started: Callable[[str, SimulatorApp], None] | None = None,
) -> None:
    """Run the simulator until cancelled (the ``exchange-sim`` component's main coroutine).

    ``port`` defaults to ``settings.port``. With ``redis_url`` and ``tick_stream`` it also
    follows the ``market.tick`` stream in group ``exchange-sim`` and applies every tick.
    ``started`` is called with the base URL and the app once the port is open.
    """
    app = SimulatorApp(
        settings, symbols=symbols, credentials=credentials, order_log_path=order_log_path, filters=filters
    )
    runner, url = await start_server(app, host, settings.port if port is None else port)
    log.info("exchange simulator listening on %s for %s", url, ", ".join(app.engine.symbols))
    if started is not None:
        started(url, app)
    try:
        if redis_url and tick_stream:
            await follow_ticks(redis_url, tick_stream, TICK_GROUP, consumer, app.on_tick)
        else:
            await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        app.close()


class RunningSimulator(NamedTuple):
    """A simulator serving on 127.0.0.1 in a background thread (tests, benchmarks).

    Unpacks as ``base_url, stop``; the helpers talk to the admin endpoints over real HTTP.
    """

    base_url: str
    stop: Callable[[], None]

    def admin(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"{method} {path}: HTTP {error.code} {error.read().decode()}") from None

    def set_price(self, symbol: str, price: float | str, time_ms: int | None = None) -> Any:
        body: dict[str, Any] = {"symbol": symbol, "price": str(price)}
        if time_ms is not None:
            body["time"] = time_ms
        return self.admin("POST", "/sim/price", body)

    def adjust_position(self, symbol: str, qty: float | str, entry_price: float | str) -> Any:
        return self.admin(
            "POST", "/sim/adjust-position", {"symbol": symbol, "qty": str(qty), "entryPrice": str(entry_price)}
        )

    def set_faults(self, **fields: Any) -> Any:
        return self.admin("POST", "/sim/faults", fields)

    def state(self) -> dict[str, Any]:
        return self.admin("GET", "/sim/state")

    def orders(self, client_order_id: str | None = None) -> list[dict[str, Any]]:
        query = "" if client_order_id is None else "?" + urllib.parse.urlencode({"clientOrderId": client_order_id})
        return self.admin("GET", "/sim/orders" + query)["orders"]


def run_simulator_in_thread(
    settings: SimulatorSpec | None = None,
    *,
    symbols: Sequence[str] = ("BTCUSDT",),
    credentials: Mapping[str, str],
    order_log_path: Path | str | None = None,
    filters: Mapping[str, SymbolFilters] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> RunningSimulator:
    """Start a real simulator server in a daemon thread with its own event loop.

    Returns ``(base_url, stop)``; ``stop()`` closes the server and joins the thread (idempotent).
    """
    spec = settings if settings is not None else SimulatorSpec()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            app = SimulatorApp(
                spec, symbols=symbols, credentials=credentials, order_log_path=order_log_path, filters=filters
            )
            runner, url = loop.run_until_complete(start_server(app, host, port))
        except BaseException as error:
            outcome["error"] = error
            ready.set()
            loop.close()
            return
        outcome["url"] = url
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            app.close()
            loop.close()

    thread = threading.Thread(target=run, name="exchange-sim", daemon=True)
    thread.start()
    if not ready.wait(15):
        raise RuntimeError("the exchange simulator did not start within 15 s")
    if "error" in outcome:
        raise RuntimeError(f"the exchange simulator did not start: {outcome['error']}") from outcome["error"]
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(15)

    return RunningSimulator(outcome["url"], stop)
