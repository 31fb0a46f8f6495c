"""exit-brain's rules (pure): every reason, both sides, live vs shadow, every kill-switch scope."""

from __future__ import annotations

import pytest

from quantum_trader.bus.control import parse_control
from quantum_trader.contracts.messages import PositionSide, Tick
from quantum_trader.exits.position import PositionView
from quantum_trader.exits.rollout import RolloutConfig
from quantum_trader.exits.rules import (
    BREAKEVEN_STOP,
    CAUSE_KILL_ALL,
    CAUSE_KILL_EXITS,
    CAUSE_ROLLOUT,
    FLATTEN,
    MAX_HOLD,
    STOP_LOSS,
    TAKE_PROFIT,
    TRAILING_STOP,
    ExitControl,
    RuleSettings,
    ShadowRecord,
    decide,
    evaluate,
    profit_lock_level,
    update_best,
)
from quantum_trader.services.exit_brain import exit_control

OPENED = 1_700_000_000_000
LIVE = ExitControl(rollout_live=True)
DEFAULT = RuleSettings()


def pos(side: str = "LONG", sl: float | None = None, tp: float | None = None, opened_at: int = OPENED) -> PositionView:
    if side == "LONG":
        sl, tp = (95.0 if sl is None else sl), (110.0 if tp is None else tp)
    else:
        sl, tp = (105.0 if sl is None else sl), (90.0 if tp is None else tp)
    return PositionView("BTCUSDT", PositionSide(side), 2.0, 100.0, sl, tp, opened_at, 1)


def tick(price: float, high: float | None = None, low: float | None = None, t: int = OPENED + 60_000) -> Tick:
    return Tick(
        symbol="BTCUSDT", price=price, bid=price, ask=price, volume=1, event_time=t, high=high, low=low, source="test"
    )


# --- baseline rules ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("side", "price", "high", "low", "expected"),
    [
        ("LONG", 100.0, None, None, None),
        ("LONG", 95.01, None, None, None),
        ("LONG", 95.0, None, None, STOP_LOSS),  # at the stop is through it
        ("LONG", 90.0, None, None, STOP_LOSS),
        ("LONG", 97.0, 98.0, 94.9, STOP_LOSS),  # the bar's low touched it
        ("LONG", 109.99, None, None, None),
        ("LONG", 110.0, None, None, TAKE_PROFIT),
        ("LONG", 105.0, 110.5, 104.0, TAKE_PROFIT),  # the bar's high touched it
        ("LONG", 105.0, 111.0, 94.0, STOP_LOSS),  # both on one bar: the stop wins (pessimistic)
        ("LONG", 111.0, 111.0, 94.0, STOP_LOSS),
        ("SHORT", 100.0, None, None, None),
        ("SHORT", 105.0, None, None, STOP_LOSS),
        ("SHORT", 103.0, 105.1, 102.0, STOP_LOSS),
        ("SHORT", 90.0, None, None, TAKE_PROFIT),
        ("SHORT", 95.0, 96.0, 89.5, TAKE_PROFIT),
        ("SHORT", 95.0, 106.0, 89.0, STOP_LOSS),
        ("SHORT", 94.0, 104.9, 90.01, None),
    ],
)
def test_baseline_levels(side, price, high, low, expected):
    decision = decide(pos(side), tick(price, high, low), None, DEFAULT, LIVE)
    assert (decision.reason if decision else None) == expected
    if decision is not None:
        assert decision.advanced is False
        assert decision.level == (pos(side).stop_loss if expected == STOP_LOSS else pos(side).take_profit)


def test_no_levels_no_baseline_exit():
    bare = PositionView("BTCUSDT", PositionSide.LONG, 1.0, 100.0, None, None, OPENED)
    assert decide(bare, tick(1.0, 500.0, 0.5), None, DEFAULT, LIVE) is None


