"""Walk-forward splits with a gap, and the checks that prove nothing looks ahead.

Rows are bars of any number of symbols, identified by their bar time. A fold trains on every row up
to ``train_end`` and tests on the rows in ``[test_start, test_end)``. A training row's label reads the
close ``horizon`` bars after it, so the gap between the last training bar and the first test bar must
exceed the label horizon (purging), plus an embargo for the features' serial correlation.

Two independent checks run on every training: ``check_rows`` on the row sets each fold actually
uses (a bug in the split code cannot slip a future row into training), and ``audit_causality``
on the feature computation (a feature that peeks at a later bar changes when the future is cut off).
Either raises ``LeakError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class LeakError(ValueError):
    """Training would see information from the period it is evaluated on."""


@dataclass(frozen=True, slots=True)
class Fold:
    index: int
    train_end: int
    """Last bar time (inclusive) whose row may be trained on."""
    test_start: int
    test_end: int
    """Test rows have ``test_start <= time < test_end``."""


def walk_forward(times: np.ndarray, *, folds: int, gap_ms: int, min_train_fraction: float = 0.4) -> list[Fold]:
    """``folds`` consecutive test windows over the last ``1 - min_train_fraction`` of the distinct bar times.

    Each fold trains on everything before its test window minus ``gap_ms`` (an expanding window).
    """
    if folds < 1:
        raise ValueError(f"need at least one fold, got {folds}")
    if not 0 < min_train_fraction < 1:
        raise ValueError(f"min_train_fraction must be in (0, 1), got {min_train_fraction}")
    distinct = np.unique(times)
    first_test = int(len(distinct) * min_train_fraction)
    edges = np.linspace(first_test, len(distinct), folds + 1).astype(int)
    out = []
    for k in range(folds):
        start, stop = int(edges[k]), int(edges[k + 1])
        if stop <= start:
            raise ValueError(f"too few bars ({len(distinct)}) for {folds} folds")
        test_start = int(distinct[start])
        test_end = int(distinct[stop]) if stop < len(distinct) else int(distinct[-1]) + 1
        out.append(Fold(k, test_start - gap_ms - 1, test_start, test_end))
    return out


def check_folds(folds: list[Fold], label_horizon_ms: int) -> None:
    """Every fold's training labels end before its test window begins, and test windows do not overlap."""
    previous_end: int | None = None
    for fold in folds:
        if fold.train_end + label_horizon_ms >= fold.test_start:
            raise LeakError(
                f"fold {fold.index}: training labels reach {fold.train_end + label_horizon_ms}, "
                f"at or after the test start {fold.test_start}; the gap must exceed the label horizon"
            )
        if fold.test_end <= fold.test_start:
            raise LeakError(f"fold {fold.index}: empty test window")
        if previous_end is not None and fold.test_start < previous_end:
            raise LeakError(f"fold {fold.index}: test window starts before the previous one ends")
        previous_end = fold.test_end


def check_rows(train_times: np.ndarray, test_times: np.ndarray, label_horizon_ms: int, *, what: str = "fold") -> None:
    """The rows a fold really uses: the latest training label must end before the earliest test bar."""
    if len(train_times) == 0 or len(test_times) == 0:
        raise LeakError(f"{what}: no training or no test rows")
    reach = int(train_times.max()) + label_horizon_ms
    first_test = int(test_times.min())
    if reach >= first_test:
        raise LeakError(
            f"{what}: a training row's label reaches {reach}, at or after the first test bar {first_test}"
        )


def audit_causality(
    compute: Callable[[int], np.ndarray], length: int, cuts: list[int], *, names: tuple[str, ...] = ()
) -> None:
    """``compute(n)`` gives the features of the first ``n`` bars; rows before each cut must not change.

    A causal feature at bar t depends on bars <= t only, so computing it on a history cut after t gives
    the same value. A feature that reads a later bar differs, and is named in the error.
    """
    full = compute(length)
    for cut in cuts:
        if not 0 < cut < length:
            continue
        partial = compute(cut)
        before, after = full[:cut], partial[:cut]
        same = (before == after) | (np.isnan(before) & np.isnan(after))
        if not same.all():
            column = int(np.argwhere(~same.all(axis=0))[0][0])
            row = int(np.argwhere(~same[:, column])[0][0])
            name = names[column] if column < len(names) else f"column {column}"
            raise LeakError(f"feature {name} at bar {row} changes when the history is cut at bar {cut}: it looks ahead")
