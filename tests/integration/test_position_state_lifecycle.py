"""The reservation lifecycle end to end against a real Redis: governor approves, the test plays
apply-layer, position-state settles — positions, locks, ledger, heat, snapshots, closed trades."""

from __future__ import annotations

import time

import pytest
import redis

from quantum_trader.bus.consumer import Delivery
from quantum_trader.bus.step import StepOutcome
from quantum_trader.contracts.envelope import decode
from quantum_trader.contracts.messages import (
    Approval,
    ExecutionResult,
    PlanKind,
    PositionSide,
    PositionSnapshot,
    ResultStatus,
    Side,
    TradeClosed,
)
from quantum_trader.services import governor, position_state
from tests.integration._governor_support import (
    T0,
    approvals,
    consumer,
    context,
    decisions,
    drain,
    entry,
    exit_plan,
    policy,
    publish_plan,
    publish_result,
    read_stream,
    release,
    reservation,
    result_for,
    text_hash,
)
from tests.integration._position_state_support import settle_with_replicas


class Desk:
    """One governor and one position-state, in-process; the test is apply-layer."""

    def __init__(self, redis_url: str, instance: str, r: redis.Redis, **risk: object) -> None:
        self.r = r
        spec = policy(["BTCUSDT", "ETHUSDT"], **risk)
        gctx = context(redis_url, instance, spec, "governor")
        self.gov = consumer(gctx, governor.build(gctx))
        self.pctx = context(redis_url, instance, spec, "position-state")
        self.service = position_state.build(self.pctx)
        self.ps = consumer(self.pctx, self.service)
        self.keys = gctx.keys
        release(r, self.keys)

    def approve(self, plan):
        publish_plan(self.r, self.keys, plan)
        drain(self.gov)
        decision = decisions(self.r, self.keys)[-1]
        assert decision.plan_id == plan.plan_id
        assert decision.approved, decision
        return approvals(self.r, self.keys)[-1]

    def settle(self, result: ExecutionResult) -> None:
        publish_result(self.r, self.keys, result)
        drain(self.ps)

    def snapshots(self) -> list[PositionSnapshot]:
        return [e.message for e in read_stream(self.r, self.keys, "position.snapshot", PositionSnapshot)]

    def trades(self) -> list[TradeClosed]:
        return [e.message for e in read_stream(self.r, self.keys, "trade.closed", TradeClosed)]

    def position(self, symbol: str = "BTCUSDT") -> dict[str, str]:
        return text_hash(self.r, self.keys.position(symbol))

    def heat(self) -> dict[str, str]:
        return text_hash(self.r, self.keys.portfolio_heat)


@pytest.fixture
def desk(redis_url: str, instance: str, r: redis.Redis):
    def make(**risk: object) -> Desk:
        return Desk(redis_url, instance, r, **risk)

    return make