@pytest.mark.parametrize("side", ["LONG", "SHORT"])
def test_flatten_closes_whatever_the_levels(side):
    decision = decide(pos(side), tick(100.0), None, DEFAULT, ExitControl(rollout_live=False, flatten=True))
    assert decision is not None and decision.reason == FLATTEN and decision.level is None


def test_flatten_outranks_a_stop_hit():
    evaluation = evaluate(pos(), tick(90.0), None, DEFAULT, ExitControl(rollout_live=False, flatten=True))
    assert evaluation.exit is not None and evaluation.exit.reason == FLATTEN
    assert evaluation.shadow == ()


# --- advanced: breakeven and trailing -----------------------------------------------------------------
ADV_LONG = pos("LONG", sl=95.0, tp=200.0)  # R = 5; target far away so only the profit lock can fire
ADV_SHORT = pos("SHORT", sl=105.0, tp=10.0)


@pytest.mark.parametrize(
    ("position", "best", "expected"),
    [
        (ADV_LONG, None, None),
        (ADV_LONG, 100.0, None),
        (ADV_LONG, 104.99, None),
        (ADV_LONG, 105.0, (BREAKEVEN_STOP, 100.0)),  # 1 R: stop to entry
        (ADV_LONG, 109.99, (BREAKEVEN_STOP, 100.0)),
        (ADV_LONG, 110.0, (TRAILING_STOP, 105.0)),  # 2 R: trail 1 R behind the best
        (ADV_LONG, 117.0, (TRAILING_STOP, 112.0)),
        (ADV_SHORT, 95.0, (BREAKEVEN_STOP, 100.0)),
        (ADV_SHORT, 90.0, (TRAILING_STOP, 95.0)),
        (ADV_SHORT, 80.0, (TRAILING_STOP, 85.0)),
        (PositionView("BTCUSDT", PositionSide.LONG, 1.0, 100.0, None, None, OPENED), 150.0, None),  # no R
    ],
)
def test_profit_lock_levels(position, best, expected):
    assert profit_lock_level(position, best, DEFAULT) == expected


def test_trailing_stop_is_never_worse_than_entry():
    wide = RuleSettings(trail_distance_r=3.0)
    assert profit_lock_level(ADV_LONG, 110.0, wide) == (TRAILING_STOP, 100.0)
    assert profit_lock_level(ADV_SHORT, 90.0, wide) == (TRAILING_STOP, 100.0)


def test_profit_lock_thresholds_of_zero_turn_it_off():
    off = RuleSettings(breakeven_r=0, trail_activate_r=0)
    assert profit_lock_level(ADV_LONG, 150.0, off) is None
    only_trail = RuleSettings(breakeven_r=0)
    assert profit_lock_level(ADV_LONG, 107.0, only_trail) is None
    assert profit_lock_level(ADV_LONG, 111.0, only_trail) == (TRAILING_STOP, 106.0)


@pytest.mark.parametrize(
    ("position", "best", "t", "expected"),
    [
        (ADV_LONG, 106.0, tick(101.0, 102.0, 100.5), None),
        (ADV_LONG, 106.0, tick(100.0), BREAKEVEN_STOP),
        (ADV_LONG, 106.0, tick(101.0, 102.0, 99.9), BREAKEVEN_STOP),
        (ADV_LONG, 112.0, tick(108.0, 109.0, 107.1), None),  # trail at 107
        (ADV_LONG, 112.0, tick(108.0, 109.0, 107.0), TRAILING_STOP),
        (ADV_SHORT, 94.0, tick(99.0, 99.9, 98.0), None),
        (ADV_SHORT, 94.0, tick(99.0, 100.0, 98.0), BREAKEVEN_STOP),
        (ADV_SHORT, 88.0, tick(92.0, 93.0, 91.0), TRAILING_STOP),  # trail at 93
        (ADV_SHORT, 88.0, tick(92.0, 92.9, 91.0), None),
    ],
)
def test_profit_lock_hits(position, best, t, expected):
    decision = decide(position, t, best, DEFAULT, LIVE)
    assert (decision.reason if decision else None) == expected
    if decision is not None:
        assert decision.advanced is True


