"""heat-gate: which harvest proposals become EXIT plans, by portfolio heat (pure; the service does the I/O).

Portfolio heat is the sum of open risk to the stops divided by equity (position-state writes it to
``portfolio:heat`` with the wall time). Harvesting only ever reduces risk, so the gate is not there
to stop dangerous orders; it decides when taking profit off the table is worth giving up the rest
of the move, and it refuses to act on inputs it cannot trust.

Fail closed (DESIGN §4.2; in production a heat gate passed everything when its inputs were
missing). Every one of these holds the proposal — no plan — with a reason the service counts and
logs before it acks:

==============================  ============================================================
``kill_switch``                 kill switch at scope ``exits`` or ``all`` (or the control key
                                missing/unreadable, which reads as ``all``): only the baseline
                                stop-loss/take-profit of exit-brain stays live (invariant 8)
``heat_missing``                no ``portfolio:heat`` hash
``heat_unreadable``             a field missing or not a finite number, negative heat or risk,
                                equity <= 0, heat != open_risk / equity, or a time in the future
``heat_stale``                  heat older than ``max_age_ms`` (60 s) by the wall clock; in a
                                replay (market clock) heat older than the position's last fill
``position_missing``            no ``position:<symbol>`` hash
``position_unreadable``         side, qty or opened_at missing or malformed
``position_flat``               the position is already closed
``position_changed``            the position was opened after the proposal: it was for an
                                earlier trade on the symbol
``exit_brain_exiting``          exit-brain judged the proposal's bar with an exit in flight for
                                the trade (or that exit has closed it): it decides, the proposal
                                is dropped
``heat_below_partial``          the rule below: a PARTIAL_CLOSE while the book is cool
==============================  ============================================================

Two exit controllers, one bar: exit-brain (stops, take-profit, breakeven, trailing) and harvest
(through this gate) both watch every tick, so both can plan an EXIT for one trade on one bar, and
the governor would approve whichever reached it first (the other: ``exit_in_flight``) — the arrival
order of two processes would pick the exit. So the gate defers to exit-brain's verdict on the
proposal's bar (:func:`defer_to_exit_brain`): exit-brain records, with its state, the market time of
the last tick it evaluated for the trade and the exit it has in flight. Until it has evaluated the
proposal's bar for that trade the proposal waits (:class:`VerdictPending`; a missing or unreadable
verdict never passes); when exit-brain is exiting the trade the proposal is dropped
(``exit_brain_exiting``); otherwise the heat rule below decides. The same rule live: the baseline
protection has priority over profit taking on the same price.

Clocks: live, heat's age is judged by the wall clock (a position-state that stopped refreshing it
is noticed). In a replay (``marketData.source`` replay or synthetic) the clock is the proposal's
market time and heat's is its ``market_time`` (the last result it includes): a replay must decide
the same at any speed and whatever pauses the machine makes. Heat changes only with results, so
there its age means nothing; what must hold is that it includes the position's last fill
(``market_time >= updated_at``) and is not from after the proposal.

The rule, with ``u = heat / maxPortfolioHeat``:

==================  ==========================  ====================================
u                   CLOSE                       PARTIAL_CLOSE
==================  ==========================  ====================================
< 0.5               pass                        hold (``heat_below_partial``)
0.5 .. < 1          pass                        pass
>= 1 (over limit)   pass, tagged                pass, tagged ``heat_over_limit``
                    ``heat_over_limit``
==================  ==========================  ====================================

- CLOSE always passes: the kill score says the trade is reversing, and closing is the most
  risk-reducing thing there is. It has priority in the sense that heat never delays it.
- PARTIAL_CLOSE passes once the book carries at least half its allowed heat: below that there is
  room for risk, the position's own stop and take-profit protect it, and banking half of a 2 R
  winner would mostly cut the winner short. From half the limit up, taking risk off is worth it.
- Over the limit every harvest passes and is tagged, so the audit trail shows the gate shedding
  heat. The plan's quantity is the proposal's fraction of the position's current quantity
  (never more than the position: invariant 6), reduce-only MARKET (invariant 5).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from quantum_trader.contracts.messages import (
    HarvestAction,
    HarvestProposal,
    OrderType,
    Plan,
    PlanKind,
    PositionSide,
    Side,
)
from quantum_trader.exits.brain import BrainState

SOURCE = "heat-gate"

HOLD_KILL_SWITCH = "kill_switch"
HOLD_HEAT_MISSING = "heat_missing"
HOLD_HEAT_UNREADABLE = "heat_unreadable"
HOLD_HEAT_STALE = "heat_stale"
HOLD_POSITION_MISSING = "position_missing"
HOLD_POSITION_UNREADABLE = "position_unreadable"
HOLD_POSITION_FLAT = "position_flat"
HOLD_POSITION_CHANGED = "position_changed"
HOLD_BELOW_PARTIAL = "heat_below_partial"
HOLD_EXIT_BRAIN_EXITING = "exit_brain_exiting"

HOLD_REASONS = (
    HOLD_KILL_SWITCH,
    HOLD_HEAT_MISSING,
    HOLD_HEAT_UNREADABLE,
    HOLD_HEAT_STALE,
    HOLD_POSITION_MISSING,
    HOLD_POSITION_UNREADABLE,
    HOLD_POSITION_FLAT,
    HOLD_POSITION_CHANGED,
    HOLD_EXIT_BRAIN_EXITING,
    HOLD_BELOW_PARTIAL,
)

TAG_OVER_LIMIT = "heat_over_limit"


class HeatClock(StrEnum):
    WALL = "wall"
    """live: now is the wall clock, heat's time its wall ``time``, age limited by ``max_age_ms``"""
    MARKET = "market"
    """replays: now is the proposal's market time, heat's time its ``market_time``"""


