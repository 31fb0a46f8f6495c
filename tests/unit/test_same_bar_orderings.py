"""Two determinism rules, exhaustive over the arrival orders of one bar's events (pure).

A bar at market time ``t`` starts several producers at once: exit-brain and harvest (then heat-gate)
read the tick, the strategy signals, position-state settles fills. Whatever order their outputs
reach the governor in, the outcome must be the same:

1. an entry signalled on the bar whose exit closes the trade is refused ``position_open``
   (risk/limits.py ``open_at``), with or without a cooldown;
2. exit-brain and heat-gate never both exit one trade on one bar: heat-gate waits for exit-brain's
   verdict on the bar and drops a proposal for a trade exit-brain is exiting (exits/heat.py).

Each test walks every permutation of the events allowed by causality and requires one outcome.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import replace

import pytest

from quantum_trader.contracts.messages import HarvestAction, HarvestProposal, Plan, PositionSide, PositionSnapshot, Tick
from quantum_trader.exits import brain, heat
from quantum_trader.exits.brain import BrainState
from quantum_trader.exits.heat import GateSettings, HeatClock, Hold, VerdictPending
from quantum_trader.exits.rules import ExitControl, RuleSettings
from quantum_trader.risk.limits import GovernorState, Limits, Reason, decide
from tests.factories import entry, exit_plan, tick

HOUR = 3_600_000
OPENED = 1_700_000_000_000
T = OPENED + 3 * HOUR
"""the bar at which both controllers fire"""
SYMBOL = "ETHUSDT"
RELEASED = {"state": "released", "generation": "1", "scope": "", "flatten": "0"}


def orderings(events: Iterable[str], before: Iterable[tuple[str, str]]) -> Iterator[tuple[str, ...]]:
    """Every permutation of ``events`` in which each ``(a, b)`` of ``before`` has ``a`` first."""
    constraints = list(before)
    for order in itertools.permutations(events):
        if all(order.index(a) < order.index(b) for a, b in constraints):
            yield order


def limits(cooldown_ms: int) -> Limits:
    return Limits(
        allowlist=frozenset({SYMBOL}),
        max_leverage=5,
        max_notional_per_trade=1_000.0,
        max_total_notional=10_000.0,
        max_open_positions=5,
        max_entries_per_hour=10,
        max_entries_per_five_minutes=10,
        cooldown_ms=cooldown_ms,
        approval_ttl_ms=30_000,
    )


# --- 1. the entry on the bar whose exit closes the trade -------------------------------------------
def entry_verdict(order: tuple[str, ...], cooldown_ms: int, signal_time: int) -> Reason | None:
    """Walk one ordering: the governor decides the exit, position-state settles it (the close at ``T``),
    the governor decides the entry signalled at ``signal_time``; returns the entry's verdict."""
    state = GovernorState(control=RELEASED, open_positions={SYMBOL: 100.0})
    rules = limits(cooldown_ms)
    verdict: Reason | None = None
    for event in order:
        if event == "exit decided":
            assert decide(exit_plan(SYMBOL, "exit", 1.0, t=T), state, rules) is None
            state = replace(state, exit_locks={SYMBOL: "exit"})
        elif event == "exit settled":
            state = replace(state, open_positions={}, exit_locks={}, cooldowns={SYMBOL: T})
        else:
            verdict = decide(entry(SYMBOL, "entry", t=signal_time), state, rules)
    return verdict


ENTRY_EVENTS = ("exit decided", "exit settled", "entry decided")
ENTRY_ORDERS = list(orderings(ENTRY_EVENTS, [("exit decided", "exit settled")]))


def test_every_order_of_exit_decision_settlement_and_entry_is_walked() -> None:
    assert len(ENTRY_ORDERS) == 3  # entry first, between the exit's approval and its fill, after the fill


@pytest.mark.parametrize("cooldown_ms", [0, 300_000, HOUR])
@pytest.mark.parametrize("signal_time", [T - HOUR, T])
def test_an_entry_signalled_while_the_trade_was_open_is_position_open_in_every_order(cooldown_ms, signal_time):
    verdicts = {order: entry_verdict(order, cooldown_ms, signal_time) for order in ENTRY_ORDERS}
    assert set(verdicts.values()) == {Reason.POSITION_OPEN}, verdicts


