"""The consumer's step deferral and its own connection, against a real Redis.

Deferred steps wait ``STEP_WAIT`` from when the first of them was deferred, so a handler that itself
takes longer than ``STEP_WAIT`` (apply-layer's order does) still has its steps pipelined; and the
consumer keeps one connection of its own, which it re-opens if Redis drops it.
"""

from __future__ import annotations

import time

import redis

from quantum_trader.bus.consumer import Delivery, StreamConsumer, independent_steps
from quantum_trader.bus.publish import publish
from quantum_trader.bus.step import Output, Step
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import FeatureVector, Tick
from quantum_trader.contracts.policy import StreamRetention


def tick(t: int) -> Tick:
    return Tick(symbol="BTCUSDT", price=100.0, bid=100.0, ask=100.0, volume=1, event_time=t, source="synthetic:test")


def vector(t: int) -> FeatureVector:
    return FeatureVector(symbol="BTCUSDT", time=t, feature_set="test", names=("x",), values=(1.0,), price=1.0)


def make(r: redis.Redis, keys: Keys, handler) -> StreamConsumer:
    consumer = StreamConsumer(r, keys, "features", "c1", {"market.tick": handler}, StreamRetention())
    consumer.ensure_groups()
    return consumer


def test_a_slow_handler_still_has_its_steps_pipelined(r: redis.Redis, instance: str) -> None:
    keys = Keys(instance)
    wait = 0.2  # long enough that no stall of this machine between two lines reaches it
    seen_done: list[tuple[str, bool]] = []

    @independent_steps
    def handle(envelope: Envelope, delivery: Delivery) -> Step:
        t = envelope.message.event_time
        if t > 0:  # was the previous message's step already applied when this one's handler ran?
            seen_done.append((envelope.id, bool(r.exists(keys.done("features", f"t{t - 1}")))))
        time.sleep(wait * 1.5)  # this handler alone takes longer than STEP_WAIT
        return Step().emit("features", vector(t), id=f"f:{envelope.id}")

    consumer = make(r, keys, handle)
    consumer.STEP_WAIT = wait
    for t in range(4):
        publish(r, keys, Output("market.tick", tick(t), id=f"t{t}"), 10_000)
    while consumer.poll_once(block_ms=50):
        pass
    # t0 is deferred and waits; t1's deferral finds it waited long enough and both go in one pipeline;
    # then t2 waits for t3. Measured from each message's start instead, every step went alone.
    assert seen_done == [("t1", False), ("t2", True), ("t3", False)]
    assert [fields["id"] for _, fields in r.xrange(keys.stream("features"))] == [f"f:t{t}" for t in range(4)]
    assert consumer.stats.processed == 4 and r.xpending(keys.stream("market.tick"), "features")["pending"] == 0


def test_the_consumer_keeps_one_connection_and_reopens_it_when_dropped(
    r: redis.Redis, redis_url: str, instance: str
) -> None:
    keys = Keys(instance)

    @independent_steps
    def handle(envelope: Envelope, delivery: Delivery) -> Step:
        return Step().emit("features", vector(envelope.message.event_time), id=f"f:{envelope.id}")

    consumer = make(redis.Redis.from_url(redis_url), keys, handle)
    assert consumer.client.connection is not None  # its own, not a checkout per command
    first = consumer.client.client_id()
    publish(r, keys, Output("market.tick", tick(0), id="t0"), 10_000)
    consumer.poll_once(block_ms=50)
    assert consumer.client.client_id() == first
    r.client_kill_filter(_id=first)  # Redis drops it (a restart, a proxy, a timeout)
    publish(r, keys, Output("market.tick", tick(1), id="t1"), 10_000)
    while consumer.stats.processed < 2:
        consumer.poll_once(block_ms=50)
    assert consumer.client.client_id() != first
    assert [fields["id"] for _, fields in r.xrange(keys.stream("features"))] == ["f:t0", "f:t1"]
    assert consumer.stats.errors == 0  # the read that found it gone was sent again on a new one
    assert r.xpending(keys.stream("market.tick"), "features")["pending"] == 0
