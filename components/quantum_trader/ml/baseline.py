"""Strategy ``baseline-trend``: EMA-crossover trend following, simple enough to audit by hand.

It is the reference every learned model must beat, and the default the system trades when no
model is deployed, so every choice is visible: an intent only on the bar where the fast EMA
crosses the slow one, stop-loss and take-profit at fixed ATR multiples, confidence from how far
the EMAs are apart relative to volatility. Pure: the same vectors and spec give the same intents,
with ids from symbol and market time and a digest of the parameters that produced them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from quantum_trader.contracts.messages import FeatureVector, Side, TradeIntent
from quantum_trader.contracts.policy import StrategySpec
from quantum_trader.ml.features import FEATURE_SET

STRATEGY_NAME = "baseline-trend"


@dataclass(slots=True)
class StrategyState:
    """Per symbol: the sign of the last nonzero EMA gap (0 before the first) and the last vector's time."""

    last_sign: int = 0
    last_time: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"last_sign": self.last_sign, "last_time": self.last_time}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StrategyState:
        last_time = data.get("last_time")
        return cls(last_sign=int(data.get("last_sign", 0)), last_time=None if last_time is None else int(last_time))


def model_digest(spec: StrategySpec) -> str:
    """``baseline-trend:<12 hex>`` of every strategy parameter: intents say exactly which settings made them."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return f"{STRATEGY_NAME}:{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def decide(vector: FeatureVector, state: StrategyState, spec: StrategySpec) -> TradeIntent | None:
    """An intent when the fast EMA has just crossed the slow one; updates ``state`` in place.

    No intent on the first vector of a symbol (a gap seen for the first time is not a cross), on
    a vector not newer than the last one (redelivery), when ATR is zero (no room for levels), when
    a level would fall to or below zero, or when confidence is under ``spec.min_confidence``.
    """
    if vector.feature_set != FEATURE_SET:
        raise ValueError(f"{STRATEGY_NAME} needs feature set {FEATURE_SET!r}, got {vector.feature_set!r}")
    if state.last_time is not None and vector.time <= state.last_time:
        return None
    state.last_time = vector.time
    features = vector.as_dict()
    gap = features["ema_gap"]
    sign = (gap > 0) - (gap < 0)
    if sign == 0:
        return None
    previous, state.last_sign = state.last_sign, sign
    if previous == 0 or previous == sign:
        return None
    atr, atr_pct = features["atr"], features["atr_pct"]
    if atr <= 0 or atr_pct <= 0:
        return None
    price = vector.price
    side = Side.BUY if sign > 0 else Side.SELL
    direction = 1.0 if side is Side.BUY else -1.0
    stop_loss = price - direction * spec.stop_atr * atr
    take_profit = price + direction * spec.take_profit_atr * atr
    if stop_loss <= 0 or take_profit <= 0:
        return None
    confidence = min(1.0, max(0.0, abs(gap) / atr_pct))
    if confidence < spec.min_confidence:
        return None
    return TradeIntent(
        symbol=vector.symbol,
        intent_id=f"{STRATEGY_NAME}:{vector.symbol}:{vector.time}",
        time=vector.time,
        side=side,
        confidence=confidence,
        entry_price=price,
        stop_loss=stop_loss,
        take_profit=take_profit,
        leverage=spec.leverage,
        notional=spec.notional,
        strategy=STRATEGY_NAME,
        model_digest=model_digest(spec),
        feature_hash=vector.feature_hash,
    )
