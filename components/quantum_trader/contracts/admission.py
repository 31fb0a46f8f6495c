"""Which symbols a component accepts on each of its input streams: the policy's allowlist at the edge.

A component keeps per-symbol state (feature windows, exit watches, prices), so an entry about a
symbol outside the allowlist goes to the DLQ before any handler sees it. The rule differs by
stream because of one safety invariant: a position is never left unwatched. A symbol can leave
the allowlist while a position on it is open (the policy changed, or the reconciler found a
position nobody asked for), and that position must still be closed by its stop-loss:

- ``ALLOWLIST``: data that only leads to new entries (ticks for features and the paper exchange,
  feature vectors, trade intents). Entries are only ever opened on allowlisted symbols.
- ``ALLOWLIST_OR_POSITION``: data that watches open positions (ticks for exit-brain and harvest,
  harvest proposals): an allowlisted symbol, or one with an open position.
- ``ANY``: records of positions and of orders that are already decided or sent (plans — the
  governor refuses entries outside the allowlist itself, with an audited decision, and must pass
  exits —, approvals, execution results, position snapshots). Refusing one of them could lose a fill
  or leave a position unwatched; they come only from the executor path, never from the outside.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class SymbolScope(StrEnum):
    ALLOWLIST = "allowlist"
    ALLOWLIST_OR_POSITION = "allowlist-or-position"
    ANY = "any"


SCOPES: dict[tuple[str, str], SymbolScope] = {
    ("features", "market.tick"): SymbolScope.ALLOWLIST,
    ("exchange-sim", "market.tick"): SymbolScope.ALLOWLIST,
    ("exit-brain", "market.tick"): SymbolScope.ALLOWLIST_OR_POSITION,
    ("harvest", "market.tick"): SymbolScope.ALLOWLIST_OR_POSITION,
    ("ai-engine", "features"): SymbolScope.ALLOWLIST,
    ("intent-bridge", "trade.intent"): SymbolScope.ALLOWLIST,
    ("governor", "apply.plan"): SymbolScope.ANY,
    ("apply-layer", "apply.approved"): SymbolScope.ANY,
    ("position-state", "apply.result"): SymbolScope.ANY,
    ("exit-brain", "position.snapshot"): SymbolScope.ANY,
    ("harvest", "position.snapshot"): SymbolScope.ANY,
    ("heat-gate", "harvest.proposal"): SymbolScope.ALLOWLIST_OR_POSITION,
}
"""(component, input stream) -> scope; a test proves every input of the registry has one"""


def scope_of(component: str, stream: str) -> SymbolScope:
    try:
        return SCOPES[(component, stream)]
    except KeyError:
        raise KeyError(f"no symbol scope declared for {component} reading {stream}") from None


@dataclass(frozen=True, slots=True)
class Admission:
    """The allowlist and the scope of each input stream of one component."""

    allowlist: frozenset[str]
    scopes: Mapping[str, SymbolScope] = field(default_factory=dict)

    @classmethod
    def for_component(cls, component: str, streams: list[str], allowlist: list[str]) -> Admission:
        return cls(frozenset(allowlist), {s: scope_of(component, s) for s in streams})

    def needs_position_check(self, stream: str, symbol: str) -> bool:
        """Whether the answer for ``symbol`` on ``stream`` depends on an open position."""
        return self.scopes.get(stream, SymbolScope.ANY) is SymbolScope.ALLOWLIST_OR_POSITION and (
            symbol not in self.allowlist
        )

    def refusal(self, stream: str, symbol: str, *, has_position: bool = False) -> str | None:
        """Why an entry about ``symbol`` on ``stream`` is refused, or None when it is admitted."""
        scope = self.scopes.get(stream, SymbolScope.ANY)
        if scope is SymbolScope.ANY or symbol in self.allowlist:
            return None
        if scope is SymbolScope.ALLOWLIST_OR_POSITION:
            if has_position:
                return None
            return f"symbol {symbol!r} is not in the policy's allowlist and has no open position"
        return f"symbol {symbol!r} is not in the policy's allowlist"
