"""ai-engine's per-bar path (``RowPredictor``) gives the shipped ensemble's probabilities bit for bit, on real bars."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from quantum_trader.contracts.policy import ModelRef, StrategySpec
from quantum_trader.data.klines import read_klines
from quantum_trader.data.replay import kline_to_tick
from quantum_trader.ml.ensemble import EnsembleState, combine, decide
from quantum_trader.ml.market_features import MarketFeatureState
from quantum_trader.ml.models import RowPredictor, mlp_logits, softmax, xgb_margins
from quantum_trader.research.artifact import LoadedArtifact, load_artifact, models_dir, observed_digest

SHIPPED = "ensemble-1h-v1"
HELD_OUT = "AAVEUSDT-1h-2024-01-01_2025-12-31.csv"  # bars the shipped model was not trained on
BARS = 1500


@pytest.fixture(scope="module")
def artifact() -> LoadedArtifact:
    torch.set_num_threads(1)  # as ai-engine runs it
    return load_artifact(SHIPPED, observed_digest(models_dir() / SHIPPED, SHIPPED)[0])


@pytest.fixture(scope="module")
def vectors(shared_klines) -> list:
    state = MarketFeatureState("AAVEUSDT")
    ticks = (kline_to_tick(k) for k in itertools.islice(read_klines(shared_klines / HELD_OUT), BARS))
    return [v for t in ticks if (v := state.update(t)) is not None]


def test_the_per_bar_path_equals_the_reference_bit_for_bit(artifact, vectors):
    """The reference: ``Ensemble.probabilities`` of one row (the compiled trees, the torch module's forward)."""
    predictor = RowPredictor(artifact.ensemble)
    for vector in vectors:
        reference = artifact.ensemble.probabilities(np.asarray(vector.values, dtype=np.float64)[None, :])
        fast = predictor.probabilities(vector.values)
        for got, expected in zip(fast, reference, strict=True):
            assert got.shape == expected.shape == (1, 3)
            assert np.array_equal(got, expected), vector.time


def test_the_per_bar_path_agrees_with_xgboost_and_torch_themselves(artifact, vectors):
    """Against xgboost's own prediction (float32 sums in another order: within 2e-6) and the module's forward."""
    model = artifact.ensemble
    x = np.array([v.values for v in vectors])
    predictor = RowPredictor(model)
    fast = [predictor.probabilities(v.values) for v in vectors]
    np.testing.assert_allclose(
        np.vstack([p[0] for p in fast]), softmax(xgb_margins(model.booster, x), model.xgb_temperature), atol=2e-6
    )
    rows = np.vstack([softmax(mlp_logits(model.mlp, row[None, :]), model.mlp_temperature) for row in x])
    assert np.array_equal(np.vstack([p[1] for p in fast]), rows)


def test_the_same_intents_come_out_of_both_paths(artifact, vectors):
    digest = artifact.digest
    spec, strategy = ModelRef(name=SHIPPED, digest=digest, threshold=0.42), StrategySpec()
    predictor = RowPredictor(artifact.ensemble)
    reference_state, fast_state = EnsembleState(), EnsembleState()
    reference, fast = [], []
    for vector in vectors:
        p_xgb, p_torch = artifact.ensemble.probabilities(np.asarray(vector.values)[None, :])
        reference.append(decide(vector, combine(p_xgb[0], p_torch[0], spec), reference_state, spec, strategy,
                                model_digest=digest))  # fmt: skip
        f_xgb, f_torch = predictor.probabilities(vector.values)
        fast.append(decide(vector, combine(f_xgb[0], f_torch[0], spec), fast_state, spec, strategy,
                           model_digest=digest))  # fmt: skip
    assert fast == reference
    assert sum(i is not None for i in fast) > 10  # the comparison covers real signals, not only silence


def test_a_module_of_another_shape_is_refused(artifact):
    from dataclasses import replace

    from quantum_trader.ml.models import MarketMLP

    other = MarketMLP(16, 8)
    other.net = torch.nn.Sequential(*list(other.net)[:2], torch.nn.Linear(8, 3))
    with pytest.raises(ValueError, match="MarketMLP's layers"):
        RowPredictor(replace(artifact.ensemble, mlp=other))


def test_the_tree_walk_finds_the_leaves_a_plain_walk_of_each_tree_finds(artifact, vectors):
    """Node by node, tree by tree, with xgboost's rules (float32 ``x < condition`` goes left, a missing value takes
    the default branch); the same leaves summed the same way are the same margins, bit for bit."""
    trees = artifact.ensemble.trees
    assert trees is not None
    rows = np.array([v.values for v in vectors[:150]], dtype=np.float32)
    rows = np.vstack([rows, np.where(np.arange(rows.shape[1]) % 3 == 0, np.nan, rows[:20])])  # some values missing

    def plain_walk(row: np.ndarray) -> np.ndarray:
        leaves = []
        for tree in range(trees.left.shape[0]):
            node = 0
            while trees.left[tree, node] >= 0:
                value = row[trees.feature[tree, node]]
                go_left = trees.default_left[tree, node] if np.isnan(value) else value < trees.condition[tree, node]
                node = trees.left[tree, node] if go_left else trees.right[tree, node]
            leaves.append(trees.condition[tree, node])
        return (trees.intercept + np.array(leaves, dtype=np.float32) @ trees.one_hot).astype(np.float64)[None, :]

    for row in rows:
        assert np.array_equal(trees.row_margins(row), plain_walk(row))
