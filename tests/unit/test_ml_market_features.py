"""Feature set market-v1: the incremental state equals the batch computation on real bars, resumes exactly, and
its hash pins the definition."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from quantum_trader.contracts.messages import Tick
from quantum_trader.data.klines import read_klines
from quantum_trader.data.replay import kline_to_tick
from quantum_trader.ml import market_features as mf
from quantum_trader.ml.features import FeatureState, feature_hash

BTC_1H = "BTCUSDT-1h-2023-01-01_2024-05-13.csv"
BARS = 1500


@pytest.fixture(scope="module")
def ticks(shared_klines) -> list[Tick]:
    klines = list(read_klines(shared_klines / BTC_1H))[:BARS]
    return [kline_to_tick(k) for k in klines]


def _batch(ticks: list[Tick]) -> np.ndarray:
    return mf.batch_features(
        np.array([t.event_time for t in ticks], dtype=np.int64),
        np.array([t.price for t in ticks]),
        np.array([t.high for t in ticks]),
        np.array([t.low for t in ticks]),
        np.array([t.volume for t in ticks]),
    )


def _incremental(ticks: list[Tick]) -> np.ndarray:
    state = mf.MarketFeatureState(ticks[0].symbol)
    rows = []
    for t in ticks:
        vector = state.update(t)
        rows.append(vector.values if vector is not None else (math.nan,) * len(mf.FEATURE_NAMES))
    return np.array(rows)


def test_incremental_values_equal_the_batch_computation(ticks):
    incremental, batch = _incremental(ticks), _batch(ticks)
    assert incremental.shape == batch.shape == (BARS, len(mf.FEATURE_NAMES))
    warm = mf.WARMUP_BARS - 1
    assert np.isnan(incremental[:warm]).all() and np.isnan(batch[:warm]).all()
    assert not np.isnan(incremental[warm:]).any() and not np.isnan(batch[warm:]).any()
    # identical up to float summation order (fsum and recursive smoothing against numpy's reductions)
    np.testing.assert_allclose(incremental[warm:], batch[warm:], rtol=1e-9, atol=1e-12)


def test_every_feature_moves_on_real_data(ticks):
    """A feature stuck at one value (e.g. a zero-division fallback everywhere) would agree in both paths."""
    batch = _batch(ticks)[mf.WARMUP_BARS :]
    for name, column in zip(mf.FEATURE_NAMES, batch.T, strict=True):
        assert np.unique(column).size > 20, name


def test_a_persisted_state_resumes_exactly(ticks):
    straight = mf.MarketFeatureState("BTCUSDT")
    resumed = mf.MarketFeatureState("BTCUSDT")
    for i, t in enumerate(ticks[:400]):
        expected = straight.update(t)
        if i % 37 == 0:  # killed and restored from its JSON, as the features component is between ticks
            resumed = mf.MarketFeatureState.from_dict(resumed.to_dict())
        got = resumed.update(t)
        assert (got is None) == (expected is None)
        if expected is not None:
            assert got == expected


@pytest.mark.parametrize("kind", [mf.MarketFeatureState, FeatureState])
def test_a_state_restored_from_its_json_on_every_bar_gives_the_same_vectors(kind, ticks):
    """Also from the form states were written in before the windows were packed (float lists, returns included)."""
    straight, packed, legacy = kind("BTCUSDT"), kind("BTCUSDT"), kind("BTCUSDT")
    for t in ticks[:300]:
        expected = straight.update(t)
        packed = kind.from_dict(json.loads(json.dumps(packed.to_dict())))
        windows = {"closes": list(legacy._closes), "returns": list(legacy._returns), "volumes": list(legacy._volumes)}
        legacy = kind.from_dict(json.loads(json.dumps(legacy.to_dict() | windows)))
        assert packed.update(t) == expected == legacy.update(t)
    assert expected is not None and packed.to_dict() == straight.to_dict() == legacy.to_dict()


def test_a_redelivered_tick_changes_nothing(ticks):
    state = mf.MarketFeatureState("BTCUSDT")
    for t in ticks[:100]:
        state.update(t)
    before = state.to_dict()
    assert state.update(ticks[99]) is None and state.update(ticks[50]) is None
    assert state.to_dict() == before


def test_vectors_carry_the_feature_hash(ticks):
    state = mf.MarketFeatureState("BTCUSDT")
    vectors = [v for v in (state.update(t) for t in ticks[:100]) if v is not None]
    assert len(vectors) == 100 - mf.WARMUP_BARS + 1
    assert {v.feature_hash for v in vectors} == {mf.FEATURE_HASH}
    assert {v.names for v in vectors} == {mf.FEATURE_NAMES}


def test_the_hash_changes_with_names_order_and_parameters():
    base = feature_hash(mf.FEATURE_SET, mf.FEATURE_NAMES, mf.PARAMETERS)
    assert base == mf.FEATURE_HASH
    swapped = (mf.FEATURE_NAMES[1], mf.FEATURE_NAMES[0], *mf.FEATURE_NAMES[2:])
    assert feature_hash(mf.FEATURE_SET, swapped, mf.PARAMETERS) != base
    assert feature_hash(mf.FEATURE_SET, mf.FEATURE_NAMES, {**mf.PARAMETERS, "rsi_length": 21}) != base
    assert feature_hash("market-v2", mf.FEATURE_NAMES, mf.PARAMETERS) != base


def test_a_state_of_another_definition_is_refused(ticks):
    state = mf.MarketFeatureState("BTCUSDT")
    state.update(ticks[0])
    data = state.to_dict()
    data["feature_hash"] = "sha256:" + "0" * 64
    with pytest.raises(ValueError, match="another hash"):
        mf.MarketFeatureState.from_dict(data)


def test_time_of_day_is_a_circle():
    assert mf.time_of_day(0) == pytest.approx((0.0, 1.0))
    assert mf.time_of_day(6 * 3_600_000) == pytest.approx((1.0, 0.0), abs=1e-12)
    late, early = mf.time_of_day(mf.DAY_MS - 60_000), mf.time_of_day(60_000)
    assert math.dist(late, early) < 0.01
