"""baseline-trend: one intent per EMA cross, levels on the right sides, deterministic ids and digest."""

from __future__ import annotations

import collections
import itertools
from pathlib import Path

import pytest

from quantum_trader.contracts.messages import FeatureVector, Side, Tick, TradeIntent
from quantum_trader.contracts.policy import StrategySpec
from quantum_trader.data.replay import replay_ticks
from quantum_trader.data.synthetic import synthetic_ticks
from quantum_trader.ml.baseline import STRATEGY_NAME, StrategyState, decide, model_digest
from quantum_trader.ml.features import FEATURE_NAMES, compute_features

SPEC = StrategySpec(fast=5, slow=20, atr=5, stop_atr=2.0, take_profit_atr=3.0, notional=250.0, leverage=3)


def ramp_ticks() -> list[Tick]:
    """40 bars falling (the warm-up sees fast < slow), then 60 rising, then 60 falling."""
    closes = [140.0 - i for i in range(40)] + [100.0 + 1.5 * i for i in range(1, 61)]
    closes += [closes[-1] - 1.5 * i for i in range(1, 61)]
    return [
        Tick(
            symbol="BTCUSDT",
            price=c,
            bid=c,
            ask=c,
            volume=5.0,
            event_time=1_700_000_000_000 + i * 3_600_000,
            high=c + 0.5,
            low=c - 0.5,
            source="synthetic:test",
        )
        for i, c in enumerate(closes)
    ]


def run(vectors: list[FeatureVector], spec: StrategySpec = SPEC) -> list[TradeIntent]:
    states: dict[str, StrategyState] = collections.defaultdict(StrategyState)
    intents = []
    for vector in vectors:
        intent = decide(vector, states[vector.symbol], spec)
        if intent is not None:
            intents.append(intent)
    return intents


def test_up_then_down_gives_exactly_one_buy_then_one_sell() -> None:
    ticks = ramp_ticks()
    vectors = list(compute_features(ticks, SPEC))
    intents = run(vectors)
    assert [i.side for i in intents] == [Side.BUY, Side.SELL]
    buy, sell = intents
    assert 40 < (buy.time - ticks[0].event_time) // 3_600_000 < 100 < (sell.time - ticks[0].event_time) // 3_600_000
    for intent in intents:
        values = next(v for v in vectors if v.time == intent.time).as_dict()
        atr = values["atr"]
        assert intent.entry_price == next(t.price for t in ticks if t.event_time == intent.time)
        assert abs(intent.entry_price - intent.stop_loss) == pytest.approx(2.0 * atr)
        assert abs(intent.take_profit - intent.entry_price) == pytest.approx(3.0 * atr)
        assert intent.confidence == pytest.approx(min(1.0, abs(values["ema_gap"]) / values["atr_pct"]))
        assert (intent.notional, intent.leverage, intent.strategy) == (250.0, 3, "baseline-trend")
        assert intent.intent_id == f"baseline-trend:BTCUSDT:{intent.time}"
    assert buy.stop_loss < buy.entry_price < buy.take_profit
    assert sell.take_profit < sell.entry_price < sell.stop_loss


def test_deterministic_and_the_digest_names_the_parameters() -> None:
    vectors = list(compute_features(ramp_ticks(), SPEC))
    first, second = run(vectors), run(vectors)
    assert first == second
    digest = model_digest(SPEC)
    assert digest.startswith("baseline-trend:") and len(digest) == len("baseline-trend:") + 12
    assert {i.model_digest for i in first} == {digest}
    assert model_digest(StrategySpec(**SPEC.model_dump())) == digest
    assert model_digest(SPEC.model_copy(update={"stop_atr": 2.5})) != digest


def test_no_intent_on_the_first_vector_or_without_a_cross() -> None:
    vectors = list(compute_features(ramp_ticks(), SPEC))
    state = StrategyState()
    assert decide(vectors[0], state, SPEC) is None
    assert state.last_sign == -1
    assert all(decide(v, state, SPEC) is None for v in vectors[1:5])


def test_a_redelivered_vector_is_not_traded_twice() -> None:
    vectors = list(compute_features(ramp_ticks(), SPEC))
    state = StrategyState()
    for vector in vectors:
        intent = decide(vector, state, SPEC)
        if intent is not None:
            saved = state.to_dict()
            assert decide(vector, state, SPEC) is None
            assert state.to_dict() == saved
            break
    else:
        pytest.fail("no intent")


def test_min_confidence_filters_but_keeps_tracking_crosses() -> None:
    vectors = list(compute_features(ramp_ticks(), SPEC))
    buy, sell = run(vectors)
    assert buy.confidence < 0.3 < sell.confidence
    strict = SPEC.model_copy(update={"min_confidence": 0.3})
    state = StrategyState()
    intents = [i for v in vectors if (i := decide(v, state, strict)) is not None]
    assert intents == [sell.model_copy(update={"model_digest": model_digest(strict)})]
    assert state.last_sign == -1


def test_state_round_trip_and_feature_set_check() -> None:
    vectors = list(compute_features(ramp_ticks(), SPEC))
    state = StrategyState()
    for vector in vectors[:70]:
        decide(vector, state, SPEC)
    restored = StrategyState.from_dict(state.to_dict())
    assert restored == state
    rest = [decide(v, restored, SPEC) for v in vectors[70:]]
    assert [i for i in rest if i is not None] == [i for i in run(vectors) if i.time > vectors[69].time]
    alien = FeatureVector(
        symbol="BTCUSDT", time=1, feature_set="other-v9", names=FEATURE_NAMES, values=vectors[0].values, price=1.0
    )
    with pytest.raises(ValueError, match="needs feature set 'core-v1'"):
        decide(alien, StrategyState(), SPEC)


def test_levels_that_would_cross_zero_are_not_sent() -> None:
    vectors = list(compute_features(ramp_ticks(), SPEC))
    wide = SPEC.model_copy(update={"stop_atr": 1000.0})
    assert [i.side for i in run(vectors, wide)] == [Side.SELL]  # the BUY's stop would be below zero


def test_sides_alternate_on_synthetic_markets() -> None:
    spec = StrategySpec()
    intents = run(list(compute_features(synthetic_ticks(["BTCUSDT", "ETHUSDT"], seed=7, bars=3000), spec)), spec)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        sides = [i.side for i in intents if i.symbol == symbol]
        assert len(sides) >= 4
        assert all(a is not b for a, b in itertools.pairwise(sides))
    assert {i.strategy for i in intents} == {STRATEGY_NAME}


@pytest.mark.data
def test_real_market_intents_are_valid_and_alternate(shared_klines: Path) -> None:
    spec = StrategySpec()
    path = shared_klines / "ETHUSDT-1h-2023-01-01_2024-05-13.csv"
    intents = run(list(compute_features(replay_ticks([path]), spec)), spec)
    assert len(intents) > 50
    assert all(a.side is not b.side for a, b in itertools.pairwise(intents))
    assert len({i.intent_id for i in intents}) == len(intents)