def test_without_cooldown_the_next_bar_enters_once_the_close_is_settled() -> None:
    settled = entry_verdict(("exit decided", "exit settled", "entry decided"), 0, T + HOUR)
    assert settled is None
    with_cooldown = entry_verdict(("exit decided", "exit settled", "entry decided"), 2 * HOUR, T + HOUR)
    assert with_cooldown is Reason.COOLDOWN


# --- 2. exit-brain and heat-gate on one bar --------------------------------------------------------
ENTRY_PRICE, STOP = 160.0, 165.0
SETTINGS = GateSettings(max_portfolio_heat=0.06, clock=HeatClock.MARKET)


def watched_state(take_profit: float) -> BrainState:
    snapshot = PositionSnapshot(
        symbol=SYMBOL,
        side=PositionSide.SHORT,
        qty=8.0,
        entry_price=ENTRY_PRICE,
        mark_price=ENTRY_PRICE,
        unrealized_pnl=0.0,
        stop_loss=STOP,
        take_profit=take_profit,
        opened_at=OPENED,
        time=OPENED,
        source="position-state",
        version=1,
    )
    state = brain.apply_snapshot(BrainState(), snapshot)
    assert state is not None
    return brain.on_tick(state, tick(SYMBOL, 158.0, T - HOUR), RuleSettings(), ExitControl(rollout_live=True)).state


def bar_tick(price: float) -> Tick:
    return tick(SYMBOL, price, T)


PROPOSAL = HarvestProposal(
    symbol=SYMBOL,
    proposal_id=f"harvest:{SYMBOL}:{OPENED}:partial_2r",
    time=T,
    action=HarvestAction.PARTIAL_CLOSE,
    fraction=0.5,
    r_multiple=2.2,
    kill_score=0.1,
    price=149.0,
    reasons=("partial_2r",),
)
POSITION = {"side": "SHORT", "qty": "8.0", "entry_price": "160.0", "opened_at": str(OPENED), "updated_at": str(OPENED)}
HEAT = {"heat": "0.05", "open_risk": "500.0", "equity": "10000.0", "positions": "1", "market_time": str(OPENED)}


def settled_snapshot(plan: Plan, state: BrainState, version: int) -> PositionSnapshot:
    """position-state's snapshot after ``plan`` filled: flat after a whole exit, the rest after a partial."""
    position = state.position
    assert position is not None
    rest = position.qty - plan.qty
    return PositionSnapshot(
        symbol=SYMBOL, side=PositionSide.SHORT if rest > 0 else PositionSide.FLAT, qty=max(rest, 0.0),
        entry_price=ENTRY_PRICE if rest > 0 else 0.0, mark_price=149.0, unrealized_pnl=0.0,
        stop_loss=STOP if rest > 0 else None, take_profit=position.take_profit if rest > 0 else None,
        opened_at=OPENED if rest > 0 else 0, time=T, source="position-state", version=version,
    )  # fmt: skip


