"""The simulator's matching engine: pure state, no I/O, no wall clock.

Why pure: the same engine must give the same fills for the same ticks and orders (invariant 9),
and its rules (fees, slippage, reduceOnly, lot size, margin) are unit-tested without a server.
Every time the engine records comes from the ticks it was given or from its caller.

Model (Binance USDⓈ-M, one-way mode, cross margin, one USDT wallet):
- a MARKET order fills completely at the symbol's last price moved ``slippage_bps`` against the
  taker and rounded to the tick (up for BUY, down for SELL);
- the taker fee is charged on the filled notional and taken from the wallet;
- a position is a signed quantity with a weighted-average entry; reducing, closing or flipping
  realizes PnL into the wallet;
- rejections raise :class:`SimRejection` with Binance's code and message and leave no trace
  (Binance does not keep rejected orders either: querying one answers -2013).
Liquidation and funding are not simulated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from quantum_trader.contracts.messages import MAX_AMOUNT, MAX_EPOCH_MS, MAX_PRICE
from quantum_trader.contracts.policy import SimulatorSpec
from quantum_trader.exchange.filters import (
    Number,
    SymbolFilters,
    decimals_of,
    plain,
    to_decimal,
)
from quantum_trader.exchange.order_ids import is_valid_client_order_id

EIGHT = Decimal("0.00000001")
MAINT_MARGIN_RATE = Decimal("0.004")
DEFAULT_LEVERAGE = 20
MAX_LEVERAGE = 125
MIN_NOTIONAL = Decimal(5)
FIRST_ORDER_ID = 1_000_001
MARGIN_QUANTUM = Decimal("0.0000000001")
"""the order margin check's running totals add each position's share rounded to this (exact sums)"""


class SimRejection(Exception):
    """An order or request the exchange refuses, with Binance's error code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# The Binance errors the engine raises (code, message), named once.
INVALID_SYMBOL = (-1121, "Invalid symbol.")
INVALID_SIDE = (-1117, "Invalid side.")
ORDER_NOT_FOUND = (-2013, "Order does not exist.")
DUPLICATE_ID = (-4116, "ClientOrderId is duplicated.")
REDUCE_ONLY_REJECTED = (-2022, "ReduceOnly Order is rejected.")
MARGIN_INSUFFICIENT = (-2019, "Margin is insufficient.")
UNABLE_TO_FILL = (-2020, "Unable to fill.")
BAD_PRECISION = (-1111, "Precision is over the maximum defined for this asset.")
QTY_NOT_POSITIVE = (-4003, "Quantity less than or equal to zero.")
QTY_BELOW_MIN = (-4004, "Quantity less than min quantity.")
QTY_ABOVE_MAX = (-4005, "Quantity greater than max quantity.")
QTY_OFF_STEP = (-4023, "Qty not increased by step size.")


def reject(error: tuple[int, str]) -> SimRejection:
    return SimRejection(*error)


def derive_filters(symbol: str, price: Number, min_notional: Decimal = MIN_NOTIONAL) -> SymbolFilters:
    """Lot and price rules sized to a symbol's price magnitude, like Binance's listings.

    One step is worth 1-10 USDT (60 000 -> 0.0001, 3 000 -> 0.001, 0.5 -> 10), the tick is about
    a hundred-thousandth of the price (60 000 -> 0.1, 3 000 -> 0.01), min notional 5 USDT.
    """
    reference = to_decimal(price)
    if reference <= 0:
        raise ValueError(f"cannot derive filters for {symbol} from price {price!r}")
    magnitude = reference.adjusted()
    step = Decimal(1).scaleb(-magnitude)
    tick = Decimal(1).scaleb(magnitude - 5)
    return SymbolFilters(
        symbol=symbol,
        step_size=step,
        min_qty=step,
        max_qty=step * 10_000_000,
        market_step_size=step,
        market_min_qty=step,
        market_max_qty=step * 1_000_000,
        tick_size=tick,
        min_price=tick,
        max_price=tick * 10_000_000_000,
        min_notional=min_notional,
        quantity_precision=decimals_of(step),
        price_precision=decimals_of(tick),
    )


