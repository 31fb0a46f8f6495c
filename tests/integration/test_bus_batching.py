"""The consumer's per-batch round trips against a real Redis: one done-key check per batch, steps of
independent handlers applied together — and still exactly once."""

from __future__ import annotations

import redis

from quantum_trader.bus.consumer import Delivery, StreamConsumer, independent_steps, no_done_precheck
from quantum_trader.bus.publish import publish
from quantum_trader.bus.step import Output, Step, StepRunner
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import FeatureVector, Tick
from quantum_trader.contracts.policy import StreamRetention


def tick(t: int, symbol: str = "BTCUSDT") -> Tick:
    return Tick(symbol=symbol, price=100.0, bid=100.0, ask=100.0, volume=1, event_time=t, source="synthetic:test")


def vector(t: int) -> FeatureVector:
    return FeatureVector(symbol="BTCUSDT", time=t, feature_set="test", names=("x",), values=(1.0,), price=1.0)


def make(r: redis.Redis, keys: Keys, handler, name: str = "c1") -> StreamConsumer:
    consumer = StreamConsumer(r, keys, "features", name, {"market.tick": handler}, StreamRetention())
    consumer.ensure_groups()
    return consumer


def drain(consumer: StreamConsumer) -> None:
    while consumer.poll_once(block_ms=50):
        pass


def outputs(r: redis.Redis, keys: Keys) -> list[str]:
    return [fields["id"] for _, fields in r.xrange(keys.stream("features"))]


def pending(r: redis.Redis, keys: Keys) -> int:
    return r.xpending(keys.stream("market.tick"), "features")["pending"]


def count_commands(r: redis.Redis) -> dict[str, int]:
    return {name: int(info["calls"]) for name, info in ((k.split("_", 1)[1], v) for k, v in _stats(r).items())}


def _stats(r: redis.Redis) -> dict:
    return r.info("commandstats")


def test_independent_steps_are_applied_together_and_exactly_once(r: redis.Redis, instance: str) -> None:
    keys = Keys(instance)
    calls: list[str] = []

    @independent_steps
    def handle(envelope: Envelope, delivery: Delivery) -> Step:
        calls.append(envelope.id)
        t = envelope.message.event_time
        return Step().emit("features", vector(t), id=f"f:{envelope.id}").write("HINCRBY", f"n:{instance}", "n", 1)

    consumer = make(r, keys, handle)
    for t in range(60):
        publish(r, keys, Output("market.tick", tick(t), id=f"t{t}"), 10_000)
    for t in (3, 7):  # published twice: the copies sit in the same batch as the originals
        publish(r, keys, Output("market.tick", tick(t), id=f"t{t}"), 10_000)
    r.config_resetstat()
    drain(consumer)
    stats = count_commands(r)
    assert outputs(r, keys) == [f"f:t{t}" for t in range(60)]
    assert r.hget(f"n:{instance}", "n") == "60"
    assert calls == [f"t{t}" for t in range(60)]  # a copy is recognised before its handler runs
    assert consumer.stats.processed == 60 and consumer.stats.duplicates == 2
    assert pending(r, keys) == 0
    # the steps applied STEP_FLUSH (20) at a time, each flush one script call; the copies never reach one
    assert stats["evalsha"] == 60 // StreamConsumer.STEP_FLUSH
    assert stats["set"] == 60  # each step's done key checked and set by one SET NX, inside the script
    assert stats["exists"] == 1 + 2  # one EXISTS of the batch's 62 done keys, found none; the copies' own
    assert stats["xack"] == 60 // StreamConsumer.STEP_FLUSH + 2  # one per flushed batch; the copies' own


def test_a_message_done_before_its_batch_is_only_acked(r: redis.Redis, instance: str) -> None:
    keys = Keys(instance)
    calls: list[str] = []

    def handle(envelope: Envelope, delivery: Delivery) -> Step:
        calls.append(envelope.id)
        return Step().emit("features", vector(envelope.message.event_time), id=f"f:{envelope.id}")

    consumer = make(r, keys, handle)
    StepRunner(r, keys, "features", 1000, 60).run(Step(), message_id="t1")  # another replica did t1
    for t in range(3):
        publish(r, keys, Output("market.tick", tick(t), id=f"t{t}"), 10_000)
    drain(consumer)
    assert calls == ["t0", "t2"]
    assert outputs(r, keys) == ["f:t0", "f:t2"]
    assert consumer.stats.duplicates == 1 and pending(r, keys) == 0


def test_a_handler_that_no_done_precheck_gets_no_batch_check(r: redis.Redis, instance: str) -> None:
    keys = Keys(instance)
    seen: list[tuple[str, bool]] = []

    @no_done_precheck
    def handle(envelope: Envelope, delivery: Delivery) -> Step:
        done = bool(r.exists(keys.done("features", envelope.id)))
        seen.append((envelope.id, done))
        if done:
            return Step()
        return Step().emit("features", vector(envelope.message.event_time), id=f"f:{envelope.id}")

    consumer = make(r, keys, handle)
    StepRunner(r, keys, "features", 1000, 60).run(Step(), message_id="t1")
    for t in range(3):
        publish(r, keys, Output("market.tick", tick(t), id=f"t{t}"), 10_000)
    r.config_resetstat()
    drain(consumer)
    assert seen == [("t0", False), ("t1", True), ("t2", False)]
    assert outputs(r, keys) == ["f:t0", "f:t2"]
    assert consumer.stats.processed == 2 and consumer.stats.duplicates == 1 and pending(r, keys) == 0


def test_a_conflicting_deferred_step_is_recomputed_on_its_own(r: redis.Redis, instance: str) -> None:
    keys = Keys(instance)
    key = f"guarded:{instance}"
    r.hset(key, "v", "0")
    attempts: list[str] = []

    @independent_steps
    def handle(envelope: Envelope, delivery: Delivery) -> Step:
        attempts.append(envelope.id)
        current = r.hget(key, "v")
        # every message of the batch read "0": only the first one's guard holds when they are applied
        return Step().guard(key, "v", current).write("HSET", key, "v", str(int(current) + 1))

    consumer = make(r, keys, handle)
    for t in range(4):
        publish(r, keys, Output("market.tick", tick(t), id=f"t{t}"), 10_000)
    drain(consumer)
    assert r.hget(key, "v") == "4"
    assert attempts[:4] == ["t0", "t1", "t2", "t3"] and sorted(attempts[4:]) == ["t1", "t2", "t3"]
    assert consumer.stats.processed == 4 and pending(r, keys) == 0
