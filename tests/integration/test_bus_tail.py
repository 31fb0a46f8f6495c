"""A batch's last step goes in the pipeline of the consumer's next read, against a real Redis: one round
trip fewer per batch, and still applied before the next handler runs and before ``poll_once`` returns;
a conflicting last step is recomputed before any entry of the next batch is handled."""

from __future__ import annotations

import gc

import redis

from quantum_trader.bus.consumer import Delivery, StreamConsumer, no_done_precheck
from quantum_trader.bus.publish import publish
from quantum_trader.bus.step import Output, Step
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import StreamRetention
from tests.integration.test_bus_deferral_and_connection import tick, vector


def make(r: redis.Redis, keys: Keys, handler) -> StreamConsumer:
    consumer = StreamConsumer(r, keys, "features", "c1", {"market.tick": handler}, StreamRetention())
    consumer.ensure_groups()
    consumer.poll_once(block_ms=10)  # the start's reclaim and backlog read, out of the way
    return consumer


def requests(r: redis.Redis) -> int:
    return int(r.info("stats")["total_reads_processed"])


def outputs(r: redis.Redis, keys: Keys) -> list[str]:
    return [fields["id"] for _, fields in r.xrange(keys.stream("features"))]


def test_the_last_step_goes_with_the_next_read_and_is_applied_first(r: redis.Redis, instance: str) -> None:
    keys = Keys(instance)
    seen: list[tuple[str, bool]] = []

    @no_done_precheck  # no batch EXISTS: the round trips counted are the reads and the steps
    def handle(envelope: Envelope, delivery: Delivery) -> Step:
        t = envelope.message.event_time
        if t == 1:  # the previous message's step, sent with the read that brought this one
            seen.append((envelope.id, bool(r.exists(keys.done("features", f"t{t - 1}")))))
        if t == 0:  # the next input arrives while this one is handled
            publish(r, keys, Output("market.tick", tick(1), id="t1"), 10_000)
        return Step().emit("features", vector(t), id=f"f:{envelope.id}").write("HINCRBY", f"n:{instance}", "n", 1)

    consumer = make(r, keys, handle)
    publish(r, keys, Output("market.tick", tick(100), id="warm-up"), 10_000)
    assert consumer.poll_once(block_ms=10) == 1  # the script loaded, the pipelines' connection opened
    publish(r, keys, Output("market.tick", tick(0), id="t0"), 10_000)
    gc.collect()  # no connection of an earlier test closed during the count (its EOF counts as a read)
    before = requests(r)
    assert consumer.poll_once(block_ms=50) == 2
    used = requests(r) - before - 3  # the handler's publish of t1 and its EXISTS, and this INFO
    # read t0; [t0's step + read t1]; [t1's step + a read that finds nothing]: 3, where one by one is 4
    assert used == 3
    assert seen == [("t1", True)]
    # nothing is left for later: both steps applied, both entries acked, when poll_once returned
    assert outputs(r, keys) == ["f:warm-up", "f:t0", "f:t1"] and r.hget(f"n:{instance}", "n") == "3"
    assert r.xpending(keys.stream("market.tick"), "features")["pending"] == 0
    assert consumer.stats.processed == 3 and consumer.stats.errors == 0


def test_a_conflicting_last_step_is_recomputed_before_the_next_batch(r: redis.Redis, instance: str) -> None:
    keys = Keys(instance)
    key = f"guarded:{instance}"
    r.hset(key, "v", "0")
    attempts: list[str] = []

    def handle(envelope: Envelope, delivery: Delivery) -> Step:
        attempts.append(envelope.id)
        current = r.hget(key, "v")
        if envelope.id == "t0" and attempts.count("t0") == 1:
            r.hset(key, "v", "10")  # another writer moves the state after this handler read it
            publish(r, keys, Output("market.tick", tick(1), id="t1"), 10_000)
        return Step().guard(key, "v", current).write("HSET", key, "v", str(int(current) + 1))

    consumer = make(r, keys, handle)
    publish(r, keys, Output("market.tick", tick(0), id="t0"), 10_000)
    while consumer.poll_once(block_ms=50):
        pass
    # t0's step (sent with the read of t1) conflicts: t0 is recomputed on 10 before t1 is handled
    assert attempts == ["t0", "t0", "t1"]
    assert r.hget(key, "v") == "12"
    assert consumer.stats.processed == 2 and r.xpending(keys.stream("market.tick"), "features")["pending"] == 0


def test_the_last_steps_and_the_next_read_use_the_consumers_own_connection_even_after_a_drop(
    r: redis.Redis, redis_url: str, instance: str
) -> None:
    keys = Keys(instance)
    killed: list[int] = []

    @no_done_precheck
    def handle(envelope: Envelope, delivery: Delivery) -> Step:
        if envelope.id == "t0":  # its step will go with the next read, on a connection Redis just dropped
            killed.append(consumer.client.client_id())
            r.client_kill_filter(_id=killed[0])
            publish(r, keys, Output("market.tick", tick(1), id="t1"), 10_000)
        return Step().emit("features", vector(envelope.message.event_time), id=f"f:{envelope.id}")

    connections_before = len(r.client_list())
    consumer = make(redis.Redis.from_url(redis_url), keys, handle)
    publish(r, keys, Output("market.tick", tick(100), id="warm-up"), 10_000)
    assert consumer.poll_once(block_ms=10) == 1
    # the warm-up's step went with a read: still the one connection the consumer keeps, no pool checkout
    assert len(r.client_list()) == connections_before + 1
    publish(r, keys, Output("market.tick", tick(0), id="t0"), 10_000)
    while consumer.poll_once(block_ms=50):
        pass
    assert killed and consumer.client.client_id() != killed[0]  # reconnected, and sent again there
    assert outputs(r, keys) == ["f:warm-up", "f:t0", "f:t1"]
    assert consumer.stats.errors == 0 and consumer.stats.processed == 3
    assert r.xpending(keys.stream("market.tick"), "features")["pending"] == 0
    assert len(r.client_list()) == connections_before + 1
