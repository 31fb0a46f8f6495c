"""Pydantic models of every stream message (DESIGN §3).

Each model names its wire ``MESSAGE_TYPE`` and ``SCHEMA_VERSION``; the envelope (``envelope.py``)
uses them to encode and to refuse a message of the wrong type or a newer schema.
Prices and quantities are floats in the exchange's units; times are epoch milliseconds.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class PositionSide(StrEnum):
    LONG = "LONG"
    SHORT = "SHORT"
    FLAT = "FLAT"

    @property
    def closing_side(self) -> Side:
        if self is PositionSide.FLAT:
            raise ValueError("a flat position has no closing side")
        return Side.SELL if self is PositionSide.LONG else Side.BUY

    @staticmethod
    def opened_by(side: Side) -> PositionSide:
        return PositionSide.LONG if side is Side.BUY else PositionSide.SHORT


class PlanKind(StrEnum):
    ENTRY = "ENTRY"
    EXIT = "EXIT"


class OrderType(StrEnum):
    """Order types a plan may name. Only MARKET ever reaches the exchange (invariant 5)."""

    MARKET = "MARKET"
    LIMIT = "LIMIT"
    STOP = "STOP"
    STOP_MARKET = "STOP_MARKET"
    TAKE_PROFIT = "TAKE_PROFIT"
    TAKE_PROFIT_MARKET = "TAKE_PROFIT_MARKET"
    TRAILING_STOP_MARKET = "TRAILING_STOP_MARKET"


class ResultStatus(StrEnum):
    FILLED = "FILLED"
    REJECTED = "REJECTED"
    ERROR = "ERROR"
    SKIPPED = "SKIPPED"


class Message(BaseModel):
    """Base of every stream message: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    MESSAGE_TYPE: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 1


Symbol = str


def _check_symbol(value: str) -> str:
    if not value or not value.isalnum() or value.upper() != value:
        raise ValueError(f"symbol must be upper-case alphanumeric like BTCUSDT, got {value!r}")
    return value


class _HasSymbol(Message):
    symbol: Symbol

    @field_validator("symbol")
    @classmethod
    def _symbol_format(cls, value: str) -> str:
        return _check_symbol(value)


class Tick(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "Tick"
    price: float = Field(gt=0)
    bid: float = Field(gt=0)
    ask: float = Field(gt=0)
    volume: float = Field(ge=0)
    event_time: int = Field(description="exchange event time, epoch ms")
    high: float | None = Field(default=None, gt=0, description="bar high when the tick comes from a kline")
    low: float | None = Field(default=None, gt=0, description="bar low when the tick comes from a kline")
    source: str = Field(description="replay:<file> | synthetic:<seed> | live")

    @model_validator(mode="after")
    def _bid_below_ask(self) -> Tick:
        if self.bid > self.ask:
            raise ValueError(f"bid {self.bid} above ask {self.ask}")
        return self


class FeatureVector(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "FeatureVector"
    time: int
    feature_set: str = Field(description="name and version of the feature set, e.g. 'core-v1'")
    names: tuple[str, ...]
    values: tuple[float, ...]
    price: float = Field(gt=0, description="close price the features were computed at")

    @model_validator(mode="after")
    def _same_length(self) -> FeatureVector:
        if len(self.names) != len(self.values):
            raise ValueError(f"{len(self.names)} names but {len(self.values)} values")
        return self

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.values, strict=True))


