"""The gateway's redelivery rule, exhaustively: an order that may have been sent is looked up before
any refusal; one found is reported (never refused, never resent); only one never sent may be refused."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest

from quantum_trader.bus.control import parse_control
from quantum_trader.contracts.messages import Approval, OrderType, Plan, PlanKind, Reservation, ResultStatus, Side
from quantum_trader.exchange.filters import SymbolFilters
from quantum_trader.exchange.models import OrderResult
from quantum_trader.execution.gateway import LookUp, Refuse, Report, Send, decide_order, has_fill, maybe_sent

D = Decimal
NOW = 1_000_000
FILTERS = SymbolFilters(
    symbol="BTCUSDT", step_size=D("0.001"), min_qty=D("0.001"), max_qty=D("1000"), market_step_size=D("0.001"),
    market_min_qty=D("0.001"), market_max_qty=D("120"), tick_size=D("0.1"), min_price=D("0.1"),
    max_price=D("1000000"), min_notional=D("5"), quantity_precision=3, price_precision=1,
)
CONTROLS = {
    "released": parse_control({"state": "released", "generation": "1"}),
    "entries": parse_control({"state": "engaged", "scope": "entries", "generation": "2"}),
    "all": parse_control({"state": "engaged", "scope": "all", "generation": "3"}),
    "missing": parse_control(None),
    "halted": parse_control({"state": "released", "generation": "1"}, {"reconciler": "drift"}),
}
EXPIRIES = {"valid": NOW + 1000, "expired": NOW - 1}
KINDS = (PlanKind.ENTRY, PlanKind.EXIT)
OPEN_QTYS = (0.0, 5.0)
FILTER_CHOICES = {"rules": FILTERS, "no rules": None}


def approval(kind: PlanKind, expires_at: int, order_type: OrderType = OrderType.MARKET) -> Approval:
    plan = Plan(symbol="BTCUSDT", plan_id="p1", kind=kind, side=Side.BUY if kind is PlanKind.ENTRY else Side.SELL,
                order_type=order_type, qty=1.2345, reduce_only=kind is PlanKind.EXIT, source="t", time=1, price=100.0)
    return Approval(approval_id="apr:p1", plan=plan, reservation=Reservation(slot=True, notional=100, exit_lock=False),
                    approved_at=NOW - 10, expires_at=expires_at)


def order(status: str = "FILLED", executed: float = 1.234) -> OrderResult:
    return OrderResult(status=status, client_order_id="qt-p1", order_id=7, symbol="BTCUSDT", side=Side.BUY,
                       orig_qty=1.234, executed_qty=executed, avg_price=100.5, reduce_only=False, update_time=5)


CASES = list(itertools.product(KINDS, EXPIRIES, CONTROLS, OPEN_QTYS, FILTER_CHOICES))


def decide(kind, expiry, control, open_qty, filters, **redelivery):
    return decide_order(approval(kind, EXPIRIES[expiry]), control=CONTROLS[control], now_ms=NOW, open_qty=open_qty,
                        filters=FILTER_CHOICES[filters], **redelivery)


@pytest.mark.parametrize(("deliveries", "marked", "expected"),
                         [(1, False, False), (1, True, True), (2, False, True), (9, True, True)])
def test_maybe_sent_after_any_earlier_delivery_or_marker(deliveries, marked, expected):
    assert maybe_sent(deliveries, marked) is expected


@pytest.mark.parametrize(("kind", "expiry", "control", "open_qty", "filters"), CASES)
def test_an_order_that_may_have_been_sent_is_looked_up_before_any_refusal(kind, expiry, control, open_qty, filters):
    assert decide(kind, expiry, control, open_qty, filters, sent_before=True) == LookUp()


@pytest.mark.parametrize(("kind", "expiry", "control", "open_qty", "filters"), CASES)
def test_an_order_found_is_reported_whatever_the_expiry_kill_switch_position_or_rules(
    kind, expiry, control, open_qty, filters
):
    found = order()
    assert decide(kind, expiry, control, open_qty, filters, sent_before=True, looked_up=True, found=found) == Report(
        found
    )


@pytest.mark.parametrize(("kind", "expiry", "control", "open_qty", "filters"), CASES)
def test_an_order_not_found_is_decided_as_if_never_sent(kind, expiry, control, open_qty, filters):
    never_sent = decide(kind, expiry, control, open_qty, filters)
    assert not isinstance(never_sent, LookUp | Report)
    assert decide(kind, expiry, control, open_qty, filters, sent_before=True, looked_up=True, found=None) == never_sent


@pytest.mark.parametrize(("kind", "expiry", "control", "open_qty", "filters"), CASES)
def test_refusals_and_sends_of_an_order_never_sent(kind, expiry, control, open_qty, filters):
    decision = decide(kind, expiry, control, open_qty, filters)
    if expiry == "expired":
        assert isinstance(decision, Refuse) and decision.reason.startswith("approval_expired")
    elif control in ("all", "missing"):
        assert isinstance(decision, Refuse) and decision.reason.startswith("killswitch_all")
    elif kind is PlanKind.ENTRY and control in ("entries", "halted"):
        assert isinstance(decision, Refuse) and decision.reason.startswith("killswitch_entries")
    elif filters == "no rules":
        assert isinstance(decision, Refuse) and decision.reason.startswith("filters_missing")
    elif kind is PlanKind.EXIT and open_qty == 0:
        assert decision == Refuse(ResultStatus.SKIPPED, "no_open_position")
    else:
        assert decision == Send(D("1.234"), reduce_only=kind is PlanKind.EXIT)


@pytest.mark.parametrize("sent_before", [False, True])
@pytest.mark.parametrize("kind", [t for t in OrderType if t is not OrderType.MARKET])
def test_conditional_types_are_refused_without_a_lookup_the_gateway_never_sends_them(kind, sent_before):
    decision = decide_order(approval(PlanKind.ENTRY, NOW + 1000, kind), control=CONTROLS["released"], now_ms=NOW,
                            open_qty=0.0, filters=FILTERS, sent_before=sent_before)
    assert decision == Refuse(ResultStatus.REJECTED, f"conditional_order_refused: {kind.value}")


@pytest.mark.parametrize(("status", "executed", "filled"),
                         [("FILLED", 1.234, True), ("EXPIRED", 0.5, True), ("PARTIALLY_FILLED", 0.5, True),
                          ("EXPIRED", 0.0, False), ("NEW", 0.0, False), ("CANCELED", 0.0, False)])
def test_an_order_with_any_executed_quantity_has_a_fill_to_record(status, executed, filled):
    assert has_fill(order(status, executed)) is filled
