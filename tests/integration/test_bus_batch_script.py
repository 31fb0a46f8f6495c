"""One stage script for a batch of steps, against a real redis-server: each step exactly as it would be on
its own (done key, guards, writes, outputs, ack), the batch atomic, a failing step alone left undone; a
consumer process killed at random while it steps batches leaves every entry applied once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import redis

from quantum_trader.bus.consumer import StreamConsumer
from quantum_trader.bus.publish import publish
from quantum_trader.bus.step import Output, Step, StepOutcome, StepRunner
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import StreamRetention
from tests.integration.test_bus_batching import tick, vector

REPO = Path(__file__).resolve().parents[2]
GROUP = "features"
SOURCE = "market.tick"


def pending_entries(r: redis.Redis, keys: Keys, count: int) -> list[str]:
    """``count`` entries of the source stream, delivered to the group and not acked yet."""
    stream = keys.stream(SOURCE)
    for t in range(count):
        publish(r, keys, Output(SOURCE, tick(t), id=f"t{t}"), 10_000)
    r.xgroup_create(stream, GROUP, id="0")
    reply = r.xreadgroup(GROUP, "c1", {stream: ">"}, count=count)
    return [entry_id for entry_id, _ in reply[0][1]]


def still_pending(r: redis.Redis, keys: Keys) -> set[str]:
    return {p["message_id"] for p in r.xpending_range(keys.stream(SOURCE), GROUP, "-", "+", 1000)}


def calls(r: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in r.info("commandstats").items()}


def test_a_batch_applies_each_step_as_its_own_script_would(r: redis.Redis, instance: str) -> None:
    keys = Keys(instance)
    entries = pending_entries(r, keys, 6)
    counter, guarded, wrong = f"n:{instance}", f"g:{instance}", f"s:{instance}"
    r.hset(guarded, "v", "0")
    r.set(wrong, "a string, not a hash")
    runner = StepRunner(r, keys, GROUP, 1000, 60)
    runner.run(Step(), message_id="m1")  # m1 was done before the batch

    def counted(n: int) -> Step:
        return Step().write("HINCRBY", counter, f"m{n}", 1).emit("features", vector(n), id=f"f:m{n}")

    batch = [
        (counted(0), "m0", SOURCE, GROUP, entries[0]),
        (counted(1), "m1", SOURCE, GROUP, entries[1]),  # a duplicate: only acked
        (counted(2).guard(guarded, "v", "1"), "m2", SOURCE, GROUP, entries[2]),  # conflict: nothing, not acked
        (counted(3).write("HSET", wrong, "f", "1"), "m3", SOURCE, GROUP, entries[3]),  # its write fails
        (counted(4), "m4", SOURCE, GROUP, entries[4]),
        (counted(4), "m4", SOURCE, GROUP, entries[5]),  # the same message again, in the same batch
    ]
    before = calls(r)
    outcomes = runner.run_many(batch)
    used = {name: n - before.get(name, 0) for name, n in calls(r).items()}

    assert outcomes[:3] == [StepOutcome.DONE, StepOutcome.DUPLICATE, StepOutcome.CONFLICT]
    assert isinstance(outcomes[3], redis.ResponseError) and "WRONGTYPE" in str(outcomes[3])
    assert outcomes[4:] == [StepOutcome.DONE, StepOutcome.DUPLICATE]
    # the failed step's write before the failing one stays, as in a script of its own; it is not done
    assert r.hgetall(counter) == {"m0": "1", "m3": "1", "m4": "1"}
    assert [f["id"] for _, f in r.xrange(keys.stream("features"))] == ["f:m0", "f:m4"]
    assert [bool(r.exists(keys.done(GROUP, f"m{n}"))) for n in range(5)] == [True, True, False, False, True]
    assert still_pending(r, keys) == {entries[2], entries[3]}
    assert r.ttl(keys.done(GROUP, "m0")) > 0
    # one script call and one XACK for the batch, a SET NX per step and a DEL per undone one
    assert used["evalsha"] == 1 and used["xack"] == 1 and used["set"] == 6 and used["del"] == 2
    assert used.get("exists", 0) == 0
    # a batch of one is the one-step form: its failed write comes back as its exception the same way
    (alone,) = runner.run_many([(counted(5).write("HSET", wrong, "f", "1"), "m5", SOURCE, GROUP, entries[3])])
    assert isinstance(alone, redis.ResponseError) and "WRONGTYPE" in str(alone)
    assert not r.exists(keys.done(GROUP, "m5")) and entries[3] in still_pending(r, keys)
    assert runner.run_many([(counted(6), "m6", SOURCE, GROUP, entries[3])]) == [StepOutcome.DONE]
    assert still_pending(r, keys) == {entries[2]}


def test_a_batch_is_atomic_for_every_other_client(r: redis.Redis, redis_url: str, instance: str) -> None:
    """A reader polling while a large batch is applied sees none of its effects or all of them."""
    keys = Keys(instance)
    steps = 3_000
    counter = f"n:{instance}"
    runner = StepRunner(r, keys, GROUP, 10_000, 60)
    batch = [(Step().write("HSET", counter, f"m{n}", "1"), f"m{n}", "", "", "") for n in range(steps)]
    seen: list[int] = []
    started = threading.Event()
    finished = threading.Event()

    def poll() -> None:
        reader = redis.Redis.from_url(redis_url)
        started.set()
        while not finished.is_set():
            seen.append(int(reader.hlen(counter)))
        seen.append(int(reader.hlen(counter)))
        reader.close()

    reader = threading.Thread(target=poll)
    reader.start()
    started.wait(5)
    time.sleep(0.01)
    outcomes = runner.run_many(batch)
    finished.set()
    reader.join(10)
    assert outcomes == [StepOutcome.DONE] * steps
    assert seen and set(seen) <= {0, steps} and seen[-1] == steps


CHILD = textwrap.dedent(
    """
    import sys, time
    import redis
    from quantum_trader.bus.consumer import StreamConsumer, independent_steps, no_done_precheck
    from quantum_trader.bus.step import Step
    from quantum_trader.contracts.keys import Keys
    from quantum_trader.contracts.policy import StreamRetention
    from tests.integration.test_bus_batching import vector

    url, instance = sys.argv[1:3]
    r = redis.Redis.from_url(url, decode_responses=True)
    keys = Keys(instance)

    @no_done_precheck  # its only effect is its step, which finds the done key
    @independent_steps
    def handle(envelope, delivery):
        time.sleep(0.0003)  # kills land while handling as well as while a batch is stepped
        t = envelope.message.event_time
        step = Step().write("HINCRBY", "n:" + instance, envelope.id, 1)
        return step.emit("features", vector(t), id="f:" + envelope.id)

    consumer = StreamConsumer(r, keys, "features", "c1", {"market.tick": handle}, StreamRetention())
    consumer.ensure_groups()
    print("ready", flush=True)
    while True:
        consumer.poll_once(block_ms=50)
    """
)


def test_a_consumer_killed_while_stepping_batches_applies_every_entry_once(
    r: redis.Redis, redis_url: str, instance: str, tmp_path: Path
) -> None:
    keys = Keys(instance)
    messages = 4_000
    for t in range(messages):
        publish(r, keys, Output(SOURCE, tick(t), id=f"t{t}"), 10_000)
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "components"), str(REPO)])}
    rng = random.Random(11)
    kills = 0
    for _ in range(8):
        process = subprocess.Popen(
            [sys.executable, str(child), redis_url, instance], stdout=subprocess.PIPE, env=env, text=True
        )
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.02, 0.25))
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        kills += 1
    applied_before_the_end = int(r.hlen(f"n:{instance}"))
    # the same consumer name: it reads the pending entries the killed ones left first
    survivor = StreamConsumer(r, keys, GROUP, "c1", {SOURCE: _counting_handler(instance)}, StreamRetention())
    while survivor.poll_once(block_ms=50):
        pass
    counts = r.hgetall(f"n:{instance}")
    assert kills == 8 and 0 < applied_before_the_end < messages  # the kills landed mid-stream
    assert len(counts) == messages and set(counts.values()) == {"1"}
    out = [f["id"] for _, f in r.xrange(keys.stream("features"), count=10 * messages)]
    assert len(out) == len(set(out)) == messages
    assert r.xpending(keys.stream(SOURCE), GROUP)["pending"] == 0


def _counting_handler(instance: str):
    def handle(envelope, delivery) -> Step:
        step = Step().write("HINCRBY", f"n:{instance}", envelope.id, 1)
        return step.emit("features", vector(envelope.message.event_time), id=f"f:{envelope.id}")

    return handle


def test_a_tallied_overwrite_with_the_same_value_and_a_bad_value(r: redis.Redis, instance: str) -> None:
    keys = Keys(instance)
    runner = StepRunner(r, keys, "test", max_len=100, done_ttl_seconds=60)
    hashed, totals = keys.open_positions, keys.open_positions_totals

    def tally(message_id: str, command: str, field: str, *value: float) -> dict[str, str]:
        runner.run(Step().tally(command, hashed, field, *value, totals=totals), message_id=message_id)
        return r.hgetall(totals)

    assert tally("a", "HSET", "A", 2.5) == {"sum": "2.5", "count": "1"}
    assert tally("b", "HSET", "A", 2.5) == {"sum": "2.5", "count": "1"}  # the same value: nothing moves
    assert tally("c", "HSET", "B", 1.0) == {"sum": "3.5", "count": "2"}
    assert tally("d", "HSET", "B", 4.0) == {"sum": "6.5", "count": "2"}
    assert r.hgetall(hashed) == {"A": "2.5", "B": "4.0"}
    assert tally("e", "HSET", "C", float("inf")) == {}  # not a finite number: no totals to trust
    assert r.hget(hashed, "C") == "inf"
