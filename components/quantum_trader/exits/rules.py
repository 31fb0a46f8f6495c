"""exit-brain's exit rules: a position and the latest tick in, an exit decision (or nothing) out.

Pure: the service supplies the position, the tick, the best price seen so far and the control
state; nothing here reads Redis or the clock.

Baseline rules — always live, even with the kill switch at scope ``entries`` or ``exits``
(DESIGN §4.8); only scope ``all`` (which blocks every order) turns them into shadow records:

- ``flatten``      the kill switch asks to flatten: close whatever the levels say.
- ``stop_loss``    LONG: price <= stop or the bar's low <= stop; SHORT: price >= stop or high >= stop.
- ``take_profit``  LONG: price >= target or high >= target; SHORT: price <= target or low <= target.

When a bar touches both the stop and the target we cannot know which came first, so the stop
wins (the pessimistic fill — a backtest must not flatter itself).

Advanced rules — live only when the symbol is live in the ExitRollout AND the kill switch does
not force SHADOW (scope ``exits`` or ``all``); otherwise each becomes an ``exit.shadow`` record of
what would have been done:

- ``breakeven_stop`` / ``trailing_stop`` (profit lock). With R = |entry - stop_loss| and the
  maximum favourable excursion MFE = how far the best price since entry went in the position's
  favour, in R:
    * MFE >= ``trail_activate_r`` (default 2 R): a trailing stop ``trail_distance_r`` (default 1 R)
      behind the best price, never worse than entry -> ``trailing_stop``;
    * else MFE >= ``breakeven_r`` (default 1 R): the stop moves to entry -> ``breakeven_stop``.
  The level comes from the best price of *earlier* ticks only. A bar's high and low have no order,
  so letting a bar's own high raise the stop its own low then hits would invent exits that may
  never have happened; the service folds the tick into the best price after evaluating it.
  Off without a stop-loss (no R) or when the thresholds are 0.
- ``max_hold`` the position is older than ``max_hold_minutes`` (ExitSpec; 0 = off) in market time
  (tick event time - opened_at), so replays behave like live runs.

Priority when several fire on one tick: flatten, stop_loss, take_profit, trailing/breakeven,
max_hold — protective stops before time-based exits. The first live rule is the exit; every rule
that fired but is not live is returned as a shadow record (the service records each once per
position).
"""

from __future__ import annotations

from dataclasses import dataclass

from quantum_trader.contracts.messages import Tick
from quantum_trader.exits.position import PositionView

FLATTEN = "flatten"
STOP_LOSS = "stop_loss"
TAKE_PROFIT = "take_profit"
BREAKEVEN_STOP = "breakeven_stop"
TRAILING_STOP = "trailing_stop"
MAX_HOLD = "max_hold"

BASELINE_RULES = (FLATTEN, STOP_LOSS, TAKE_PROFIT)
ADVANCED_RULES = (TRAILING_STOP, BREAKEVEN_STOP, MAX_HOLD)

# why a fired rule was not acted on
CAUSE_ROLLOUT = "rollout"
CAUSE_KILL_EXITS = "kill_switch_exits"
CAUSE_KILL_ALL = "kill_switch_all"


@dataclass(frozen=True, slots=True)
class RuleSettings:
    max_hold_minutes: int = 0
    """ExitSpec.max_hold_minutes; 0 turns the rule off"""
    breakeven_r: float = 1.0
    """MFE (in R) at which the stop moves to entry; 0 turns it off"""
    trail_activate_r: float = 2.0
    """MFE (in R) at which the trailing stop takes over; 0 turns it off"""
    trail_distance_r: float = 1.0
    """distance of the trailing stop behind the best price, in R"""

    def __post_init__(self) -> None:
        if self.max_hold_minutes < 0 or self.breakeven_r < 0 or self.trail_activate_r < 0:
            raise ValueError("exit rule thresholds must not be negative")
        if self.trail_distance_r <= 0:
            raise ValueError("trail_distance_r must be positive")


@dataclass(frozen=True, slots=True)
class ExitControl:
    """The kill switch and rollout as the rules need them (plain data, built by the service)."""

    rollout_live: bool
    """the symbol is live in the ExitRollout"""
    advanced_exits_shadow: bool = False
    """kill switch scope exits or all: advanced logic forced to SHADOW"""
    blocks_exits: bool = False
    """kill switch scope all: no order at all, baseline included"""
    flatten: bool = False


@dataclass(frozen=True, slots=True)
class ExitDecision:
    reason: str
    advanced: bool
    level: float | None = None
    """the stop/target level that was crossed (None for flatten and max_hold)"""


@dataclass(frozen=True, slots=True)
class ShadowRecord:
    reason: str
    cause: str

    @property
    def action(self) -> str:
        """The ExitShadow ``action``: what would have been done and why it was not."""
        return f"EXIT/{self.cause}"


@dataclass(frozen=True, slots=True)
class Evaluation:
    exit: ExitDecision | None
    shadow: tuple[ShadowRecord, ...] = ()