def race(order: tuple[str, ...], take_profit: float) -> tuple[list[str], list[str]]:
    """One ordering of: exit-brain evaluates the bar, heat-gate tries the proposal (waiting while the
    verdict is pending: it tries again after every later event), each plan reaching the governor, and
    position-state settling each approved plan (the position, the heat and exit-brain's snapshot).
    Returns (approved plan ids, heat-gate's hold reasons)."""
    state = watched_state(take_profit)
    position, heat_hash = dict(POSITION), dict(HEAT)
    governor = GovernorState(control=RELEASED, open_positions={SYMBOL: 1_280.0})
    rules = limits(0)
    queue: list[Plan] = []
    approved: list[str] = []
    to_settle: dict[str, Plan] = {}
    holds: list[str] = []
    gate_waiting = False

    def gate_tries() -> bool:
        """True when heat-gate decided (a plan or a hold), False while it waits."""
        try:
            decision = heat.evaluate(
                PROPOSAL, heat_hash, position, PROPOSAL.time, SETTINGS, kill_switch_hold=False,
                exit_brain={"rev": "1", "data": json.dumps(state.to_json())}, defers_to_exit_brain=True,
            )  # fmt: skip
        except VerdictPending:
            return False
        except Hold as hold:
            holds.append(hold.reason)
            return True
        queue.append(heat.build_plan(PROPOSAL, decision))
        return True

    def governor_takes_one(turn: str) -> None:
        nonlocal governor
        if not queue:
            return
        plan = queue.pop(0)
        if decide(plan, governor, rules) is None:
            approved.append(plan.plan_id)
            to_settle[turn] = plan
            governor = replace(governor, exit_locks={SYMBOL: plan.plan_id})

    def settle(turn: str) -> None:
        nonlocal state, governor
        plan = to_settle.pop(turn, None)
        if plan is None:
            return
        snapshot = settled_snapshot(plan, state, version=2 + len(approved))
        open_positions = {SYMBOL: snapshot.qty * ENTRY_PRICE} if snapshot.qty else {}
        governor = replace(governor, open_positions=open_positions, exit_locks={},
                           cooldowns={} if snapshot.qty else {SYMBOL: T})  # fmt: skip
        position.update(side=snapshot.side.value, qty=repr(snapshot.qty), opened_at=str(snapshot.opened_at),
                        updated_at=str(T))  # fmt: skip
        heat_hash["market_time"] = str(T)
        applied = brain.apply_snapshot(state, snapshot)
        assert applied is not None
        state = applied

    for event in order:
        if event == "exit-brain":
            outcome = brain.on_tick(state, bar_tick(149.0), RuleSettings(), ExitControl(rollout_live=True))
            state = outcome.state
            if outcome.exit is not None:
                queue.append(brain.exit_plan(outcome.state.position, outcome.exit, outcome.plan_id, 149.0, T))
        elif event == "heat-gate":
            gate_waiting = not gate_tries()
        elif event.startswith("governor"):
            governor_takes_one(event.split()[-1])
        else:
            settle(event.split()[-1])
        if gate_waiting and event != "heat-gate":
            gate_waiting = not gate_tries()
    while queue:  # a plan made after both governor turns of the walk is decided and settled after it
        governor_takes_one("late")
        settle("late")
    assert not to_settle and not gate_waiting, "every plan settled, the proposal decided"
    return approved, holds


RACE_EVENTS = ("exit-brain", "heat-gate", "governor 1", "governor 2", "settle 1", "settle 2")
RACE_ORDERS = list(
    orderings(RACE_EVENTS, [("governor 1", "governor 2"), ("governor 1", "settle 1"), ("governor 2", "settle 2")])
)


def test_every_order_of_the_two_controllers_and_the_governor_is_walked() -> None:
    assert len(RACE_ORDERS) == 90  # 6! / (3 * 2 * ...): governor 1 before 2, each before its settlement


def test_when_exit_brain_exits_on_the_bar_its_exit_wins_in_every_order() -> None:
    outcomes = {order: race(order, take_profit=150.0) for order in RACE_ORDERS}  # 149 hits the target
    expected = ([brain.exit_plan_id(SYMBOL, OPENED, T)], [heat.HOLD_EXIT_BRAIN_EXITING])
    assert all(outcome == expected for outcome in outcomes.values()), outcomes


def test_when_exit_brain_holds_on_the_bar_the_harvest_passes_in_every_order() -> None:
    outcomes = {order: race(order, take_profit=140.0) for order in RACE_ORDERS}  # 149 is above the target
    expected = ([heat.plan_id_for(PROPOSAL)], [])
    assert all(outcome == expected for outcome in outcomes.values()), outcomes


# --- exit-brain's verdict, fail closed -------------------------------------------------------------
def verdict_raw(state: BrainState | None) -> dict[str, str]:
    return {} if state is None else {"rev": "1", "data": json.dumps(state.to_json())}


def gate_position(opened_at: int = OPENED) -> heat.GatePosition:
    return heat.GatePosition(side=PositionSide.SHORT, qty=8.0, opened_at=opened_at)


@pytest.mark.parametrize(
    "raw",
    [
        {},  # no state
        {"rev": "1"},  # no data
        {"rev": "1", "data": "{not json"},
        {"rev": "1", "data": json.dumps({"evaluated_at": "soon"})},
        verdict_raw(BrainState()),  # not watching any trade
        verdict_raw(replace(watched_state(140.0), evaluated_at=T - 1)),  # has not evaluated the bar
    ],
)
def test_a_missing_unreadable_or_earlier_verdict_waits(raw) -> None:
    with pytest.raises(VerdictPending):
        heat.defer_to_exit_brain(PROPOSAL, gate_position(), raw)


