"""The reconciler's contract (DESIGN §5), pure: internal positions against the exchange's.

Matched means: the same side, quantity equal within ``qty_tolerance_steps`` step sizes, average
entry within ``entry_tolerance`` (relative; 0.0001 = 0.01 %), and no position on either side that the
other does not know. A difference on a symbol with an order in flight is *explained* (it may be
that order landing) and is looked at again next time — for at most ``explain_for_ms``: an order
whose result never comes (its approval dead-lettered, its lock left behind) must not hide a position
forever. Any other difference is corrected to the exchange's numbers and halts entries; in
particular an exchange position with no internal record (``UNKNOWN_TO_INTERNAL``), such as a fill
whose result was lost, is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from quantum_trader.contracts.messages import PositionSide, ReconcileKind


@dataclass(frozen=True, slots=True)
class Holding:
    """A position as one side sees it: FLAT with qty 0 when there is none."""

    side: PositionSide
    qty: float
    entry_price: float

    @staticmethod
    def flat() -> Holding:
        return Holding(PositionSide.FLAT, 0.0, 0.0)

    @property
    def is_open(self) -> bool:
        return self.side is not PositionSide.FLAT and self.qty > 0


@dataclass(frozen=True, slots=True)
class Finding:
    symbol: str
    kind: ReconcileKind
    internal: Holding
    exchange: Holding
    explained: bool

    @property
    def needs_correction(self) -> bool:
        return self.kind is not ReconcileKind.MATCHED and not self.explained


def compare_one(
    internal: Holding,
    exchange: Holding,
    *,
    step_size: float,
    qty_tolerance_steps: float,
    entry_tolerance: float,
) -> ReconcileKind:
    if not internal.is_open and not exchange.is_open:
        return ReconcileKind.MATCHED
    if not internal.is_open:
        return ReconcileKind.UNKNOWN_TO_INTERNAL
    if not exchange.is_open:
        return ReconcileKind.UNKNOWN_TO_EXCHANGE
    if internal.side is not exchange.side:
        return ReconcileKind.SIDE_MISMATCH
    # a hair above the tolerance in steps so float noise on an exact step is not drift
    if abs(internal.qty - exchange.qty) > qty_tolerance_steps * step_size * (1 + 1e-9) + 1e-12:
        return ReconcileKind.QTY_MISMATCH
    if exchange.entry_price > 0 and abs(internal.entry_price / exchange.entry_price - 1) > entry_tolerance:
        return ReconcileKind.ENTRY_MISMATCH
    return ReconcileKind.MATCHED


def reconcile(
    internal: Mapping[str, Holding],
    exchange: Mapping[str, Holding],
    *,
    step_sizes: Mapping[str, float],
    in_flight: frozenset[str],
    qty_tolerance_steps: float = 1.0,
    entry_tolerance: float = 0.0001,
    explained_since: Mapping[str, int] | None = None,
    now_ms: int = 0,
    explain_for_ms: int | None = None,
) -> list[Finding]:
    """One finding per symbol either side knows, in symbol order.

    ``explained_since``: when each symbol's difference was first explained by an order in flight
    (see :func:`explained_since_next`); past ``explain_for_ms`` it is no longer explained.
    """
    since = explained_since or {}
    findings = []
    for symbol in sorted(set(internal) | set(exchange)):
        mine = internal.get(symbol, Holding.flat())
        theirs = exchange.get(symbol, Holding.flat())
        kind = compare_one(
            mine,
            theirs,
            step_size=step_sizes.get(symbol, 0.0),
            qty_tolerance_steps=qty_tolerance_steps,
            entry_tolerance=entry_tolerance,
        )
        if kind is ReconcileKind.MATCHED and not mine.is_open and not theirs.is_open:
            continue
        explained = kind is not ReconcileKind.MATCHED and symbol in in_flight
        if explained and explain_for_ms is not None:
            explained = now_ms - since.get(symbol, now_ms) <= explain_for_ms
        findings.append(Finding(symbol, kind, mine, theirs, explained=explained))
    return findings


def explained_since_next(
    findings: list[Finding], in_flight: frozenset[str], previous: Mapping[str, int], now_ms: int
) -> dict[str, int]:
    """The ``explained_since`` of the next run: a symbol keeps its first time while it still differs
    with an order in flight; a match, a correction or no order in flight any more starts it afresh."""
    return {
        f.symbol: previous.get(f.symbol, now_ms)
        for f in findings
        if f.kind is not ReconcileKind.MATCHED and f.explained and f.symbol in in_flight
    }


def all_matched(findings: list[Finding]) -> bool:
    """The condition for releasing entries after a rollout: nothing differs, explained or not."""
    return all(f.kind is ReconcileKind.MATCHED for f in findings)
