"""The ensemble's trading rule: calibrated probabilities -> an intent, with ATR-based levels.

Pure: the same vector, probabilities, spec and state give the same intent. The two models'
probabilities are averaged with the policy's weights; a side is taken when its probability reaches
the threshold and beats the other side. Like ``baseline-trend``, an intent is sent only on the bar a
signal appears (flat or the other side before), not on every bar it persists: the rest of the
pipeline sizes and limits entries, the model says when its view changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from quantum_trader.contracts.messages import FeatureVector, Side, TradeIntent
from quantum_trader.contracts.policy import ModelRef, StrategySpec
from quantum_trader.ml.labels import DOWN, UP
from quantum_trader.ml.market_features import ATR_PCT_INDEX

STRATEGY_NAME = "ensemble"


@dataclass(slots=True)
class EnsembleState:
    """Per symbol: the last signal (-1 short, 0 none, 1 long) and the last vector's time."""

    last_signal: int = 0
    last_time: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"last_signal": self.last_signal, "last_time": self.last_time}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnsembleState:
        last_time = data.get("last_time")
        return cls(last_signal=int(data.get("last_signal", 0)), last_time=None if last_time is None else int(last_time))


def combine(p_xgb: np.ndarray, p_torch: np.ndarray, spec: ModelRef) -> np.ndarray:
    """The weighted mean of the two models' class probabilities (weights normalised to sum 1)."""
    total = spec.xgboost_weight + spec.torch_weight
    return (spec.xgboost_weight * p_xgb + spec.torch_weight * p_torch) / total


def signal_of(probabilities: np.ndarray, threshold: float) -> int:
    """1 (long) or -1 (short) when that side reaches ``threshold`` and beats the other side, else 0."""
    up, down = float(probabilities[UP]), float(probabilities[DOWN])
    if up >= threshold and up > down:
        return 1
    if down >= threshold and down > up:
        return -1
    return 0


def signals(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """``signal_of`` for every row of a (rows, 3) array."""
    up, down = probabilities[:, UP], probabilities[:, DOWN]
    return np.where((up >= threshold) & (up > down), 1, np.where((down >= threshold) & (down > up), -1, 0))


def decide(
    vector: FeatureVector,
    probabilities: np.ndarray,
    state: EnsembleState,
    model: ModelRef,
    strategy: StrategySpec,
    *,
    model_digest: str,
) -> TradeIntent | None:
    """An intent when a new signal appears; updates ``state`` in place. ``None`` for a redelivered vector."""
    if state.last_time is not None and vector.time <= state.last_time:
        return None
    state.last_time = vector.time
    signal = signal_of(probabilities, model.threshold)
    previous, state.last_signal = state.last_signal, signal
    if signal == 0 or signal == previous:
        return None
    price = vector.price
    atr = vector.values[ATR_PCT_INDEX] * price
    if not atr > 0:
        return None
    direction = float(signal)
    stop_loss = price - direction * model.stop_atr * atr
    take_profit = price + direction * model.take_profit_atr * atr
    if stop_loss <= 0 or take_profit <= 0:
        return None
    confidence = float(probabilities[UP] if signal > 0 else probabilities[DOWN])
    return TradeIntent(
        symbol=vector.symbol,
        intent_id=f"{STRATEGY_NAME}:{vector.symbol}:{vector.time}",
        time=vector.time,
        side=Side.BUY if signal > 0 else Side.SELL,
        confidence=min(1.0, max(0.0, confidence)),
        entry_price=price,
        stop_loss=stop_loss,
        take_profit=take_profit,
        leverage=strategy.leverage,
        notional=strategy.notional,
        strategy=STRATEGY_NAME,
        model_digest=model_digest,
        feature_hash=vector.feature_hash,
    )
