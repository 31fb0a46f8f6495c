"""harvest's R multiple, kill score and proposal rules (pure)."""

from __future__ import annotations

import json

import pytest

from quantum_trader.contracts.messages import HarvestAction, PositionSide, Tick
from quantum_trader.exits.harvest import (
    KILL_RULE,
    PARTIAL_RULE,
    HarvestSettings,
    HarvestState,
    giveback,
    kill_score,
    momentum_against,
    on_tick,
    proposal_id,
    r_multiple,
)
from quantum_trader.exits.position import PositionView

OPENED = 1_700_000_000_000
S = HarvestSettings()
LONG = PositionView("BTCUSDT", PositionSide.LONG, 2.0, 100.0, 95.0, 130.0, OPENED, 1)  # R = 5
SHORT = PositionView("BTCUSDT", PositionSide.SHORT, 2.0, 100.0, 105.0, 70.0, OPENED, 1)
NO_STOP = PositionView("BTCUSDT", PositionSide.LONG, 2.0, 100.0, None, None, OPENED, 1)


def tick(price: float, t: int, high: float | None = None, low: float | None = None) -> Tick:
    return Tick(
        symbol="BTCUSDT", price=price, bid=price, ask=price, volume=1, event_time=t, high=high, low=low, source="test"
    )


def run(position: PositionView, prices: list[float], state: HarvestState | None = None):
    state = state or HarvestState().opened(position, 1)
    proposals = []
    for i, price in enumerate(prices):
        state, proposal = on_tick(state, tick(price, max(state.last_time, OPENED) + 1000 * (i + 1)), S)
        proposals.append(proposal)
    return state, proposals


@pytest.mark.parametrize(
    ("position", "price", "expected"),
    [
        (LONG, 100.0, 0.0),
        (LONG, 110.0, 2.0),
        (LONG, 95.0, -1.0),
        (LONG, 102.5, 0.5),
        (SHORT, 90.0, 2.0),
        (SHORT, 105.0, -1.0),
        (NO_STOP, 150.0, None),
        (PositionView("BTCUSDT", PositionSide.LONG, 1.0, 100.0, 100.0, None, OPENED), 120.0, None),  # zero risk
    ],
)
def test_r_multiple(position, price, expected):
    assert r_multiple(position, price) == expected


@pytest.mark.parametrize(
    ("peak", "now", "expected"),
    [(0.0, -1.0, 0.0), (2.0, 2.0, 0.0), (2.0, 1.0, 0.5), (2.0, 0.0, 1.0), (2.0, -1.0, 1.0), (1.0, 1.5, 0.0)],
)
def test_giveback(peak, now, expected):
    assert giveback(peak, now) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("position", "fast", "slow", "expected"),
    [
        (LONG, 110.0, 110.0, 0.0),
        (LONG, 112.0, 110.0, 0.0),  # momentum with the position
        (LONG, 109.0, 110.0, 0.4),  # 1 below over 0.5 R = 2.5
        (LONG, 107.5, 110.0, 1.0),
        (LONG, 100.0, 110.0, 1.0),  # clipped
        (SHORT, 91.0, 90.0, 0.4),
        (SHORT, 89.0, 90.0, 0.0),
        (NO_STOP, 1.0, 100.0, 0.0),
    ],
)
def test_momentum_against(position, fast, slow, expected):
    assert momentum_against(position, fast, slow, S) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("peak", "now", "fast", "slow", "expected"),
    [
        (0.99, 0.0, 100.0, 110.0, 0.0),  # never 1 R in profit: not armed
        (1.0, 1.0, 110.0, 110.0, 0.0),
        (2.0, 0.0, 110.0, 110.0, 0.6),  # everything given back: closes on its own
        (2.0, 1.0, 110.0, 110.0, 0.3),
        (2.0, 1.0, 108.75, 110.0, 0.5),  # half given back, half-strength momentum
        (2.0, 1.0, 107.5, 110.0, 0.7),  # half given back, full momentum
        (3.0, 3.0, 100.0, 110.0, 0.4),  # momentum alone never reaches the threshold
        (2.0, -1.0, 90.0, 110.0, 1.0),
    ],
)
def test_kill_score_table(peak, now, fast, slow, expected):
    score = kill_score(LONG, peak, now, fast, slow, S)
    assert score == pytest.approx(expected)
    assert 0.0 <= score <= 1.0


def test_partial_close_at_2r_once_per_position():
    state, proposals = run(LONG, [104.0, 109.9, 110.0, 112.0, 111.0])
    made = [p for p in proposals if p is not None]
    assert len(made) == 1
    assert proposals[2] is made[0]
    partial = made[0]
    assert partial.action is HarvestAction.PARTIAL_CLOSE and partial.rule == PARTIAL_RULE
    assert partial.fraction == 0.5 and partial.r_multiple == pytest.approx(2.0)
    assert state.emitted == (PARTIAL_RULE,)