def test_filled_entry_then_filled_exit(desk) -> None:
    d = desk(cooldownSeconds=300)
    keys, r = d.keys, d.r
    approval = d.approve(entry("BTCUSDT", "e1", notional=1000.0, price=100.0))  # SL 98, TP 104
    assert r.hget(keys.reservations, "e1") == "1000.0"
    d.settle(result_for(approval, filled_qty=10.0, avg_price=100.5, fee=0.4))

    pos = d.position()
    assert (pos["side"], float(pos["qty"]), float(pos["entry_price"]), float(pos["entry_fees"])) == (
        "LONG",
        10.0,
        100.5,
        0.4,
    )
    assert (float(pos["stop_loss"]), float(pos["take_profit"]), pos["version"], pos["opened_at"]) == (
        98.0,
        104.0,
        "1",
        str(T0),
    )
    assert pos["entry_plan_id"] == "e1"
    assert text_hash(r, keys.open_positions) == {"BTCUSDT": "1005.0"}
    assert r.hlen(keys.reservations) == 0 and r.hlen(keys.entry_locks) == 0
    [snap] = d.snapshots()
    assert (snap.side, snap.qty, snap.version, snap.source, snap.stop_loss) == (
        PositionSide.LONG,
        10.0,
        1,
        "position-state",
        98.0,
    )
    heat = d.heat()
    assert float(heat["open_risk"]) == pytest.approx(25.0)
    assert float(heat["equity"]) == pytest.approx(10_000 - 0.4)
    assert float(heat["heat"]) == pytest.approx(25.0 / 9999.6)
    assert heat["positions"] == "1"
    assert abs(int(heat["time"]) - time.time() * 1000) < 10_000  # wall time: heat-gate checks its age

    exit_approval = d.approve(
        exit_plan("BTCUSDT", "x1", qty=10.0, price=110.0, time=T0 + 60_000, reasons=("take_profit",))
    )
    assert r.hget(keys.exit_locks, "BTCUSDT") == "x1"
    d.settle(result_for(exit_approval, avg_price=110.0, fee=0.44))

    [trade] = d.trades()
    assert trade.trade_id == "e1:x1"
    assert (trade.side, trade.qty, trade.entry_price, trade.exit_price) == (PositionSide.LONG, 10.0, 100.5, 110.0)
    assert trade.realized_pnl == pytest.approx(95.0)
    assert trade.fees == pytest.approx(0.84)
    assert (trade.exit_reason, trade.exit_controller, trade.opened_at, trade.closed_at) == (
        "take_profit",
        "exit-brain",
        T0,
        T0 + 60_000,
    )
    pos = d.position()
    assert (pos["side"], pos["qty"], pos["version"]) == ("FLAT", "0.0", "2")
    assert r.hlen(keys.open_positions) == 0 and r.hlen(keys.exit_locks) == 0
    assert r.hget(keys.cooldowns, "BTCUSDT") == str(T0 + 60_000)
    ledger = text_hash(r, keys.ledger_equity)
    assert float(ledger["realized_pnl"]) == pytest.approx(95.0)
    assert float(ledger["fees"]) == pytest.approx(0.84)
    assert (ledger["trades"], ledger["wins"]) == ("1", "1")
    heat = d.heat()
    assert (float(heat["heat"]), float(heat["open_risk"]), heat["positions"]) == (0.0, 0.0, "0")
    assert float(heat["equity"]) == pytest.approx(10_000 + 95.0 - 0.84)
    assert [(s.side, s.version) for s in d.snapshots()] == [(PositionSide.LONG, 1), (PositionSide.FLAT, 2)]

    # the cooldown counts from the close, in market time
    publish_plan(r, keys, entry("BTCUSDT", "e2", time=T0 + 60_000 + 299_999))
    drain(d.gov)
    assert decisions(r, keys)[-1].reasons == ("cooldown",)


def test_short_partial_then_full_close(desk) -> None:
    d = desk(maxNotionalPerTrade=5000.0)
    keys, r = d.keys, d.r
    plan = entry("ETHUSDT", "s1", notional=2000.0, price=2000.0).model_copy(
        update={"side": Side.SELL, "stop_loss": 2100.0, "take_profit": 1800.0}
    )
    d.settle(result_for(d.approve(plan), filled_qty=1.0, avg_price=2000.0, fee=0.8))
    assert d.position("ETHUSDT")["side"] == "SHORT"
    assert float(d.heat()["open_risk"]) == pytest.approx(100.0)

    half = exit_plan("ETHUSDT", "c1", qty=0.5, price=1900.0, side=Side.BUY, reasons=("harvest_partial",))
    d.settle(result_for(d.approve(half), avg_price=1900.0, fee=0.38))
    [first] = d.trades()
    assert first.realized_pnl == pytest.approx(50.0)  # (2000 - 1900) * 0.5
    assert first.fees == pytest.approx(0.4 + 0.38)
    assert float(r.hget(keys.open_positions, "ETHUSDT")) == pytest.approx(1000.0)  # what is still open
    assert r.hget(keys.cooldowns, "ETHUSDT") is None  # not closed yet
    assert r.hlen(keys.exit_locks) == 0  # the next exit may go

    rest = exit_plan("ETHUSDT", "c2", qty=0.5, price=2050.0, side=Side.BUY, time=T0 + 5, reasons=("stop_loss",))
    d.settle(result_for(d.approve(rest), avg_price=2050.0, fee=0.41))
    second = d.trades()[-1]
    assert second.realized_pnl == pytest.approx(-25.0)
    assert second.fees == pytest.approx(0.4 + 0.41)
    assert second.trade_id == "s1:c2"
    ledger = text_hash(r, keys.ledger_equity)
    assert float(ledger["realized_pnl"]) == pytest.approx(25.0)
    assert float(ledger["fees"]) == pytest.approx(0.8 + 0.38 + 0.41)
    assert (ledger["trades"], ledger["wins"]) == ("2", "1")
    assert d.position("ETHUSDT")["side"] == "FLAT"
    assert r.hlen(keys.open_positions) == 0
    assert r.hget(keys.cooldowns, "ETHUSDT") == str(T0 + 5)


