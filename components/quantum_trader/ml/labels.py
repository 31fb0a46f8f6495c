"""Training labels: the sign of the forward return over a horizon, with a no-trade band.

A bar is labelled ``UP`` when the log return from its close to the close ``horizon`` bars later
exceeds ``band_atr`` times its ATR (as a fraction of price), ``DOWN`` when it falls below minus that,
and ``FLAT`` in between. Scaling the band by ATR keeps the classes balanced across calm and wild
symbols; a move inside the band would not pay a round trip's fees, so it is not a trade.
The last ``horizon`` bars of a series have no label (their future is unknown): ``NO_LABEL``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DOWN, FLAT, UP = 0, 1, 2
CLASSES: tuple[str, ...] = ("down", "flat", "up")
NO_LABEL = -1


@dataclass(frozen=True, slots=True)
class LabelSpec:
    horizon: int
    """Bars between a bar's close and the close its label looks at."""
    band_atr: float
    """Half-width of the no-trade band in ATRs (ATR as a fraction of the close)."""

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"label horizon must be at least 1 bar, got {self.horizon}")
        if not self.band_atr >= 0:
            raise ValueError(f"label band must be >= 0 ATRs, got {self.band_atr}")

    def describe(self) -> dict[str, object]:
        return {
            "kind": "forward-log-return",
            "horizon_bars": self.horizon,
            "band_atr": self.band_atr,
            "classes": list(CLASSES),
            "rule": "up if log(close[t+h]/close[t]) > band_atr*atr_pct[t]; down if < -band_atr*atr_pct[t]; else flat",
        }


def forward_returns(close: np.ndarray, horizon: int) -> np.ndarray:
    """log(close[t + horizon] / close[t]); NaN where the future is past the end."""
    out = np.full(len(close), np.nan)
    if len(close) > horizon:
        out[:-horizon] = np.log(close[horizon:] / close[:-horizon])
    return out


def make_labels(close: np.ndarray, atr_pct: np.ndarray, spec: LabelSpec) -> np.ndarray:
    """One label per bar (``DOWN``/``FLAT``/``UP``), ``NO_LABEL`` where the return or the ATR is unknown."""
    ahead = forward_returns(close, spec.horizon)
    band = spec.band_atr * atr_pct
    labels = np.full(len(close), NO_LABEL, dtype=np.int64)
    known = ~np.isnan(ahead) & ~np.isnan(band)
    labels[known] = FLAT
    labels[known & (ahead > band)] = UP
    labels[known & (ahead < -band)] = DOWN
    return labels