@dataclass(slots=True)
class SimPosition:
    """One symbol's position: signed quantity (long > 0), weighted-average entry."""

    symbol: str
    qty: Decimal = Decimal(0)
    entry_price: Decimal = Decimal(0)
    update_time: int = 0


@dataclass(frozen=True, slots=True)
class SimTrade:
    """One fill, as /fapi/v1/userTrades reports it."""

    trade_id: int
    order_id: int
    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    commission: Decimal
    realized_pnl: Decimal
    time: int

    def to_binance(self) -> dict[str, Any]:
        return {
            "buyer": self.side == "BUY",
            "commission": plain(self.commission),
            "commissionAsset": "USDT",
            "id": self.trade_id,
            "maker": False,
            "orderId": self.order_id,
            "price": plain(self.price),
            "qty": plain(self.qty),
            "quoteQty": plain((self.price * self.qty).quantize(EIGHT)),
            "realizedPnl": plain(self.realized_pnl),
            "side": self.side,
            "positionSide": "BOTH",
            "symbol": self.symbol,
            "time": self.time,
        }


@dataclass(frozen=True, slots=True)
class SimOrder:
    """A filled MARKET order. ``orig_qty`` is the filled quantity (a reduceOnly order is capped)."""

    order_id: int
    client_order_id: str
    symbol: str
    side: str
    orig_qty: Decimal
    executed_qty: Decimal
    avg_price: Decimal
    reduce_only: bool
    fee: Decimal
    realized_pnl: Decimal
    time: int
    status: str = "FILLED"

    @property
    def cum_quote(self) -> Decimal:
        return (self.avg_price * self.executed_qty).quantize(EIGHT)

    def to_binance(self, *, query: bool = False) -> dict[str, Any]:
        """The JSON of POST /fapi/v1/order (``newOrderRespType=RESULT``) or, with ``query``, GET."""
        body: dict[str, Any] = {
            "orderId": self.order_id,
            "symbol": self.symbol,
            "status": self.status,
            "clientOrderId": self.client_order_id,
            "price": "0",
            "avgPrice": plain(self.avg_price),
            "origQty": plain(self.orig_qty),
            "executedQty": plain(self.executed_qty),
            "cumQuote": plain(self.cum_quote),
            "timeInForce": "GTC",
            "type": "MARKET",
            "reduceOnly": self.reduce_only,
            "closePosition": False,
            "side": self.side,
            "positionSide": "BOTH",
            "stopPrice": "0",
            "workingType": "CONTRACT_PRICE",
            "priceProtect": False,
            "origType": "MARKET",
            "priceMatch": "NONE",
            "selfTradePreventionMode": "EXPIRE_MAKER",
            "goodTillDate": 0,
            "updateTime": self.time,
        }
        if query:
            body["time"] = self.time
        else:
            body["cumQty"] = plain(self.executed_qty)
        return body


@dataclass(slots=True)
class _Book:
    """Per-symbol market state: last price and its event time, rules, leverage."""

    price: Decimal | None = None
    time: int = 0
    filters: SymbolFilters | None = None
    leverage: int = DEFAULT_LEVERAGE


@dataclass(slots=True)
class _Fill:
    """What a fill does to a position, computed before anything changes."""

    qty: Decimal
    closing: Decimal
    opening: Decimal
    new_qty: Decimal
    new_entry: Decimal
    realized: Decimal


