"""Pure execution decisions: intent sizing, the gateway's rules, the reconciler's contract."""

from __future__ import annotations

from decimal import Decimal

import pytest

from quantum_trader.bus.control import parse_control
from quantum_trader.contracts.messages import (
    Approval,
    OrderType,
    Plan,
    PlanKind,
    PositionSide,
    ReconcileKind,
    Reservation,
    ResultStatus,
    Side,
    TradeIntent,
)
from quantum_trader.contracts.policy import RiskLimits
from quantum_trader.exchange.filters import SymbolFilters
from quantum_trader.execution.gateway import Refuse, Send, decide_order
from quantum_trader.execution.reconcile import Holding, all_matched, compare_one, reconcile
from quantum_trader.execution.sizing import Skip, entry_plan_id, plan_for_intent

D = Decimal
FILTERS = SymbolFilters(
    symbol="BTCUSDT",
    step_size=D("0.001"),
    min_qty=D("0.001"),
    max_qty=D("1000"),
    market_step_size=D("0.001"),
    market_min_qty=D("0.001"),
    market_max_qty=D("120"),
    tick_size=D("0.1"),
    min_price=D("0.1"),
    max_price=D("1000000"),
    min_notional=D("5"),
    quantity_precision=3,
    price_precision=1,
)
RELEASED = parse_control({"state": "released", "generation": "1"})
NOW = 1_000_000


def intent(side: Side = Side.BUY, notional: float = 500.0, symbol: str = "BTCUSDT") -> TradeIntent:
    sl, tp = (90.0, 130.0) if side is Side.BUY else (110.0, 70.0)
    return TradeIntent(
        symbol=symbol,
        intent_id="baseline-trend:BTCUSDT:1",
        time=1,
        side=side,
        confidence=0.6,
        entry_price=100.0,
        stop_loss=sl,
        take_profit=tp,
        leverage=3,
        notional=notional,
        strategy="baseline-trend",
        model_digest="d",
    )


def size(i: TradeIntent, position: PositionSide = PositionSide.FLAT, filters=FILTERS, last_close=None, **limits):
    return plan_for_intent(
        i,
        allowlist=frozenset({"BTCUSDT"}),
        limits=RiskLimits(**limits),
        filters=filters,
        position_side=position,
        last_close=last_close,
    )


class TestSizing:
    def test_sizes_notional_to_a_quantity_on_the_step(self):
        plan = size(intent(notional=333.3333))
        assert isinstance(plan, Plan)
        assert plan.qty == 3.333 and plan.kind is PlanKind.ENTRY and plan.reduce_only is False
        assert plan.plan_id == entry_plan_id("baseline-trend:BTCUSDT:1")
        assert (plan.stop_loss, plan.take_profit, plan.leverage) == (90.0, 130.0, 3)

    def test_notional_is_capped_per_trade_and_leverage_at_the_limit(self):
        plan = size(intent(notional=5000), max_notional_per_trade=1000, max_leverage=2)
        assert plan.qty == 10.0 and plan.leverage == 2

    @pytest.mark.parametrize(
        ("kwargs", "reason"),
        [
            ({"i": intent(symbol="ETHUSDT")}, "not_allowlisted"),
            ({"i": intent(), "position": PositionSide.LONG}, "position_open"),
            # closed on the intent's bar or later: it was open when the intent was signalled, settled or not
            ({"i": intent(), "last_close": intent().time}, "position_open"),
            ({"i": intent(Side.SELL), "last_close": intent().time + 1}, "position_open"),
            ({"i": intent(Side.SELL), "position": PositionSide.LONG}, "opposite_position_open"),
            ({"i": intent(Side.SELL), "long_only": True}, "flat_sell_long_only"),
            ({"i": intent(), "filters": None}, "filters_missing"),
            ({"i": intent(notional=4.0)}, "size: notional 4 USDT is below the minimum 5 USDT"),
        ],
    )
    def test_skips(self, kwargs, reason):
        result = size(**kwargs)
        assert isinstance(result, Skip) and result.reason == reason

    def test_a_close_before_the_intents_bar_does_not_hold_it(self):
        assert isinstance(size(intent(), last_close=intent().time - 1), Plan)

    def test_a_flat_sell_opens_a_short_when_shorts_are_allowed(self):
        plan = size(intent(Side.SELL))
        assert isinstance(plan, Plan) and plan.side is Side.SELL


def approval(kind=PlanKind.ENTRY, order_type=OrderType.MARKET, qty=1.2345, expires_at=NOW + 1000) -> Approval:
    plan = Plan(
        symbol="BTCUSDT",
        plan_id="p1",
        kind=kind,
        side=Side.BUY if kind is PlanKind.ENTRY else Side.SELL,
        order_type=order_type,
        qty=qty,
        reduce_only=kind is PlanKind.EXIT,
        source="t",
        time=1,
        price=100.0,
    )
    return Approval(
        approval_id="apr:p1",
        plan=plan,
        reservation=Reservation(slot=True, notional=100, exit_lock=False),
        approved_at=NOW - 10,
        expires_at=expires_at,
    )


