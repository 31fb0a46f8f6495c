"""The order gateway's rules (apply-layer), decided before any request. Pure.

Invariants: only MARKET orders (5); expired approvals rejected, not sent (4); the kill switch is
checked per order (8); an exit never closes more than is open and is always reduceOnly (6).

The redelivery rule (docs/EXECUTION.md, "Redelivery"): an approval that may have been sent before
— redelivered, or its in-flight marker already set — is first looked up at the exchange by its
client order id. An order found there is reported with what the exchange did (a fill is FILLED,
with its real quantity, price and fee), whatever the approval's age or the kill switch say now:
those refusals are for orders never sent, and refusing a sent order would lose its fill. Only
conditional types skip the lookup: the gateway never sends them, so no earlier attempt can have.

An exit is for one trade: the closing side of a position and, when the plan names it, the trade's
``opened_at``. One that does not match the position open now — a retry exit-brain made for a trade
that closed while its fill was on the way, reaching us after the next trade opened — is refused as
``no_open_position`` before any request: sent, it would be refused by the exchange (reduce-only on
the wrong side) or close the new trade for a reason that was never about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from quantum_trader.contracts.control import ControlState
from quantum_trader.contracts.messages import Approval, OrderType, PlanKind, PositionSide, ResultStatus
from quantum_trader.exchange.filters import SymbolFilters, check_order, qty_for_notional, round_qty_down
from quantum_trader.exchange.models import MarketOrder, OrderResult
from quantum_trader.exchange.order_ids import client_order_id
from quantum_trader.risk.positions import other_trade


@dataclass(frozen=True, slots=True)
class Send:
    qty: Decimal
    reduce_only: bool


@dataclass(frozen=True, slots=True)
class Refuse:
    status: ResultStatus
    reason: str


@dataclass(frozen=True, slots=True)
class LookUp:
    """Query the order by its client order id, then decide again with the answer."""


@dataclass(frozen=True, slots=True)
class Report:
    """The order reached the exchange before: report it, never refuse it and never send it again."""

    order: OrderResult


def maybe_sent(deliveries: int, marked: bool) -> bool:
    """Whether an earlier attempt may have sent this approval's order: it was delivered before, or an
    earlier attempt got as far as setting the in-flight marker (set right before any request)."""
    return deliveries > 1 or marked


def has_fill(order: OrderResult) -> bool:
    """The order executed (some or all of it): its quantity is at the exchange and must be recorded."""
    return order.filled or order.executed_qty > 0


def decide_order(
    approval: Approval,
    *,
    control: ControlState,
    now_ms: int,
    open_qty: float,
    filters: SymbolFilters | None,
    sent_before: bool = False,
    looked_up: bool = False,
    found: OrderResult | None = None,
    open_side: PositionSide | None = None,
    open_opened_at: int | None = None,
) -> Send | Refuse | LookUp | Report:
    """What to do with an approval: send a MARKET order of ``qty``, refuse it with a status and reason,
    look it up first (``sent_before`` and not ``looked_up`` yet), or report the order ``found``.

    ``open_qty``, ``open_side`` and ``open_opened_at`` describe the symbol's position as position-state
    recorded it (the hash); an exit is sent only against the trade it was planned for."""
    plan = approval.plan
    if plan.order_type is not OrderType.MARKET:
        return Refuse(ResultStatus.REJECTED, f"conditional_order_refused: {plan.order_type.value}")
    if sent_before and not looked_up:
        return LookUp()
    if found is not None:
        return Report(found)
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
        mismatch = other_trade(plan, open_side, open_opened_at)
        if mismatch is not None:
            return Refuse(ResultStatus.SKIPPED, f"no_open_position: {mismatch}")
        qty = round_qty_down(min(wanted, Decimal(str(open_qty))), filters)
        if qty <= 0:
            return Refuse(ResultStatus.SKIPPED, "exit_below_step")
        return Send(qty, reduce_only=True)
    qty = round_qty_down(wanted, filters)
    problem = check_order(qty, plan.price, filters)
    if problem is not None:
        return Refuse(ResultStatus.REJECTED, f"size: {problem}")
    return Send(qty, reduce_only=False)


def order_to_send(approval: Approval, send: Send) -> MarketOrder:
    """The MARKET order a ``Send`` decision sends, with the plan's client order id."""
    plan = approval.plan
    return MarketOrder(plan.symbol, plan.side, send.qty, client_order_id(plan.plan_id), send.reduce_only)