class MatchingEngine:
    """Wallet, positions and orders of one simulated account.

    ``symbols`` are the tradable symbols; ``filters`` optionally fixes a symbol's rules, otherwise
    they are derived from its first price (:func:`derive_filters`) and then never change, so a
    client's cached exchangeInfo stays right.
    """

    def __init__(
        self,
        settings: SimulatorSpec,
        symbols: Iterable[str],
        filters: Mapping[str, SymbolFilters] | None = None,
    ) -> None:
        names = tuple(dict.fromkeys(symbols))
        if not names:
            raise ValueError("the simulator needs at least one symbol")
        fixed = dict(filters or {})
        unknown = sorted(set(fixed) - set(names))
        if unknown:
            raise ValueError(f"filters given for symbols that are not traded: {unknown}")
        self.symbols: tuple[str, ...] = names
        self._books = {s: _Book(filters=fixed.get(s)) for s in names}
        self._positions: dict[str, SimPosition] = {}
        self._orders: dict[str, SimOrder] = {}
        self._orders_by_id: dict[int, SimOrder] = {}
        self._trades: list[SimTrade] = []
        self._wallet = to_decimal(settings.starting_balance)
        self._fees_paid = Decimal(0)
        self._taker_fee = to_decimal(settings.taker_fee)
        self._slippage = to_decimal(settings.slippage_bps) / Decimal(10_000)
        self._next_order_id = FIRST_ORDER_ID
        self._margin_parts: dict[str, tuple[Decimal, Decimal]] = {}
        """symbol -> (initial margin, unrealized PnL) of its position, as counted in the two totals below"""
        self._margin_total = Decimal(0)
        self._upnl_total = Decimal(0)
        self.ignored_ticks = 0
        """ticks of symbols the simulator does not trade"""

    # ---- market data -------------------------------------------------------------------------

    def on_tick(self, symbol: str, price: Number, event_time: int) -> bool:
        """Set ``symbol``'s last price; False (and counted) for a symbol the simulator does not trade."""
        book = self._books.get(symbol)
        if book is None:
            self.ignored_ticks += 1
            return False
        value = to_decimal(price)
        # the bounds of a Tick's price and time: ticks from the stream are validated already, the admin
        # route's are not, and one price of 1e400 would break every later answer (state, fills, margin)
        if not 0 < value <= MAX_PRICE:
            raise ValueError(f"price of {symbol} must be positive and at most {MAX_PRICE:g}, got {price!r}")
        when = int(event_time)
        if not 0 <= when <= MAX_EPOCH_MS:
            raise ValueError(f"time of {symbol}'s price must be epoch ms, got {event_time!r}")
        book.price = value
        book.time = max(book.time, when)
        if book.filters is None:
            book.filters = derive_filters(symbol, value)
        if symbol in self._positions:
            self._recount(symbol)
        return True

    def last_price(self, symbol: str) -> Decimal | None:
        return self._book(symbol).price

    def market_time(self, symbol: str | None = None) -> int:
        """Event time of the symbol's last tick, or of the latest tick of any symbol."""
        if symbol is not None:
            return self._book(symbol).time
        return max(b.time for b in self._books.values())

    def symbol_filters(self, symbol: str) -> SymbolFilters | None:
        """The symbol's rules, or None before its first price when none were configured."""
        return self._book(symbol).filters

    # ---- leverage ----------------------------------------------------------------------------

    def leverage(self, symbol: str) -> int:
        return self._book(symbol).leverage

    def set_leverage(self, symbol: str, leverage: int) -> int:
        book = self._book(symbol)
        if not 1 <= int(leverage) <= MAX_LEVERAGE:
            raise SimRejection(-4028, f"Leverage {leverage} is not valid")
        book.leverage = int(leverage)
        if symbol in self._positions:
            self._recount(symbol)
        return book.leverage

    def symbol_config(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """GET /fapi/v1/symbolConfig: margin type and leverage of every traded symbol (or of ``symbol``)."""
        names = [symbol] if symbol is not None else list(self.symbols)
        return [
            {
                "symbol": name,
                "marginType": "CROSSED",
                "isAutoAddMargin": "false",
                "leverage": self._book(name).leverage,
                "maxNotionalValue": "1000000",
            }
            for name in names
        ]

    # ---- fees --------------------------------------------------------------------------------

    def commission_rate(self, symbol: str) -> dict[str, str]:
        """GET /fapi/v1/commissionRate: the account's rates for ``symbol``.

        Every fill here is a taker fill (MARKET orders only) and the simulator has one fee rate,
        ``SimulatorSpec.taker_fee``; it is reported as both the maker and the taker rate.
        """
        self._book(symbol)
        rate = plain(self._taker_fee)
        return {"symbol": symbol, "makerCommissionRate": rate, "takerCommissionRate": rate}

    # ---- orders ------------------------------------------------------------------------------

    def submit_market(
        self,
        symbol: str,
        side: str,
        qty: Number,
        client_order_id: str | None = None,
        reduce_only: bool = False,
        leverage: int | None = None,
        time: int | None = None,
    ) -> SimOrder:
        """Fill a MARKET order completely or raise :class:`SimRejection`; nothing changes on rejection.

        ``leverage`` overrides the symbol's leverage for this order's margin check only; ``time``
        defaults to the symbol's last tick time (market time, so replays are reproducible).
        """
        book = self._book(symbol)
        if side not in ("BUY", "SELL"):
            raise reject(INVALID_SIDE)
        order_id = self._next_order_id
        coid = client_order_id if client_order_id else f"sim-{order_id}"
        if not is_valid_client_order_id(coid):
            raise SimRejection(
                -1100,
                "Illegal characters found in parameter 'newClientOrderId'; "
                "legal range is '^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.",
            )
        if coid in self._orders:
            raise reject(DUPLICATE_ID)
        if book.price is None or book.filters is None:
            raise reject(UNABLE_TO_FILL)
        filters = book.filters
        amount = self._checked_qty(qty, filters)
        position = self._positions.get(symbol) or SimPosition(symbol)
        sign = Decimal(1) if side == "BUY" else Decimal(-1)
        if reduce_only:
            if position.qty == 0 or position.qty * sign > 0:
                raise reject(REDUCE_ONLY_REJECTED)
            amount = min(amount, abs(position.qty))
        price = self._fill_price(book.price, side, filters)
        fill = _plan_fill(position, amount * sign, price)
        if not reduce_only and amount * price < filters.min_notional:
            raise SimRejection(
                -4164,
                f"Order's notional must be no smaller than {plain(filters.min_notional)} "
                "(unless you choose reduce only).",
            )
        if fill.opening > 0:
            lev = Decimal(leverage if leverage is not None else book.leverage)
            required = fill.opening * price / lev
            released = fill.closing * book.price / Decimal(book.leverage)
            if required > self._available_for_orders() + released + fill.realized:
                raise reject(MARGIN_INSUFFICIENT)
        return self._apply(book, position, fill, side, coid, reduce_only, price, time)

    def order(self, symbol: str, client_order_id: str | None = None, order_id: int | None = None) -> SimOrder:
        """An order of ``symbol`` by client id or order id; -2013 when there is none."""
        self._book(symbol)
        found = None
        if client_order_id:
            found = self._orders.get(client_order_id)
        elif order_id is not None:
            found = self._orders_by_id.get(int(order_id))
        if found is None or found.symbol != symbol:
            raise reject(ORDER_NOT_FOUND)
        return found

    def orders(self) -> list[SimOrder]:
        return list(self._orders.values())

    def trades(self, symbol: str, order_id: int | None = None) -> list[SimTrade]:
        self._book(symbol)
        return [t for t in self._trades if t.symbol == symbol and (order_id is None or t.order_id == order_id)]

    # ---- positions and account ---------------------------------------------------------------

    def position(self, symbol: str) -> SimPosition:
        self._book(symbol)
        found = self._positions.get(symbol)
        return SimPosition(symbol) if found is None else replace(found)

    def adjust_position(self, symbol: str, qty: Number, entry_price: Number, time: int | None = None) -> None:
        """Set a position behind the system's back (tests of the reconciler): no fee, no PnL."""
        book = self._book(symbol)
        amount = to_decimal(qty)
        entry = to_decimal(entry_price)
        if abs(amount) > MAX_AMOUNT or not 0 <= entry <= MAX_PRICE:
            raise ValueError(f"a position of at most {MAX_AMOUNT:g} at a price of at most {MAX_PRICE:g}")
        if amount != 0 and entry <= 0:
            raise ValueError("an open position needs a positive entry price")
        when = book.time if time is None else int(time)
        if amount == 0:
            self._positions.pop(symbol, None)
        else:
            self._positions[symbol] = SimPosition(symbol, amount, entry, when)
        self._recount(symbol)

    @property
    def wallet_balance(self) -> Decimal:
        return self._wallet

    @property
    def fees_paid(self) -> Decimal:
        return self._fees_paid

    def mark_price(self, symbol: str) -> Decimal:
        book = self._book(symbol)
        if book.price is not None:
            return book.price
        return self._positions[symbol].entry_price if symbol in self._positions else Decimal(0)

    def unrealized_pnl(self, symbol: str | None = None) -> Decimal:
        names = [symbol] if symbol is not None else list(self._positions)
        total = Decimal(0)
        for name in names:
            p = self._positions.get(name)
            if p is not None:
                total += p.qty * (self.mark_price(name) - p.entry_price)
        return total

    def initial_margin(self, symbol: str | None = None) -> Decimal:
        names = [symbol] if symbol is not None else list(self._positions)
        total = Decimal(0)
        for name in names:
            p = self._positions.get(name)
            if p is not None:
                total += abs(p.qty) * self.mark_price(name) / Decimal(self._books[name].leverage)
        return total

    def margin_balance(self) -> Decimal:
        return self._wallet + self.unrealized_pnl()

    def available_balance(self) -> Decimal:
        """Cross margin: margin balance minus the initial margin of open positions (never below 0)."""
        return max(Decimal(0), self.margin_balance() - self.initial_margin())

    # ---- Binance JSON views ------------------------------------------------------------------

    def exchange_info(self, server_time: int) -> dict[str, Any]:
        """GET /fapi/v1/exchangeInfo: symbols whose rules are known (configured or priced)."""
        return {
            "timezone": "UTC",
            "serverTime": server_time,
            "futuresType": "U_MARGINED",
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
            ],
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
            "symbols": [b.filters.to_exchange_info() for b in self._books.values() if b.filters is not None],
        }

    def position_risk(self, symbol: str | None = None, *, version: int = 3) -> list[dict[str, Any]]:
        """GET /fapi/v3/positionRisk (open positions; a named symbol even when flat) or v2 (all)."""
        if symbol is not None:
            names = [symbol]
            self._book(symbol)
        elif version >= 3:
            names = [s for s in self.symbols if s in self._positions]
        else:
            names = list(self.symbols)
        return [self._position_entry(name, version) for name in names]

    def account(self, update_time: int) -> dict[str, Any]:
        """GET /fapi/v2/account: totals, the USDT asset and every symbol's position."""
        wallet = self._wallet.quantize(EIGHT)
        upnl = self.unrealized_pnl().quantize(EIGHT)
        margin = self.initial_margin().quantize(EIGHT)
        maint = self._maint_margin().quantize(EIGHT)
        available = self.available_balance().quantize(EIGHT)
        balance = (wallet + upnl).quantize(EIGHT)
        totals = {
            "totalInitialMargin": plain(margin),
            "totalMaintMargin": plain(maint),
            "totalWalletBalance": plain(wallet),
            "totalUnrealizedProfit": plain(upnl),
            "totalMarginBalance": plain(balance),
            "totalPositionInitialMargin": plain(margin),
            "totalOpenOrderInitialMargin": "0",
            "totalCrossWalletBalance": plain(wallet),
            "totalCrossUnPnl": plain(upnl),
            "availableBalance": plain(available),
            "maxWithdrawAmount": plain(available),
        }
        asset = {
            "asset": "USDT",
            "walletBalance": plain(wallet),
            "unrealizedProfit": plain(upnl),
            "marginBalance": plain(balance),
            "maintMargin": plain(maint),
            "initialMargin": plain(margin),
            "positionInitialMargin": plain(margin),
            "openOrderInitialMargin": "0",
            "crossWalletBalance": plain(wallet),
            "crossUnPnl": plain(upnl),
            "availableBalance": plain(available),
            "maxWithdrawAmount": plain(available),
            "marginAvailable": True,
            "updateTime": update_time,
        }
        positions = []
        for name in self.symbols:
            p = self._positions.get(name) or SimPosition(name)
            positions.append(
                {
                    "symbol": name,
                    "initialMargin": plain(self.initial_margin(name).quantize(EIGHT)),
                    "maintMargin": plain(self._maint_margin(name).quantize(EIGHT)),
                    "unrealizedProfit": plain(self.unrealized_pnl(name).quantize(EIGHT)),
                    "positionInitialMargin": plain(self.initial_margin(name).quantize(EIGHT)),
                    "openOrderInitialMargin": "0",
                    "leverage": str(self._books[name].leverage),
                    "isolated": False,
                    "entryPrice": plain(p.entry_price.quantize(EIGHT)),
                    "breakEvenPrice": plain(p.entry_price.quantize(EIGHT)),
                    "maxNotional": "1000000",
                    "bidNotional": "0",
                    "askNotional": "0",
                    "positionSide": "BOTH",
                    "positionAmt": plain(p.qty),
                    "updateTime": p.update_time,
                }
            )
        return {
            "feeTier": 0,
            "feeBurn": False,
            "canTrade": True,
            "canDeposit": True,
            "canWithdraw": True,
            "updateTime": 0,
            "multiAssetsMargin": False,
            "tradeGroupId": -1,
            **totals,
            "assets": [asset],
            "positions": positions,
        }

    # ---- internals ---------------------------------------------------------------------------

    def _book(self, symbol: str) -> _Book:
        book = self._books.get(symbol)
        if book is None:
            raise reject(INVALID_SYMBOL)
        return book

    @staticmethod
    def _checked_qty(qty: Number, filters: SymbolFilters) -> Decimal:
        try:
            amount = to_decimal(qty)
        except (ValueError, TypeError):
            raise SimRejection(
                -1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed."
            ) from None
        if amount <= 0:
            raise reject(QTY_NOT_POSITIVE)
        exponent = amount.normalize().as_tuple().exponent
        assert isinstance(exponent, int)
        if -exponent > filters.quantity_precision:
            raise reject(BAD_PRECISION)
        # above the maximum before the step: the step's remainder of a quantity with more digits than the
        # decimal context holds (1e400, or thousands of digits) raises InvalidOperation instead of answering
        if amount > filters.order_max_qty:
            raise reject(QTY_ABOVE_MAX)
        if amount % filters.order_step != 0:
            raise reject(QTY_OFF_STEP)
        if amount < filters.order_min_qty:
            raise reject(QTY_BELOW_MIN)
        return amount

    def _fill_price(self, last: Decimal, side: str, filters: SymbolFilters) -> Decimal:
        if side == "BUY":
            moved = last * (1 + self._slippage)
            steps = (moved / filters.tick_size).to_integral_value(rounding=ROUND_CEILING)
        else:
            moved = last * (1 - self._slippage)
            steps = (moved / filters.tick_size).to_integral_value(rounding=ROUND_FLOOR)
        price = (steps * filters.tick_size).quantize(filters.tick_size)
        return price if price > 0 else filters.tick_size

    def _apply(
        self,
        book: _Book,
        position: SimPosition,
        fill: _Fill,
        side: str,
        coid: str,
        reduce_only: bool,
        price: Decimal,
        time: int | None,
    ) -> SimOrder:
        when = book.time if time is None else int(time)
        fee = (fill.qty * price * self._taker_fee).quantize(EIGHT)
        realized = fill.realized.quantize(EIGHT)
        self._wallet += realized - fee
        self._fees_paid += fee
        if fill.new_qty == 0:
            self._positions.pop(position.symbol, None)
        else:
            self._positions[position.symbol] = SimPosition(position.symbol, fill.new_qty, fill.new_entry, when)
        self._recount(position.symbol)
        order_id = self._next_order_id
        self._next_order_id += 1
        order = SimOrder(
            order_id=order_id,
            client_order_id=coid,
            symbol=position.symbol,
            side=side,
            orig_qty=fill.qty,
            executed_qty=fill.qty,
            avg_price=price,
            reduce_only=reduce_only,
            fee=fee,
            realized_pnl=realized,
            time=when,
        )
        self._orders[coid] = order
        self._orders_by_id[order_id] = order
        self._trades.append(
            SimTrade(len(self._trades) + 1, order_id, position.symbol, side, price, fill.qty, fee, realized, when)
        )
        return order

    def _recount(self, symbol: str) -> None:
        """Update the margin check's running totals after ``symbol``'s position, mark or leverage changed.

        O(1) per fill and tick, where summing every position on every order was O(positions).
        """
        old_margin, old_upnl = self._margin_parts.pop(symbol, (Decimal(0), Decimal(0)))
        new_margin = new_upnl = Decimal(0)
        position = self._positions.get(symbol)
        if position is not None:
            mark = self.mark_price(symbol)
            lev = Decimal(self._books[symbol].leverage)
            new_margin = (abs(position.qty) * mark / lev).quantize(MARGIN_QUANTUM)
            new_upnl = (position.qty * (mark - position.entry_price)).quantize(MARGIN_QUANTUM)
            self._margin_parts[symbol] = (new_margin, new_upnl)
        self._margin_total += new_margin - old_margin
        self._upnl_total += new_upnl - old_upnl

    def _available_for_orders(self) -> Decimal:
        """:meth:`available_balance` from the running totals (each position's share rounded to 1e-10)."""
        return max(Decimal(0), self._wallet + self._upnl_total - self._margin_total)

    def _maint_margin(self, symbol: str | None = None) -> Decimal:
        names = [symbol] if symbol is not None else list(self._positions)
        total = Decimal(0)
        for name in names:
            p = self._positions.get(name)
            if p is not None:
                total += abs(p.qty) * self.mark_price(name) * MAINT_MARGIN_RATE
        return total

    def _position_entry(self, symbol: str, version: int) -> dict[str, Any]:
        p = self._positions.get(symbol) or SimPosition(symbol)
        mark = self.mark_price(symbol)
        notional = (p.qty * mark).quantize(EIGHT)
        margin = self.initial_margin(symbol).quantize(EIGHT)
        common = {
            "symbol": symbol,
            "positionSide": "BOTH",
            "positionAmt": plain(p.qty),
            "entryPrice": plain(p.entry_price.quantize(EIGHT)),
            "breakEvenPrice": plain(p.entry_price.quantize(EIGHT)),
            "markPrice": plain(mark.quantize(EIGHT)),
            "unRealizedProfit": plain(self.unrealized_pnl(symbol).quantize(EIGHT)),
            "liquidationPrice": "0",
            "isolatedMargin": "0",
            "notional": plain(notional),
            "isolatedWallet": "0",
            "updateTime": p.update_time,
        }
        if version >= 3:
            return {
                **common,
                "marginAsset": "USDT",
                "initialMargin": plain(margin),
                "maintMargin": plain(self._maint_margin(symbol).quantize(EIGHT)),
                "positionInitialMargin": plain(margin),
                "openOrderInitialMargin": "0",
                "adl": 0,
                "bidNotional": "0",
                "askNotional": "0",
            }
        return {
            **common,
            "leverage": str(self._books[symbol].leverage),
            "maxNotionalValue": "1000000",
            "marginType": "cross",
            "isAutoAddMargin": "false",
        }


def _plan_fill(position: SimPosition, signed_qty: Decimal, price: Decimal) -> _Fill:
    """Split a signed fill into the part that closes the position and the part that opens/increases."""
    current = position.qty
    qty = abs(signed_qty)
    same_direction = current == 0 or current * signed_qty > 0
    closing = Decimal(0) if same_direction else min(qty, abs(current))
    opening = qty - closing
    direction = Decimal(1) if current > 0 else Decimal(-1)
    realized = closing * (price - position.entry_price) * direction if closing else Decimal(0)
    new_qty = current + signed_qty
    if new_qty == 0:
        new_entry = Decimal(0)
    elif closing == 0:
        new_entry = (abs(current) * position.entry_price + qty * price) / abs(new_qty)
    elif opening > 0:
        new_entry = price
    else:
        new_entry = position.entry_price
    return _Fill(qty, closing, opening, new_qty, new_entry, realized)


__all__ = [
    "FIRST_ORDER_ID",
    "MatchingEngine",
    "SimOrder",
    "SimPosition",
    "SimRejection",
    "SimTrade",
    "derive_filters",
]
