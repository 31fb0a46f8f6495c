"""position-state's incremental portfolio heat against a real Redis: O(1) per result, equal to the
from-scratch refresh, and still fail closed when a position hash cannot be read."""

from __future__ import annotations

import time

import pytest
import redis

from quantum_trader.contracts.messages import Approval, ResultStatus, Side
from quantum_trader.services import position_state
from quantum_trader.services.position_state import RISK_OK
from tests.factories import entry, exit_plan
from tests.integration._governor_support import (
    drain,
    publish_result,
    reservation,
    result_for,
    text_hash,
)
from tests.integration._position_state_support import OnePositionState

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]


class Book(OnePositionState):
    def __init__(self, redis_url: str, instance: str, r: redis.Redis) -> None:
        super().__init__(redis_url, instance, r, SYMBOLS)
        self.n = 0

    def fill(self, plan, qty: float, price: float, fee: float = 0.01, status=ResultStatus.FILLED) -> None:
        self.n += 1
        approval = Approval(
            approval_id=f"apr:{plan.plan_id}", plan=plan, reservation=reservation(10.0), approved_at=0, expires_at=1
        )
        publish_result(self.r, self.keys, result_for(approval, status, filled_qty=qty, avg_price=price, fee=fee))
        drain(self.ps)

    def heat(self) -> dict[str, str]:
        return text_hash(self.r, self.keys.portfolio_heat)

    def totals(self) -> dict[str, str]:
        return text_hash(self.r, self.keys.portfolio_risk_total)

    def entries(self) -> dict[str, float]:
        return {k: float(v) for k, v in text_hash(self.r, self.keys.portfolio_risk).items()}


@pytest.fixture
def book(redis_url: str, instance: str, r: redis.Redis) -> Book:
    return Book(redis_url, instance, r)


def exact(heat: dict[str, str]) -> tuple[float, float, float, str]:
    return float(heat["heat"]), float(heat["open_risk"]), float(heat["equity"]), heat["positions"]


def test_each_step_writes_the_heat_the_full_refresh_computes(book: Book) -> None:
    b = book
    b.fill(entry("BTCUSDT", "b1", price=100.0), 2.0, 100.0)  # SL 90: risk 20
    b.fill(entry("ETHUSDT", "e1", price=50.0, side=Side.SELL), 4.0, 50.0)  # SL 55: risk 20
    b.fill(entry("SOLUSDT", "s1", price=10.0), 10.0, 10.0)  # SL 9: risk 10
    b.fill(exit_plan("BTCUSDT", "bx1", 0.5, price=110.0), 0.5, 110.0)  # BTC risk 15
    b.fill(exit_plan("ETHUSDT", "ex1", 4.0, price=45.0, side=Side.BUY), 4.0, 45.0)  # ETH closed
    b.fill(entry("XRPUSDT", "x1", price=1.0), 0.0, 0.0, status=ResultStatus.REJECTED)  # nothing changes
    stepped = b.heat()
    assert stepped["positions"] == "2"
    assert float(stepped["open_risk"]) == pytest.approx(25.0)
    assert b.entries() == pytest.approx({"BTCUSDT": 15.0, "SOLUSDT": 10.0})
    assert float(b.totals()["open_risk"]) == pytest.approx(25.0) and b.totals()["state"] == RISK_OK
    b.service.refresh_heat()
    assert exact(b.heat()) == pytest.approx(exact(stepped))
    assert b.entries() == pytest.approx({"BTCUSDT": 15.0, "SOLUSDT": 10.0})


def test_closing_everything_leaves_exactly_zero(book: Book) -> None:
    b = book
    b.fill(entry("BTCUSDT", "b1", price=100.3), 0.7, 100.3)
    b.fill(entry("ETHUSDT", "e1", price=33.1), 0.3, 33.1)
    b.fill(exit_plan("BTCUSDT", "bx", 0.7, price=101.0), 0.7, 101.0)
    b.fill(exit_plan("ETHUSDT", "ex", 0.3, price=30.0), 0.3, 30.0)
    heat = b.heat()
    assert (heat["heat"], heat["open_risk"], heat["positions"]) == ("0.0", "0.0", "0")
    assert b.entries() == {}


