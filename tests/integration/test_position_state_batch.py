"""position-state's batch path on a real redis-server: a batch of results settled with one read and one
script leaves exactly what settling them one at a time leaves; the batch script stops at the first
step that does not apply; tallied writes in batch scripts move the running totals as one step each
does; two replicas racing over one symbol stay exact."""

from __future__ import annotations

import random

import pytest
import redis

from quantum_trader.bus.step import Step, StepOutcome, StepRunner
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import (
    Approval,
    ExecutionResult,
    PositionSnapshot,
    ResultStatus,
    Side,
    TradeClosed,
)
from quantum_trader.services import position_state
from quantum_trader.services.step_batch import BatchOutcome, BatchStep, StepBatch
from tests.factories import entry, exit_plan
from tests.integration._governor_support import (
    consumer,
    context,
    drain,
    policy,
    publish,
    read_stream,
    reservation,
    result_for,
    text_hash,
)
from tests.integration._position_state_support import OnePositionState, settle_with_replicas

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def approval(plan, notional: float = 100.0) -> Approval:
    return Approval(
        approval_id=f"apr:{plan.plan_id}", plan=plan, reservation=reservation(notional), approved_at=0, expires_at=1
    )


def results() -> list[tuple[ExecutionResult, str]]:
    """(result, message id): one symbol opened, added to, partly closed, closed and opened again, with
    other symbols' results between them, an unfilled entry, and one message sent twice."""
    sequence = [
        result_for(approval(entry("BTCUSDT", "e1", price=100.0, t=1)), filled_qty=1.0, avg_price=100.0, fee=0.04),
        result_for(approval(entry("ETHUSDT", "f1", price=50.0, t=2)), ResultStatus.REJECTED),
        result_for(approval(entry("BTCUSDT", "e2", price=110.0, t=3)), filled_qty=0.5, avg_price=110.0, fee=0.02),
        result_for(approval(entry("SOLUSDT", "s1", price=10.0, t=4)), filled_qty=10.0, avg_price=10.0, fee=0.01),
        result_for(approval(exit_plan("BTCUSDT", "x1", 0.5, price=120.0, t=5)), avg_price=120.0, fee=0.03),
        result_for(approval(exit_plan("BTCUSDT", "x2", 1.0, price=90.0, t=6)), avg_price=90.0, fee=0.03),
        result_for(
            approval(entry("BTCUSDT", "e3", price=95.0, t=7, side=Side.SELL)), filled_qty=0.2, avg_price=95.0, fee=0.01
        ),
        result_for(approval(exit_plan("SOLUSDT", "sx1", 4.0, price=12.0, t=8)), avg_price=12.0, fee=0.01),
    ]
    messages = [(res, f"res:{res.plan_id}") for res in sequence]
    return [*messages[:3], messages[2], *messages[3:]]  # e2's result sent twice


def reserve(r: redis.Redis, keys: Keys, runner: StepRunner) -> None:
    """What the governor's approvals hold: reservations (tallied) and locks, before any result."""
    step = Step()
    for plan_id, notional in (("e1", 100.0), ("f1", 50.0), ("s1", 100.0), ("e3", 19.0)):
        step.tally("HSET", keys.reservations, plan_id, notional, totals=keys.reservations_totals)
    for symbol, plan_id in (("BTCUSDT", "e1"), ("ETHUSDT", "f1"), ("SOLUSDT", "s1")):
        step.write("HSET", keys.entry_locks, symbol, plan_id)
    step.write("HSET", keys.exit_locks, "BTCUSDT", "x1")
    assert runner.run(step, message_id="approvals") is StepOutcome.DONE


class Book(OnePositionState):
    def __init__(self, redis_url: str, instance: str, r: redis.Redis) -> None:
        super().__init__(redis_url, instance, r, SYMBOLS)
        self.service.start()
        reserve(r, self.keys, self.ps.steps)

    def state(self) -> dict[str, object]:
        """Everything position-state writes, but the heat (compared apart: its sums are read, not written)."""
        keys, r = self.keys, self.r
        hashes = [keys.position(s) for s in SYMBOLS] + [
            keys.ledger_equity,
            keys.open_positions,
            keys.open_positions_totals,
            keys.reservations,
            keys.reservations_totals,
            keys.entry_locks,
            keys.exit_locks,
            keys.cooldowns,
            keys.portfolio_risk,
            keys.portfolio_risk_total,
        ]
        state: dict[str, object] = {name(key): text_hash(r, key) for key in hashes}
        state["snapshots"] = [e.message for e in read_stream(r, keys, "position.snapshot", PositionSnapshot)]
        state["trades"] = [e.message for e in read_stream(r, keys, "trade.closed", TradeClosed)]
        state["pending"] = r.xpending(keys.stream("apply.result"), self.ctx.name)["pending"]
        return state

    def heat(self) -> tuple[list[float], tuple[str, str]]:
        heat = text_hash(self.r, self.keys.portfolio_heat)
        return [float(heat["heat"]), float(heat["open_risk"]), float(heat["equity"])], (
            heat["positions"],
            heat["market_time"],
        )