def test_a_verdict_for_another_trade_waits() -> None:
    with pytest.raises(VerdictPending):
        heat.defer_to_exit_brain(PROPOSAL, gate_position(OPENED + 1), verdict_raw(watched_state(140.0)))


def test_a_verdict_on_the_bar_or_later_decides() -> None:
    judged = replace(watched_state(140.0), evaluated_at=T)
    assert heat.defer_to_exit_brain(PROPOSAL, gate_position(), verdict_raw(judged)) is None
    later = replace(judged, evaluated_at=T + HOUR)
    assert heat.defer_to_exit_brain(PROPOSAL, gate_position(), verdict_raw(later)) is None
    exiting = replace(judged, pending_plan="exit:ETHUSDT:1:2")
    with pytest.raises(Hold) as held:
        heat.defer_to_exit_brain(PROPOSAL, gate_position(), verdict_raw(exiting))
    assert held.value.reason == heat.HOLD_EXIT_BRAIN_EXITING


def test_exit_brain_records_the_bar_it_evaluated_and_forgets_it_for_a_new_trade() -> None:
    state = watched_state(140.0)
    assert state.evaluated_at == T - HOUR
    after = brain.on_tick(state, bar_tick(149.0), RuleSettings(), ExitControl(rollout_live=True)).state
    assert after.evaluated_at == T
    assert BrainState.from_json(json.loads(json.dumps(after.to_json()))).evaluated_at == T
    late_tick = bar_tick(150.0).model_copy(update={"event_time": T - 1})
    late = brain.on_tick(after, late_tick, RuleSettings(), ExitControl(rollout_live=True))
    assert late.state.evaluated_at == T  # a late tick is not evaluated
    new_trade = PositionSnapshot(
        symbol=SYMBOL, side=PositionSide.LONG, qty=1.0, entry_price=150.0, mark_price=150.0, unrealized_pnl=0.0,
        stop_loss=140.0, take_profit=170.0, opened_at=T + HOUR, time=T + HOUR, source="position-state", version=5,
    )  # fmt: skip
    fresh = brain.apply_snapshot(after, new_trade)
    assert fresh is not None and fresh.evaluated_at == 0, "a new trade has no verdict until its first tick"


# --- heat's clock in replays -----------------------------------------------------------------------
def test_in_market_time_heat_has_no_wall_age_but_must_include_the_positions_last_fill() -> None:
    old = {**HEAT, "time": "1"}  # a wall time decades ago: irrelevant in a replay
    decision = heat.evaluate(PROPOSAL, old, POSITION, PROPOSAL.time, SETTINGS, kill_switch_hold=False)
    assert decision.reason_codes[0] == "harvest_partial"
    behind = {**POSITION, "updated_at": str(OPENED + 1)}
    with pytest.raises(Hold) as held:
        heat.evaluate(PROPOSAL, old, behind, PROPOSAL.time, SETTINGS, kill_switch_hold=False)
    assert held.value.reason == heat.HOLD_HEAT_STALE
    ahead = {**HEAT, "market_time": str(T + HOUR)}
    with pytest.raises(Hold) as held:
        heat.evaluate(PROPOSAL, ahead, POSITION, PROPOSAL.time, SETTINGS, kill_switch_hold=False)
    assert held.value.reason == heat.HOLD_HEAT_UNREADABLE
    no_market_time = {k: v for k, v in HEAT.items() if k != "market_time"}
    with pytest.raises(Hold) as held:
        heat.evaluate(PROPOSAL, no_market_time, POSITION, PROPOSAL.time, SETTINGS, kill_switch_hold=False)
    assert held.value.reason == heat.HOLD_HEAT_UNREADABLE


def test_the_same_inputs_decide_the_same_whatever_the_wall_clock() -> None:
    """The replay clock is the proposal's time: no wall-clock value enters the decision."""
    decisions = {
        heat.evaluate(PROPOSAL, {**HEAT, "time": str(wall)}, POSITION, PROPOSAL.time, SETTINGS, kill_switch_hold=False)
        for wall in (0, 1_700_000_000_000, 1_800_000_000_000, 2**40)
    }
    assert len(decisions) == 1
