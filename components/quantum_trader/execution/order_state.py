"""What one approval needs from Redis right before any request, parsed from the raw replies (pure).

apply-layer reads it in one round trip per order (``services/apply_layer/order_reads.py``): the
approval's done key, the kill switch, the symbol's position (quantity, side, opened_at) and — set
by that same round trip, before any request — the plan's in-flight marker.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantum_trader.contracts.control import ControlState
from quantum_trader.contracts.messages import PositionSide


@dataclass(frozen=True, slots=True)
class OrderState:
    """What one approval needs from Redis, read in one round trip right before any request."""

    done: bool
    """the approval's message is already done (its result written): nothing more may be sent"""
    control: ControlState
    """the kill switch (fail closed)"""
    open_qty: float
    """the symbol's open position (an exit never closes more)"""
    open_side: PositionSide | None
    open_opened_at: int | None
    """which trade is open (an exit planned for another one is refused); None: not recorded"""
    marked: bool
    """the in-flight marker — set by this same round trip, before any request — was set already:
    an earlier attempt may have sent the order, so it is looked up first. Every result's step
    deletes the marker."""


def position_side(raw: str | None) -> PositionSide | None:
    """The recorded side of the position hash; None when absent or not a side (no check is made then)."""
    if raw is None:
        return None
    try:
        return PositionSide(raw)
    except ValueError:
        return None


def order_state(
    *, done: bool, control: ControlState, position: tuple[str | None, str | None, str | None], marked: bool
) -> OrderState:
    """The state from the position hash's ``qty``, ``side`` and ``opened_at`` fields (None: absent)."""
    qty, side, opened_at = position
    return OrderState(
        done,
        control,
        float(qty) if qty else 0.0,
        position_side(side),
        int(opened_at) if opened_at and opened_at.isdigit() else None,
        marked,
    )