def name(key: str) -> str:
    """A key without its instance prefix."""
    return key.split("}:")[-1]


def test_a_batch_settles_as_one_result_at_a_time(redis_url: str, instance: str, r: redis.Redis) -> None:
    batched = Book(redis_url, instance, r)
    alone = Book(redis_url, instance + "b", r)
    messages = results()
    for res, message_id in messages:
        publish(r, alone.keys, "apply.result", res, id=message_id)
        drain(alone.ps)
    for res, message_id in messages:
        publish(r, batched.keys, "apply.result", res, id=message_id)
    r.config_resetstat()
    assert batched.ps.poll_once(block_ms=50) == len(messages)  # one read of the whole batch
    stats = r.info("commandstats")
    scripts = sum(  # a first call of a script this server does not know yet fails (NOSCRIPT) and loads it
        stats.get(f"cmdstat_{name}", {}).get("calls", 0) - stats.get(f"cmdstat_{name}", {}).get("failed_calls", 0)
        for name in ("evalsha", "eval")
    )
    assert scripts == 1, "the batch was not settled by one script"
    assert batched.ps.stats.processed == len(messages) - 1 and batched.ps.stats.duplicates == 1
    assert batched.state() == alone.state()
    (sums, counts), (alone_sums, alone_counts) = batched.heat(), alone.heat()
    assert sums == pytest.approx(alone_sums) and counts == alone_counts == ("2", "8")
    state, keys = batched.state(), batched.keys
    assert state[name(keys.position("BTCUSDT"))]["side"] == "SHORT"  # type: ignore[index]
    assert [t.trade_id for t in state["trades"]] == ["e1:x1", "e1:x2", "s1:sx1"]  # type: ignore[union-attr]
    for key in (keys.reservations, keys.entry_locks, keys.exit_locks):
        assert state[name(key)] == {}
    assert batched.service.counters["results_filled"] == 7 and batched.service.counters["trades_closed"] == 3


def test_the_batch_script_stops_at_the_first_step_that_does_not_apply(instance: str, r: redis.Redis) -> None:
    keys = Keys(instance)
    runner = StepRunner(r, keys, "ps-test", 1000, 60)
    batch = StepBatch(r, runner)
    r.xgroup_create(keys.stream("in"), "ps-test", id="0", mkstream=True)
    entry_ids = [r.xadd(keys.stream("in"), {"n": str(i)}) for i in range(4)]
    r.xreadgroup("ps-test", "c", {keys.stream("in"): ">"})
    runner.run(Step(), message_id="m0", input_stream="in", group="ps-test", entry_id=entry_ids[0])  # done before

    def step(i: int, expected: StepOutcome = StepOutcome.DONE, guard: str | None = None) -> BatchStep:
        s = Step().write("HSET", keys.cooldowns, f"s{i}", str(i)).guard(keys.entry_locks, "X", guard)
        return BatchStep(s, f"m{i}", "in", "ps-test", entry_ids[i], expected)

    outcomes = batch.run([step(0, StepOutcome.DUPLICATE), step(1), step(2, guard="held"), step(3)])
    assert outcomes == [BatchOutcome.DUPLICATE, BatchOutcome.DONE, BatchOutcome.CONFLICT, BatchOutcome.NOT_TRIED]
    assert text_hash(r, keys.cooldowns) == {"s1": "1"}  # the duplicate only acked; 2 conflicted, 3 not run
    assert [r.exists(keys.done("ps-test", f"m{i}")) for i in range(4)] == [1, 1, 0, 0]
    assert r.xpending(keys.stream("in"), "ps-test")["pending"] == 2
    # a duplicate nobody expected stops the batch too: what came after it was computed on its effects
    assert batch.run([step(1), step(3)]) == [BatchOutcome.DUPLICATE, BatchOutcome.NOT_TRIED]