def test_the_cost_per_result_does_not_grow_with_open_positions(book: Book) -> None:
    """The per-result read is one round trip of a fixed set of keys, whatever is open."""
    b = book
    for i in range(300):
        symbol = f"P{i:04d}USDT"
        b.r.hset(
            b.keys.position(symbol),
            mapping={
                "side": "LONG",
                "qty": "1",
                "entry_price": "10",
                "stop_loss": "9",
                "opened_at": "1",
                "version": "1",
            },
        )
        b.r.hset(b.keys.open_positions, symbol, "10.0")
    b.service.refresh_heat()
    assert float(b.heat()["open_risk"]) == pytest.approx(300.0)
    commands: list[str] = []
    original = b.ctx.client.pipeline

    def counting_pipeline(*args, **kwargs):
        pipe = original(*args, **kwargs)
        execute = pipe.execute

        def counted(*a, **k):
            commands.extend(str(c[0][0]) for c in pipe.command_stack)
            return execute(*a, **k)

        pipe.execute = counted
        return pipe

    b.ctx.client.pipeline = counting_pipeline  # type: ignore[method-assign]
    state = position_state.read_state(b.ctx.client, b.keys, "BTCUSDT")
    assert "HGETALL" in commands and len(commands) <= 8  # not one read per open position
    assert state.heat_ok and state.view.others_open == 300 and state.view.others_risk == pytest.approx(300.0)
    b.ctx.client.pipeline = original  # type: ignore[method-assign]
    b.fill(entry("BTCUSDT", "b1", price=100.0), 1.0, 100.0)
    assert b.heat()["positions"] == "301" and float(b.heat()["open_risk"]) == pytest.approx(310.0)


def test_an_unreadable_position_stops_heat_writes_until_it_is_readable_again(book: Book) -> None:
    b = book
    b.fill(entry("BTCUSDT", "b1", price=100.0), 1.0, 100.0)
    b.r.hset(b.keys.position("ETHUSDT"), mapping={"side": "LONG", "qty": "garbage", "version": "3"})
    b.r.hset(b.keys.open_positions, "ETHUSDT", "100.0")
    assert b.service.refresh_heat() is None
    assert b.totals()["state"] == "unreadable:ETHUSDT"
    before = b.heat()
    time.sleep(0.01)
    b.fill(entry("SOLUSDT", "s1", price=10.0), 1.0, 10.0)  # settled, but the heat is left to go stale
    assert text_hash(b.r, b.keys.position("SOLUSDT"))["side"] == "LONG"
    assert b.heat() == before
    b.r.hset(
        b.keys.position("ETHUSDT"), mapping={"qty": "1", "entry_price": "100", "stop_loss": "95", "opened_at": "1"}
    )
    b.service.refresh_heat()
    assert b.totals()["state"] == RISK_OK
    heat = b.heat()
    assert heat["positions"] == "3" and float(heat["open_risk"]) == pytest.approx(10 + 5 + 1)
    assert int(heat["time"]) > int(before["time"])


def test_a_position_corrected_behind_our_back_is_put_right_by_the_refresh(book: Book) -> None:
    """The reconciler rewrites position hashes without touching the risk entries: the refresh fixes them."""
    b = book
    b.fill(entry("BTCUSDT", "b1", price=100.0), 2.0, 100.0)
    b.r.hset(b.keys.position("BTCUSDT"), mapping={"qty": "3.0", "version": "9"})
    b.service.refresh_heat()
    assert b.entries() == pytest.approx({"BTCUSDT": 30.0})
    b.fill(exit_plan("BTCUSDT", "bx", 1.0, price=100.0), 1.0, 100.0)
    assert float(b.heat()["open_risk"]) == pytest.approx(20.0)
    assert float(b.totals()["open_risk"]) == pytest.approx(20.0)


def test_a_new_instance_builds_its_totals_before_the_first_step(book: Book) -> None:
    b = book
    b.r.hset(
        b.keys.position("ETHUSDT"),
        mapping={"side": "LONG", "qty": "2", "entry_price": "100", "stop_loss": "90", "opened_at": "1", "version": "1"},
    )
    b.r.hset(b.keys.open_positions, "ETHUSDT", "200.0")
    assert not b.r.exists(b.keys.portfolio_risk_total)  # never refreshed (start() not called)
    b.fill(entry("BTCUSDT", "b1", price=100.0), 1.0, 100.0)
    heat = b.heat()
    assert heat["positions"] == "2" and float(heat["open_risk"]) == pytest.approx(30.0)
