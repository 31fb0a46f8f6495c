"""The governor's rules (DESIGN §4.3), as a pure reference of what ``services/governor.lua`` decides.

Why a Python copy of the Lua: the Lua script is the one that runs — it must, because only a single
script sees and changes the shared counters atomically across any number of governor replicas.
This module is its executable specification: unit tests cover every rule here without a server,
and an integration test feeds the same states to the script and requires the same verdicts, so
the two cannot drift apart unnoticed. Constants the script needs (windows, tolerance) are passed
to it from here, so they exist once.

Checks run in a fixed order and the first failing one is the decision's single reason code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from quantum_trader.contracts.control import plan_verdict
from quantum_trader.contracts.messages import Plan, PlanKind, PositionSide
from quantum_trader.contracts.policy import PolicySpec
from quantum_trader.risk.positions import other_trade


class Reason(StrEnum):
    """Why a plan was rejected: the codes on ``governor.decision``."""

    CONTROL_MISSING = "control_missing"
    KILLSWITCH_ALL = "killswitch_all"
    KILLSWITCH_ENTRIES = "killswitch_entries"
    NOT_ALLOWLISTED = "not_allowlisted"
    LEVERAGE = "leverage"
    NOTIONAL_PER_TRADE = "notional_per_trade"
    POSITION_OPEN = "position_open"
    ENTRY_PENDING = "entry_pending"
    COOLDOWN = "cooldown"
    RATE_HOUR = "rate_hour"
    RATE_5M = "rate_5m"
    MAX_OPEN_POSITIONS = "max_open_positions"
    MAX_TOTAL_NOTIONAL = "max_total_notional"
    NO_OPEN_POSITION = "no_open_position"
    EXIT_IN_FLIGHT = "exit_in_flight"


HOUR_MS = 3_600_000
FIVE_MINUTES_MS = 300_000
RATE_TRIM_MS = 2 * HOUR_MS
"""Rate entries older than this before a plan's time are trimmed. Twice the longest window, so a
plan that arrives up to an hour out of (market-time) order still sees every entry that counts."""

NOTIONAL_TOLERANCE = 1e-9
"""Relative slack on notional limits, so a plan that fits exactly is not refused over float rounding
(qty * price, or a sum of notionals, can land a few ulps above the limit)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The policy values the governor enforces, in the units the script compares."""

    allowlist: frozenset[str]
    max_leverage: int
    max_notional_per_trade: float
    max_total_notional: float
    max_open_positions: int
    max_entries_per_hour: int
    max_entries_per_five_minutes: int
    cooldown_ms: int
    approval_ttl_ms: int

    @classmethod
    def from_policy(cls, policy: PolicySpec) -> Limits:
        risk = policy.risk
        return cls(
            allowlist=frozenset(policy.symbols),
            max_leverage=risk.max_leverage,
            max_notional_per_trade=risk.max_notional_per_trade,
            max_total_notional=risk.max_total_notional,
            max_open_positions=risk.max_open_positions,
            max_entries_per_hour=risk.max_entries_per_hour,
            max_entries_per_five_minutes=risk.max_entries_per_five_minutes,
            cooldown_ms=risk.cooldown_seconds * 1000,
            approval_ttl_ms=round(risk.approval_ttl_seconds * 1000),
        )


@dataclass(frozen=True, slots=True)
class GovernorState:
    """What the script reads: the control and halts hashes and the governor's shared keys."""

    control: Mapping[str, str] | None = None
    halts: Mapping[str, str] = field(default_factory=dict)
    open_positions: Mapping[str, float] = field(default_factory=dict)
    reservations: Mapping[str, float] = field(default_factory=dict)
    entry_locks: Mapping[str, str] = field(default_factory=dict)
    exit_locks: Mapping[str, str] = field(default_factory=dict)
    rate: Mapping[str, Iterable[int]] = field(default_factory=dict)
    """symbol -> plan times of approved entries"""
    cooldowns: Mapping[str, int] = field(default_factory=dict)
    """symbol -> market time of its last close (the closing plan's time, written by position-state)"""
    held: Mapping[str, tuple[PositionSide | None, int | None]] = field(default_factory=dict)
    """symbol -> the position hash's (side, opened_at), None where the hash has no value"""


