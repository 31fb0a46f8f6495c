"""Feature set ``core-v1``: incremental, per-symbol features over bars or ticks.

The features component consumes one tick at a time and may be killed between any two, so the
computation is a small state updated in O(1) per tick, serialisable to JSON (Redis) and resumable
with bit-identical results (DESIGN §4.9). Plain Python floats and a fixed summation order keep
every value the same on every machine; nothing here reads a clock or a random source.

Smoothing follows the usual trading definitions so numbers can be checked against any charting
tool: EMAs with alpha 2/(n+1), ATR and RSI with Wilder's alpha 1/n, each seeded with the simple
mean of its first n inputs.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import math
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from quantum_trader.contracts.messages import FeatureVector, Tick
from quantum_trader.contracts.policy import StrategySpec

FEATURE_SET = "core-v1"
FEATURE_NAMES: tuple[str, ...] = (
    "ema_fast",
    "ema_slow",
    "ema_gap",
    "atr",
    "atr_pct",
    "ret_1",
    "ret_5",
    "ret_20",
    "volatility_20",
    "rsi_14",
    "volume_z_20",
    "bar_range_pct",
)
WINDOW = 20
"""Bars in the return, volatility and volume windows."""
RSI_LENGTH = 14


def feature_hash(feature_set: str, names: Iterable[str], parameters: dict[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical JSON of a feature set's name, ordered names and parameters.

    Vectors carry it, so a consumer can tell two definitions apart even under one set name.
    """
    canonical = json.dumps(
        {"set": feature_set, "names": list(names), "parameters": parameters}, sort_keys=True, separators=(",", ":")
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


@functools.lru_cache(maxsize=64)
def core_feature_hash(fast: int, slow: int, atr: int) -> str:
    """core-v1's hash for its parameters, worked out once: every tick restores a state, and a state knows its hash."""
    return feature_hash(
        FEATURE_SET, FEATURE_NAMES, {"fast": fast, "slow": slow, "atr": atr, "window": WINDOW, "rsi": RSI_LENGTH}
    )


class _Smoother:
    """An exponential average seeded with the mean of its first ``length`` inputs (TA-Lib's convention)."""

    __slots__ = ("alpha", "count", "length", "seed_sum", "value")

    def __init__(self, length: int, alpha: float) -> None:
        self.length = length
        self.alpha = alpha
        self.count = 0
        self.seed_sum = 0.0
        self.value: float | None = None

    def update(self, x: float) -> float | None:
        self.count += 1
        if self.value is None:
            self.seed_sum += x
            if self.count == self.length:
                self.value = self.seed_sum / self.length
        else:
            self.value += self.alpha * (x - self.value)
        return self.value

    def dump(self) -> list[Any]:
        return [self.count, self.seed_sum, self.value]

    def load(self, data: list[Any]) -> None:
        self.count, self.seed_sum, self.value = int(data[0]), float(data[1]), _opt_float(data[2])


def ema(length: int) -> _Smoother:
    return _Smoother(length, 2.0 / (length + 1))


def wilder(length: int) -> _Smoother:
    return _Smoother(length, 1.0 / length)


class FeatureState:
    """The running ``core-v1`` features of one symbol; ``update`` per tick, ``to_dict`` to persist."""

    def __init__(self, symbol: str, *, fast: int = 12, slow: int = 48, atr: int = 14) -> None:
        if not 2 <= fast < slow:
            raise ValueError(f"need 2 <= fast < slow, got fast={fast} slow={slow}")
        if atr < 2:
            raise ValueError(f"atr length must be at least 2, got {atr}")
        self.symbol = symbol
        self.fast, self.slow, self.atr_length = fast, slow, atr
        self.feature_hash = core_feature_hash(fast, slow, atr)
        self.bars = 0
        self.last_time: int | None = None
        self._ema_fast = ema(fast)
        self._ema_slow = ema(slow)
        self._atr = wilder(atr)
        self._gain = wilder(RSI_LENGTH)
        self._loss = wilder(RSI_LENGTH)
        self._closes: deque[float] = deque(maxlen=WINDOW + 1)
        self._returns: deque[float] = deque(maxlen=WINDOW)
        self._volumes: deque[float] = deque(maxlen=WINDOW + 1)

    @classmethod
    def from_spec(cls, symbol: str, spec: StrategySpec) -> FeatureState:
        return cls(symbol, fast=spec.fast, slow=spec.slow, atr=spec.atr)

    @property
    def warmup_bars(self) -> int:
        """Bars before the first vector: every feature needs its full window (the slow EMA, usually)."""
        return max(self.slow, self.atr_length, RSI_LENGTH + 1, WINDOW + 1)

    def matches(self, spec: StrategySpec) -> bool:
        """Whether this state was built with ``spec``'s lengths; a restored state that does not is discarded."""
        return (self.fast, self.slow, self.atr_length) == (spec.fast, spec.slow, spec.atr)

    def update(self, tick: Tick) -> FeatureVector | None:
        """Fold in one tick (a bar's close, or a live trade); the vector once warm, else ``None``.

        A tick not newer than the last one is ignored (``None``, state unchanged): a message
        redelivered after a restart must not count twice.
        """
        if tick.symbol != self.symbol:
            raise ValueError(f"tick for {tick.symbol} given to the {self.symbol} feature state")
        if self.last_time is not None and tick.event_time <= self.last_time:
            return None
        close = tick.price
        high = tick.high if tick.high is not None else close
        low = tick.low if tick.low is not None else close
        previous = self._closes[-1] if self._closes else None
        self.last_time = tick.event_time
        self.bars += 1
        ema_fast = self._ema_fast.update(close)
        ema_slow = self._ema_slow.update(close)
        true_range = high - low
        if previous is not None:
            true_range = max(true_range, abs(high - previous), abs(low - previous))
            change = close - previous
            self._gain.update(max(change, 0.0))
            self._loss.update(max(-change, 0.0))
            self._returns.append(math.log(close / previous))
        atr = self._atr.update(true_range)
        self._closes.append(close)
        self._volumes.append(tick.volume)
        if self.bars < self.warmup_bars:
            return None
        assert ema_fast is not None and ema_slow is not None and atr is not None
        values = (
            ema_fast,
            ema_slow,
            ema_fast / ema_slow - 1.0,
            atr,
            atr / close,
            self._log_return(1),
            self._log_return(5),
            self._log_return(WINDOW),
            sample_stdev(self._returns),
            rsi(self._gain.value, self._loss.value),
            volume_z(list(self._volumes)),
            (high - low) / close,
        )
        return FeatureVector(
            symbol=self.symbol,
            time=tick.event_time,
            feature_set=FEATURE_SET,
            feature_hash=self.feature_hash,
            names=FEATURE_NAMES,
            values=values,
            price=close,
        )

    def _log_return(self, bars: int) -> float:
        return math.log(self._closes[-1] / self._closes[-1 - bars])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state; ``from_dict`` of it continues exactly where this one stands."""
        return {
            "feature_set": FEATURE_SET,
            "symbol": self.symbol,
            "params": {"fast": self.fast, "slow": self.slow, "atr": self.atr_length},
            "bars": self.bars,
            "last_time": self.last_time,
            "ema_fast": self._ema_fast.dump(),
            "ema_slow": self._ema_slow.dump(),
            "atr": self._atr.dump(),
            "gain": self._gain.dump(),
            "loss": self._loss.dump(),
            "closes": pack_floats(self._closes),
            "volumes": pack_floats(self._volumes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureState:
        """Restore a persisted state; another feature set's state is refused, not misread."""
        if data.get("feature_set") != FEATURE_SET:
            raise ValueError(f"state of feature set {data.get('feature_set')!r}, expected {FEATURE_SET!r}")
        params = data["params"]
        state = cls(str(data["symbol"]), fast=int(params["fast"]), slow=int(params["slow"]), atr=int(params["atr"]))
        state.bars = int(data["bars"])
        state.last_time = None if data["last_time"] is None else int(data["last_time"])
        state._ema_fast.load(data["ema_fast"])
        state._ema_slow.load(data["ema_slow"])
        state._atr.load(data["atr"])
        state._gain.load(data["gain"])
        state._loss.load(data["loss"])
        restore_windows(data, state._closes, state._returns, state._volumes)
        return state


def compute_features(ticks: Iterable[Tick], spec: StrategySpec) -> Iterator[FeatureVector]:
    """Feature vectors of a tick sequence of any number of symbols, as the features component would emit them."""
    states: dict[str, FeatureState] = {}
    for tick in ticks:
        state = states.get(tick.symbol)
        if state is None:
            state = states[tick.symbol] = FeatureState.from_spec(tick.symbol, spec)
        vector = state.update(tick)
        if vector is not None:
            yield vector


def sample_stdev(values: Iterable[float]) -> float:
    """Sample standard deviation (n - 1), exactly summed so the result does not depend on rounding order."""
    data = list(values)
    if len(data) < 2:
        return 0.0
    mean = math.fsum(data) / len(data)
    return math.sqrt(math.fsum((x - mean) ** 2 for x in data) / (len(data) - 1))


def rsi(gain: float | None, loss: float | None) -> float:
    """The RSI of Wilder-smoothed gains and losses (both exist once the RSI window is full)."""
    assert gain is not None and loss is not None
    if loss == 0.0:
        return 100.0 if gain > 0.0 else 50.0
    return 100.0 - 100.0 / (1.0 + gain / loss)


def volume_z(volumes: list[float]) -> float:
    """The last volume against the ones before it; 0 when those are all equal (e.g. all unknown, 0)."""
    history, current = volumes[:-1], volumes[-1]
    spread = sample_stdev(history)
    if spread == 0.0:
        return 0.0
    return (current - math.fsum(history) / len(history)) / spread


def pack_floats(values: Iterable[float]) -> str:
    """Floats as base64 of little-endian doubles: exact, and several times cheaper than JSON's shortest repr of
    each (the features component writes its state on every tick)."""
    data = list(values)
    return base64.b64encode(struct.pack(f"<{len(data)}d", *data)).decode("ascii")


def unpack_floats(value: str | list[Any]) -> list[float]:
    """``pack_floats``' floats back; a JSON list of numbers (the form states were written in before) too."""
    if isinstance(value, list):
        return [float(x) for x in value]
    raw = base64.b64decode(value, validate=True)
    if len(raw) % 8:
        raise ValueError(f"packed floats of {len(raw)} bytes, not a multiple of 8")
    return list(struct.unpack(f"<{len(raw) // 8}d", raw))


def restore_windows(data: dict[str, Any], closes: deque[float], returns: deque[float], volumes: deque[float]) -> None:
    """Fill a state's windows from its persisted form.

    The one-bar log returns are not persisted: they are the returns of consecutive closes, computed by the same
    expression ``update`` uses, so they come back bit for bit, as long as the closes window holds one more bar
    than the returns window (a state whose returns reach further back is refused, never half-restored).
    """
    closes.extend(unpack_floats(data["closes"]))
    volumes.extend(unpack_floats(data["volumes"]))
    if "returns" in data:  # written before the returns were derived
        returns.extend(float(x) for x in data["returns"])
        return
    if returns.maxlen is None or closes.maxlen is None or returns.maxlen > closes.maxlen - 1:
        raise ValueError("the returns window reaches past the closes window: they cannot be derived")
    returns.extend(math.log(close / previous) for previous, close in itertools.pairwise(closes))


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