def test_profit_lock_uses_only_earlier_ticks():
    # this bar goes to 3 R and back to entry: its own high must not arm a stop its own low then hits
    spike = tick(101.0, 115.0, 100.0)
    assert decide(ADV_LONG, spike, None, DEFAULT, LIVE) is None
    best = update_best(ADV_LONG, None, spike)
    assert best == 115.0
    assert decide(ADV_LONG, tick(109.0, 111.0, 109.0), best, DEFAULT, LIVE).reason == TRAILING_STOP


@pytest.mark.parametrize(
    ("position", "best", "t", "expected"),
    [
        (ADV_LONG, None, tick(103.0), 103.0),
        (ADV_LONG, 110.0, tick(103.0, 108.0, 101.0), 110.0),
        (ADV_LONG, 110.0, tick(109.0, 112.0, 101.0), 112.0),
        (ADV_LONG, None, tick(90.0), 100.0),  # never below the entry
        (ADV_SHORT, None, tick(97.0, 99.0, 96.0), 96.0),
        (ADV_SHORT, 94.0, tick(97.0, 99.0, 95.0), 94.0),
        (ADV_SHORT, None, tick(120.0), 100.0),
    ],
)
def test_update_best(position, best, t, expected):
    assert update_best(position, best, t) == expected


# --- advanced: max hold ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("minutes", "opened_at", "elapsed_ms", "fires"),
    [
        (0, OPENED, 10**9, False),  # off
        (60, OPENED, 3_600_000 - 1, False),
        (60, OPENED, 3_600_000, True),
        (60, OPENED, 7_200_000, True),
        (60, 0, 10**12, False),  # unknown open time: cannot tell the age
    ],
)
def test_max_hold(minutes, opened_at, elapsed_ms, fires):
    position = pos("SHORT", opened_at=opened_at)
    t = tick(100.0, t=(opened_at or OPENED) + elapsed_ms)
    decision = decide(position, t, None, RuleSettings(max_hold_minutes=minutes), LIVE)
    assert (decision.reason if decision else None) == (MAX_HOLD if fires else None)


# --- live or shadow: rollout and kill switch -----------------------------------------------------------
def control(scope: str | None, flatten: bool = False):
    if scope is None:
        return parse_control({"state": "released", "generation": "3"})
    return parse_control({"state": "engaged", "scope": scope, "flatten": "1" if flatten else "0", "generation": "4"})


LIVE_ROLLOUT = RolloutConfig("LIVE", 100)
SHADOW_ROLLOUT = RolloutConfig("SHADOW", 100)
HOLD = RuleSettings(max_hold_minutes=1)
OLD = OPENED + 3_600_000


