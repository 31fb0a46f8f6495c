"""exit-brain's state machine (pure): snapshots, no exit spam, shadow once, idle flatten, plans."""

from __future__ import annotations

import json

import pytest

from quantum_trader.contracts.messages import OrderType, PlanKind, PositionSide, PositionSnapshot, Side, Tick
from quantum_trader.exits import brain
from quantum_trader.exits.brain import BrainState
from quantum_trader.exits.rules import (
    CAUSE_ROLLOUT,
    FLATTEN,
    MAX_HOLD,
    STOP_LOSS,
    ExitControl,
    ExitDecision,
    RuleSettings,
    ShadowRecord,
)

OPENED = 1_700_000_000_000
LIVE = ExitControl(rollout_live=True)
SETTINGS = RuleSettings()


def snap(
    side: str = "LONG",
    qty: float = 2.0,
    version: int = 1,
    opened_at: int = OPENED,
    source: str = "position-state",
    sl: float | None = 95.0,
    tp: float | None = 110.0,
) -> PositionSnapshot:
    flat = side == "FLAT"
    return PositionSnapshot(
        symbol="BTCUSDT",
        side=PositionSide(side),
        qty=0.0 if flat else qty,
        entry_price=0.0 if flat else 100.0,
        mark_price=100.0,
        unrealized_pnl=0.0,
        stop_loss=None if flat else sl,
        take_profit=None if flat else tp,
        opened_at=0 if flat else opened_at,
        time=OPENED,
        source=source,
        version=version,
    )


def tick(price: float, t: int, low: float | None = None, high: float | None = None) -> Tick:
    return Tick(
        symbol="BTCUSDT", price=price, bid=price, ask=price, volume=1, event_time=t, low=low, high=high, source="test"
    )


def opened(**kwargs) -> BrainState:
    state = brain.apply_snapshot(BrainState(), snap(**kwargs))
    assert state is not None
    return state


# --- snapshots --------------------------------------------------------------------------------------
def test_a_snapshot_opens_a_view():
    state = opened()
    assert state.position is not None and state.position.side is PositionSide.LONG and state.position.qty == 2.0
    assert state.applied_version == 1 and state.pending_plan == ""


def test_same_position_keeps_learned_state_and_clears_the_pending_plan():
    state = opened()
    state = brain.on_tick(state, tick(94.0, OPENED + 1000), SETTINGS, LIVE).state
    assert state.pending_plan
    best = state.best
    after = brain.apply_snapshot(state, snap(qty=1.0, version=2))
    assert after is not None and after.position.qty == 1.0
    assert after.pending_plan == "" and after.best == best and after.last_time == OPENED + 1000


@pytest.mark.parametrize(
    ("second", "applied", "reset"),
    [
        (snap(version=0), False, False),  # older version of the same trade: stale
        (snap(version=1, qty=3.0), True, False),  # same version again: applied
        (snap(version=0, qty=3.0, source="reconciler"), True, False),  # the exchange is the truth
        (snap(version=0, opened_at=OPENED + 5), True, True),  # newer trade despite a counter reset
        (snap(side="SHORT", version=7, opened_at=OPENED + 5), True, True),
        (snap(side="FLAT", version=0), False, False),  # a late close of an earlier trade
        (snap(side="FLAT", version=2), True, True),
    ],
)
def test_snapshot_ordering(second, applied, reset):
    state = brain.on_tick(opened(version=1), tick(101.0, OPENED + 10), SETTINGS, LIVE).state
    after = brain.apply_snapshot(state, second)
    assert (after is not None) is applied
    if after is not None and reset:
        assert after.best is None and after.shadowed == ()
        assert after.last_time == OPENED + 10  # the market clock is kept
    if after is not None and second.side is PositionSide.FLAT:
        assert after.position is None and after.applied_version == second.version


def test_a_flat_state_does_not_reopen_from_a_late_snapshot():
    closed = brain.apply_snapshot(opened(version=1), snap(side="FLAT", version=3))
    assert closed is not None and closed.position is None and closed.last_opened_at == OPENED
    assert brain.apply_snapshot(closed, snap(version=2)) is None
    assert brain.apply_snapshot(closed, snap(version=4, opened_at=OPENED + 99)) is not None


def test_a_new_trade_after_a_close_is_watched_even_if_the_counter_was_reset():
    closed = brain.apply_snapshot(opened(version=9), snap(side="FLAT", version=10))
    reopened = brain.apply_snapshot(closed, snap(version=1, opened_at=OPENED + 5_000))
    assert reopened is not None and reopened.position is not None
    assert reopened.position.opened_at == OPENED + 5_000 and reopened.last_opened_at == OPENED + 5_000


# --- ticks -------------------------------------------------------------------------------------------
def test_no_position_no_change():
    outcome = brain.on_tick(BrainState(), tick(1.0, OPENED), SETTINGS, LIVE)
    assert outcome.changed is False and outcome.exit is None


def test_stop_hit_plans_once_then_waits_then_retries():
    state = opened()
    first = brain.on_tick(state, tick(94.0, OPENED + 1000), SETTINGS, LIVE, retry_after_ticks=3)
    assert first.exit is not None and first.exit.reason == STOP_LOSS
    assert first.plan_id == f"exit:BTCUSDT:{OPENED}:{OPENED + 1000}"
    state = first.state
    for i in range(1, 4):  # three ticks wait for the first plan's outcome
        outcome = brain.on_tick(state, tick(93.0, OPENED + 1000 + i), SETTINGS, LIVE, retry_after_ticks=3)
        assert outcome.exit is None and outcome.suppressed is True
        state = outcome.state
    retry = brain.on_tick(state, tick(93.0, OPENED + 2000), SETTINGS, LIVE, retry_after_ticks=3)
    assert retry.exit is not None and retry.plan_id == f"exit:BTCUSDT:{OPENED}:{OPENED + 2000}"


