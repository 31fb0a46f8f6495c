"""exit-brain's per-symbol state machine (pure): snapshots and ticks in, exits and shadow records out.

The service persists :class:`BrainState` in ``state:exit-brain:<symbol>`` in the same step as the
plan it emits, so a restarted (or another) replica continues exactly where this one stopped.

Not spamming exits: after a plan for a position, no other plan is made for it until a newer
``position.snapshot`` arrives (the fill, a partial fill or a rejection's unchanged state) or
``retry_after_ticks`` ticks of the symbol have passed. The governor would reject a second exit
with ``exit_in_flight`` anyway (invariant 6); this keeps the audit trail clean. If the first exit
was rejected, the next tick after the wait plans again with a new plan id.

exit-brain reads ``market.tick`` directly while an exit's fill travels governor, apply-layer and
position-state before its snapshot comes back, so under load the wait can end before the snapshot
arrives. The service therefore reads the symbol's position as position-state recorded it
(:class:`RecordedTrade`) with the state: when that says the watched trade is closed (flat, or
another trade opened since), no exit is planned for it — it could only be refused: the governor
rejects an exit for another trade than the open one as ``no_open_position`` (check 14: side and
``position_opened_at`` against ``position:<symbol>``) before it holds an exit lock, and apply-layer's
same check before any request is the second line, for a trade that changed after the approval.

Shadow records are made once per position and rule: a rule that keeps firing on every tick is
recorded the first time only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from quantum_trader.contracts.messages import (
    ExitShadow,
    OrderType,
    Plan,
    PlanKind,
    PositionSide,
    PositionSnapshot,
    Tick,
)
from quantum_trader.exits.position import PositionView, should_apply, view_of
from quantum_trader.exits.rules import (
    FLATTEN,
    ExitControl,
    ExitDecision,
    RuleSettings,
    ShadowRecord,
    evaluate,
    update_best,
)

SOURCE = "exit-brain"
RETRY_AFTER_TICKS = 20


@dataclass(frozen=True, slots=True)
class BrainState:
    position: PositionView | None = None
    applied_version: int = 0
    last_opened_at: int = 0
    """open time of the watched trade, or of the last one closed (to recognise a newer trade)"""
    best: float | None = None
    """best price since entry, from ticks before the last one evaluated (trailing/breakeven)"""
    last_price: float = 0.0
    last_time: int = 0
    pending_plan: str = ""
    """the last exit plan for this position, while we wait for its outcome; after the close, the exit
    that was in flight when it closed (until a new trade is watched)"""
    ticks_since_plan: int = 0
    shadowed: tuple[str, ...] = ()
    """rules already recorded on exit.shadow for this position"""
    flatten_generation: int = -1
    """kill-switch generation of the last idle flatten (one per generation and position)"""
    evaluated_at: int = 0
    """market time of the last tick evaluated for the watched trade (0: none yet). With ``pending_plan``
    it is exit-brain's verdict on that bar, which heat-gate waits for (see :func:`verdict_of`)"""

    def to_json(self) -> dict[str, Any]:
        return {
            "position": None if self.position is None else self.position.to_json(),
            "applied_version": self.applied_version,
            "last_opened_at": self.last_opened_at,
            "best": self.best,
            "last_price": self.last_price,
            "last_time": self.last_time,
            "pending_plan": self.pending_plan,
            "ticks_since_plan": self.ticks_since_plan,
            "shadowed": list(self.shadowed),
            "flatten_generation": self.flatten_generation,
            "evaluated_at": self.evaluated_at,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> BrainState:
        position = data.get("position")
        return BrainState(
            position=None if position is None else PositionView.from_json(position),
            applied_version=int(data.get("applied_version", 0)),
            last_opened_at=int(data.get("last_opened_at", 0)),
            best=None if data.get("best") is None else float(data["best"]),
            last_price=float(data.get("last_price", 0.0)),
            last_time=int(data.get("last_time", 0)),
            pending_plan=str(data.get("pending_plan", "")),
            ticks_since_plan=int(data.get("ticks_since_plan", 0)),
            shadowed=tuple(data.get("shadowed", ())),
            flatten_generation=int(data.get("flatten_generation", -1)),
            evaluated_at=int(data.get("evaluated_at", 0)),
        )


@dataclass(frozen=True, slots=True)
class RecordedTrade:
    """The symbol's position as position-state recorded it (``position:<symbol>``)."""

    side: PositionSide
    qty: float
    opened_at: int

    def is_closed(self, position: PositionView) -> bool:
        """The watched ``position`` is no longer open by this record: flat, or another trade."""
        return self.side is PositionSide.FLAT or self.qty <= 0 or self.opened_at != position.opened_at


@dataclass(frozen=True, slots=True)
class TickOutcome:
    state: BrainState
    exit: ExitDecision | None = None
    """an exit to plan now"""
    plan_id: str = ""
    shadow: tuple[ShadowRecord, ...] = ()
    """shadow records to emit now (not recorded before for this position)"""
    suppressed: bool = False
    """an exit fired but waits for the previous plan's outcome"""
    changed: bool = False
    """the state must be written"""
    closed: bool = False
    """an exit fired for a trade position-state has recorded closed: nothing planned"""


def exit_plan_id(symbol: str, opened_at: int, event_time: int, suffix: str = "") -> str:
    """Deterministic and unique per attempt: the position and the market time of the tick that decided."""
    return f"exit:{symbol}:{opened_at}:{event_time}{suffix}"


def apply_snapshot(state: BrainState, snapshot: PositionSnapshot) -> BrainState | None:
    """The state after a snapshot, or None when the snapshot is stale and must be ignored."""
    if not should_apply(state.last_opened_at, state.applied_version, snapshot):
        return None
    view = view_of(snapshot)
    if view is None:
        # the verdict on the trade's last bar (and the exit that closed it) outlives the close, so
        # heat-gate reads the same verdict before and after the fill settles
        return BrainState(
            applied_version=snapshot.version,
            last_opened_at=state.last_opened_at,
            last_price=state.last_price,
            last_time=state.last_time,
            pending_plan=state.pending_plan,
            evaluated_at=state.evaluated_at,
        )
    if state.position is not None and view.same_position(state.position):
        # the same trade (partial fill, moved levels, or the answer to our plan): keep what was
        # learned about it, and allow a new plan — the snapshot is the outcome we waited for
        return replace(state, position=view, applied_version=snapshot.version, pending_plan="", ticks_since_plan=0)
    return BrainState(
        position=view,
        applied_version=snapshot.version,
        last_opened_at=view.opened_at,
        last_price=state.last_price,
        last_time=state.last_time,
    )


def on_tick(
    state: BrainState,
    tick: Tick,
    settings: RuleSettings,
    control: ExitControl,
    retry_after_ticks: int = RETRY_AFTER_TICKS,
    recorded: RecordedTrade | None = None,
) -> TickOutcome:
    """``recorded``: the position hash as read with the state (None: no record, nothing is assumed)."""
    position = state.position
    if position is None:
        return TickOutcome(state)  # nothing to watch; no write per tick for idle symbols
    if tick.event_time < state.last_time:
        return TickOutcome(state)  # late tick (reordered across replicas): the position moved on
    evaluation = evaluate(position, tick, state.best, settings, control)
    shadow = tuple(s for s in evaluation.shadow if s.reason not in state.shadowed)
    waiting = bool(state.pending_plan) and state.ticks_since_plan + 1 <= retry_after_ticks
    new = replace(
        state,
        best=update_best(position, state.best, tick),
        last_price=tick.price,
        last_time=tick.event_time,
        evaluated_at=tick.event_time,
        shadowed=(*state.shadowed, *(s.reason for s in shadow)),
    )
    if waiting:
        new = replace(new, ticks_since_plan=state.ticks_since_plan + 1)
        return TickOutcome(new, shadow=shadow, suppressed=evaluation.exit is not None, changed=True)
    if evaluation.exit is None:
        return TickOutcome(replace(new, pending_plan="", ticks_since_plan=0), shadow=shadow, changed=True)
    if recorded is not None and recorded.is_closed(position):
        # the exit filled (or the trade was replaced) and its snapshot is still on the way
        return TickOutcome(new, shadow=shadow, changed=True, closed=True)
    plan_id = exit_plan_id(position.symbol, position.opened_at, tick.event_time)
    new = replace(new, pending_plan=plan_id, ticks_since_plan=0)
    return TickOutcome(new, exit=evaluation.exit, plan_id=plan_id, shadow=shadow, changed=True)


def idle_flatten(state: BrainState, generation: int, control: ExitControl) -> TickOutcome:
    """Flatten without waiting for a tick (market data may be stopped): once per generation and position.

    Priced at the last tick seen, or the entry price when none was seen yet (a reference price
    only; the order is MARKET).
    """
    position = state.position
    if position is None or not control.flatten or control.blocks_exits or state.flatten_generation == generation:
        return TickOutcome(state)
    plan_id = exit_plan_id(position.symbol, position.opened_at, state.last_time, f":flatten-g{generation}")
    new = replace(state, pending_plan=plan_id, ticks_since_plan=0, flatten_generation=generation)
    return TickOutcome(new, exit=ExitDecision(FLATTEN, advanced=False), plan_id=plan_id, changed=True)


def exit_plan(
    position: PositionView, decision: ExitDecision, plan_id: str, price: float, time: int, corr: str = ""
) -> Plan:
    """The EXIT plan: the whole position on the closing side, reduce-only MARKET (invariants 5 and 6).

    It names the trade it closes (``position_opened_at``): a retry made for a trade that closed
    meanwhile — exit-brain reads ticks ahead of the fill's snapshot — must not close, or be sent
    against, the next trade on the symbol (the governor rejects it as ``no_open_position``; apply-layer
    refuses it so too, before any request, when the trade changed after the approval).
    """
    return Plan(
        symbol=position.symbol,
        plan_id=plan_id,
        kind=PlanKind.EXIT,
        side=position.side.closing_side,
        order_type=OrderType.MARKET,
        qty=position.qty,
        reduce_only=True,
        reason_codes=(decision.reason,),
        source=SOURCE,
        time=time,
        price=price,
        corr=corr,
        position_opened_at=position.opened_at,
    )


def shadow_message(position: PositionView, record: ShadowRecord, tick: Tick) -> ExitShadow:
    return ExitShadow(
        symbol=position.symbol,
        time=tick.event_time,
        action=record.action,
        reason=record.reason,
        qty=position.qty,
        price=tick.price,
    )


def shadow_id(position: PositionView, record: ShadowRecord, event_time: int) -> str:
    return f"shadow:{position.symbol}:{position.opened_at}:{record.reason}:{event_time}"
