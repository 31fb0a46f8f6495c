"""Harvest: profit-taking proposals from R multiples and a kill score (pure; the service does the I/O).

R multiple: the unrealized move in units of the initial risk, R = |entry - stop_loss|:
``r = (price - entry) / R`` for a LONG, ``(entry - price) / R`` for a SHORT. Without a stop-loss
there is no R, and harvest proposes nothing for that position (nothing to measure against).

Rules (each fires at most once per position; HOLD is never emitted):

- ``partial_2r`` -> PARTIAL_CLOSE of ``partial_fraction`` (0.5) the first time the tick price is
  at or beyond ``partial_r`` (2 R): bank half of a trade that has paid twice its risk.
- ``kill`` -> CLOSE when the trade has been ``kill_arm_r`` (1 R) in profit at some point and the
  kill score reaches ``kill_threshold`` (0.6): the move that made it a winner is reversing.

Kill score, in [0, 1], a weighted sum of two parts that are each in [0, 1]:

- giveback ``g = clip((peak_r - r) / peak_r, 0, 1)``: the share of the best open profit handed
  back. ``peak_r`` counts each bar's favourable extreme (high for a LONG) — the close comes after
  the high within a bar, so a bar that spikes and closes lower really did give back.
- momentum ``m = clip(adverse EMA gap / (momentum_full_r * R), 0, 1)``: how far a fast EMA of the
  price (5 ticks) sits against the position relative to a slow EMA (20 ticks), in units of
  ``momentum_full_r`` (0.5) R. A LONG's adverse gap is ``slow - fast`` (prices turning down).

``score = 0.6 * g + 0.4 * m`` once armed (``peak_r >= 1``), else 0. Reading the threshold: giving
back everything closes on its own (0.6); giving back half closes only with the fast average half
an R under the slow one (0.3 + 0.4); momentum alone never does (0.4 max) — a dip inside a trend
that keeps its gains is left to the stop.

On one tick CLOSE outranks PARTIAL_CLOSE: closing everything makes the partial moot.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from quantum_trader.contracts.messages import HarvestAction, Tick
from quantum_trader.exits.position import PositionView

PARTIAL_RULE = "partial_2r"
KILL_RULE = "kill"


@dataclass(frozen=True, slots=True)
class HarvestSettings:
    partial_r: float = 2.0
    partial_fraction: float = 0.5
    kill_arm_r: float = 1.0
    kill_threshold: float = 0.6
    giveback_weight: float = 0.6
    momentum_weight: float = 0.4
    momentum_full_r: float = 0.5
    fast_ticks: int = 5
    slow_ticks: int = 20

    def __post_init__(self) -> None:
        if not 0 < self.partial_fraction < 1:
            raise ValueError("partial_fraction must be in (0, 1): a full close is the kill rule's job")
        if (
            abs(self.giveback_weight + self.momentum_weight - 1.0) > 1e-9
            or min(self.giveback_weight, self.momentum_weight) < 0
        ):
            raise ValueError("kill score weights must be non-negative and sum to 1, so the score stays in [0, 1]")
        if not 0 < self.fast_ticks < self.slow_ticks:
            raise ValueError("fast_ticks must be positive and shorter than slow_ticks")
        if self.momentum_full_r <= 0 or self.partial_r <= 0 or self.kill_arm_r <= 0:
            raise ValueError("R thresholds must be positive")

    @property
    def fast_alpha(self) -> float:
        return 2.0 / (self.fast_ticks + 1)

    @property
    def slow_alpha(self) -> float:
        return 2.0 / (self.slow_ticks + 1)


@dataclass(frozen=True, slots=True)
class HarvestState:
    """What harvest remembers per symbol between ticks (persisted in its own Redis state)."""

    position: PositionView | None = None
    applied_version: int = 0
    last_opened_at: int = 0
    """open time of the watched trade, or of the last one closed (to recognise a newer trade)"""
    peak_r: float = 0.0
    ema_fast: float | None = None
    ema_slow: float | None = None
    emitted: tuple[str, ...] = ()
    """rules already proposed for this position"""
    last_time: int = 0

    def opened(self, position: PositionView | None, version: int) -> HarvestState:
        """A different trade (or flat): start over; the same trade: keep what was learned."""
        if position is not None and self.position is not None and position.same_position(self.position):
            return replace(self, position=position, applied_version=version)
        opened_at = self.last_opened_at if position is None else position.opened_at
        return HarvestState(position=position, applied_version=version, last_opened_at=opened_at)

    def to_json(self) -> dict[str, Any]:
        return {
            "position": None if self.position is None else self.position.to_json(),
            "applied_version": self.applied_version,
            "last_opened_at": self.last_opened_at,
            "peak_r": self.peak_r,
            "ema_fast": self.ema_fast,
            "ema_slow": self.ema_slow,
            "emitted": list(self.emitted),
            "last_time": self.last_time,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> HarvestState:
        position = data.get("position")
        return HarvestState(
            position=None if position is None else PositionView.from_json(position),
            applied_version=int(data.get("applied_version", 0)),
            last_opened_at=int(data.get("last_opened_at", 0)),
            peak_r=float(data.get("peak_r", 0.0)),
            ema_fast=None if data.get("ema_fast") is None else float(data["ema_fast"]),
            ema_slow=None if data.get("ema_slow") is None else float(data["ema_slow"]),
            emitted=tuple(data.get("emitted", ())),
            last_time=int(data.get("last_time", 0)),
        )


@dataclass(frozen=True, slots=True)
class Proposal:
    """A proposal to emit (the service wraps it in a HarvestProposal with the tick's time and price)."""

    rule: str
    action: HarvestAction
    fraction: float
    r_multiple: float
    kill_score: float
    reasons: tuple[str, ...] = field(default_factory=tuple)


def proposal_id(symbol: str, opened_at: int, rule: str) -> str:
    """Deterministic: one id per position and rule, so a replay or a redelivery proposes the same thing."""
    return f"harvest:{symbol}:{opened_at}:{rule}"


def r_multiple(position: PositionView, price: float) -> float | None:
    """The unrealized move at ``price`` in R; None without a stop-loss."""
    risk = position.initial_risk
    if risk is None:
        return None
    move = price - position.entry_price if position.is_long else position.entry_price - price
    return move / risk


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


def giveback(peak_r: float, r_now: float) -> float:
    """Share of the best open profit given back, in [0, 1] (0 while there was no profit)."""
    if peak_r <= 0:
        return 0.0
    return _clip((peak_r - r_now) / peak_r)


def momentum_against(position: PositionView, ema_fast: float, ema_slow: float, settings: HarvestSettings) -> float:
    """Fast-vs-slow EMA gap against the position, in [0, 1] (1 at ``momentum_full_r`` R or more)."""
    risk = position.initial_risk
    if risk is None:
        return 0.0
    gap = ema_slow - ema_fast if position.is_long else ema_fast - ema_slow
    return _clip(gap / (settings.momentum_full_r * risk))


def kill_score(
    position: PositionView, peak_r: float, r_now: float, ema_fast: float, ema_slow: float, settings: HarvestSettings
) -> float:
    """The kill score in [0, 1] (formula in the module docstring); 0 until the trade reached ``kill_arm_r``."""
    if peak_r < settings.kill_arm_r:
        return 0.0
    score = settings.giveback_weight * giveback(peak_r, r_now) + settings.momentum_weight * momentum_against(
        position, ema_fast, ema_slow, settings
    )
    return _clip(score)


def _ema(previous: float | None, value: float, alpha: float) -> float:
    return value if previous is None else previous + alpha * (value - previous)


def on_tick(state: HarvestState, tick: Tick, settings: HarvestSettings) -> tuple[HarvestState, Proposal | None]:
    """Fold a tick into the state and return at most one proposal for it."""
    position = state.position
    if position is None:
        return state, None
    if tick.event_time < state.last_time:
        return state, None  # a late tick (another replica got ahead): folding it in would rewind the EMAs
    r_now = r_multiple(position, tick.price)
    if r_now is None:
        return replace(state, last_time=tick.event_time), None
    extreme = max(tick.price, tick.high or tick.price) if position.is_long else min(tick.price, tick.low or tick.price)
    r_extreme = r_multiple(position, extreme)
    assert r_extreme is not None  # same position, same risk as r_now
    peak_r = max(state.peak_r, r_now, r_extreme)
    ema_fast = _ema(state.ema_fast, tick.price, settings.fast_alpha)
    ema_slow = _ema(state.ema_slow, tick.price, settings.slow_alpha)
    score = kill_score(position, peak_r, r_now, ema_fast, ema_slow, settings)
    new_state = replace(state, peak_r=peak_r, ema_fast=ema_fast, ema_slow=ema_slow, last_time=tick.event_time)
    if KILL_RULE in state.emitted:
        return new_state, None  # the position is being closed; nothing more to propose
    if score >= settings.kill_threshold:
        reasons = (
            "kill_score",
            f"peak_r={peak_r:.2f}",
            f"giveback={giveback(peak_r, r_now):.2f}",
            f"momentum={momentum_against(position, ema_fast, ema_slow, settings):.2f}",
        )
        proposal = Proposal(KILL_RULE, HarvestAction.CLOSE, 1.0, r_now, score, reasons)
        return replace(new_state, emitted=(*state.emitted, KILL_RULE)), proposal
    if PARTIAL_RULE not in state.emitted and r_now >= settings.partial_r:
        reasons = (PARTIAL_RULE, f"r={r_now:.2f}")
        proposal = Proposal(PARTIAL_RULE, HarvestAction.PARTIAL_CLOSE, settings.partial_fraction, r_now, score, reasons)
        return replace(new_state, emitted=(*state.emitted, PARTIAL_RULE)), proposal
    return new_state, None