def control_reason(control: Mapping[str, str] | None, halted: bool, kind: PlanKind) -> Reason | None:
    """The kill-switch verdict for a plan of ``kind``: ``contracts.control.plan_verdict``, the one model of
    what each scope stops (scope ``exits`` refuses no plan: it only moves exit-brain's advanced logic to
    SHADOW), as the governor's reason code."""
    verdict = plan_verdict(control, halted=halted, entry=kind is PlanKind.ENTRY)
    return None if verdict is None else Reason(verdict.value)


def exceeds(value: float, limit: float) -> bool:
    """``value > limit`` with :data:`NOTIONAL_TOLERANCE` of relative slack."""
    return value > limit * (1 + NOTIONAL_TOLERANCE)


def rate_window_count(times: Iterable[int], at: int, window_ms: int) -> int:
    """Approved entries within ``window_ms`` of ``at`` on either side (open interval).

    Why both sides: plans reach the governor out of market-time order (several producers, several
    replicas). Counting only the past would let a late, earlier-timed plan slip in before entries
    already approved and overfill their window. Refusing when ``limit`` entries lie closer than
    the window on either side guarantees no window of that length ever holds more than ``limit``;
    for plans in time order it is the usual trailing window.
    """
    return sum(1 for t in times if at - window_ms < t < at + window_ms)


def open_at(last_close: int | None, signal_time: int) -> bool:
    """The symbol's last position was still open at ``signal_time`` (market time): it closed at or after it.

    Why: exit-brain and the strategy both act on the bar at ``signal_time``. An entry signalled on
    the bar whose stop closes the trade would otherwise be approved when the exit reached the
    governor first (the position is gone) and refused as ``position_open`` when it came second —
    the arrival order of two producers would decide. Judging by the market time of the close
    (``cooldowns[symbol]``, the closing plan's time) instead, the entry is ``position_open`` in
    either order, with or without a cooldown, live as in a replay.
    """
    return last_close is not None and signal_time <= last_close


def decide(plan: Plan, state: GovernorState, limits: Limits) -> Reason | None:
    """None to approve ``plan``, else the first failing check's reason (same order as the script)."""
    reason = control_reason(state.control, bool(state.halts), plan.kind)
    if reason is not None:
        return reason
    symbol = plan.symbol
    if plan.kind is PlanKind.EXIT:
        open_side, opened_at = state.held.get(symbol, (None, None))
        if symbol not in state.open_positions or other_trade(plan, open_side, opened_at) is not None:
            return Reason.NO_OPEN_POSITION
        if symbol in state.exit_locks:
            return Reason.EXIT_IN_FLIGHT
        return None
    notional = plan.reference_notional
    if symbol not in limits.allowlist:
        return Reason.NOT_ALLOWLISTED
    if plan.leverage > limits.max_leverage:
        return Reason.LEVERAGE
    if exceeds(notional, limits.max_notional_per_trade):
        return Reason.NOTIONAL_PER_TRADE
    last_close = state.cooldowns.get(symbol)
    if symbol in state.open_positions or open_at(last_close, plan.time):
        return Reason.POSITION_OPEN
    if symbol in state.entry_locks:
        return Reason.ENTRY_PENDING
    if last_close is not None and limits.cooldown_ms > 0 and plan.time < last_close + limits.cooldown_ms:
        return Reason.COOLDOWN
    times = [t for t in state.rate.get(symbol, ()) if t >= plan.time - RATE_TRIM_MS]
    if rate_window_count(times, plan.time, HOUR_MS) >= limits.max_entries_per_hour:
        return Reason.RATE_HOUR
    if rate_window_count(times, plan.time, FIVE_MINUTES_MS) >= limits.max_entries_per_five_minutes:
        return Reason.RATE_5M
    if len(state.open_positions) + len(state.reservations) >= limits.max_open_positions:
        return Reason.MAX_OPEN_POSITIONS
    used = sum(state.open_positions.values()) + sum(state.reservations.values())
    if exceeds(used + notional, limits.max_total_notional):
        return Reason.MAX_TOTAL_NOTIONAL
    return None
