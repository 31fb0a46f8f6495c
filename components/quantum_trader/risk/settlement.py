"""What position-state does with one execution result (pure): the position change, the release of
the governor's reservation and locks, the ledger deltas and the new portfolio heat.

Why here and not in the service: the reservation lifecycle (docs/EXECUTION.md) is a contract three
components rely on; keeping the decision of *what* to commit or release in one pure function
lets the tests walk every status x kind x fill case without Redis. The service only turns a
:class:`Settlement` into Redis commands of one exactly-once step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from quantum_trader.contracts.messages import ExecutionResult, PlanKind, ResultStatus
from quantum_trader.risk.heat import PortfolioHeat, equity, heat_from_totals, portfolio_heat
from quantum_trader.risk.positions import FillOutcome, Position, apply_fill


@dataclass(frozen=True, slots=True)
class PortfolioView:
    """State read before the step; the step's guards make sure it is still current when applied."""

    position: Position
    """the result's symbol"""
    others: Sequence[Position]
    """every other open position (for heat), when ``others_risk`` is None"""
    entry_lock: str | None
    """``entry_locks[symbol]``: the plan holding the symbol's pending entry"""
    exit_lock: str | None
    """``exit_locks[symbol]``: the plan holding the symbol's exit in flight"""
    realized_pnl: float = 0.0
    fees: float = 0.0
    others_risk: float | None = None
    """open risk of every other open position, from position-state's running totals; when given,
    ``others`` is not read and the heat costs O(1) however many positions are open"""
    others_open: int = 0
    """how many other positions are open (with ``others_risk``)"""


@dataclass(frozen=True, slots=True)
class Settlement:
    fill: FillOutcome
    release_reservation: bool
    """HDEL reservations plan_id (every ENTRY result, whatever its status)"""
    release_entry_lock: bool
    """HDEL entry_locks symbol (ENTRY result, and the lock is this plan's)"""
    release_exit_lock: bool
    """HDEL exit_locks symbol (EXIT result, and the lock is this plan's)"""
    open_notional: float | None
    """None: leave ``open_positions[symbol]``; > 0: set it; 0: delete it (the position is flat)"""
    cooldown_from: int | None
    """market time to write to ``cooldowns[symbol]`` when this fill closed the position"""
    trades: int
    wins: int
    heat: PortfolioHeat


def settle(view: PortfolioView, result: ExecutionResult, starting_balance: float) -> Settlement:
    """Commit or release what the approval of ``result``'s plan reserved, and apply its fill.

    Locks are released only when they hold this plan: a lock names the plan it belongs to, so a
    late or repeated result can never free a lock another plan took meanwhile.
    """
    fill = apply_fill(view.position, result)
    entry = result.kind is PlanKind.ENTRY
    open_notional: float | None = None
    if result.status is ResultStatus.FILLED and fill.changed:
        open_notional = fill.position.notional
    closed = fill.closed
    trades = 1 if closed is not None else 0
    wins = 1 if closed is not None and closed.net_pnl > 0 else 0
    account = equity(starting_balance, view.realized_pnl + fill.realized_pnl, view.fees + fill.fee)
    if view.others_risk is not None:
        mine = fill.position
        heat = heat_from_totals(
            view.others_risk + mine.open_risk(), view.others_open + (1 if mine.is_open else 0), account
        )
    else:
        positions = [p for p in view.others if p.symbol != result.symbol and p.is_open]
        positions.append(fill.position)
        heat = portfolio_heat(positions, account)
    return Settlement(
        fill=fill,
        release_reservation=entry,
        release_entry_lock=entry and view.entry_lock == result.plan_id,
        release_exit_lock=not entry and view.exit_lock == result.plan_id,
        open_notional=open_notional,
        cooldown_from=result.time if fill.fully_closed else None,
        trades=trades,
        wins=wins,
        heat=heat,
    )
