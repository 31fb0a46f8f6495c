"""What the exchange client returns: small immutable records parsed from Binance's JSON.

Why not the raw dicts: Binance sends numbers as strings and signs positions by ``positionAmt``;
parsing once here keeps every caller from re-deriving sides and floats differently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from quantum_trader.contracts.messages import PositionSide, Side


def _float(raw: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    value = raw.get(key)
    if value in (None, ""):
        return default
    return float(value)


class MarketOrder(NamedTuple):
    """A MARKET order to send: what :meth:`ExchangeClient.market_order` takes, one entry of a batch."""

    symbol: str
    side: Side | str
    qty: Decimal | float | str
    client_order_id: str
    reduce_only: bool = False


@dataclass(frozen=True, slots=True)
class OrderResult:
    """An order as the exchange reports it (POST or GET /fapi/v1/order).

    ``fee`` is None when the answer does not carry it (Binance's order answers never do: see
    :meth:`ExchangeClient.order_fee`).
    """

    status: str
    client_order_id: str
    order_id: int
    symbol: str
    side: Side
    orig_qty: float
    executed_qty: float
    avg_price: float
    reduce_only: bool
    update_time: int
    fee: float | None = None

    @property
    def filled(self) -> bool:
        return self.status == "FILLED"

    @classmethod
    def from_binance(cls, raw: Mapping[str, Any]) -> OrderResult:
        fee = raw.get("commission")
        return cls(
            status=str(raw["status"]),
            client_order_id=str(raw["clientOrderId"]),
            order_id=int(raw["orderId"]),
            symbol=str(raw["symbol"]),
            side=Side(raw["side"]),
            orig_qty=_float(raw, "origQty"),
            executed_qty=_float(raw, "executedQty"),
            avg_price=_float(raw, "avgPrice"),
            reduce_only=bool(raw.get("reduceOnly", False)),
            update_time=int(raw.get("updateTime", 0) or 0),
            fee=None if fee is None else float(fee),
        )


@dataclass(frozen=True, slots=True)
class ExchangePosition:
    """One symbol's position (one-way mode): side from the sign of ``positionAmt``, qty >= 0."""

    symbol: str
    side: PositionSide
    qty: float
    entry_price: float
    mark_price: float
    unrealized_pnl: float
    update_time: int = 0

    @property
    def signed_qty(self) -> float:
        return -self.qty if self.side is PositionSide.SHORT else self.qty

    @classmethod
    def from_binance(cls, raw: Mapping[str, Any]) -> ExchangePosition:
        amount = _float(raw, "positionAmt")
        side = PositionSide.LONG if amount > 0 else PositionSide.SHORT if amount < 0 else PositionSide.FLAT
        return cls(
            symbol=str(raw["symbol"]),
            side=side,
            qty=abs(amount),
            entry_price=_float(raw, "entryPrice"),
            mark_price=_float(raw, "markPrice"),
            unrealized_pnl=_float(raw, "unRealizedProfit"),
            update_time=int(raw.get("updateTime", 0) or 0),
        )


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """The USDT account totals (GET /fapi/v2/account)."""

    wallet_balance: float
    available_balance: float
    margin_balance: float
    unrealized_pnl: float
    initial_margin: float

    @classmethod
    def from_binance(cls, raw: Mapping[str, Any]) -> AccountInfo:
        return cls(
            wallet_balance=_float(raw, "totalWalletBalance"),
            available_balance=_float(raw, "availableBalance"),
            margin_balance=_float(raw, "totalMarginBalance"),
            unrealized_pnl=_float(raw, "totalUnrealizedProfit"),
            initial_margin=_float(raw, "totalInitialMargin"),
        )