@pytest.mark.parametrize("status", [ResultStatus.REJECTED, ResultStatus.ERROR, ResultStatus.SKIPPED])
def test_unfilled_entry_releases_its_reservation(desk, status: ResultStatus) -> None:
    d = desk(maxOpenPositions=1)
    keys, r = d.keys, d.r
    approval = d.approve(entry("BTCUSDT", "e1"))
    publish_plan(r, keys, entry("ETHUSDT", "e2"))
    drain(d.gov)
    assert decisions(r, keys)[-1].reasons == ("max_open_positions",)  # the slot is held
    d.settle(result_for(approval, status))
    assert r.hlen(keys.reservations) == 0 and r.hlen(keys.entry_locks) == 0
    assert r.hlen(keys.open_positions) == 0
    assert d.position() == {} and d.snapshots() == [] and d.trades() == []
    assert text_hash(r, keys.ledger_equity) == {}
    assert d.heat()["positions"] == "0"
    d.approve(entry("ETHUSDT", "e3"))  # the slot is free again


def test_rejected_exit_releases_only_the_exit_lock(desk) -> None:
    d = desk()
    keys, r = d.keys, d.r
    d.settle(result_for(d.approve(entry("BTCUSDT", "e1")), filled_qty=1.0))
    exit_approval = d.approve(exit_plan("BTCUSDT", "x1"))
    publish_plan(r, keys, exit_plan("BTCUSDT", "x2"))
    drain(d.gov)
    assert decisions(r, keys)[-1].reasons == ("exit_in_flight",)
    d.settle(result_for(exit_approval, ResultStatus.REJECTED))
    assert r.hlen(keys.exit_locks) == 0
    assert d.position()["version"] == "1" and d.position()["side"] == "LONG"
    assert r.hexists(keys.open_positions, "BTCUSDT")
    d.approve(exit_plan("BTCUSDT", "x3"))  # a new exit may go now


def test_duplicate_result_is_applied_once(desk) -> None:
    d = desk()
    keys, r = d.keys, d.r
    result = result_for(d.approve(entry("BTCUSDT", "e1")), filled_qty=2.0, fee=0.1)
    d.settle(result)
    d.settle(result)  # apply-layer sent it twice (same envelope id)
    first_id, fields = r.xrange(keys.stream("apply.result"))[0]
    d.ps.handle_entry("apply.result", first_id, fields, deliveries=2)  # and a redelivery
    assert d.position()["qty"] == "2.0" and d.position()["version"] == "1"
    assert len(d.snapshots()) == 1
    assert float(text_hash(r, keys.ledger_equity)["fees"]) == pytest.approx(0.1)
    assert d.ps.stats.duplicates == 2


def test_a_lock_held_by_another_plan_is_not_released(desk) -> None:
    d = desk()
    keys, r = d.keys, d.r
    r.hset(keys.entry_locks, "BTCUSDT", "newer")
    r.hset(keys.reservations, mapping={"newer": "100.0", "late": "100.0"})
    stale = result_for(d.approve(entry("ETHUSDT", "late")), ResultStatus.REJECTED).model_copy(
        update={"symbol": "BTCUSDT"}
    )
    d.settle(stale)
    assert text_hash(r, keys.entry_locks) == {"BTCUSDT": "newer", "ETHUSDT": "late"}
    assert text_hash(r, keys.reservations) == {"newer": "100.0"}


