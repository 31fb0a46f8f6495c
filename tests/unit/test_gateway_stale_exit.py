"""An exit is sent only against the trade it was planned for, and not re-planned for a closed one (pure).

See tests/integration/test_stale_exit.py for the mechanism on real processes."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest
from pydantic import ValidationError

from quantum_trader.contracts.control import parse_control
from quantum_trader.contracts.messages import (
    Approval,
    HarvestAction,
    HarvestProposal,
    OrderType,
    Plan,
    PlanKind,
    PositionSide,
    PositionSnapshot,
    Reservation,
    ResultStatus,
    Side,
    Tick,
)
from quantum_trader.exchange.filters import SymbolFilters
from quantum_trader.execution.gateway import Refuse, Send, decide_order
from quantum_trader.exits import brain, heat
from quantum_trader.exits.position import PositionView
from quantum_trader.exits.rules import ExitControl, ExitDecision, RuleSettings
from quantum_trader.local.ledger import RunLedger, summarize
from quantum_trader.risk.positions import other_trade

NOW = 1_700_000_000_000
RELEASED = parse_control({"state": "released", "scope": "all", "generation": "1"})
FILTERS = SymbolFilters(
    symbol="BTCUSDT",
    step_size=Decimal("0.001"),
    min_qty=Decimal("0.001"),
    max_qty=Decimal("1000"),
    market_step_size=Decimal("0.001"),
    market_min_qty=Decimal("0.001"),
    market_max_qty=Decimal("120"),
    tick_size=Decimal("0.1"),
    min_price=Decimal("0.1"),
    max_price=Decimal("1000000"),
    min_notional=Decimal("5"),
    quantity_precision=3,
    price_precision=1,
)
SIDES = [PositionSide.LONG, PositionSide.SHORT]
OPENED = [None, 1_000, 3_000]


def exit_approval(side: Side, position_opened_at: int | None, qty: float = 1.0) -> Approval:
    plan = Plan(
        symbol="BTCUSDT",
        plan_id="exit:BTCUSDT:1000:4000",
        kind=PlanKind.EXIT,
        side=side,
        order_type=OrderType.MARKET,
        qty=qty,
        reduce_only=True,
        source="exit-brain",
        time=4_000,
        price=100.0,
        position_opened_at=position_opened_at,
    )
    return Approval(
        approval_id="apr:" + plan.plan_id,
        plan=plan,
        reservation=Reservation(slot=False, notional=0, exit_lock=True),
        approved_at=NOW - 10,
        expires_at=NOW + 1_000,
    )


def decide(approval: Approval, open_side: PositionSide | None, open_opened_at: int | None, open_qty: float = 2.0):
    return decide_order(
        approval,
        control=RELEASED,
        now_ms=NOW,
        open_qty=open_qty,
        filters=FILTERS,
        open_side=open_side,
        open_opened_at=open_opened_at,
    )


@pytest.mark.parametrize(
    ("planned_for", "plan_opened", "open_side", "open_opened"),
    list(itertools.product(SIDES, OPENED, [*SIDES, None], OPENED)),
)
def test_an_exit_is_sent_exactly_when_the_open_position_is_its_trade(planned_for, plan_opened, open_side, open_opened):
    decision = decide(exit_approval(planned_for.closing_side, plan_opened), open_side, open_opened)
    same_side = open_side is None or open_side is planned_for
    same_trade = plan_opened is None or open_opened is None or plan_opened == open_opened
    if same_side and same_trade:
        assert decision == Send(Decimal("1.000"), reduce_only=True)
    else:
        assert isinstance(decision, Refuse)
        assert decision.status is ResultStatus.SKIPPED
        assert decision.reason.startswith("no_open_position: ")


def test_the_reason_names_what_differs():
    assert other_trade(exit_approval(Side.SELL, 1_000).plan, PositionSide.SHORT, 3_000) == (
        "the exit (SELL) closes no SHORT position"
    )
    assert other_trade(exit_approval(Side.SELL, 1_000).plan, PositionSide.LONG, 3_000) == (
        "the exit is for the trade opened at 1000, the open one opened at 3000"
    )
    assert other_trade(exit_approval(Side.SELL, 1_000).plan, PositionSide.LONG, 1_000) is None


def test_no_position_at_all_is_still_the_plain_reason():
    assert decide(exit_approval(Side.SELL, 1_000), None, None, open_qty=0.0) == Refuse(
        ResultStatus.SKIPPED, "no_open_position"
    )


def test_an_entry_names_no_trade_to_close():
    with pytest.raises(ValidationError, match="position_opened_at is for exits"):
        Plan(
            symbol="BTCUSDT",
            plan_id="e",
            kind=PlanKind.ENTRY,
            side=Side.BUY,
            qty=1.0,
            source="t",
            time=1,
            price=100.0,
            position_opened_at=1,
        )


def test_exit_brain_plans_name_the_watched_trade():
    view = PositionView(
        symbol="BTCUSDT",
        side=PositionSide.SHORT,
        qty=0.5,
        entry_price=100.0,
        stop_loss=110.0,
        take_profit=80.0,
        opened_at=1_234,
        version=3,
    )
    plan = brain.exit_plan(view, ExitDecision("stop_loss", advanced=False), "exit:BTCUSDT:1234:9", 101.0, 9)
    assert (plan.side, plan.position_opened_at) == (Side.BUY, 1_234)


def test_heat_gate_plans_name_the_trade_it_read():
    proposal = HarvestProposal(
        symbol="BTCUSDT",
        proposal_id="harvest:BTCUSDT:1234:kill",
        action=HarvestAction.CLOSE,
        fraction=1.0,
        r_multiple=1.0,
        kill_score=0.9,
        reasons=("kill",),
        time=5_000,
        price=100.0,
    )
    position = heat.GatePosition(side=PositionSide.LONG, qty=0.5, opened_at=1_234, entry_price=90.0, version=2)
    reading = heat.HeatReading(heat=0.01, open_risk=100.0, equity=10_000.0, positions=1, time=NOW)
    decision = heat.gate(proposal, reading, position, heat.GateSettings(max_portfolio_heat=0.06))
    plan = heat.build_plan(proposal, decision)
    assert (plan.side, plan.position_opened_at) == (Side.SELL, 1_234)


# --- exit-brain: no retry for a trade position-state has recorded closed --------------------------------
OPENED_AT = 1_700_000_000_000


def watched_long() -> brain.BrainState:
    snapshot = PositionSnapshot(
        symbol="BTCUSDT",
        side=PositionSide.LONG,
        qty=2.0,
        entry_price=100.0,
        mark_price=100.0,
        unrealized_pnl=0.0,
        stop_loss=95.0,
        take_profit=110.0,
        opened_at=OPENED_AT,
        time=OPENED_AT,
        source="position-state",
        version=1,
    )
    state = brain.apply_snapshot(brain.BrainState(), snapshot)
    assert state is not None
    return state


def price(value: float, t: int) -> Tick:
    return Tick(symbol="BTCUSDT", price=value, bid=value, ask=value, volume=1, event_time=t, source="test")


@pytest.mark.parametrize(
    ("recorded", "retried"),
    [
        (None, True),  # no record: nothing assumed, the retry goes out as before
        (brain.RecordedTrade(PositionSide.LONG, 2.0, OPENED_AT), True),  # still open: the first exit failed
        (brain.RecordedTrade(PositionSide.LONG, 1.0, OPENED_AT), True),  # partly closed: same trade
        (brain.RecordedTrade(PositionSide.FLAT, 0.0, OPENED_AT), False),  # the first exit closed it
        (brain.RecordedTrade(PositionSide.SHORT, 1.0, OPENED_AT + 5_000), False),  # next trade, other side
        (brain.RecordedTrade(PositionSide.LONG, 1.0, OPENED_AT + 5_000), False),  # next trade, same side
    ],
)
def test_the_retry_waits_for_the_snapshot_when_the_trade_is_recorded_closed(recorded, retried):
    settings, live = RuleSettings(), ExitControl(rollout_live=True)
    first = brain.on_tick(watched_long(), price(94.0, OPENED_AT + 1_000), settings, live, 1, recorded=None)
    assert first.exit is not None
    state = brain.on_tick(first.state, price(93.0, OPENED_AT + 1_001), settings, live, 1, recorded).state
    retry = brain.on_tick(state, price(93.0, OPENED_AT + 1_002), settings, live, 1, recorded)
    assert (retry.exit is not None) is retried
    assert retry.closed is not retried
    if not retried:  # nothing planned, and nothing forgotten: the snapshot settles what is watched
        assert retry.state.position == state.position and retry.plan_id == ""


def test_the_run_summary_names_exits_refused_for_a_closed_trade():
    results = [
        {"plan_id": "a", "status": "SKIPPED", "reason": "no_open_position", "error_code": None},
        {
            "plan_id": "b",
            "status": "SKIPPED",
            "reason": "no_open_position: the exit (SELL) closes no SHORT position",
            "error_code": None,
        },
        {"plan_id": "c", "status": "FILLED", "reason": "", "error_code": None},
    ]
    summary = summarize(
        RunLedger(
            started_at=0.0,
            ended_at=1.0,
            bars=1,
            intents=0,
            results=results,
            decisions_rejected=[],
            ledger={},
            open_positions=[],
            starting_equity=10_000.0,
        )
    )
    assert summary.rejections == {"apply-layer: skipped no_open_position": 2}
    assert summary.orders == 1  # nothing skipped reached the exchange