def test_tallied_writes_in_batch_scripts_move_the_totals_as_one_step_each(instance: str, r: redis.Redis) -> None:
    """The same random tallied writes, one stage step each and in batch scripts: same hash, same totals
    (exactly 0 when emptied, dropped on a value that is no number)."""
    rng = random.Random(11)
    writes = []
    for _ in range(300):
        field_name = f"f{rng.randrange(6)}"
        if rng.random() < 0.45:
            writes.append(("HDEL", field_name, None))
        else:
            writes.append(("HSET", field_name, round(rng.uniform(1, 500), 2)))
    writes[150] = ("HSET", "f0", float("nan"))  # no number: the totals are dropped, and built again after

    def run(prefix: str, batch_size: int) -> tuple[dict, dict]:
        keys = Keys(prefix)
        runner = StepRunner(r, keys, "tally-test", 1000, 60)
        batch = StepBatch(r, runner)
        steps = []
        for i, (command, field_name, value) in enumerate(writes):
            step = Step().tally(command, keys.reservations, field_name, value, totals=keys.reservations_totals)
            steps.append(BatchStep(step, f"w{i}", "", "", ""))
        for start in range(0, len(steps), batch_size):
            chunk = steps[start : start + batch_size]
            if batch_size == 1:
                assert runner.run(chunk[0].step, message_id=chunk[0].message_id) is StepOutcome.DONE
            else:
                assert batch.run(chunk) == [BatchOutcome.DONE] * len(chunk)
            if start + batch_size == 150:  # before the value that is no number: the totals are the hash's
                values, totals = text_hash(r, keys.reservations), text_hash(r, keys.reservations_totals)
                assert totals["count"] == str(len(values))
                assert float(totals["sum"]) == pytest.approx(sum(float(v) for v in values.values()))
        return text_hash(r, keys.reservations), text_hash(r, keys.reservations_totals)

    one_by_one = run(instance + "a", 1)
    batched = run(instance + "b", 30)
    assert batched == one_by_one


def test_two_replicas_racing_over_one_symbol_stay_exact(redis_url: str, instance: str, r: redis.Redis) -> None:
    """Adds and reductions of one symbol, settled by two position-state processes reading batches at
    once: every result applied once, on the state the one before it left (the version counts them all)."""
    spec = policy(["BTCUSDT"])
    ctx = context(redis_url, instance, spec, "position-state")
    keys = ctx.keys
    service = position_state.build(ctx)
    first = consumer(ctx, service)  # the group, before anything is added
    service.start()
    opening = result_for(approval(entry("BTCUSDT", "open", price=100.0, t=0)), filled_qty=100.0, avg_price=100.0)
    publish(r, keys, "apply.result", opening, id="res:open")  # big enough that no order of the rest goes flat
    drain(first)
    sequence = []
    for i in range(160):
        if i % 4 == 3:
            plan = exit_plan("BTCUSDT", f"x{i}", 0.5, price=100.0 + i, t=i)
            sequence.append(result_for(approval(plan), avg_price=100.0 + i, fee=0.01))
        else:
            plan = entry("BTCUSDT", f"e{i}", price=100.0 + i, t=i)
            sequence.append(result_for(approval(plan), filled_qty=1.0, avg_price=100.0 + i, fee=0.01))
    settle_with_replicas(redis_url, instance, spec, sequence, snapshots=161)
    pos = text_hash(r, keys.position("BTCUSDT"))
    assert (pos["side"], float(pos["qty"]), pos["version"]) == ("LONG", pytest.approx(200.0), "161")
    snapshots = [e.message for e in read_stream(r, keys, "position.snapshot", PositionSnapshot)]
    assert sorted(s.version for s in snapshots) == list(range(1, 162))
    trades = [e.message for e in read_stream(r, keys, "trade.closed", TradeClosed)]
    assert len(trades) == 40 and sum(t.qty for t in trades) == pytest.approx(20.0)
    ledger = text_hash(r, keys.ledger_equity)
    assert float(ledger["fees"]) == pytest.approx(1.6) and ledger["trades"] == "40"
    assert float(ledger["realized_pnl"]) == pytest.approx(sum(t.realized_pnl for t in trades))
    assert float(r.hget(keys.open_positions, "BTCUSDT")) == pytest.approx(float(pos["qty"]) * float(pos["entry_price"]))
    assert text_hash(r, keys.open_positions_totals)["count"] == "1"
    risk = float(pos["qty"]) * abs(float(pos["entry_price"]) - float(pos["stop_loss"]))
    assert float(text_hash(r, keys.portfolio_risk_total)["open_risk"]) == pytest.approx(risk)
    assert r.xpending(keys.stream("apply.result"), "position-state")["pending"] == 0
