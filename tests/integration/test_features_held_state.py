"""features and ai-engine keep each symbol's state in the process between steps (``HeldStates``): the
vectors stay those of the batch computation, exactly once, when replicas share a group (every held state
goes stale under the other) and when a step was not applied."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import redis

from quantum_trader.bus.consumer import StreamConsumer
from quantum_trader.bus.publish import publish
from quantum_trader.bus.step import Output, Step, StepOutcome, StepRunner
from quantum_trader.contracts.envelope import decode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import FeatureVector, Tick
from quantum_trader.contracts.policy import PolicySpec, parse_policy
from quantum_trader.data.klines import read_klines
from quantum_trader.data.replay import kline_to_tick, tick_id
from quantum_trader.ml import market_features as market
from quantum_trader.ml.features import FeatureState, compute_features, unpack_floats
from quantum_trader.research.artifact import models_dir, observed_digest
from quantum_trader.runtime.runner import connect
from quantum_trader.runtime.service import ComponentContext
from quantum_trader.runtime.settings import load_settings
from quantum_trader.runtime.state import HeldStates, Stored, load_state
from quantum_trader.services.features import build as build_features

FILES = ("BTCUSDT-1h-2023-01-01_2024-05-13.csv", "ETHUSDT-1h-2023-01-01_2024-05-13.csv")
BARS = 400
SHIPPED = "ensemble-1h-v1"


def real_ticks(klines: Path) -> list[Tick]:
    """Two symbols' bars interleaved in time, as a replay of both files publishes them."""
    per_file = [[kline_to_tick(k) for k in itertools.islice(read_klines(klines / f), BARS)] for f in FILES]
    return sorted((t for ticks in per_file for t in ticks), key=lambda t: (t.event_time, t.symbol))


def features_replica(redis_url: str, instance: str, policy: PolicySpec, pod: str, batch: int) -> StreamConsumer:
    settings = load_settings(
        env={"QT_COMPONENT": "features", "QT_INSTANCE": instance, "QT_REDIS_URL": redis_url, "QT_POD": pod}
    )
    ctx = ComponentContext(settings=settings, policy=policy, client=connect(redis_url), keys=Keys(instance))
    consumer = StreamConsumer(ctx.client, ctx.keys, "features", pod, build_features(ctx).handlers(), policy.streams,
                              batch=batch)  # fmt: skip
    consumer.ensure_groups()
    return consumer


def emitted(r: redis.Redis, keys: Keys) -> list[FeatureVector]:
    return [decode(fields, FeatureVector).message for _, fields in r.xrange(keys.stream("features"))]


@pytest.mark.parametrize("model", ["baseline-trend", SHIPPED])
def test_two_replicas_sharing_the_group_emit_the_batch_computation_once(model, shared_klines, redis_url, instance, r):
    """Polls taken in turn (batches of 7 and 5): each replica's held state falls behind the other's writes."""
    document: dict = {"symbols": [f.split("-")[0] for f in FILES], "model": {"name": model}}
    if model == SHIPPED:
        document["model"]["digest"] = observed_digest(models_dir() / SHIPPED, SHIPPED)[0]
    policy = parse_policy(document)
    keys = Keys(instance)
    ticks = real_ticks(shared_klines)
    for tick in ticks:
        publish(r, keys, Output("market.tick", tick, id=tick_id(tick)), policy.streams.max_len)
    replicas = [
        features_replica(redis_url, instance, policy, "a", 7),
        features_replica(redis_url, instance, policy, "b", 5),
    ]
    while sum(c.stats.processed + c.stats.duplicates for c in replicas) < len(ticks):
        for consumer in replicas:
            consumer.poll_once(block_ms=10)
    assert all(c.stats.processed >= 50 for c in replicas), [c.stats for c in replicas]  # both took turns
    assert sum(c.stats.errors for c in replicas) == 0

    got = emitted(r, keys)
    if model == SHIPPED:
        states = {s: market.MarketFeatureState(s) for s in policy.symbols}
        expected = [v for t in ticks if (v := states[t.symbol].update(t)) is not None]
    else:
        expected = list(compute_features(ticks, policy.strategy))
    assert len(got) == len(expected) > len(ticks) // 2
    assert [(v.symbol, v.time, v.values, v.feature_hash) for v in got] == [
        (v.symbol, v.time, v.values, v.feature_hash) for v in expected
    ]  # bit-identical, in order, each once


