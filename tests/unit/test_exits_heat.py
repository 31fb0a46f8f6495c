"""heat-gate's rule and every hold reason (pure): fail closed on missing, unreadable or stale inputs."""

from __future__ import annotations

import pytest

from quantum_trader.contracts.messages import HarvestAction, HarvestProposal, OrderType, PlanKind, Side
from quantum_trader.exits import heat
from quantum_trader.exits.heat import GateSettings, Hold

NOW = 1_700_000_100_000
OPENED = 1_700_000_000_000
SETTINGS = GateSettings(max_portfolio_heat=0.06)


def proposal(action: HarvestAction = HarvestAction.CLOSE, fraction: float = 1.0, time: int = OPENED + 50_000):
    return HarvestProposal(
        symbol="BTCUSDT",
        proposal_id=f"harvest:BTCUSDT:{OPENED}:{'kill' if action is HarvestAction.CLOSE else 'partial_2r'}",
        time=time,
        action=action,
        fraction=fraction,
        r_multiple=2.0,
        kill_score=0.7,
        price=110.0,
        reasons=("kill_score" if action is HarvestAction.CLOSE else "partial_2r", "x=1"),
    )


PARTIAL = proposal(HarvestAction.PARTIAL_CLOSE, 0.5)
CLOSE = proposal()


def heat_hash(heat_value: float = 0.04, time: int = NOW - 1000, **over: str) -> dict:
    equity = 10_000.0
    raw = {
        "heat": repr(heat_value),
        "open_risk": repr(heat_value * equity),
        "equity": repr(equity),
        "positions": "3",
        "time": str(time),
    }
    raw.update(over)
    return raw


def position_hash(side: str | None = "LONG", qty: str = "2.0", opened_at: int | None = OPENED, **over: str) -> dict:
    raw = {
        "side": side,
        "qty": qty,
        "entry_price": "100.0",
        "stop_loss": "95.0",
        "take_profit": "",
        "opened_at": None if opened_at is None else str(opened_at),
        "version": "4",
    }
    raw.update(over)
    return {k: v for k, v in raw.items() if v is not None}


def hold_reason(prop=CLOSE, heat_raw=None, position_raw=None, *, kill=False, now=NOW) -> str:
    with pytest.raises(Hold) as caught:
        heat.evaluate(
            prop,
            heat_hash() if heat_raw is None else heat_raw,
            position_hash() if position_raw is None else position_raw,
            now,
            SETTINGS,
            kill_switch_hold=kill,
        )
    return caught.value.reason


# --- fail closed: every hold reason ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("heat_raw", "expected"),
    [
        ({}, heat.HOLD_HEAT_MISSING),
        (heat_hash(time=NOW - 60_001), heat.HOLD_HEAT_STALE),
        (heat_hash(time=NOW - 3_600_000), heat.HOLD_HEAT_STALE),
        (heat_hash(heat="abc"), heat.HOLD_HEAT_UNREADABLE),
        (heat_hash(heat=""), heat.HOLD_HEAT_UNREADABLE),
        (heat_hash(heat="nan"), heat.HOLD_HEAT_UNREADABLE),
        (heat_hash(heat="inf"), heat.HOLD_HEAT_UNREADABLE),
        (heat_hash(heat="-0.01", open_risk="-100"), heat.HOLD_HEAT_UNREADABLE),
        (heat_hash(equity="0"), heat.HOLD_HEAT_UNREADABLE),
        (heat_hash(equity="-5"), heat.HOLD_HEAT_UNREADABLE),
        (heat_hash(time="yesterday"), heat.HOLD_HEAT_UNREADABLE),
        (heat_hash(positions="2.5"), heat.HOLD_HEAT_UNREADABLE),
        (heat_hash(heat="4.0"), heat.HOLD_HEAT_UNREADABLE),  # percent where a fraction belongs
        (heat_hash(time=NOW + 60_000), heat.HOLD_HEAT_UNREADABLE),  # from the future: a broken clock
        ({k: v for k, v in heat_hash().items() if k != "time"}, heat.HOLD_HEAT_UNREADABLE),
        ({k: v for k, v in heat_hash().items() if k != "equity"}, heat.HOLD_HEAT_UNREADABLE),
        ({"heat": "0.01"}, heat.HOLD_HEAT_UNREADABLE),
    ],
)
def test_heat_holds(heat_raw, expected):
    assert hold_reason(CLOSE, heat_raw) == expected
    assert hold_reason(PARTIAL, heat_raw) == expected


@pytest.mark.parametrize(
    ("position_raw", "expected"),
    [
        ({}, heat.HOLD_POSITION_MISSING),
        (position_hash(side="SIDEWAYS"), heat.HOLD_POSITION_UNREADABLE),
        (position_hash(side=None), heat.HOLD_POSITION_UNREADABLE),
        (position_hash(qty="many"), heat.HOLD_POSITION_UNREADABLE),
        (position_hash(qty="-1"), heat.HOLD_POSITION_UNREADABLE),
        (position_hash(opened_at=None), heat.HOLD_POSITION_UNREADABLE),
        (position_hash(entry_price="x"), heat.HOLD_POSITION_UNREADABLE),
        (position_hash(side="FLAT", qty="0"), heat.HOLD_POSITION_FLAT),
        (position_hash(qty="0"), heat.HOLD_POSITION_FLAT),
        (position_hash(opened_at=OPENED + 60_000), heat.HOLD_POSITION_CHANGED),  # a newer trade
    ],
)
def test_position_holds(position_raw, expected):
    assert hold_reason(CLOSE, None, position_raw) == expected


