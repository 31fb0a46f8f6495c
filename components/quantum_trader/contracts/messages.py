"""Pydantic models of every stream message (DESIGN §3).

Each model names its wire ``MESSAGE_TYPE`` and the ``SCHEMA_VERSIONS`` a consumer of this code can read;
the envelope (``envelope.py``) uses them to encode and to refuse a message of the wrong type or of a
schema version it does not know.
Prices and quantities are floats in the exchange's units; times are epoch milliseconds.

Every number is finite and bounded (the shared types below): ``Field(gt=0)`` alone admits ``inf``,
and one ``Infinity`` price is enough to crash an exchange or poison a notional. The envelope also
validates strictly, so ``true`` is not a number and ``"1"`` is not a price.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

MAX_PRICE = 1e9
"""far above any listed price (BTC ~1e5): a price beyond it is a unit error or an attack"""
MAX_AMOUNT = 1e12
"""quantities, notionals, fees and PnL in quote currency"""
MAX_VALUE = 1e15
"""feature values and other unit-free numbers"""
MAX_EPOCH_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: a time beyond it is not a time"""

Finite = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_VALUE, le=MAX_VALUE)]
Price = Annotated[float, Field(allow_inf_nan=False, gt=0, le=MAX_PRICE)]
PriceOrZero = Annotated[float, Field(allow_inf_nan=False, ge=0, le=MAX_PRICE)]
"""an average price of an order that did not fill, an entry of a flat position"""
Quantity = Annotated[float, Field(allow_inf_nan=False, ge=0, le=MAX_AMOUNT)]
"""a non-negative amount: quantity, notional, fee"""
SignedAmount = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_AMOUNT, le=MAX_AMOUNT)]
"""PnL, R multiples: either sign"""
Fraction = Annotated[float, Field(allow_inf_nan=False, ge=0, le=1)]
EpochMs = Annotated[int, Field(ge=0, le=MAX_EPOCH_MS)]
Leverage = Annotated[int, Field(ge=1, le=125)]
ErrorCode = Annotated[int, Field(ge=-1_000_000, le=1_000_000)]
Counter = Annotated[int, Field(ge=0, le=2**53)]
Volume = Annotated[float, Field(allow_inf_nan=False, ge=0, le=MAX_VALUE)]
"""traded base-asset volume: meme coins trade more units than any quote amount"""

SYMBOL_PATTERN = re.compile(r"[A-Z0-9]{2,20}")
"""ASCII only: fullwidth and Cyrillic look-alikes pass ``str.isalnum()`` and ``str.isupper()``"""


def check_symbol(value: str) -> str:
    if not SYMBOL_PATTERN.fullmatch(value):
        raise ValueError(f"symbol must be 2-20 upper-case ASCII letters or digits like BTCUSDT, got {value!r}")
    return value


Symbol = Annotated[
    str,
    AfterValidator(check_symbol),
    WithJsonSchema({"type": "string", "pattern": "^[A-Z0-9]{2,20}$", "minLength": 2, "maxLength": 20}),
]
"""A trading symbol, the one type every message and the policy's allowlist use."""


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

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    MESSAGE_TYPE: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 1
    """the version this code writes"""
    SCHEMA_VERSIONS: ClassVar[frozenset[int]] = frozenset({1})
    """the versions this code reads: an unknown one, older or newer, is refused, never guessed at"""


class _HasSymbol(Message):
    symbol: Symbol