class TradeIntent(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "TradeIntent"
    intent_id: str
    time: int
    side: Side
    confidence: float = Field(ge=0, le=1)
    entry_price: float = Field(gt=0)
    stop_loss: float = Field(gt=0)
    take_profit: float = Field(gt=0)
    leverage: int = Field(ge=1, le=125)
    notional: float = Field(gt=0, description="intended position size in quote currency (USDT)")
    strategy: str
    model_digest: str

    @model_validator(mode="after")
    def _levels_on_the_right_side(self) -> TradeIntent:
        if self.side is Side.BUY and not (self.stop_loss < self.entry_price < self.take_profit):
            raise ValueError("BUY needs stop_loss < entry_price < take_profit")
        if self.side is Side.SELL and not (self.take_profit < self.entry_price < self.stop_loss):
            raise ValueError("SELL needs take_profit < entry_price < stop_loss")
        return self


class Plan(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "Plan"
    plan_id: str = Field(min_length=1, max_length=128)
    kind: PlanKind
    side: Side
    order_type: OrderType = OrderType.MARKET
    qty: float | None = Field(default=None, gt=0)
    notional: float | None = Field(default=None, gt=0)
    reduce_only: bool = False
    reason_codes: tuple[str, ...] = ()
    source: str = Field(description="component that made the plan")
    time: int = Field(description="market time the plan was made at (ms); rate limits count in it")
    price: float = Field(gt=0, description="reference price the plan was sized at")
    stop_loss: float | None = Field(default=None, gt=0)
    take_profit: float | None = Field(default=None, gt=0)
    leverage: int = Field(default=1, ge=1, le=125)
    corr: str = ""

    @model_validator(mode="after")
    def _sized(self) -> Plan:
        if self.qty is None and self.notional is None:
            raise ValueError("a plan needs qty or notional")
        if self.kind is PlanKind.EXIT and not self.reduce_only:
            raise ValueError("an EXIT plan must be reduce_only")
        if self.kind is PlanKind.ENTRY and self.reduce_only:
            raise ValueError("an ENTRY plan cannot be reduce_only")
        return self

    @property
    def reference_notional(self) -> float:
        if self.notional is not None:
            return self.notional
        assert self.qty is not None
        return self.qty * self.price


class Reservation(Message):
    """What an approval holds until position-state commits or releases it."""

    slot: bool = Field(description="an open-position slot (entries)")
    notional: float = Field(ge=0, description="notional reserved against the total limit (entries)")
    exit_lock: bool = Field(description="the symbol's one exit in flight (exits)")


class Approval(Message):
    MESSAGE_TYPE: ClassVar[str] = "Approval"
    approval_id: str
    plan: Plan
    reservation: Reservation
    approved_at: int = Field(description="wall time of approval, ms")
    expires_at: int = Field(description="wall time after which apply-layer must reject, ms")


class ExecutionResult(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "ExecutionResult"
    plan_id: str
    approval_id: str
    client_order_id: str
    status: ResultStatus
    kind: PlanKind
    side: Side
    reduce_only: bool
    filled_qty: float = Field(ge=0)
    avg_price: float = Field(ge=0)
    fee: float = Field(ge=0)
    error_code: int | None = None
    reason: str = ""
    reservation: Reservation
    time: int = Field(description="market time of the plan (ms)")
    exchange_time: int = Field(default=0, description="exchange update time of the order (ms)")
    stop_loss: float | None = None
    take_profit: float | None = None
    leverage: int = 1
    source: str = ""
    reason_codes: tuple[str, ...] = ()


class PositionSnapshot(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "PositionSnapshot"
    side: PositionSide
    qty: float = Field(ge=0)
    entry_price: float = Field(ge=0)
    mark_price: float = Field(ge=0)
    unrealized_pnl: float
    stop_loss: float | None = None
    take_profit: float | None = None
    opened_at: int = 0
    time: int
    source: str = Field(description="position-state | reconciler")
    version: int = Field(default=0, description="position-state's change counter for this symbol")


class TradeClosed(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "TradeClosed"
    trade_id: str
    side: PositionSide
    qty: float = Field(gt=0)
    entry_price: float = Field(gt=0)
    exit_price: float = Field(gt=0)
    realized_pnl: float = Field(description="gross of fees, quote currency")
    fees: float = Field(ge=0, description="entry and exit fees for the closed quantity")
    exit_reason: str
    exit_controller: str
    opened_at: int
    closed_at: int

    @property
    def net_pnl(self) -> float:
        return self.realized_pnl - self.fees


class HarvestAction(StrEnum):
    HOLD = "HOLD"
    PARTIAL_CLOSE = "PARTIAL_CLOSE"
    CLOSE = "CLOSE"


class HarvestProposal(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "HarvestProposal"
    proposal_id: str
    time: int
    action: HarvestAction
    fraction: float = Field(gt=0, le=1)
    r_multiple: float
    kill_score: float = Field(ge=0, le=1)
    price: float = Field(gt=0)
    reasons: tuple[str, ...] = ()


class ExitShadow(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "ExitShadow"
    time: int
    action: str
    reason: str
    qty: float = Field(ge=0)
    price: float = Field(gt=0)


class GovernorDecision(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "GovernorDecision"
    plan_id: str
    kind: PlanKind
    source: str
    approved: bool
    approval_id: str = ""
    reasons: tuple[str, ...] = ()
    time: int = Field(description="wall time of the decision, ms")


class ReconcileKind(StrEnum):
    MATCHED = "MATCHED"
    QTY_MISMATCH = "QTY_MISMATCH"
    ENTRY_MISMATCH = "ENTRY_MISMATCH"
    SIDE_MISMATCH = "SIDE_MISMATCH"
    UNKNOWN_TO_INTERNAL = "UNKNOWN_TO_INTERNAL"
    UNKNOWN_TO_EXCHANGE = "UNKNOWN_TO_EXCHANGE"


class ReconcileEvent(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "ReconcileEvent"
    kind: ReconcileKind
    explained: bool
    internal_side: PositionSide
    internal_qty: float
    internal_entry: float
    exchange_side: PositionSide
    exchange_qty: float
    exchange_entry: float
    action: str
    time: int


ALL_MESSAGES: tuple[type[Message], ...] = (
    Tick,
    FeatureVector,
    TradeIntent,
    Plan,
    Approval,
    ExecutionResult,
    PositionSnapshot,
    TradeClosed,
    HarvestProposal,
    ExitShadow,
    GovernorDecision,
    ReconcileEvent,
)
