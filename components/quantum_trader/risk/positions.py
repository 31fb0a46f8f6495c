"""Position math: one symbol's position, and what a fill does to it (pure).

Conventions (quote currency, USDT):
- ``entry_price`` is the quantity-weighted average of the fills that opened or added.
- ``entry_fees`` is the part of the entry fees that belongs to the still-open quantity. Closing a
  fraction of the position carries that fraction of it into the trade's fees, so a trade's
  ``fees`` are its own entry share plus its exit fee, and nothing is counted twice.
- Realized PnL is gross: ``(exit - entry) * qty`` for LONG, ``(entry - exit) * qty`` for SHORT.
- A reduce-only fill never opens or flips: a quantity beyond the position is ignored (and
  reported) — never over-close (invariant 6). A plain fill against the position closes it and
  opens the rest on the other side (a flip); the fill's fee is split pro rata between the two.
- A closed position is kept as FLAT with its version, so versions (and snapshot order) only grow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from quantum_trader.contracts.messages import (
    ExecutionResult,
    Plan,
    PlanKind,
    PositionSide,
    PositionSnapshot,
    ResultStatus,
    TradeClosed,
)

QTY_TOLERANCE = 1e-9
"""A remainder below this fraction of the position is float noise: the position is closed."""

SOURCE = "position-state"


class PositionFormatError(ValueError):
    """A position hash that cannot be read; position-state refuses to guess a position."""


@dataclass(frozen=True, slots=True)
class Position:
    symbol: str
    side: PositionSide = PositionSide.FLAT
    qty: float = 0.0
    entry_price: float = 0.0
    entry_fees: float = 0.0
    stop_loss: float | None = None
    take_profit: float | None = None
    opened_at: int = 0
    entry_plan_id: str = ""
    mark_price: float = 0.0
    version: int = 0
    updated_at: int = 0

    @property
    def is_open(self) -> bool:
        return self.side is not PositionSide.FLAT and self.qty > 0

    @property
    def notional(self) -> float:
        """Entry notional of the open quantity (what ``open_positions`` holds for the governor)."""
        return self.qty * self.entry_price if self.is_open else 0.0

    def unrealized_pnl(self, mark: float) -> float:
        if not self.is_open:
            return 0.0
        return direction(self.side) * (mark - self.entry_price) * self.qty

    def open_risk(self) -> float:
        """Loss to the stop-loss. Without a stop the whole notional is at risk (fail closed)."""
        if not self.is_open:
            return 0.0
        if self.stop_loss is None:
            return self.notional
        return self.qty * abs(self.entry_price - self.stop_loss)

    # --- the position hash ------------------------------------------------------------------
    def to_hash(self) -> dict[str, str]:
        """The ``position:<symbol>`` hash (every field, so a write replaces the whole record)."""
        return {
            "symbol": self.symbol,
            "side": self.side.value,
            "qty": repr(float(self.qty)),
            "entry_price": repr(float(self.entry_price)),
            "entry_fees": repr(float(self.entry_fees)),
            "stop_loss": "" if self.stop_loss is None else repr(float(self.stop_loss)),
            "take_profit": "" if self.take_profit is None else repr(float(self.take_profit)),
            "opened_at": str(self.opened_at),
            "entry_plan_id": self.entry_plan_id,
            "mark_price": repr(float(self.mark_price)),
            "version": str(self.version),
            "updated_at": str(self.updated_at),
            "source": SOURCE,
        }

    @classmethod
    def from_hash(cls, symbol: str, raw: Mapping[str, str] | None) -> Position:
        """A position from its hash; an absent hash is FLAT at version 0."""
        if not raw:
            return cls(symbol)
        try:
            side = PositionSide(raw.get("side") or "FLAT")
            qty = float(raw.get("qty") or 0)
            position = cls(
                symbol=symbol,
                side=side,
                qty=qty,
                entry_price=float(raw.get("entry_price") or 0),
                entry_fees=float(raw.get("entry_fees") or 0),
                stop_loss=_optional(raw.get("stop_loss")),
                take_profit=_optional(raw.get("take_profit")),
                opened_at=int(raw.get("opened_at") or 0),
                entry_plan_id=raw.get("entry_plan_id", ""),
                mark_price=float(raw.get("mark_price") or 0),
                version=int(raw.get("version") or 0),
                updated_at=int(raw.get("updated_at") or 0),
            )
        except ValueError as error:
            raise PositionFormatError(f"position {symbol} is unreadable: {error}") from None
        if qty < 0 or (side is PositionSide.FLAT) != (qty == 0):
            raise PositionFormatError(f"position {symbol} has side {side.value} with qty {qty}")
        return position

    def snapshot(self, time: int) -> PositionSnapshot:
        return PositionSnapshot(
            symbol=self.symbol,
            side=self.side,
            qty=self.qty,
            entry_price=self.entry_price,
            mark_price=self.mark_price,
            unrealized_pnl=self.unrealized_pnl(self.mark_price),
            stop_loss=self.stop_loss,
            take_profit=self.take_profit,
            opened_at=self.opened_at,
            time=time,
            source=SOURCE,
            version=self.version,
        )


@dataclass(frozen=True, slots=True)
class FillOutcome:
    """What one execution result did to a position."""

    position: Position
    """the position after the fill (unchanged, same version, when nothing was filled)"""
    changed: bool
    closed: TradeClosed | None = None
    """the trade closed (in full or in part) by this fill"""
    realized_pnl: float = 0.0
    """gross PnL realized by this fill"""
    fee: float = 0.0
    """the fill's whole fee, as paid (the ledger's fees grow by it)"""
    ignored_qty: float = 0.0
    """quantity of a reduce-only fill beyond the position (should never happen: the exchange caps it)"""

    @property
    def opened(self) -> bool:
        return self.position.is_open

    @property
    def fully_closed(self) -> bool:
        """This fill took an open position to flat."""
        return self.closed is not None and not self.position.is_open


def direction(side: PositionSide) -> int:
    return {PositionSide.LONG: 1, PositionSide.SHORT: -1, PositionSide.FLAT: 0}[side]


def realized_pnl(side: PositionSide, entry: float, exit_price: float, qty: float) -> float:
    """Gross PnL of closing ``qty`` of a ``side`` position entered at ``entry`` at ``exit_price``."""
    return direction(side) * (exit_price - entry) * qty


def exit_reason(result: ExecutionResult) -> str:
    """The trade's exit reason: the closing plan's reason codes (``flip`` when an entry reversed it)."""
    if result.reason_codes:
        return ",".join(result.reason_codes)
    return "flip" if result.kind is PlanKind.ENTRY else "unspecified"


def apply_fill(position: Position, result: ExecutionResult) -> FillOutcome:
    """The position after ``result``; any result but a FILLED one with quantity leaves it as it is."""
    qty = result.filled_qty
    if result.status is not ResultStatus.FILLED or qty <= 0:
        return FillOutcome(position, changed=False)
    price = result.avg_price
    fill_side = PositionSide.opened_by(result.side)
    time = result.time

    if not position.is_open or position.side is fill_side:
        if result.reduce_only:  # nothing on the other side to reduce
            return FillOutcome(position, changed=False, ignored_qty=qty)
        return FillOutcome(_add(position, result), changed=True, fee=result.fee)

    close_qty = min(qty, position.qty)
    rest = qty - close_qty
    if result.reduce_only:
        ignored, rest, close_fee = rest, 0.0, result.fee
    else:
        ignored, close_fee = 0.0, result.fee * close_qty / qty
    if rest <= qty * QTY_TOLERANCE:
        rest = 0.0
    entry_fee_share = position.entry_fees * close_qty / position.qty
    pnl = realized_pnl(position.side, position.entry_price, price, close_qty)
    closed = TradeClosed(
        symbol=position.symbol,
        trade_id=f"{position.entry_plan_id or 'unknown'}:{result.plan_id}",
        side=position.side,
        qty=close_qty,
        entry_price=position.entry_price,
        exit_price=price,
        realized_pnl=pnl,
        fees=entry_fee_share + close_fee,
        exit_reason=exit_reason(result),
        exit_controller=result.source or "unknown",
        opened_at=position.opened_at,
        closed_at=time,
    )
    remaining = position.qty - close_qty
    if remaining > position.qty * QTY_TOLERANCE:
        after = replace(
            position,
            qty=remaining,
            entry_fees=position.entry_fees - entry_fee_share,
            mark_price=price,
            version=position.version + 1,
            updated_at=time,
        )
    elif rest > 0:  # flip: the rest opens the other side with its share of the fee
        after = Position(
            symbol=position.symbol,
            side=fill_side,
            qty=rest,
            entry_price=price,
            entry_fees=result.fee - close_fee,
            stop_loss=result.stop_loss,
            take_profit=result.take_profit,
            opened_at=time,
            entry_plan_id=result.plan_id,
            mark_price=price,
            version=position.version + 1,
            updated_at=time,
        )
    else:
        after = Position(position.symbol, mark_price=price, version=position.version + 1, updated_at=time)
    return FillOutcome(after, changed=True, closed=closed, realized_pnl=pnl, fee=result.fee, ignored_qty=ignored)


def _add(position: Position, result: ExecutionResult) -> Position:
    """Open, or add to a position on the same side at the weighted average entry."""
    qty, price = result.filled_qty, result.avg_price
    if not position.is_open:
        return Position(
            symbol=position.symbol,
            side=PositionSide.opened_by(result.side),
            qty=qty,
            entry_price=price,
            entry_fees=result.fee,
            stop_loss=result.stop_loss,
            take_profit=result.take_profit,
            opened_at=result.time,
            entry_plan_id=result.plan_id,
            mark_price=price,
            version=position.version + 1,
            updated_at=result.time,
        )
    total = position.qty + qty
    return replace(
        position,
        qty=total,
        entry_price=(position.qty * position.entry_price + qty * price) / total,
        entry_fees=position.entry_fees + result.fee,
        stop_loss=result.stop_loss if result.stop_loss is not None else position.stop_loss,
        take_profit=result.take_profit if result.take_profit is not None else position.take_profit,
        mark_price=price,
        version=position.version + 1,
        updated_at=result.time,
    )


def _optional(text: str | None) -> float | None:
    return float(text) if text else None


def other_trade(plan: Plan, open_side: PositionSide | None, open_opened_at: int | None) -> str | None:
    """Why the open position is not the trade an EXIT plan closes, or None when it is (or unknown).

    ``open_side``/``open_opened_at`` are the position hash's; None where the hash has no value (a
    check that cannot be made does not block an exit: positions can always be closed).
    """
    if open_side is not None and open_side is not PositionSide.FLAT and plan.side is not open_side.closing_side:
        return f"the exit ({plan.side.value}) closes no {open_side.value} position"
    if plan.position_opened_at is not None and open_opened_at is not None and plan.position_opened_at != open_opened_at:
        return f"the exit is for the trade opened at {plan.position_opened_at}, the open one opened at {open_opened_at}"
    return None
