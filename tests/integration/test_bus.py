"""The bus against a real redis-server: exactly-once steps, DLQ, reclaim, max deliveries, trimming."""

from __future__ import annotations

import redis

from quantum_trader.bus.consumer import Delivery, StreamConsumer
from quantum_trader.bus.publish import publish
from quantum_trader.bus.step import Output, Step, StepOutcome, StepRunner
from quantum_trader.contracts.envelope import Envelope, decode, encode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import FeatureVector, Tick
from quantum_trader.contracts.policy import StreamRetention


def tick(symbol: str = "BTCUSDT", t: int = 1, price: float = 100.0) -> Tick:
    return Tick(symbol=symbol, price=price, bid=price, ask=price, volume=1, event_time=t, source="synthetic:test")


def vector(symbol: str, t: int) -> FeatureVector:
    return FeatureVector(symbol=symbol, time=t, feature_set="test", names=("x",), values=(1.0,), price=1.0)


def echo_consumer(r: redis.Redis, keys: Keys, retention: StreamRetention, seen: list, name: str = "c1"):
    def handle(envelope: Envelope, delivery: Delivery) -> Step:
        seen.append(envelope.id)
        t = envelope.message
        return Step().emit("features", vector(t.symbol, t.event_time), id=f"f:{envelope.id}", corr=envelope.corr)

    return StreamConsumer(r, keys, "features", name, {"market.tick": handle}, retention)


def test_each_input_is_processed_once_even_when_published_twice(r, instance):
    keys = Keys(instance)
    retention = StreamRetention()
    seen: list[str] = []
    consumer = echo_consumer(r, keys, retention, seen)
    consumer.ensure_groups()
    for _ in range(2):
        publish(r, keys, Output("market.tick", tick(), id="BTCUSDT:1"), retention.max_len)
    publish(r, keys, Output("market.tick", tick(t=2), id="BTCUSDT:2"), retention.max_len)
    while consumer.poll_once(block_ms=50):
        pass
    out = r.xrange(keys.stream("features"))
    assert [fields["id"] for _, fields in out] == ["f:BTCUSDT:1", "f:BTCUSDT:2"]
    assert consumer.stats.processed == 2 and consumer.stats.duplicates == 1
    assert r.xpending(keys.stream("market.tick"), "features")["pending"] == 0


def test_step_runner_reports_duplicate_and_conflict(r, instance):
    keys = Keys(instance)
    runner = StepRunner(r, keys, "stage", 1000, 60)
    step = Step().write("HSET", "k:" + instance, "a", "1")
    assert runner.run(step, message_id="m1") is StepOutcome.DONE
    assert runner.run(step, message_id="m1") is StepOutcome.DUPLICATE
    guarded = Step().guard("k:" + instance, "a", "2").write("HSET", "k:" + instance, "a", "3")
    assert runner.run(guarded, message_id="m2") is StepOutcome.CONFLICT
    assert r.hget("k:" + instance, "a") == "1"
    assert not r.exists(keys.done("stage", "m2"))


def test_invalid_messages_go_to_the_dlq_with_reason_and_the_next_valid_one_is_processed(r, instance):
    keys = Keys(instance)
    retention = StreamRetention()
    seen: list[str] = []
    consumer = echo_consumer(r, keys, retention, seen)
    consumer.ensure_groups()
    stream = keys.stream("market.tick")
    r.xadd(stream, {"garbage": "1"})
    bad_price = encode(tick(), id="bad")
    bad_price["data"] = bad_price["data"].replace('"price":100.0', '"price":-5')
    r.xadd(stream, bad_price)
    r.xadd(stream, {**encode(tick(), id="wrongtype"), "type": "Plan"})
    publish(r, keys, Output("market.tick", tick(t=3), id="good"), retention.max_len)
    while consumer.poll_once(block_ms=50):
        pass
    assert seen == ["good"]
    dlq = r.xrange(keys.dlq("market.tick"))
    reasons = [fields["reason"] for _, fields in dlq]
    assert len(reasons) == 3
    assert "missing envelope field 'type'" in reasons[0]
    assert "price" in reasons[1] and "greater than 0" in reasons[1]
    assert "'Plan' where 'Tick'" in reasons[2]
    assert dlq[1][1]["orig.id"] == "bad" and "-5" in dlq[1][1]["orig.data"]  # nothing is lost
    assert r.xpending(stream, "features")["pending"] == 0


def test_a_dead_consumers_pending_entries_are_reclaimed(r, instance):
    keys = Keys(instance)
    retention = StreamRetention(claim_idle_ms=100)
    stream = keys.stream("market.tick")
    dead_seen: list[str] = []
    dead = echo_consumer(r, keys, retention, dead_seen, name="dead")
    dead.ensure_groups()
    publish(r, keys, Output("market.tick", tick(), id="t1"), retention.max_len)
    # the dead consumer reads but never handles: a crash between read and ack
    r.xreadgroup("features", "dead", {stream: ">"}, count=10)
    assert r.xpending(stream, "features")["pending"] == 1
    alive_seen: list[str] = []
    alive = echo_consumer(r, keys, retention, alive_seen, name="alive")
    import time

    time.sleep(0.15)
    assert alive.reclaim() == 1
    assert alive_seen == ["t1"]
    assert r.xpending(stream, "features")["pending"] == 0


def test_a_message_that_keeps_failing_goes_to_the_dlq_after_max_deliveries(r, instance):
    keys = Keys(instance)
    retention = StreamRetention(claim_idle_ms=100, max_deliveries=2)
    stream = keys.stream("market.tick")
    attempts: list[str] = []

    def failing(envelope: Envelope, delivery: Delivery) -> Step:
        attempts.append(envelope.id)
        raise RuntimeError("exchange on fire")

    consumer = StreamConsumer(r, keys, "features", "c1", {"market.tick": failing}, retention)
    consumer.ensure_groups()
    publish(r, keys, Output("market.tick", tick(), id="t1"), retention.max_len)
    consumer.poll_once(block_ms=50)
    import time

    for _ in range(4):
        time.sleep(0.12)
        consumer.reclaim()
    assert len(attempts) == 2
    dlq = r.xrange(keys.dlq("market.tick"))
    assert len(dlq) == 1
    assert "delivered 3 times (max 2)" in dlq[0][1]["reason"]
    assert "exchange on fire" in dlq[0][1]["reason"]
    assert r.xpending(stream, "features")["pending"] == 0


def test_streams_are_trimmed_to_max_len(r, instance):
    keys = Keys(instance)
    for i in range(3000):
        publish(r, keys, Output("market.tick", tick(t=i), id=f"t{i}"), 1000)
    length = r.xlen(keys.stream("market.tick"))
    assert 1000 <= length < 1200


def test_envelope_round_trip_keeps_id_and_corr():
    fields = encode(tick(), id="a", corr="root")
    env = decode(fields, Tick)
    assert (env.id, env.corr, env.symbol) == ("a", "root", "BTCUSDT")