def test_a_new_snapshot_allows_the_next_plan_at_once():
    state = brain.on_tick(opened(), tick(94.0, OPENED + 1000), SETTINGS, LIVE).state
    state = brain.apply_snapshot(state, snap(qty=0.5, version=2))
    outcome = brain.on_tick(state, tick(93.0, OPENED + 1001), SETTINGS, LIVE)
    assert outcome.exit is not None and outcome.exit.reason == STOP_LOSS


def test_pending_clears_when_the_wait_is_over_and_nothing_fires():
    state = brain.on_tick(opened(), tick(94.0, OPENED + 1000), SETTINGS, LIVE, retry_after_ticks=1).state
    state = brain.on_tick(state, tick(100.0, OPENED + 1001), SETTINGS, LIVE, retry_after_ticks=1).state
    assert state.pending_plan != ""
    state = brain.on_tick(state, tick(100.0, OPENED + 1002), SETTINGS, LIVE, retry_after_ticks=1).state
    assert state.pending_plan == "" and state.ticks_since_plan == 0


def test_a_late_tick_changes_nothing():
    state = brain.on_tick(opened(), tick(101.0, OPENED + 5000), SETTINGS, LIVE).state
    outcome = brain.on_tick(state, tick(90.0, OPENED + 4000), SETTINGS, LIVE)
    assert outcome.changed is False and outcome.exit is None and outcome.state == state


def test_best_price_and_last_tick_are_tracked():
    state = opened()
    state = brain.on_tick(state, tick(103.0, OPENED + 1, high=104.0), SETTINGS, LIVE).state
    state = brain.on_tick(state, tick(102.0, OPENED + 2, high=102.5), SETTINGS, LIVE).state
    assert state.best == 104.0 and state.last_price == 102.0 and state.last_time == OPENED + 2


def test_shadow_records_are_made_once_per_position_and_rule():
    settings = RuleSettings(max_hold_minutes=1)
    shadow_control = ExitControl(rollout_live=False)
    state = opened()
    first = brain.on_tick(state, tick(100.0, OPENED + 60_000), settings, shadow_control)
    assert first.shadow == (ShadowRecord(MAX_HOLD, CAUSE_ROLLOUT),) and first.exit is None
    second = brain.on_tick(first.state, tick(100.0, OPENED + 120_000), settings, shadow_control)
    assert second.shadow == () and second.exit is None
    # a new trade is recorded again
    reopened = brain.apply_snapshot(second.state, snap(version=5, opened_at=OPENED + 200_000))
    third = brain.on_tick(reopened, tick(100.0, OPENED + 300_000), settings, shadow_control)
    assert third.shadow == (ShadowRecord(MAX_HOLD, CAUSE_ROLLOUT),)


# --- idle flatten ---------------------------------------------------------------------------------
FLATTEN_CONTROL = ExitControl(rollout_live=False, flatten=True)


def test_idle_flatten_once_per_generation():
    state = brain.on_tick(opened(), tick(101.0, OPENED + 7), SETTINGS, LIVE).state
    outcome = brain.idle_flatten(state, 4, FLATTEN_CONTROL)
    assert outcome.exit == ExitDecision(FLATTEN, advanced=False)
    assert outcome.plan_id == f"exit:BTCUSDT:{OPENED}:{OPENED + 7}:flatten-g4"
    again = brain.idle_flatten(outcome.state, 4, FLATTEN_CONTROL)
    assert again.exit is None and again.changed is False
    assert brain.idle_flatten(outcome.state, 5, FLATTEN_CONTROL).exit is not None


@pytest.mark.parametrize(
    ("state", "control"),
    [
        (BrainState(), FLATTEN_CONTROL),
        (opened(), ExitControl(rollout_live=True)),
        (opened(), ExitControl(rollout_live=True, flatten=True, blocks_exits=True, advanced_exits_shadow=True)),
    ],
)
def test_idle_flatten_does_nothing_without_reason(state, control):
    assert brain.idle_flatten(state, 1, control).exit is None


# --- messages and persistence --------------------------------------------------------------------------
@pytest.mark.parametrize(("side", "closing"), [("LONG", Side.SELL), ("SHORT", Side.BUY)])
def test_exit_plan(side, closing):
    position = opened(side=side, sl=105.0 if side == "SHORT" else 95.0, tp=90.0 if side == "SHORT" else 110.0).position
    plan = brain.exit_plan(position, ExitDecision(STOP_LOSS, False, 95.0), "exit:BTCUSDT:1:2", 94.5, 2, corr="c")
    assert plan.kind is PlanKind.EXIT and plan.side is closing and plan.qty == 2.0
    assert plan.reduce_only is True and plan.order_type is OrderType.MARKET
    assert plan.reason_codes == (STOP_LOSS,) and plan.source == "exit-brain"
    assert plan.time == 2 and plan.price == 94.5 and plan.corr == "c"


def test_state_round_trips_through_json():
    state = brain.on_tick(opened(), tick(94.0, OPENED + 1000, low=93.0), SETTINGS, LIVE).state
    state = brain.on_tick(
        state, tick(100.0, OPENED + 60_000), RuleSettings(max_hold_minutes=1), ExitControl(False)
    ).state
    text = json.dumps(state.to_json())
    assert BrainState.from_json(json.loads(text)) == state
    assert BrainState.from_json(BrainState().to_json()) == BrainState()
