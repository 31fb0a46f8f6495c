"""Binance USDⓈ-M symbol filters and the Decimal arithmetic that keeps orders inside them.

Why Decimal: ``0.1 + 0.2`` style float drift turns a valid quantity like ``0.3`` into
``0.30000000000000004``, which Binance refuses (-1111) or, after a naive floor, rounds a whole
step away. Every quantity and price here is a :class:`~decimal.Decimal` made from a string.
Pure: no I/O, used by the client, the apply layer and the simulator alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any

Number = Decimal | float | int | str


def to_decimal(value: Number) -> Decimal:
    """A Decimal from a number without float noise (``0.1`` becomes ``Decimal('0.1')``)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise TypeError("a boolean is not a quantity")
    try:
        result = Decimal(str(value)) if isinstance(value, float | int) else Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not result.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return result


def decimals_of(step: Decimal) -> int:
    """Number of decimal places a step allows: 0.001 -> 3, 1 -> 0, 10 -> 0."""
    exponent = step.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def plain(value: Decimal) -> str:
    """A Decimal as Binance writes numbers: fixed point, no exponent, no trailing zeros."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


@dataclass(frozen=True, slots=True)
class SymbolFilters:
    """The trading rules of one symbol, from its ``exchangeInfo`` entry.

    ``step_size``/``min_qty``/``max_qty`` come from LOT_SIZE; the ``market_*`` fields from
    MARKET_LOT_SIZE (which MARKET orders — the only type we send — must also satisfy).
    """

    symbol: str
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    market_step_size: Decimal
    market_min_qty: Decimal
    market_max_qty: Decimal
    tick_size: Decimal
    min_price: Decimal
    max_price: Decimal
    min_notional: Decimal
    quantity_precision: int
    price_precision: int

    @property
    def order_step(self) -> Decimal:
        """The step a MARKET quantity must be a multiple of: the coarser of both lot filters."""
        return max(self.step_size, self.market_step_size)

    @property
    def order_min_qty(self) -> Decimal:
        return max(self.min_qty, self.market_min_qty)

    @property
    def order_max_qty(self) -> Decimal:
        return min(self.max_qty, self.market_max_qty)

    @classmethod
    def from_exchange_info(cls, entry: Mapping[str, Any]) -> SymbolFilters:
        """Parse one element of ``exchangeInfo["symbols"]``; a missing required filter is an error."""
        symbol = str(entry.get("symbol", ""))
        by_type = {f.get("filterType"): f for f in entry.get("filters", ())}

        def need(kind: str) -> Mapping[str, Any]:
            found = by_type.get(kind)
            if found is None:
                raise ValueError(f"exchangeInfo for {symbol or '<no symbol>'} has no {kind} filter")
            return found

        lot = need("LOT_SIZE")
        price = need("PRICE_FILTER")
        market_lot = by_type.get("MARKET_LOT_SIZE", lot)
        notional = by_type.get("MIN_NOTIONAL", {})
        step = to_decimal(lot["stepSize"])
        tick = to_decimal(price["tickSize"])
        if step <= 0 or tick <= 0:
            raise ValueError(f"exchangeInfo for {symbol}: stepSize and tickSize must be positive")
        market_step = to_decimal(market_lot.get("stepSize", lot["stepSize"]))
        if market_step <= 0:
            market_step = step
        return cls(
            symbol=symbol,
            step_size=step,
            min_qty=to_decimal(lot["minQty"]),
            max_qty=to_decimal(lot["maxQty"]),
            market_step_size=market_step,
            market_min_qty=to_decimal(market_lot.get("minQty", lot["minQty"])),
            market_max_qty=to_decimal(market_lot.get("maxQty", lot["maxQty"])),
            tick_size=tick,
            min_price=to_decimal(price.get("minPrice", "0")),
            max_price=to_decimal(price.get("maxPrice", "0")),
            min_notional=to_decimal(notional.get("notional", notional.get("minNotional", "0"))),
            quantity_precision=int(entry.get("quantityPrecision", decimals_of(step))),
            price_precision=int(entry.get("pricePrecision", decimals_of(tick))),
        )

    def to_exchange_info(self) -> dict[str, Any]:
        """This symbol's ``exchangeInfo`` entry (the simulator serves it; round-trips the parser)."""
        return {
            "symbol": self.symbol,
            "pair": self.symbol,
            "contractType": "PERPETUAL",
            "status": "TRADING",
            "baseAsset": self.symbol.removesuffix("USDT") or self.symbol,
            "quoteAsset": "USDT",
            "marginAsset": "USDT",
            "pricePrecision": self.price_precision,
            "quantityPrecision": self.quantity_precision,
            "underlyingType": "COIN",
            "orderTypes": ["MARKET"],
            "timeInForce": ["GTC"],
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": plain(self.min_price),
                    "maxPrice": plain(self.max_price),
                    "tickSize": plain(self.tick_size),
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": plain(self.min_qty),
                    "maxQty": plain(self.max_qty),
                    "stepSize": plain(self.step_size),
                },
                {
                    "filterType": "MARKET_LOT_SIZE",
                    "minQty": plain(self.market_min_qty),
                    "maxQty": plain(self.market_max_qty),
                    "stepSize": plain(self.market_step_size),
                },
                {"filterType": "MIN_NOTIONAL", "notional": plain(self.min_notional)},
            ],
        }