def gate(a: Approval, control=RELEASED, open_qty=0.0, filters=FILTERS, now=NOW):
    return decide_order(a, control=control, now_ms=now, open_qty=open_qty, filters=filters)


class TestGateway:
    @pytest.mark.parametrize("kind", [t for t in OrderType if t is not OrderType.MARKET])
    def test_every_non_market_type_is_refused(self, kind):
        result = gate(approval(order_type=kind))
        assert result == Refuse(ResultStatus.REJECTED, f"conditional_order_refused: {kind.value}")

    def test_an_expired_approval_is_rejected(self):
        result = gate(approval(expires_at=NOW - 1))
        assert isinstance(result, Refuse) and result.reason.startswith("approval_expired")

    def test_entries_scope_blocks_entries_but_not_exits(self):
        control = parse_control({"state": "engaged", "scope": "entries", "generation": "2"})
        assert gate(approval(), control=control).reason.startswith("killswitch_entries")
        assert gate(approval(PlanKind.EXIT), control=control, open_qty=5) == Send(D("1.234"), reduce_only=True)

    def test_all_scope_blocks_exits_and_missing_control_blocks_everything(self):
        for control in (parse_control({"state": "engaged", "scope": "all", "generation": "2"}), parse_control(None)):
            assert gate(approval(PlanKind.EXIT), control=control, open_qty=5).reason.startswith("killswitch_all")

    def test_exits_are_capped_at_the_open_quantity_and_reduce_only(self):
        assert gate(approval(PlanKind.EXIT, qty=10), open_qty=0.5) == Send(D("0.5"), reduce_only=True)

    def test_an_exit_without_a_position_is_skipped(self):
        assert gate(approval(PlanKind.EXIT), open_qty=0) == Refuse(ResultStatus.SKIPPED, "no_open_position")

    def test_an_entry_is_rounded_down_to_the_step(self):
        assert gate(approval(qty=1.2345)) == Send(D("1.234"), reduce_only=False)

    def test_missing_filters_refuse(self):
        assert gate(approval(), filters=None).reason.startswith("filters_missing")


def h(side: PositionSide, qty: float, entry: float) -> Holding:
    return Holding(side, qty, entry)


L, S, F = PositionSide.LONG, PositionSide.SHORT, PositionSide.FLAT


class TestReconcile:
    @pytest.mark.parametrize(
        ("internal", "exchange", "kind"),
        [
            (h(L, 1.0, 100), h(L, 1.0, 100), ReconcileKind.MATCHED),
            (h(L, 1.0, 100), h(L, 1.001, 100), ReconcileKind.MATCHED),  # within one step
            (h(L, 1.0, 100), h(L, 1.003, 100), ReconcileKind.QTY_MISMATCH),
            (h(L, 1.0, 100), h(L, 1.0, 100.009), ReconcileKind.MATCHED),  # within 0.01 %
            (h(L, 1.0, 100), h(L, 1.0, 100.02), ReconcileKind.ENTRY_MISMATCH),
            (h(L, 1.0, 100), h(S, 1.0, 100), ReconcileKind.SIDE_MISMATCH),
            (Holding.flat(), h(S, 1.0, 100), ReconcileKind.UNKNOWN_TO_INTERNAL),
            (h(L, 1.0, 100), Holding.flat(), ReconcileKind.UNKNOWN_TO_EXCHANGE),
            (Holding.flat(), Holding.flat(), ReconcileKind.MATCHED),
        ],
    )
    def test_the_contract(self, internal, exchange, kind):
        assert compare_one(internal, exchange, step_size=0.001, qty_tolerance_steps=1, entry_tolerance=0.0001) is kind

    def test_a_difference_with_an_order_in_flight_is_explained(self):
        findings = reconcile(
            {"BTCUSDT": h(L, 1, 100)}, {}, step_sizes={"BTCUSDT": 0.001}, in_flight=frozenset({"BTCUSDT"})
        )
        assert findings[0].explained and not findings[0].needs_correction
        assert not all_matched(findings)

    def test_findings_cover_both_sides_and_skip_symbols_flat_on_both(self):
        findings = reconcile(
            {"A": h(L, 1, 1), "C": Holding.flat()}, {"B": h(S, 2, 2)}, step_sizes={}, in_flight=frozenset()
        )
        assert [(f.symbol, f.kind) for f in findings] == [
            ("A", ReconcileKind.UNKNOWN_TO_EXCHANGE),
            ("B", ReconcileKind.UNKNOWN_TO_INTERNAL),
        ]
        assert all(f.needs_correction for f in findings)