def test_position_version_guard_conflicts_then_recomputes(desk) -> None:
    d = desk()
    keys, r = d.keys, d.r
    d.settle(result_for(d.approve(entry("BTCUSDT", "e1")), filled_qty=1.0, avg_price=100.0))
    d.settle(result_for(d.approve(exit_plan("BTCUSDT", "x1", qty=0.5)), avg_price=100.0))
    close = result_for(d.approve(exit_plan("BTCUSDT", "x2", qty=0.5, time=T0 + 1)), avg_price=104.0)
    entry_id = publish_result(r, keys, close)
    fields = r.xrange(keys.stream("apply.result"), entry_id, entry_id)[0][1]
    envelope = decode(fields, ExecutionResult)
    step = d.service.on_result(envelope, Delivery("apply.result", entry_id, 1))
    # meanwhile the reconciler corrects the position to the exchange's 2.0 (and bumps its version)
    r.hset(keys.position("BTCUSDT"), mapping={"qty": "2.0", "version": "3"})
    assert d.ps.steps.run(step, message_id=envelope.id) is StepOutcome.CONFLICT
    assert d.position()["version"] == "3" and d.trades()[-1].trade_id == "e1:x1"  # nothing written
    drain(d.ps)  # the consumer re-reads and settles against the corrected position
    pos = d.position()
    assert (pos["version"], float(pos["qty"]), pos["side"]) == ("4", 1.5, "LONG")
    assert d.trades()[-1].trade_id == "e1:x2" and d.trades()[-1].qty == 0.5
    assert float(r.hget(keys.open_positions, "BTCUSDT")) == pytest.approx(150.0)


def test_heat_is_written_at_start_and_refreshed(desk) -> None:
    d = desk()
    d.r.hset(
        d.keys.position("BTCUSDT"),
        mapping={"side": "LONG", "qty": "2", "entry_price": "100", "stop_loss": "90", "opened_at": "1", "version": "4"},
    )
    d.r.hset(d.keys.open_positions, "BTCUSDT", "200.0")
    d.service.start()
    heat = d.heat()
    assert (float(heat["open_risk"]), heat["positions"], float(heat["equity"])) == (20.0, "1", 10_000.0)
    first = int(heat["time"])
    time.sleep(0.01)
    d.service.refresh_heat()
    assert int(d.heat()["time"]) > first


def test_concurrent_replicas_settle_every_fill_once(redis_url: str, instance: str, r: redis.Redis) -> None:
    """Two position-state processes racing over adds on a few symbols: every fill counted once,
    positions at the exact weighted average, the ledger and the heat consistent with them."""
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    spec = policy(symbols)
    ctx = context(redis_url, instance, spec, "position-state")
    keys = ctx.keys
    consumer(ctx, position_state.build(ctx))  # create the group before anything is added
    results = []
    for i in range(120):
        symbol = symbols[i % 3]
        plan = entry(symbol, f"f{i}", time=T0 + i, price=100.0 + i)
        approval = Approval(
            approval_id=f"apr:f{i}", plan=plan, reservation=reservation(10.0), approved_at=0, expires_at=1
        )
        results.append(result_for(approval, filled_qty=1.0, avg_price=100.0 + i, fee=0.01))
    settle_with_replicas(redis_url, instance, spec, results, snapshots=120)
    for k, symbol in enumerate(symbols):
        prices = [100.0 + i for i in range(120) if i % 3 == k]
        pos = text_hash(r, keys.position(symbol))
        assert float(pos["qty"]) == pytest.approx(40.0)
        assert float(pos["entry_price"]) == pytest.approx(sum(prices) / 40)
        assert pos["version"] == "40"
    assert float(text_hash(r, keys.ledger_equity)["fees"]) == pytest.approx(1.2)
    service = position_state.build(ctx)
    service.refresh_heat()  # with several replicas a step's heat may miss a concurrent one: the refresh is exact
    heat = text_hash(r, keys.portfolio_heat)
    assert heat["positions"] == "3"
    assert float(heat["equity"]) == pytest.approx(10_000 - 1.2)
    positions = [text_hash(r, keys.position(s)) for s in symbols]
    expected_risk = sum(float(p["qty"]) * abs(float(p["entry_price"]) - float(p["stop_loss"])) for p in positions)
    assert float(heat["open_risk"]) == pytest.approx(expected_risk)
    assert sorted(s.message.version for s in read_stream(r, keys, "position.snapshot", PositionSnapshot)) == sorted(
        v for _ in symbols for v in range(1, 41)
    )
    assert {PlanKind.ENTRY} == {e.message.kind for e in read_stream(r, keys, "apply.result", ExecutionResult)}
