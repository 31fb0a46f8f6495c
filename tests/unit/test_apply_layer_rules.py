"""apply-layer's pure rules: which plan a dead-lettered approval names and what is released for it, which
approvals of a read batch go in batchOrders, an order's state from Redis' replies, the in-flight setting."""

from __future__ import annotations

import pytest

from quantum_trader.contracts.control import parse_control
from quantum_trader.contracts.messages import OrderType, Plan, PlanKind, PositionSide, Side
from quantum_trader.exchange.errors import ExchangeError, answer_error, timeout_error
from quantum_trader.exchange.models import OrderResult
from quantum_trader.execution.batching import batch_candidates, in_groups, sets_leverage, settled
from quantum_trader.execution.dead_letters import Release, dead_lettered_plan, release_for
from quantum_trader.execution.order_state import order_state
from quantum_trader.services.apply_layer.workers import DEFAULT_IN_FLIGHT, MAX_IN_FLIGHT, in_flight_setting


@pytest.mark.parametrize(
    ("record", "plan"),
    [
        ({"orig.id": "apr:plan-7", "orig.data": "{not json"}, "plan-7"),
        ({"orig.id": "apr:a:b/c", "reason": "delivered 6 times"}, "a:b/c"),
        ({"orig.id": "plan-7"}, None),  # not the governor's approval id
        ({"orig.id": "apr:"}, None),
        ({"orig.id.b64": "/w=="}, None),  # an id that was not UTF-8 is kept as base64: no plan
        ({"orig.id": "apr:bad\x00id"}, None),
        ({"orig.id": "apr:" + "x" * 201}, None),
        ({}, None),
    ],
)
def test_the_plan_of_a_dead_lettered_approval(record: dict, plan: str | None) -> None:
    assert dead_lettered_plan(record) == plan


def test_a_dead_lettered_plan_with_a_marker_keeps_everything_else_releases_what_it_holds() -> None:
    entry_locks = {"BTCUSDT": "p1", "ETHUSDT": "p2"}
    exit_locks = {"SOLUSDT": "p1", "BTCUSDT": "p3"}
    locks = {"entry_locks": entry_locks, "exit_locks": exit_locks}
    assert release_for("p1", marked=True, reserved=True, **locks) is None
    assert release_for("p1", marked=False, reserved=True, **locks) == Release(True, ("BTCUSDT",), ("SOLUSDT",))
    assert release_for("p9", marked=False, reserved=False, **locks) == Release(False, (), ())


def test_batch_candidates_are_each_symbols_first_approval_when_it_is_a_first_delivery() -> None:
    read = [("BTC", 1), ("ETH", 2), ("BTC", 1), ("SOL", 1), ("ETH", 1), ("XRP", 1)]
    # ETH's first is a redelivery: looked up one by one, and its later approval waits for it
    assert batch_candidates(read) == [0, 3, 5]
    assert batch_candidates([]) == []


def test_orders_are_cut_into_groups_of_at_most_the_batch_size_in_order() -> None:
    assert in_groups(list(range(11)), 5) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10]]
    assert in_groups([], 5) == []


def plan(leverage: int = 5) -> Plan:
    return Plan(symbol="BTCUSDT", plan_id="p1", kind=PlanKind.ENTRY, side=Side.BUY, order_type=OrderType.MARKET,
                qty=1.0, reduce_only=False, source="t", time=1, price=100.0, leverage=leverage)  # fmt: skip


def test_only_an_order_adding_risk_at_another_leverage_sets_it_first() -> None:
    assert sets_leverage(plan(5), None, reduce_only=False), "unknown leverage: set before the first order"
    assert sets_leverage(plan(5), 20, reduce_only=False)
    assert not sets_leverage(plan(5), 5, reduce_only=False)
    assert not sets_leverage(plan(5), 20, reduce_only=True), "an exit never changes leverage"


def test_an_answer_stands_unless_its_outcome_is_unknown_or_worth_retrying() -> None:
    fill = OrderResult(status="FILLED", client_order_id="qt-p1", order_id=7, symbol="BTCUSDT", side=Side.BUY,
                       orig_qty=1.0, executed_qty=1.0, avg_price=100.0, reduce_only=False, update_time=1)  # fmt: skip
    assert settled(fill)
    assert settled(answer_error(400, -2019, "Margin is insufficient."))
    assert not settled(timeout_error(5))
    assert not settled(answer_error(503, 0, "busy"))
    assert not settled(ExchangeError(-1003, "too many requests", retryable=True))


def test_an_order_state_from_the_position_hash_fields() -> None:
    control = parse_control({"state": "released", "generation": "1"})
    state = order_state(done=False, control=control, position=("0.5", "LONG", "1700"), marked=True)
    assert (state.open_qty, state.open_side, state.open_opened_at, state.marked) == (0.5, PositionSide.LONG, 1700, True)
    blank = order_state(done=True, control=control, position=(None, "sideways", "-3"), marked=False)
    assert (blank.done, blank.open_qty, blank.open_side, blank.open_opened_at) == (True, 0.0, None, None)


def test_the_in_flight_setting() -> None:
    assert in_flight_setting(None) == in_flight_setting("") == DEFAULT_IN_FLIGHT
    assert in_flight_setting("1") == 1
    assert in_flight_setting(str(MAX_IN_FLIGHT)) == MAX_IN_FLIGHT
    for bad in ("0", str(MAX_IN_FLIGHT + 1), "-2", "two", "1.5"):
        with pytest.raises(ValueError, match="QT_APPLY_IN_FLIGHT"):
            in_flight_setting(bad)