class Tick(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "Tick"
    price: Price
    bid: Price
    ask: Price
    volume: Volume
    event_time: EpochMs = Field(description="exchange event time, epoch ms")
    high: Price | None = Field(default=None, description="bar high when the tick comes from a kline")
    low: Price | None = Field(default=None, description="bar low when the tick comes from a kline")
    source: str = Field(description="replay:<file> | synthetic:<seed> | live")

    @model_validator(mode="after")
    def _bid_below_ask(self) -> Tick:
        if self.bid > self.ask:
            raise ValueError(f"bid {self.bid} above ask {self.ask}")
        return self


class FeatureVector(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "FeatureVector"
    time: EpochMs
    feature_set: str = Field(description="name and version of the feature set, e.g. 'core-v1'")
    feature_hash: str = Field(default="", description="sha256 of the set's definition (ml.market_features)")
    names: tuple[str, ...]
    values: tuple[Finite, ...]
    price: Price = Field(description="close price the features were computed at")

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
    time: EpochMs
    side: Side
    confidence: Fraction
    entry_price: Price
    stop_loss: Price
    take_profit: Price
    leverage: Leverage
    notional: Quantity = Field(gt=0, description="intended position size in quote currency (USDT)")
    strategy: str
    model_digest: str
    feature_hash: str = Field(default="", description="hash of the feature set the model read (learned models)")

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
    qty: Quantity | None = Field(default=None, gt=0)
    notional: Quantity | None = Field(default=None, gt=0)
    reduce_only: bool = False
    reason_codes: tuple[str, ...] = ()
    source: str = Field(description="component that made the plan")
    time: EpochMs = Field(description="market time the plan was made at (ms); rate limits count in it")
    price: Price = Field(description="reference price the plan was sized at")
    stop_loss: Price | None = None
    take_profit: Price | None = None
    leverage: Leverage = 1
    corr: str = ""
    position_opened_at: EpochMs | None = Field(
        default=None,
        description="EXIT: opened_at of the trade it closes; refused (no_open_position) when another trade is open",
    )

    @model_validator(mode="after")
    def _sized(self) -> Plan:
        if self.qty is None and self.notional is None:
            raise ValueError("a plan needs qty or notional")
        if self.kind is PlanKind.EXIT and not self.reduce_only:
            raise ValueError("an EXIT plan must be reduce_only")
        if self.kind is PlanKind.ENTRY and self.reduce_only:
            raise ValueError("an ENTRY plan cannot be reduce_only")
        if self.kind is PlanKind.ENTRY and self.position_opened_at is not None:
            raise ValueError("an ENTRY plan closes no trade: position_opened_at is for exits")
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
    notional: Quantity = Field(description="notional reserved against the total limit (entries)")
    exit_lock: bool = Field(description="the symbol's one exit in flight (exits)")


class Approval(Message):
    MESSAGE_TYPE: ClassVar[str] = "Approval"
    approval_id: str
    plan: Plan
    reservation: Reservation
    approved_at: EpochMs = Field(description="wall time of approval, ms")
    expires_at: EpochMs = Field(description="wall time after which apply-layer must reject, ms")


class ExecutionResult(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "ExecutionResult"
    plan_id: str
    approval_id: str
    client_order_id: str
    status: ResultStatus
    kind: PlanKind
    side: Side
    reduce_only: bool
    filled_qty: Quantity
    avg_price: PriceOrZero
    fee: Quantity
    error_code: ErrorCode | None = None
    reason: str = ""
    reservation: Reservation
    time: EpochMs = Field(description="market time of the plan (ms)")
    exchange_time: EpochMs = Field(default=0, description="exchange update time of the order (ms)")
    stop_loss: PriceOrZero | None = None
    take_profit: PriceOrZero | None = None
    leverage: Leverage = 1
    source: str = ""
    reason_codes: tuple[str, ...] = ()


class PositionSnapshot(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "PositionSnapshot"
    side: PositionSide
    qty: Quantity
    entry_price: PriceOrZero
    mark_price: PriceOrZero
    unrealized_pnl: SignedAmount
    stop_loss: PriceOrZero | None = None
    take_profit: PriceOrZero | None = None
    opened_at: EpochMs = 0
    time: EpochMs
    source: str = Field(description="position-state | reconciler")
    version: Counter = Field(default=0, description="position-state's change counter for this symbol")


class TradeClosed(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "TradeClosed"
    trade_id: str
    side: PositionSide
    qty: Quantity = Field(gt=0)
    entry_price: Price
    exit_price: Price
    realized_pnl: SignedAmount = Field(description="gross of fees, quote currency")
    fees: Quantity = Field(description="entry and exit fees for the closed quantity")
    exit_reason: str
    exit_controller: str
    opened_at: EpochMs
    closed_at: EpochMs

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
    time: EpochMs
    action: HarvestAction
    fraction: Fraction = Field(gt=0)
    r_multiple: SignedAmount
    kill_score: Fraction
    price: Price
    reasons: tuple[str, ...] = ()


class ExitShadow(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "ExitShadow"
    time: EpochMs
    action: str
    reason: str
    qty: Quantity
    price: Price


class GovernorDecision(_HasSymbol):
    MESSAGE_TYPE: ClassVar[str] = "GovernorDecision"
    plan_id: str
    kind: PlanKind
    source: str
    approved: bool
    approval_id: str = ""
    reasons: tuple[str, ...] = ()
    time: EpochMs = Field(description="wall time of the decision, ms")


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
    internal_qty: SignedAmount
    internal_entry: PriceOrZero
    exchange_side: PositionSide
    exchange_qty: SignedAmount
    exchange_entry: PriceOrZero
    action: str
    time: EpochMs


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
