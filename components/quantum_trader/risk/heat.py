"""Portfolio heat: the share of equity lost if every open position hit its stop (pure).

heat-gate holds harvest plans when heat is above ``maxPortfolioHeat``; position-state writes the
``portfolio:heat`` hash from this after every change, in the same step as the change: from running
totals (:func:`heat_from_totals`, O(1) per result) in the step, and from every position
(:func:`portfolio_heat`) in its periodic from-scratch refresh.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from quantum_trader.risk.positions import Position


@dataclass(frozen=True, slots=True)
class PortfolioHeat:
    heat: float
    """open_risk / equity; infinite when equity is not positive (fail closed for heat-gate)"""
    open_risk: float
    equity: float
    positions: int

    def to_hash(self, time: int) -> dict[str, str]:
        """The ``portfolio:heat`` hash; ``time`` is the wall time (ms) heat-gate judges its age by."""
        return {
            "heat": repr(self.heat),
            "open_risk": repr(self.open_risk),
            "equity": repr(self.equity),
            "positions": str(self.positions),
            "time": str(time),
        }


def equity(starting_balance: float, realized_pnl: float, fees: float) -> float:
    """Account equity without unrealized PnL: the balance the stops risk a share of."""
    return starting_balance + realized_pnl - fees


def portfolio_heat(positions: Iterable[Position], account_equity: float) -> PortfolioHeat:
    """Sum of every open position's risk to its stop over equity (no stop: the whole notional)."""
    open_positions = [p for p in positions if p.is_open]
    risk = float(sum(p.open_risk() for p in open_positions))
    return heat_from_totals(risk, len(open_positions), account_equity)


def heat_from_totals(open_risk: float, positions: int, account_equity: float) -> PortfolioHeat:
    """Heat from a running sum of open risk over ``positions`` open positions.

    A running sum kept with float increments can land a hair below zero when everything closed;
    no open position means exactly no risk, and risk is never negative (heat-gate refuses both).
    """
    risk = max(0.0, float(open_risk)) if positions > 0 else 0.0
    heat = risk / account_equity if account_equity > 0 else math.inf
    return PortfolioHeat(heat=heat, open_risk=risk, equity=account_equity, positions=max(0, int(positions)))
