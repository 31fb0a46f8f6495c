"""Feature set core-v1: checked against independent batch formulas, resumable bit for bit, finite on real data."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from pathlib import Path

import pytest

from quantum_trader.contracts.messages import Tick
from quantum_trader.contracts.policy import StrategySpec
from quantum_trader.data.replay import replay_ticks
from quantum_trader.data.synthetic import synthetic_ticks
from quantum_trader.ml.features import FEATURE_NAMES, FEATURE_SET, FeatureState, compute_features

SPEC = StrategySpec(fast=5, slow=30, atr=7)


def tick(
    i: int,
    close: float,
    *,
    high: float | None = None,
    low: float | None = None,
    volume: float = 10.0,
    symbol: str = "BTCUSDT",
) -> Tick:
    return Tick(
        symbol=symbol,
        price=close,
        bid=close,
        ask=close,
        volume=volume,
        event_time=1_000_000 + i * 60_000,
        high=high if high is not None else close * 1.002,
        low=low if low is not None else close * 0.997,
        source="synthetic:test",
    )


def series(n: int) -> list[Tick]:
    """A wave with drift and varying volume: every feature moves."""
    return [
        tick(i, 100 * math.exp(0.002 * i + 0.03 * math.sin(i / 4)), volume=10 + 5 * math.sin(i / 3) + (i % 7))
        for i in range(n)
    ]


def batch_ema(xs: list[float], n: int, alpha: float) -> float:
    value = sum(xs[:n]) / n
    for x in xs[n:]:
        value += alpha * (x - value)
    return value


def expected_features(ticks: list[Tick]) -> dict[str, float]:
    """The same definitions written as plain batch formulas over the whole history."""
    closes = [t.price for t in ticks]
    highs = [t.high for t in ticks]
    lows = [t.low for t in ticks]
    assert all(h is not None for h in highs) and all(low is not None for low in lows)
    trs = [highs[0] - lows[0]] + [
        max(h - low, abs(h - pc), abs(low - pc)) for h, low, pc in zip(highs[1:], lows[1:], closes, strict=False)
    ]  # type: ignore[operator]
    changes = [b - a for a, b in itertools.pairwise(closes)]
    gain = batch_ema([max(c, 0.0) for c in changes], 14, 1 / 14)
    loss = batch_ema([max(-c, 0.0) for c in changes], 14, 1 / 14)
    returns = [math.log(b / a) for a, b in itertools.pairwise(closes)]
    volumes = [t.volume for t in ticks]
    fast = batch_ema(closes, SPEC.fast, 2 / (SPEC.fast + 1))
    slow = batch_ema(closes, SPEC.slow, 2 / (SPEC.slow + 1))
    atr = batch_ema(trs, SPEC.atr, 1 / SPEC.atr)
    last = ticks[-1]
    return {
        "ema_fast": fast,
        "ema_slow": slow,
        "ema_gap": fast / slow - 1,
        "atr": atr,
        "atr_pct": atr / closes[-1],
        "ret_1": math.log(closes[-1] / closes[-2]),
        "ret_5": math.log(closes[-1] / closes[-6]),
        "ret_20": math.log(closes[-1] / closes[-21]),
        "volatility_20": statistics.stdev(returns[-20:]),
        "rsi_14": 100 - 100 / (1 + gain / loss),
        "volume_z_20": (volumes[-1] - statistics.mean(volumes[-21:-1])) / statistics.stdev(volumes[-21:-1]),
        "bar_range_pct": (last.high - last.low) / last.price,  # type: ignore[operator]
    }


def test_none_until_warm_then_a_vector_per_tick() -> None:
    state = FeatureState.from_spec("BTCUSDT", SPEC)
    assert state.warmup_bars == 30
    out = [state.update(t) for t in series(40)]
    assert out[:29] == [None] * 29
    assert all(v is not None for v in out[29:])
    assert FeatureState("BTCUSDT", fast=3, slow=5, atr=3).warmup_bars == 21  # the 20-bar windows need 21 closes
    assert FeatureState.from_spec("BTCUSDT", StrategySpec()).warmup_bars == 48


@pytest.mark.parametrize("n", [30, 31, 57, 200])
def test_values_match_the_batch_definitions(n: int) -> None:
    ticks = series(n)
    state = FeatureState.from_spec("BTCUSDT", SPEC)
    vectors = [state.update(t) for t in ticks]
    vector = vectors[-1]
    assert vector is not None
    assert vector.feature_set == FEATURE_SET == "core-v1"
    assert vector.names == FEATURE_NAMES
    assert (vector.symbol, vector.time, vector.price) == ("BTCUSDT", ticks[-1].event_time, ticks[-1].price)
    expected = expected_features(ticks)
    for name, value in vector.as_dict().items():
        assert value == pytest.approx(expected[name], rel=1e-9, abs=1e-12), name


def test_flat_market_gives_neutral_values() -> None:
    state = FeatureState.from_spec("BTCUSDT", SPEC)
    vector = None
    for i in range(40):
        vector = state.update(tick(i, 50.0, high=50.5, low=49.5, volume=0.0))
    assert vector is not None
    values = vector.as_dict()
    assert values["ema_fast"] == values["ema_slow"] == 50.0 and values["ema_gap"] == 0.0
    assert values["atr"] == pytest.approx(1.0) and values["atr_pct"] == pytest.approx(0.02)
    assert values["ret_1"] == values["ret_20"] == values["volatility_20"] == 0.0
    assert values["rsi_14"] == 50.0
    assert values["volume_z_20"] == 0.0  # unknown (0) volumes do not divide by zero


def test_live_ticks_without_high_low_use_the_price() -> None:
    state = FeatureState.from_spec("BTCUSDT", SPEC)
    vector = None
    for i, t in enumerate(series(35)):
        vector = state.update(
            Tick(
                symbol="BTCUSDT",
                price=t.price,
                bid=t.price,
                ask=t.price,
                volume=1.0,
                event_time=t.event_time,
                source="live",
            )
        )
        assert i >= 29 or vector is None
    assert vector is not None and vector.as_dict()["bar_range_pct"] == 0.0
    assert vector.as_dict()["atr"] > 0


def test_resumed_state_continues_bit_for_bit() -> None:
    ticks = series(150)
    straight = FeatureState.from_spec("BTCUSDT", SPEC)
    expected = [straight.update(t) for t in ticks]
    for cut in (0, 10, 29, 30, 100):
        state = FeatureState.from_spec("BTCUSDT", SPEC)
        got = [state.update(t) for t in ticks[:cut]]
        restored = FeatureState.from_dict(json.loads(json.dumps(state.to_dict())))
        got += [restored.update(t) for t in ticks[cut:]]
        assert got == expected, cut
        assert restored.to_dict() == straight.to_dict()


def test_a_redelivered_or_older_tick_changes_nothing() -> None:
    ticks = series(40)
    state = FeatureState.from_spec("BTCUSDT", SPEC)
    for t in ticks:
        state.update(t)
    before = state.to_dict()
    assert state.update(ticks[-1]) is None
    assert state.update(ticks[5]) is None
    assert state.to_dict() == before


def test_wrong_symbol_other_feature_set_and_bad_params_are_refused() -> None:
    state = FeatureState.from_spec("BTCUSDT", SPEC)
    with pytest.raises(ValueError, match="tick for ETHUSDT given to the BTCUSDT feature state"):
        state.update(tick(0, 10.0, symbol="ETHUSDT"))
    data = state.to_dict() | {"feature_set": "core-v0"}
    with pytest.raises(ValueError, match="feature set 'core-v0'"):
        FeatureState.from_dict(data)
    with pytest.raises(ValueError):
        FeatureState("BTCUSDT", fast=10, slow=10)
    assert state.matches(SPEC) and not state.matches(StrategySpec())


def test_compute_features_keeps_symbols_apart() -> None:
    ticks = list(synthetic_ticks(["BTCUSDT", "ETHUSDT"], seed=5, bars=100))
    vectors = list(compute_features(ticks, SPEC))
    assert len(vectors) == 2 * (100 - 29)
    alone = list(compute_features([t for t in ticks if t.symbol == "ETHUSDT"], SPEC))
    assert [v for v in vectors if v.symbol == "ETHUSDT"] == alone


@pytest.mark.data
@pytest.mark.parametrize(
    "name",
    [
        "BTCUSDT-1m-2025-05-05_2025-06-23.csv",
        "ALGOUSDT-1m-2025-02-01_2025-02-28.csv",
        "1000PEPEUSDT-1h-2023-05-06_2024-05-13.csv",
    ],
)
def test_real_bars_give_finite_features(shared_klines: Path, name: str) -> None:
    vectors = list(compute_features(replay_ticks([shared_klines / name], max_bars=5000), StrategySpec()))
    assert len(vectors) == 5000 - 47
    for vector in vectors:
        assert all(math.isfinite(v) for v in vector.values), vector
        values = vector.as_dict()
        assert 0 <= values["rsi_14"] <= 100
        assert values["atr"] > 0 and values["volatility_20"] >= 0