def _crossed_down(tick: Tick, level: float) -> bool:
    return tick.price <= level or (tick.low is not None and tick.low <= level)


def _crossed_up(tick: Tick, level: float) -> bool:
    return tick.price >= level or (tick.high is not None and tick.high >= level)


def stop_hit(position: PositionView, tick: Tick, level: float) -> bool:
    """A protective level (below a LONG, above a SHORT) touched by the price or the bar."""
    return _crossed_down(tick, level) if position.is_long else _crossed_up(tick, level)


def target_hit(position: PositionView, tick: Tick, level: float) -> bool:
    """A profit level (above a LONG, below a SHORT) touched by the price or the bar."""
    return _crossed_up(tick, level) if position.is_long else _crossed_down(tick, level)


def favourable_extreme(position: PositionView, tick: Tick) -> float:
    """The tick's most favourable price for the position: the bar high for a LONG, the low for a SHORT."""
    if position.is_long:
        return max(tick.price, tick.high or tick.price)
    return min(tick.price, tick.low or tick.price)


def update_best(position: PositionView, best: float | None, tick: Tick) -> float:
    """The best price since entry after ``tick`` (starts from the entry price)."""
    start = position.entry_price if best is None else best
    extreme = favourable_extreme(position, tick)
    return max(start, extreme) if position.is_long else min(start, extreme)


def profit_lock_level(position: PositionView, best: float | None, settings: RuleSettings) -> tuple[str, float] | None:
    """``(rule, level)`` of the breakeven or trailing stop armed by ``best``, or None when not armed."""
    risk = position.initial_risk
    if risk is None or best is None:
        return None
    sign = 1.0 if position.is_long else -1.0
    mfe_r = sign * (best - position.entry_price) / risk
    if settings.trail_activate_r > 0 and mfe_r >= settings.trail_activate_r:
        trail = best - sign * settings.trail_distance_r * risk
        # never worse than entry: once the trail is armed, the trade cannot turn into a loss through it
        level = max(trail, position.entry_price) if position.is_long else min(trail, position.entry_price)
        return TRAILING_STOP, level
    if settings.breakeven_r > 0 and mfe_r >= settings.breakeven_r:
        return BREAKEVEN_STOP, position.entry_price
    return None


def fired_rules(
    position: PositionView, tick: Tick, best: float | None, settings: RuleSettings, flatten: bool
) -> list[ExitDecision]:
    """Every rule that fires on this tick, in priority order, regardless of whether it is live."""
    fired: list[ExitDecision] = []
    if flatten:
        fired.append(ExitDecision(FLATTEN, advanced=False))
    if position.stop_loss is not None and stop_hit(position, tick, position.stop_loss):
        fired.append(ExitDecision(STOP_LOSS, advanced=False, level=position.stop_loss))
    # the pessimistic bar rule: with the stop touched, the target on the same bar is not credited
    elif position.take_profit is not None and target_hit(position, tick, position.take_profit):
        fired.append(ExitDecision(TAKE_PROFIT, advanced=False, level=position.take_profit))
    lock = profit_lock_level(position, best, settings)
    if lock is not None and stop_hit(position, tick, lock[1]):
        fired.append(ExitDecision(lock[0], advanced=True, level=lock[1]))
    if (
        settings.max_hold_minutes > 0
        and position.opened_at > 0
        and tick.event_time - position.opened_at >= settings.max_hold_minutes * 60_000
    ):
        fired.append(ExitDecision(MAX_HOLD, advanced=True))
    return fired


def not_live_cause(decision: ExitDecision, control: ExitControl) -> str | None:
    """Why a fired rule may not act (a shadow cause), or None when it is live. Kill switch first."""
    if control.blocks_exits:
        return CAUSE_KILL_ALL
    if not decision.advanced:
        return None
    if control.advanced_exits_shadow:
        return CAUSE_KILL_EXITS
    if not control.rollout_live:
        return CAUSE_ROLLOUT
    return None


def evaluate(
    position: PositionView,
    tick: Tick,
    best: float | None,
    settings: RuleSettings,
    control: ExitControl,
) -> Evaluation:
    """The exit to make now (the first live fired rule) and shadow records for fired rules that are not live.

    ``best`` is the best price seen *before* this tick (None: only the entry so far).
    """
    chosen: ExitDecision | None = None
    shadow: list[ShadowRecord] = []
    for decision in fired_rules(position, tick, best, settings, control.flatten):
        cause = not_live_cause(decision, control)
        if cause is not None:
            shadow.append(ShadowRecord(decision.reason, cause))
        elif chosen is None:
            chosen = decision
    return Evaluation(chosen, tuple(shadow))


def decide(
    position: PositionView, tick: Tick, best: float | None, settings: RuleSettings, control: ExitControl
) -> ExitDecision | None:
    """Just the exit to make now, or None."""
    return evaluate(position, tick, best, settings, control).exit