def test_partial_close_short():
    _, proposals = run(SHORT, [97.0, 92.0, 90.0])
    assert [p.action if p else None for p in proposals] == [None, None, HarvestAction.PARTIAL_CLOSE]


def test_kill_after_1r_reversal_closes_once():
    # up to 1.4 R, then back to entry: everything given back
    prices = [102.0, 104.0, 106.0, 107.0, 104.0, 101.0, 100.0, 99.0, 98.0]
    state, proposals = run(LONG, prices)
    made = [(i, p) for i, p in enumerate(proposals) if p is not None]
    assert len(made) == 1
    index, kill = made[0]
    assert kill.action is HarvestAction.CLOSE and kill.rule == KILL_RULE and kill.fraction == 1.0
    assert kill.kill_score >= S.kill_threshold
    assert kill.reasons[0] == "kill_score" and any(r.startswith("giveback=") for r in kill.reasons)
    assert index > 3 and prices[index] <= 104.0  # after the turn, not before
    assert state.emitted == (KILL_RULE,)


def test_no_kill_without_reaching_1r():
    _, proposals = run(LONG, [102.0, 104.9, 103.0, 100.0, 97.0, 96.0])
    assert proposals == [None] * 6


def test_a_bar_high_counts_for_the_peak():
    state = HarvestState().opened(LONG, 1)
    state, proposal = on_tick(state, tick(100.0, OPENED + 1, high=111.0), S)
    assert state.peak_r == pytest.approx(2.2)
    # a 2.2 R spike that closed back at entry gave everything back: that alone reaches the threshold
    assert proposal is not None and proposal.action is HarvestAction.CLOSE
    assert proposal.kill_score == pytest.approx(0.6)


def test_close_outranks_partial_on_the_same_tick():
    state = HarvestState(position=LONG, applied_version=1, peak_r=5.0, ema_fast=112.0, ema_slow=130.0)
    _, proposal = on_tick(state, tick(110.0, OPENED + 1), S)
    assert proposal is not None and proposal.action is HarvestAction.CLOSE and proposal.r_multiple == pytest.approx(2)


def test_nothing_after_the_kill():
    state = HarvestState(position=LONG, applied_version=1, peak_r=3.0, emitted=(KILL_RULE,))
    _, proposals = run(LONG, [115.0, 100.0], state)
    assert proposals == [None, None]


def test_no_stop_no_proposal():
    _, proposals = run(NO_STOP, [150.0, 100.0])
    assert proposals == [None, None]


def test_late_tick_is_ignored():
    state, _ = run(LONG, [104.0])
    again, proposal = on_tick(state, tick(90.0, state.last_time - 1), S)
    assert again == state and proposal is None


def test_opened_keeps_the_same_trade_and_resets_a_new_one():
    state, _ = run(LONG, [110.0])
    smaller = PositionView("BTCUSDT", PositionSide.LONG, 1.0, 100.0, 95.0, 130.0, OPENED, 2)
    kept = state.opened(smaller, 2)
    assert kept.emitted == (PARTIAL_RULE,) and kept.peak_r == state.peak_r and kept.position.qty == 1.0
    newer = PositionView("BTCUSDT", PositionSide.LONG, 1.0, 100.0, 95.0, 130.0, OPENED + 1, 3)
    assert state.opened(newer, 3).emitted == ()
    assert state.opened(None, 4).position is None


def test_opened_remembers_the_last_trade_while_flat():
    state = HarvestState().opened(LONG, 7)
    assert state.last_opened_at == OPENED
    flat = state.opened(None, 8)
    assert flat.position is None and flat.last_opened_at == OPENED and flat.applied_version == 8


def test_proposal_id_is_deterministic():
    assert proposal_id("BTCUSDT", OPENED, PARTIAL_RULE) == f"harvest:BTCUSDT:{OPENED}:partial_2r"
    assert proposal_id("BTCUSDT", OPENED, KILL_RULE) != proposal_id("BTCUSDT", OPENED + 1, KILL_RULE)


def test_state_round_trips_through_json():
    state, _ = run(LONG, [104.0, 110.0, 108.0])
    assert HarvestState.from_json(json.loads(json.dumps(state.to_json()))) == state


@pytest.mark.parametrize(
    "kwargs",
    [
        {"partial_fraction": 1.0},
        {"partial_fraction": 0.0},
        {"giveback_weight": 0.7},
        {"giveback_weight": 1.2, "momentum_weight": -0.2},
        {"fast_ticks": 20, "slow_ticks": 5},
        {"momentum_full_r": 0},
    ],
)
def test_settings_refuse_nonsense(kwargs):
    with pytest.raises(ValueError):
        HarvestSettings(**kwargs)
