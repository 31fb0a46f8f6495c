"""The ensemble's trading rule: weights, threshold, signal changes only, ATR levels, digest and feature hash."""

from __future__ import annotations

import numpy as np
import pytest

from quantum_trader.contracts.messages import FeatureVector, Side
from quantum_trader.contracts.policy import ModelRef, PolicyError, StrategySpec, parse_policy
from quantum_trader.ml.ensemble import EnsembleState, combine, decide, signal_of
from quantum_trader.ml.market_features import ATR_PCT_INDEX, FEATURE_HASH, FEATURE_NAMES, FEATURE_SET

DIGEST = "sha256:" + "ab" * 32


def vector(t: int, price: float = 100.0, atr_pct: float = 0.01) -> FeatureVector:
    values = [0.0] * len(FEATURE_NAMES)
    values[ATR_PCT_INDEX] = atr_pct
    return FeatureVector(symbol="BTCUSDT", time=t, feature_set=FEATURE_SET, feature_hash=FEATURE_HASH,
                         names=FEATURE_NAMES, values=tuple(values), price=price)


UP = np.array([0.1, 0.2, 0.7])
DOWN = np.array([0.6, 0.3, 0.1])
UNSURE = np.array([0.3, 0.4, 0.3])


def test_weights_are_normalised():
    spec = ModelRef(xgboost_weight=0.3, torch_weight=0.1)
    mixed = combine(np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0]), spec)
    assert mixed.tolist() == pytest.approx([0.25, 0.0, 0.75])
    only_torch = combine(UP, DOWN, ModelRef(xgboost_weight=0.0, torch_weight=1.0))
    assert only_torch.tolist() == pytest.approx(DOWN.tolist())


def test_threshold_and_side():
    assert signal_of(UP, 0.5) == 1 and signal_of(UP, 0.71) == 0
    assert signal_of(DOWN, 0.5) == -1
    assert signal_of(UNSURE, 0.3) == 0  # up and down tie: no side beats the other
    assert signal_of(np.array([0.45, 0.1, 0.45]), 0.4) == 0


def test_intents_only_when_the_signal_changes_with_atr_levels():
    state, spec, strategy = EnsembleState(), ModelRef(threshold=0.5, stop_atr=2.0, take_profit_atr=3.0), StrategySpec()
    sequence = [UP, UP, UNSURE, UP, DOWN, DOWN]
    intents = [decide(vector(1000 + i), p, state, spec, strategy, model_digest=DIGEST) for i, p in enumerate(sequence)]
    sides = [None if i is None else i.side for i in intents]
    assert sides == [Side.BUY, None, None, Side.BUY, Side.SELL, None]
    first = intents[0]
    assert first.stop_loss == pytest.approx(98.0) and first.take_profit == pytest.approx(103.0)
    assert first.confidence == pytest.approx(0.7)
    assert first.model_digest == DIGEST and first.feature_hash == FEATURE_HASH
    short = intents[4]
    assert short.stop_loss == pytest.approx(102.0) and short.take_profit == pytest.approx(97.0)
    assert short.notional == strategy.notional and short.leverage == strategy.leverage


def test_a_redelivered_vector_makes_no_second_intent():
    state, spec = EnsembleState(), ModelRef()
    assert decide(vector(1000), UP, state, spec, StrategySpec(), model_digest=DIGEST) is not None
    saved = state.to_dict()
    assert decide(vector(1000), DOWN, state, spec, StrategySpec(), model_digest=DIGEST) is None
    assert state.to_dict() == saved
    restored = EnsembleState.from_dict(saved)
    assert decide(vector(1001), UP, restored, spec, StrategySpec(), model_digest=DIGEST) is None


def test_no_intent_without_room_for_levels():
    state = EnsembleState()
    assert decide(vector(1000, atr_pct=0.0), UP, state, ModelRef(), StrategySpec(), model_digest=DIGEST) is None
    huge_stop = ModelRef(stop_atr=60.0)
    wide = vector(1001, atr_pct=0.02)
    assert decide(wide, UP, EnsembleState(), huge_stop, StrategySpec(), model_digest=DIGEST) is None


def test_policy_model_fields_are_validated():
    spec = parse_policy({"model": {"name": "m", "digest": DIGEST, "xgboostWeight": 0.7, "torchWeight": 0.3,
                                   "threshold": 0.45, "stopAtr": 1.5, "takeProfitAtr": 2.5}})
    assert (spec.model.xgboost_weight, spec.model.threshold, spec.model.take_profit_atr) == (0.7, 0.45, 2.5)
    with pytest.raises(PolicyError, match="must not both be 0"):
        parse_policy({"model": {"xgboostWeight": 0, "torchWeight": 0}})
    with pytest.raises(PolicyError, match="threshold"):
        parse_policy({"model": {"threshold": 1.5}})
