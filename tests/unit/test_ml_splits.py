"""Walk-forward splits, labels and the look-ahead checks: planted leaks are caught, honest splits pass."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from quantum_trader.ml.labels import DOWN, FLAT, NO_LABEL, UP, LabelSpec, make_labels
from quantum_trader.ml.market_features import FEATURE_NAMES, batch_features
from quantum_trader.ml.splits import Fold, LeakError, audit_causality, check_folds, check_rows, walk_forward

HOUR = 3_600_000


def hourly(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * HOUR + 1_700_000_000_000


def test_walk_forward_folds_keep_the_gap_and_cover_the_tail():
    times = np.repeat(hourly(2000), 3)  # three symbols per bar
    folds = walk_forward(times, folds=4, gap_ms=30 * HOUR)
    check_folds(folds, label_horizon_ms=6 * HOUR)
    assert len(folds) == 4
    assert folds[-1].test_end > times.max()
    for fold in folds:
        assert fold.test_start - fold.train_end == 30 * HOUR + 1
        train, test = times[times <= fold.train_end], times[(times >= fold.test_start) & (times < fold.test_end)]
        check_rows(train, test, 6 * HOUR)
    for a, b in itertools.pairwise(folds):
        assert a.test_end == b.test_start


def test_a_gap_shorter_than_the_label_horizon_is_caught():
    times = hourly(1000)
    folds = walk_forward(times, folds=3, gap_ms=2 * HOUR)
    with pytest.raises(LeakError, match="gap must exceed the label horizon"):
        check_folds(folds, label_horizon_ms=6 * HOUR)


def test_a_future_row_planted_in_training_is_caught():
    times = hourly(1000)
    fold = walk_forward(times, folds=2, gap_ms=30 * HOUR)[1]
    train = times[times <= fold.train_end]
    test = times[(times >= fold.test_start) & (times < fold.test_end)]
    check_rows(train, test, 6 * HOUR)
    planted = np.append(train, test[10])  # one bar of the test window slipped into the training rows
    with pytest.raises(LeakError, match="reaches"):
        check_rows(planted, test, 6 * HOUR)
    # a training bar whose label's horizon ends inside the test window is a leak as well
    edge = np.append(train, fold.test_start - 3 * HOUR)
    with pytest.raises(LeakError):
        check_rows(edge, test, 6 * HOUR)


def test_overlapping_test_windows_are_caught():
    folds = [Fold(0, 0, 100 * HOUR, 200 * HOUR), Fold(1, 50 * HOUR, 150 * HOUR, 250 * HOUR)]
    with pytest.raises(LeakError, match="before the previous one ends"):
        check_folds(folds, label_horizon_ms=HOUR)


def _prices(n: int, seed: int = 3) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    high = close * (1 + np.abs(rng.normal(0, 0.004, n)))
    low = close * (1 - np.abs(rng.normal(0, 0.004, n)))
    volume = rng.uniform(10, 20, n)
    return hourly(n), close, high, low, volume


def test_the_real_features_pass_the_causality_audit():
    times, close, high, low, volume = _prices(600)

    def compute(k: int) -> np.ndarray:
        return batch_features(times[:k], close[:k], high[:k], low[:k], volume[:k])

    audit_causality(compute, 600, [100, 250, 400, 599], names=FEATURE_NAMES)


def test_a_feature_that_peeks_at_the_next_bar_is_caught():
    times, close, high, low, volume = _prices(600)

    def leaky(k: int) -> np.ndarray:
        features = batch_features(times[:k], close[:k], high[:k], low[:k], volume[:k])
        peek = np.full(k, np.nan)
        peek[:-1] = np.log(close[1:k] / close[: k - 1])  # tomorrow's return, planted as a feature
        features[:, 0] = peek
        return features

    with pytest.raises(LeakError, match=f"feature {FEATURE_NAMES[0]} .* looks ahead"):
        audit_causality(leaky, 600, [300], names=FEATURE_NAMES)


def test_labels_follow_the_forward_return_and_the_band():
    close = np.array([100.0, 101.0, 99.0, 99.4, 103.0, 103.0])
    atr_pct = np.full(6, 0.01)
    labels = make_labels(close, atr_pct, LabelSpec(horizon=1, band_atr=0.5))
    # +1.0 %, -2.0 %, +0.4 % (inside the 0.5 % band: flat), +3.6 %, 0 %, unknown future
    assert labels.tolist() == [UP, DOWN, FLAT, UP, FLAT, NO_LABEL]
    wide = make_labels(close, atr_pct, LabelSpec(horizon=1, band_atr=5.0))
    assert wide.tolist() == [FLAT, FLAT, FLAT, FLAT, FLAT, NO_LABEL]
    longer = make_labels(close, atr_pct, LabelSpec(horizon=3, band_atr=0.5))
    assert longer.tolist()[-3:] == [NO_LABEL] * 3


def test_a_label_spec_rejects_nonsense():
    with pytest.raises(ValueError):
        LabelSpec(horizon=0, band_atr=0.5)
    with pytest.raises(ValueError):
        LabelSpec(horizon=3, band_atr=float("nan"))
