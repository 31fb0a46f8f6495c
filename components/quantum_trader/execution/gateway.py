"""The order gateway's rules (apply-layer), decided before any request. Pure.

Invariants: only MARKET orders (5); expired approvals rejected, not sent (4); the kill switch is
checked per order (8); an exit never closes more than is open and is always reduceOnly (6).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from quantum_trader.contracts.control import ControlState
from quantum_trader.contracts.messages import Approval, OrderType, PlanKind, ResultStatus
from quantum_trader.exchange.filters import SymbolFilters, check_order, qty_for_notional, round_qty_down


@dataclass(frozen=True, slots=True)
class Send:
    qty: Decimal
    reduce_only: bool


@dataclass(frozen=True, slots=True)
class Refuse:
    status: ResultStatus
    reason: str


def decide_order(
    approval: Approval,
    *,
    control: ControlState,
    now_ms: int,
    open_qty: float,
    filters: SymbolFilters | None,
) -> Send | Refuse:
    """What to do with an approval: send a MARKET order of ``qty``, or refuse it with a status and reason."""
    plan = approval.plan
    if plan.order_type is not OrderType.MARKET:
        return Refuse(ResultStatus.REJECTED, f"conditional_order_refused: {plan.order_type.value}")
    if now_ms > approval.expires_at:
        late = (now_ms - approval.expires_at) / 1000
        return Refuse(ResultStatus.REJECTED, f"approval_expired: {late:.3f}s past expires_at")
    if control.blocks_exits:
        return Refuse(ResultStatus.REJECTED, f"killswitch_all: {control.reason or control.engaged_by}")
    if plan.kind is PlanKind.ENTRY and control.blocks_entries:
        return Refuse(ResultStatus.REJECTED, f"killswitch_entries: {control.reason or ', '.join(control.halts)}")
    if filters is None:
        return Refuse(ResultStatus.REJECTED, "filters_missing: no exchange rules for the symbol")
    wanted = (
        Decimal(str(plan.qty))
        if plan.qty is not None
        else qty_for_notional(plan.reference_notional, plan.price, filters)
    )
    if plan.kind is PlanKind.EXIT:
        if open_qty <= 0:
            return Refuse(ResultStatus.SKIPPED, "no_open_position")
        qty = round_qty_down(min(wanted, Decimal(str(open_qty))), filters)
        if qty <= 0:
            return Refuse(ResultStatus.SKIPPED, "exit_below_step")
        return Send(qty, reduce_only=True)
    qty = round_qty_down(wanted, filters)
    problem = check_order(qty, plan.price, filters)
    if problem is not None:
        return Refuse(ResultStatus.REJECTED, f"size: {problem}")
    return Send(qty, reduce_only=False)