@pytest.mark.parametrize(
    ("scope", "rollout", "t", "exit_reason", "shadow"),
    [
        # baseline stop: live under everything but scope all (invariant 8)
        (None, SHADOW_ROLLOUT, tick(94.0, t=OPENED + 1), STOP_LOSS, ()),
        ("entries", SHADOW_ROLLOUT, tick(94.0, t=OPENED + 1), STOP_LOSS, ()),
        ("exits", SHADOW_ROLLOUT, tick(94.0, t=OPENED + 1), STOP_LOSS, ()),
        ("all", LIVE_ROLLOUT, tick(94.0, t=OPENED + 1), None, ((STOP_LOSS, CAUSE_KILL_ALL),)),
        ("exits", LIVE_ROLLOUT, tick(111.0, t=OPENED + 1), TAKE_PROFIT, ()),
        ("all", LIVE_ROLLOUT, tick(111.0, t=OPENED + 1), None, ((TAKE_PROFIT, CAUSE_KILL_ALL),)),
        # advanced max hold: live only with a live rollout and no exits/all kill switch
        (None, LIVE_ROLLOUT, tick(100.0, t=OLD), MAX_HOLD, ()),
        ("entries", LIVE_ROLLOUT, tick(100.0, t=OLD), MAX_HOLD, ()),
        (None, SHADOW_ROLLOUT, tick(100.0, t=OLD), None, ((MAX_HOLD, CAUSE_ROLLOUT),)),
        (None, RolloutConfig("LIVE", 0), tick(100.0, t=OLD), None, ((MAX_HOLD, CAUSE_ROLLOUT),)),
        (None, RolloutConfig("LIVE", 0, pinned_live=("BTCUSDT",)), tick(100.0, t=OLD), MAX_HOLD, ()),
        (
            None,
            RolloutConfig("LIVE", 100, pinned_shadow=("BTCUSDT",)),
            tick(100.0, t=OLD),
            None,
            ((MAX_HOLD, CAUSE_ROLLOUT),),
        ),
        ("exits", LIVE_ROLLOUT, tick(100.0, t=OLD), None, ((MAX_HOLD, CAUSE_KILL_EXITS),)),
        ("all", LIVE_ROLLOUT, tick(100.0, t=OLD), None, ((MAX_HOLD, CAUSE_KILL_ALL),)),
        # both at once: the baseline stop goes out, the advanced rule is recorded
        ("exits", LIVE_ROLLOUT, tick(94.0, t=OLD), STOP_LOSS, ((MAX_HOLD, CAUSE_KILL_EXITS),)),
        (None, SHADOW_ROLLOUT, tick(94.0, t=OLD), STOP_LOSS, ((MAX_HOLD, CAUSE_ROLLOUT),)),
        (None, LIVE_ROLLOUT, tick(94.0, t=OLD), STOP_LOSS, ()),  # a live lower-priority rule is simply not needed
        ("all", LIVE_ROLLOUT, tick(94.0, t=OLD), None, ((STOP_LOSS, CAUSE_KILL_ALL), (MAX_HOLD, CAUSE_KILL_ALL))),
    ],
)
def test_liveness_table(scope, rollout, t, exit_reason, shadow):
    gate = exit_control(control(scope), rollout, "BTCUSDT")
    evaluation = evaluate(pos("LONG"), t, None, HOLD, gate)
    assert (evaluation.exit.reason if evaluation.exit else None) == exit_reason
    assert evaluation.shadow == tuple(ShadowRecord(r, c) for r, c in shadow)


@pytest.mark.parametrize(
    ("scope", "expected_exit", "expected_shadow"),
    [("entries", FLATTEN, ()), ("exits", FLATTEN, ()), ("all", None, ((FLATTEN, CAUSE_KILL_ALL),))],
)
def test_flatten_under_each_scope(scope, expected_exit, expected_shadow):
    gate = exit_control(control(scope, flatten=True), SHADOW_ROLLOUT, "BTCUSDT")
    evaluation = evaluate(pos("SHORT"), tick(100.0), None, DEFAULT, gate)
    assert (evaluation.exit.reason if evaluation.exit else None) == expected_exit
    assert evaluation.shadow == tuple(ShadowRecord(r, c) for r, c in expected_shadow)


def test_missing_control_key_means_nothing_is_sent():
    gate = exit_control(parse_control(None), LIVE_ROLLOUT, "BTCUSDT")
    evaluation = evaluate(pos("LONG"), tick(90.0), None, DEFAULT, gate)
    assert evaluation.exit is None
    assert evaluation.shadow == (ShadowRecord(STOP_LOSS, CAUSE_KILL_ALL),)


def test_shadow_record_action_names_the_cause():
    assert ShadowRecord(MAX_HOLD, CAUSE_ROLLOUT).action == "EXIT/rollout"


@pytest.mark.parametrize(
    "kwargs", [{"max_hold_minutes": -1}, {"breakeven_r": -0.5}, {"trail_activate_r": -1}, {"trail_distance_r": 0}]
)
def test_rule_settings_refuse_nonsense(kwargs):
    with pytest.raises(ValueError):
        RuleSettings(**kwargs)