class VerdictPending(Exception):
    """exit-brain has not judged the proposal's bar for its trade yet: wait (never pass, never drop)."""


class Hold(Exception):
    """A proposal the gate will not turn into a plan: ``reason`` is one of HOLD_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class GateSettings:
    max_portfolio_heat: float
    """RiskLimits.max_portfolio_heat"""
    partial_min_utilization: float = 0.5
    """PARTIAL_CLOSE passes from this share of the heat limit up"""
    max_age_ms: int = 60_000
    """heat older than this (wall clock) is stale"""
    max_future_ms: int = 5_000
    """clock skew tolerated for a heat time ahead of ours; more is unreadable"""
    consistency_tolerance: float = 0.01
    """relative tolerance of heat against open_risk / equity"""
    clock: HeatClock = HeatClock.WALL

    def __post_init__(self) -> None:
        if self.max_portfolio_heat <= 0:
            raise ValueError("max_portfolio_heat must be positive")
        if self.partial_min_utilization < 0 or self.max_age_ms <= 0 or self.max_future_ms < 0:
            raise ValueError("gate thresholds must not be negative (and max_age_ms positive)")


@dataclass(frozen=True, slots=True)
class HeatReading:
    heat: float
    open_risk: float
    equity: float
    positions: int
    time: int


@dataclass(frozen=True, slots=True)
class GatePosition:
    side: PositionSide
    qty: float
    opened_at: int
    entry_price: float | None = None
    version: int = 0
    updated_at: int = 0
    """market time of the position's last change (its last fill)"""


@dataclass(frozen=True, slots=True)
class GateInputs:
    """What the gate reads for a proposal, as the hashes are (str fields; an absent hash is empty)."""

    heat: Mapping[str, str]
    """``portfolio:heat``"""
    position: Mapping[str, str]
    """``position:<symbol>``"""
    kill_switch_hold: bool
    """the kill switch forces non-baseline exits to SHADOW (or is unreadable)"""
    exit_brain: Mapping[str, str]
    """exit-brain's state for the symbol (``state:exit-brain:<symbol>``): its verdict"""


@dataclass(frozen=True, slots=True)
class GateDecision:
    utilization: float
    side: Side
    """the closing side of the position"""
    qty: float
    reason_codes: tuple[str, ...]
    opened_at: int | None = None
    """the trade the plan closes (the position read for the decision)"""


