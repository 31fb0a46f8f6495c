"""Intent -> entry plan (intent-bridge): allowlist, side rules, sizing with the symbol's filters. Pure."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from quantum_trader.contracts.messages import OrderType, Plan, PlanKind, PositionSide, Side, TradeIntent
from quantum_trader.contracts.policy import RiskLimits
from quantum_trader.exchange.filters import SymbolFilters, check_order, qty_for_notional
from quantum_trader.risk.limits import open_at


@dataclass(frozen=True, slots=True)
class Skip:
    """An intent that does not become a plan, and why."""

    reason: str


def entry_plan_id(intent_id: str) -> str:
    """Deterministic from the intent: a replay makes the same plans, and so the same client order ids."""
    return "ent:" + hashlib.sha256(intent_id.encode()).hexdigest()[:24]


def plan_for_intent(
    intent: TradeIntent,
    *,
    allowlist: frozenset[str],
    limits: RiskLimits,
    filters: SymbolFilters | None,
    position_side: PositionSide,
    last_close: int | None = None,
) -> Plan | Skip:
    """The ENTRY plan for ``intent``, or why it is skipped. Missing filters hold the intent (fail closed).

    ``last_close`` is the market time of the symbol's last close (the governor's cooldowns hash). A
    position that closed at or after the intent's time was open on its bar: skipped as the governor
    would refuse it (``risk.limits.open_at``), so whether the close had settled when the intent came
    decides nothing.
    """
    if intent.symbol not in allowlist:
        return Skip("not_allowlisted")
    if position_side is not PositionSide.FLAT:
        if position_side is PositionSide.opened_by(intent.side):
            return Skip("position_open")
        return Skip("opposite_position_open")
    if open_at(last_close, intent.time):
        return Skip("position_open")
    if intent.side is Side.SELL and limits.long_only:
        return Skip("flat_sell_long_only")
    if filters is None:
        return Skip("filters_missing")
    notional = min(intent.notional, limits.max_notional_per_trade)
    qty = qty_for_notional(notional, intent.entry_price, filters)
    problem = check_order(qty, intent.entry_price, filters)
    if problem is not None:
        return Skip(f"size: {problem}")
    return Plan(
        symbol=intent.symbol,
        plan_id=entry_plan_id(intent.intent_id),
        kind=PlanKind.ENTRY,
        side=intent.side,
        order_type=OrderType.MARKET,
        qty=float(qty),
        notional=float(qty) * intent.entry_price,
        reduce_only=False,
        reason_codes=(intent.strategy,),
        source="intent-bridge",
        time=intent.time,
        price=intent.entry_price,
        stop_loss=intent.stop_loss,
        take_profit=intent.take_profit,
        leverage=min(intent.leverage, limits.max_leverage),
    )