def test_kill_switch_holds_before_anything_else():
    assert hold_reason(CLOSE, {}, {}, kill=True) == heat.HOLD_KILL_SWITCH


def test_heat_is_checked_before_the_position():
    assert hold_reason(CLOSE, {}, {}) == heat.HOLD_HEAT_MISSING


def test_heat_exactly_at_the_age_limit_is_fresh():
    assert heat.evaluate(CLOSE, heat_hash(time=NOW - 60_000), position_hash(), NOW, SETTINGS, kill_switch_hold=False)


def test_every_hold_reason_is_listed():
    assert set(heat.HOLD_REASONS) == {v for k, v in vars(heat).items() if k.startswith("HOLD_") and isinstance(v, str)}


# --- the rule -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("heat_value", "action", "passes", "over_limit"),
    [
        (0.0, HarvestAction.CLOSE, True, False),
        (0.0, HarvestAction.PARTIAL_CLOSE, False, False),
        (0.029, HarvestAction.PARTIAL_CLOSE, False, False),  # 48 % of the limit
        (0.03, HarvestAction.PARTIAL_CLOSE, True, False),  # 50 %
        (0.05, HarvestAction.PARTIAL_CLOSE, True, False),
        (0.05, HarvestAction.CLOSE, True, False),
        (0.06, HarvestAction.PARTIAL_CLOSE, True, True),  # at the limit counts as over it
        (0.09, HarvestAction.PARTIAL_CLOSE, True, True),
        (0.09, HarvestAction.CLOSE, True, True),
    ],
)
def test_gate_rule_table(heat_value, action, passes, over_limit):
    prop = CLOSE if action is HarvestAction.CLOSE else PARTIAL
    if not passes:
        assert hold_reason(prop, heat_hash(heat_value)) == heat.HOLD_BELOW_PARTIAL
        return
    decision = heat.evaluate(prop, heat_hash(heat_value), position_hash(), NOW, SETTINGS, kill_switch_hold=False)
    assert decision.utilization == pytest.approx(heat_value / 0.06)
    assert (heat.TAG_OVER_LIMIT in decision.reason_codes) is over_limit


@pytest.mark.parametrize(
    ("prop", "side", "qty", "expected_side", "expected_qty", "code"),
    [
        (CLOSE, "LONG", "2.0", Side.SELL, 2.0, "harvest_close"),
        (CLOSE, "SHORT", "0.75", Side.BUY, 0.75, "harvest_close"),
        (PARTIAL, "LONG", "2.0", Side.SELL, 1.0, "harvest_partial"),
        (PARTIAL, "SHORT", "0.003", Side.BUY, 0.0015, "harvest_partial"),
    ],
)
def test_plans_close_the_right_side_and_quantity(prop, side, qty, expected_side, expected_qty, code):
    decision = heat.evaluate(prop, heat_hash(0.05), position_hash(side, qty), NOW, SETTINGS, kill_switch_hold=False)
    plan = heat.build_plan(prop, decision)
    assert plan.kind is PlanKind.EXIT and plan.reduce_only is True and plan.order_type is OrderType.MARKET
    assert plan.side is expected_side and plan.qty == pytest.approx(expected_qty)
    assert plan.qty <= float(qty)  # never over-close (invariant 6)
    assert plan.reason_codes[0] == code and plan.reason_codes[-1] == prop.reasons[0]
    assert plan.source == "heat-gate" and plan.time == prop.time and plan.price == prop.price
    assert plan.plan_id == f"heat:{prop.proposal_id}"


def test_the_position_read_now_sizes_the_plan_not_the_one_harvest_saw():
    # after a partial close the position is smaller: a CLOSE closes what is left
    decision = heat.evaluate(CLOSE, heat_hash(0.05), position_hash(qty="0.4"), NOW, SETTINGS, kill_switch_hold=False)
    assert decision.qty == 0.4


def test_long_proposal_ids_still_make_valid_plan_ids():
    long_prop = proposal().model_copy(update={"proposal_id": "x" * 300})
    decision = heat.evaluate(long_prop, heat_hash(), position_hash(), NOW, SETTINGS, kill_switch_hold=False)
    plan = heat.build_plan(long_prop, decision)
    assert len(plan.plan_id) <= 128 and plan.plan_id == heat.plan_id_for(long_prop)


def test_hold_proposals_make_no_plan():
    hold = proposal().model_copy(update={"action": HarvestAction.HOLD})
    assert hold_reason(hold, heat_hash(0.09)) == heat.HOLD_BELOW_PARTIAL


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_portfolio_heat": 0},
        {"max_portfolio_heat": 0.06, "max_age_ms": 0},
        {"max_portfolio_heat": 0.06, "partial_min_utilization": -1},
    ],
)
def test_settings_refuse_nonsense(kwargs):
    with pytest.raises(ValueError):
        GateSettings(**kwargs)