def floor_to_step(value: Number, step: Decimal) -> Decimal:
    """The largest multiple of ``step`` not above ``value`` (for value >= 0)."""
    amount = to_decimal(value)
    if amount <= 0:
        return Decimal(0).quantize(step)
    steps = (amount / step).to_integral_value(rounding=ROUND_DOWN)
    return (steps * step).quantize(step)


def round_qty_down(qty: Number, filters: SymbolFilters) -> Decimal:
    """``qty`` floored to the order step: never more than asked (an exit must not over-close)."""
    return floor_to_step(qty, filters.order_step)


def qty_for_notional(notional: Number, price: Number, filters: SymbolFilters) -> Decimal:
    """The quantity worth at most ``notional`` at ``price``, floored to the order step."""
    reference = to_decimal(price)
    if reference <= 0:
        raise ValueError(f"price must be positive, got {price!r}")
    return round_qty_down(to_decimal(notional) / reference, filters)


def check_order(qty: Number, price: Number, filters: SymbolFilters, *, reduce_only: bool = False) -> str | None:
    """Why Binance would refuse a MARKET order of ``qty`` at about ``price``, or None if it passes.

    Min notional does not apply to reduce-only orders (Binance: "unless you choose reduce only").
    """
    amount = to_decimal(qty)
    if amount <= 0:
        return f"quantity {plain(amount)} must be positive"
    if amount % filters.order_step != 0:
        return f"quantity {plain(amount)} is not a multiple of the step size {plain(filters.order_step)}"
    if amount < filters.order_min_qty:
        return f"quantity {plain(amount)} is below the minimum {plain(filters.order_min_qty)}"
    if amount > filters.order_max_qty:
        return f"quantity {plain(amount)} is above the maximum {plain(filters.order_max_qty)}"
    notional = amount * to_decimal(price)
    if not reduce_only and notional < filters.min_notional:
        return f"notional {plain(notional)} USDT is below the minimum {plain(filters.min_notional)} USDT"
    return None


def format_qty(qty: Number, filters: SymbolFilters) -> str:
    """The quantity string Binance expects: on the step, no exponent, no trailing zeros.

    Refuses a quantity off the step instead of silently rounding it: the caller decides.
    """
    amount = to_decimal(qty)
    if amount % filters.order_step != 0:
        raise ValueError(f"quantity {plain(amount)} is not a multiple of the step size {plain(filters.order_step)}")
    return plain(amount.quantize(filters.order_step))


def round_price(price: Number, filters: SymbolFilters) -> Decimal:
    """``price`` floored to the tick size (for display and references; MARKET orders carry no price)."""
    return floor_to_step(price, filters.tick_size)
