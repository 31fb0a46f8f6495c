"""The open position as the exit components watch it, built from ``position.snapshot`` messages.

exit-brain and harvest keep one per symbol in their own Redis state, so a restart keeps watching
(DESIGN §5). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantum_trader.contracts.messages import PositionSide, PositionSnapshot


@dataclass(frozen=True, slots=True)
class PositionView:
    symbol: str
    side: PositionSide
    qty: float
    entry_price: float
    stop_loss: float | None
    take_profit: float | None
    opened_at: int
    version: int = 0

    @property
    def is_long(self) -> bool:
        return self.side is PositionSide.LONG

    @property
    def initial_risk(self) -> float | None:
        """Price distance from entry to the stop-loss (1 R); None without a usable stop."""
        if self.stop_loss is None or self.entry_price <= 0:
            return None
        risk = abs(self.entry_price - self.stop_loss)
        return risk if risk > 0 else None

    def same_position(self, other: PositionView) -> bool:
        """Same trade (not a new one on the symbol): same side and open time.

        A partial close or a stop moved by position-state keeps the identity; a close and reopen
        changes ``opened_at`` (and usually the side).
        """
        return self.side is other.side and self.opened_at == other.opened_at

    def to_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "side": self.side.value,
            "qty": self.qty,
            "entry_price": self.entry_price,
            "stop_loss": self.stop_loss,
            "take_profit": self.take_profit,
            "opened_at": self.opened_at,
            "version": self.version,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> PositionView:
        return PositionView(
            symbol=str(data["symbol"]),
            side=PositionSide(data["side"]),
            qty=float(data["qty"]),
            entry_price=float(data["entry_price"]),
            stop_loss=None if data.get("stop_loss") is None else float(data["stop_loss"]),
            take_profit=None if data.get("take_profit") is None else float(data["take_profit"]),
            opened_at=int(data["opened_at"]),
            version=int(data.get("version", 0)),
        )


def view_of(snapshot: PositionSnapshot) -> PositionView | None:
    """The view of an open position, or None when the snapshot says flat (nothing to watch)."""
    if snapshot.side is PositionSide.FLAT or snapshot.qty <= 0 or snapshot.entry_price <= 0:
        return None
    return PositionView(
        symbol=snapshot.symbol,
        side=snapshot.side,
        qty=snapshot.qty,
        entry_price=snapshot.entry_price,
        stop_loss=snapshot.stop_loss,
        take_profit=snapshot.take_profit,
        opened_at=snapshot.opened_at,
        version=snapshot.version,
    )


def should_apply(last_opened_at: int, applied_version: int, snapshot: PositionSnapshot) -> bool:
    """Whether a snapshot replaces what we watch, or is a late message that must be ignored.

    ``last_opened_at`` is the open time of the trade watched now, or of the last one closed.

    - The reconciler's snapshots are always applied: the exchange is the truth (invariant 7).
    - A newer trade (an open position with a later ``opened_at``) is always applied, so a reset of
      position-state's counter can never leave a fresh position unwatched.
    - Otherwise a version lower than the one applied is stale. Equal versions are applied (the same
      state sent twice changes nothing). ``applied_version`` is kept while flat, so a late snapshot
      of a closed trade cannot reopen it.
    """
    if snapshot.source == "reconciler":
        return True
    if snapshot.side is not PositionSide.FLAT and snapshot.qty > 0 and snapshot.opened_at > last_opened_at:
        return True
    return snapshot.version >= applied_version