def test_a_step_that_was_not_applied_is_not_built_on(redis_url, instance, r):
    """The held state is ahead of Redis after a step that failed: the next step's guard refuses it, and the
    message's retry reads the state back instead of folding the tick in twice."""
    keys = Keys(instance)
    key = keys.component_state("features", "BTCUSDT")
    runner = StepRunner(r, keys, "features", max_len=1000, done_ttl_seconds=600)
    held: HeldStates[FeatureState] = HeldStates(redis.Redis.from_url(redis_url))

    def tick(t: int) -> Tick:
        return Tick(
            symbol="BTCUSDT",
            price=100.0 + t,
            bid=100.0 + t,
            ask=100.0 + t,
            volume=1.0,
            event_time=t,
            source="synthetic:test",
        )

    def step_for(t: int) -> Step:
        state, stored = held.checkout(
            key,
            lambda s: s.last_time is None or t > s.last_time,
            lambda d: FeatureState.from_dict(d) if d else FeatureState("BTCUSDT"),
        )
        state.update(tick(t))
        return held.save(Step(), key, stored, state, state.to_dict())

    assert runner.run(step_for(1), message_id="m1") is StepOutcome.DONE
    step_for(2)  # its script never ran (say the connection dropped): Redis still holds the state after tick 1
    assert runner.run(step_for(3), message_id="m3") is StepOutcome.CONFLICT  # built on the unapplied tick 2
    assert runner.run(step_for(3), message_id="m3") is StepOutcome.DONE  # the retry read tick 1's state back
    assert unpack_floats(load_state(r, key).data["closes"]) == [101.0, 103.0]
    assert runner.run(step_for(4), message_id="m4") is StepOutcome.DONE  # held again, no read
    assert unpack_floats(load_state(r, key).data["closes"]) == [101.0, 103.0, 104.0]


def test_a_handler_that_failed_after_folding_its_message_in_leaves_no_state_behind(redis_url, instance, r):
    """A vector that fails validation after the tick was folded into the checked-out state: that message is
    retried later (and dead-lettered if it keeps failing), and the next one must not find its tick inside."""
    keys = Keys(instance)
    key = keys.component_state("features", "BTCUSDT")
    runner = StepRunner(r, keys, "features", max_len=1000, done_ttl_seconds=600)
    held: HeldStates[FeatureState] = HeldStates(redis.Redis.from_url(redis_url))

    def fold(t: int) -> tuple[FeatureState, Stored]:
        state, stored = held.checkout(
            key,
            lambda s: s.last_time is None or t > s.last_time,
            lambda d: FeatureState.from_dict(d) if d else FeatureState("BTCUSDT"),
        )
        state.update(Tick(symbol="BTCUSDT", price=100.0 + t, bid=100.0, ask=100.0, volume=1.0, event_time=t,
                          source="synthetic:test"))  # fmt: skip
        return state, stored

    state, stored = fold(1)
    assert runner.run(held.save(Step(), key, stored, state, state.to_dict()), message_id="m1") is StepOutcome.DONE
    fold(2)  # the handler raised here: no step, no save
    state, stored = fold(3)
    assert runner.run(held.save(Step(), key, stored, state, state.to_dict()), message_id="m3") is StepOutcome.DONE
    assert unpack_floats(load_state(r, key).data["closes"]) == [101.0, 103.0]


def test_two_processes_chains_never_meet_on_one_seq(redis_url, instance, r):
    """A's held state is two writes behind B's. With a plain counter, A's third chained step would expect the very
    number B's second write left, and pass its guard with a state that lacks B's ticks; tagged, it conflicts."""
    keys = Keys(instance)
    key = keys.component_state("features", "BTCUSDT")
    runner = StepRunner(r, keys, "features", max_len=1000, done_ttl_seconds=600)
    a: HeldStates[FeatureState] = HeldStates(redis.Redis.from_url(redis_url))
    b: HeldStates[FeatureState] = HeldStates(redis.Redis.from_url(redis_url))

    def step_for(held: HeldStates[FeatureState], t: int) -> Step:
        state, stored = held.checkout(
            key,
            lambda s: s.last_time is None or t > s.last_time,
            lambda d: FeatureState.from_dict(d) if d else FeatureState("BTCUSDT"),
        )
        state.update(Tick(symbol="BTCUSDT", price=100.0 + t, bid=100.0, ask=100.0, volume=1.0, event_time=t,
                          source="synthetic:test"))  # fmt: skip
        return held.save(Step(), key, stored, state, state.to_dict())

    assert runner.run(step_for(a, 1), message_id="m1") is StepOutcome.DONE
    assert runner.run(step_for(b, 2), message_id="m2") is StepOutcome.DONE
    assert runner.run(step_for(b, 3), message_id="m3") is StepOutcome.DONE
    chain = [step_for(a, t) for t in (4, 5, 6)]  # one batch of A's, pipelined
    outcomes = [runner.run(step, message_id=f"m{t}") for step, t in zip(chain, (4, 5, 6), strict=True)]
    assert outcomes == [StepOutcome.CONFLICT] * 3
    for t in (4, 5, 6):  # the consumer redoes each on its own: read back, then held again
        assert runner.run(step_for(a, t), message_id=f"m{t}") is StepOutcome.DONE
    assert unpack_floats(load_state(r, key).data["closes"]) == [101.0, 102.0, 103.0, 104.0, 105.0, 106.0]