def _number(raw: Mapping[str, str], name: str, reason: str) -> float:
    text = raw.get(name)
    if text is None or str(text).strip() == "":
        raise Hold(reason, f"field {name!r} missing")
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise Hold(reason, f"field {name!r}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise Hold(reason, f"field {name!r}={text!r} is not finite")
    return value


def read_heat(raw: Mapping[str, str] | None, now_ms: int, settings: GateSettings) -> HeatReading:
    """The ``portfolio:heat`` hash checked for presence, shape, consistency and age; raises :class:`Hold`.

    ``now_ms`` is on ``settings.clock``: the wall clock, or the proposal's market time (then heat's
    time is its ``market_time`` and there is no age limit: see the module doc).
    """
    if not raw:
        raise Hold(HOLD_HEAT_MISSING, "portfolio:heat is absent")
    heat = _number(raw, "heat", HOLD_HEAT_UNREADABLE)
    open_risk = _number(raw, "open_risk", HOLD_HEAT_UNREADABLE)
    equity = _number(raw, "equity", HOLD_HEAT_UNREADABLE)
    positions = _number(raw, "positions", HOLD_HEAT_UNREADABLE)
    time = _number(raw, "market_time" if settings.clock is HeatClock.MARKET else "time", HOLD_HEAT_UNREADABLE)
    if heat < 0 or open_risk < 0 or positions < 0 or positions != int(positions):
        raise Hold(HOLD_HEAT_UNREADABLE, f"negative or fractional values: heat={heat} open_risk={open_risk}")
    if equity <= 0:
        raise Hold(HOLD_HEAT_UNREADABLE, f"equity {equity} <= 0: heat is meaningless")
    expected = open_risk / equity
    if abs(heat - expected) > settings.consistency_tolerance * max(expected, heat) + 1e-12:
        # e.g. a heat written in percent (6.0) against a limit in fractions (0.06): never guess
        raise Hold(HOLD_HEAT_UNREADABLE, f"heat {heat} != open_risk/equity {expected:.6g}")
    if time - now_ms > settings.max_future_ms:
        raise Hold(HOLD_HEAT_UNREADABLE, f"heat time {int(time)} is {int(time - now_ms)} ms in the future")
    age = now_ms - time
    if settings.clock is HeatClock.WALL and age > settings.max_age_ms:
        raise Hold(HOLD_HEAT_STALE, f"heat is {age / 1000:.1f} s old (limit {settings.max_age_ms / 1000:.0f} s)")
    return HeatReading(heat, open_risk, equity, int(positions), int(time))


def read_position(raw: Mapping[str, str] | None) -> GatePosition:
    """The ``position:<symbol>`` hash (written by position-state and the reconciler); raises :class:`Hold`."""
    if not raw:
        raise Hold(HOLD_POSITION_MISSING, "position hash is absent")
    side_text = raw.get("side")
    try:
        side = PositionSide(str(side_text).strip().upper())
    except ValueError:
        raise Hold(HOLD_POSITION_UNREADABLE, f"side {side_text!r}") from None
    qty = _number(raw, "qty", HOLD_POSITION_UNREADABLE)
    opened_at = _number(raw, "opened_at", HOLD_POSITION_UNREADABLE)
    if qty < 0:
        raise Hold(HOLD_POSITION_UNREADABLE, f"qty {qty} < 0")
    if side is PositionSide.FLAT or qty == 0:
        raise Hold(HOLD_POSITION_FLAT, "no open position")
    entry_text = raw.get("entry_price")
    entry = _number(raw, "entry_price", HOLD_POSITION_UNREADABLE) if entry_text not in (None, "") else None
    version_text = raw.get("version")
    version = int(_number(raw, "version", HOLD_POSITION_UNREADABLE)) if version_text not in (None, "") else 0
    updated_text = raw.get("updated_at")
    updated = int(_number(raw, "updated_at", HOLD_POSITION_UNREADABLE)) if updated_text not in (None, "") else 0
    return GatePosition(
        side=side, qty=qty, opened_at=int(opened_at), entry_price=entry, version=version, updated_at=updated
    )


def read_exit_brain(brain_raw: Mapping[str, str] | None) -> BrainState:
    """exit-brain's state hash (``state:exit-brain:<symbol>``); raises :class:`VerdictPending` when absent
    or unreadable (never a reason to pass)."""
    data = (brain_raw or {}).get("data")
    if not data:
        raise VerdictPending("exit-brain has no state for the symbol")
    try:
        return BrainState.from_json(json.loads(data))
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise VerdictPending(f"exit-brain's state is unreadable: {error}") from None


def exit_brain_exiting(proposal: HarvestProposal, brain_raw: Mapping[str, str] | None) -> None:
    """Raises :class:`Hold` (``exit_brain_exiting``) when exit-brain judged the proposal's bar (or a later
    one) with an exit in flight, for the trade the proposal is about or a newer one.

    Checked before the position, so the reason does not depend on whether that exit has filled yet:
    exit-brain's verdict outlives the close (``brain.apply_snapshot``), the position hash does not.
    """
    try:
        state = read_exit_brain(brain_raw)
    except VerdictPending:
        return  # no verdict to act on here; defer_to_exit_brain waits for one
    if state.pending_plan and state.evaluated_at >= proposal.time and state.last_opened_at <= proposal.time:
        raise Hold(HOLD_EXIT_BRAIN_EXITING, f"exit-brain's {state.pending_plan} closes the trade")


def defer_to_exit_brain(proposal: HarvestProposal, position: GatePosition, brain_raw: Mapping[str, str] | None) -> None:
    """exit-brain's verdict on the proposal's bar for the open ``position``.

    Returns when exit-brain evaluated that bar (or a later one) for this trade and has no exit in
    flight for it; raises :class:`Hold` (``exit_brain_exiting``) when it has one, and
    :class:`VerdictPending` when it has not judged the bar for this trade yet — including no state,
    an unreadable one, or another trade watched: nothing unknown lets a proposal pass.
    """
    state = read_exit_brain(brain_raw)
    watched = state.position
    if watched is None or watched.opened_at != position.opened_at:
        raise VerdictPending(f"exit-brain is not watching the trade opened at {position.opened_at}")
    if state.evaluated_at < proposal.time:
        raise VerdictPending(f"exit-brain evaluated up to {state.evaluated_at}, the proposal is for {proposal.time}")
    if state.pending_plan:
        raise Hold(HOLD_EXIT_BRAIN_EXITING, f"exit-brain's {state.pending_plan} closes the trade")


def gate(
    proposal: HarvestProposal,
    heat: HeatReading,
    position: GatePosition,
    settings: GateSettings,
) -> GateDecision:
    """Apply the heat rule to a proposal with trusted inputs; raises :class:`Hold` when it waits."""
    if position.opened_at > proposal.time:
        raise Hold(HOLD_POSITION_CHANGED, f"position opened at {position.opened_at}, proposal made at {proposal.time}")
    utilization = heat.heat / settings.max_portfolio_heat
    if proposal.action is HarvestAction.PARTIAL_CLOSE and utilization < settings.partial_min_utilization:
        raise Hold(
            HOLD_BELOW_PARTIAL,
            f"heat {heat.heat:.4f} is {utilization:.0%} of the limit (< {settings.partial_min_utilization:.0%})",
        )
    if proposal.action is HarvestAction.CLOSE:
        qty = position.qty
        codes: tuple[str, ...] = ("harvest_close",)
    elif proposal.action is HarvestAction.PARTIAL_CLOSE:
        qty = min(position.qty, proposal.fraction * position.qty)
        codes = ("harvest_partial",)
    else:
        # HOLD proposals are never emitted by harvest; one that arrives anyway is nothing to do
        raise Hold(HOLD_BELOW_PARTIAL, "HOLD proposal")
    if utilization >= 1.0:
        codes = (*codes, TAG_OVER_LIMIT)
    return GateDecision(
        utilization=utilization,
        side=position.side.closing_side,
        qty=qty,
        reason_codes=codes,
        opened_at=position.opened_at,
    )


def evaluate(
    proposal: HarvestProposal,
    heat_raw: Mapping[str, str] | None,
    position_raw: Mapping[str, str] | None,
    now_ms: int,
    settings: GateSettings,
    *,
    kill_switch_hold: bool,
    exit_brain: Mapping[str, str] | None = None,
    defers_to_exit_brain: bool = False,
) -> GateDecision:
    """Every check in order — kill switch, exit-brain exiting, heat, position, exit-brain's verdict on the bar
    (both when ``defers_to_exit_brain``: exit-brain runs), rule; raises :class:`Hold` on the first failure,
    :class:`VerdictPending` to wait.

    ``now_ms`` is on ``settings.clock`` (:func:`read_heat`).
    """
    if kill_switch_hold:
        raise Hold(HOLD_KILL_SWITCH, "kill switch forces non-baseline exits to SHADOW")
    if defers_to_exit_brain:
        exit_brain_exiting(proposal, exit_brain)
    heat = read_heat(heat_raw, now_ms, settings)
    position = read_position(position_raw)
    if settings.clock is HeatClock.MARKET and heat.time < position.updated_at:
        raise Hold(HOLD_HEAT_STALE, f"heat is as of {heat.time}, the position changed at {position.updated_at}")
    if position.opened_at > proposal.time:
        raise Hold(HOLD_POSITION_CHANGED, f"position opened at {position.opened_at}, proposal made at {proposal.time}")
    if defers_to_exit_brain:
        defer_to_exit_brain(proposal, position, exit_brain)
    return gate(proposal, heat, position, settings)


def plan_id_for(proposal: HarvestProposal) -> str:
    """Deterministic from the proposal id: a redelivered proposal can only make the same plan.

    Plan ids are at most 128 characters; a longer proposal id is replaced by its sha256 prefix.
    """
    plan_id = f"heat:{proposal.proposal_id}"
    if len(plan_id) <= 128:
        return plan_id
    return "heat:" + hashlib.sha256(proposal.proposal_id.encode("utf-8")).hexdigest()[:48]


def build_plan(proposal: HarvestProposal, decision: GateDecision, corr: str = "") -> Plan:
    """The EXIT plan for a passed proposal: closing side, reduce-only MARKET, sized by the decision."""
    return Plan(
        symbol=proposal.symbol,
        plan_id=plan_id_for(proposal),
        kind=PlanKind.EXIT,
        side=decision.side,
        order_type=OrderType.MARKET,
        qty=decision.qty,
        reduce_only=True,
        reason_codes=(*decision.reason_codes, *proposal.reasons[:1]),
        source=SOURCE,
        time=proposal.time,
        price=proposal.price,
        corr=corr,
        position_opened_at=decision.opened_at,
    )
