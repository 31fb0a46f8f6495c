"""The kill switch as every component reads it: the ``control`` hash (DESIGN §4.2, §4.8).

``parse_control`` is pure and fails closed: a missing or unreadable key means halted.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Scope(StrEnum):
    ENTRIES = "entries"
    EXITS = "exits"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class ControlState:
    engaged: bool
    scope: Scope | None
    flatten: bool
    reason: str
    generation: int
    engaged_by: str
    halts: tuple[str, ...] = ()
    """automatic entries halts (source: reason), e.g. from the reconciler"""

    @property
    def blocks_entries(self) -> bool:
        return bool(self.halts) or self.flatten or (self.engaged and self.scope in (Scope.ENTRIES, Scope.ALL))

    @property
    def blocks_exits(self) -> bool:
        """Only scope ``all`` stops exits; ``exits`` forces advanced exit logic to SHADOW but keeps SL/TP."""
        return self.engaged and self.scope is Scope.ALL

    @property
    def advanced_exits_shadow(self) -> bool:
        return self.engaged and self.scope in (Scope.EXITS, Scope.ALL)

    def describe(self) -> str:
        if not self.engaged and not self.halts:
            return f"released (generation {self.generation})"
        parts = []
        if self.engaged:
            scope = self.scope.value if self.scope else "all"
            parts.append(f"engaged scope={scope} reason={self.reason or '-'} by={self.engaged_by or '-'}")
        if self.halts:
            parts.append("halts: " + ", ".join(self.halts))
        return "; ".join(parts) + f" (generation {self.generation})"


HALTED_MISSING = ControlState(
    engaged=True, scope=Scope.ALL, flatten=False, reason="control key missing", generation=0, engaged_by="fail-closed"
)


def parse_control(raw: dict[str, str] | None, halts: dict[str, str] | None = None) -> ControlState:
    """Interpret the control hash. Missing, empty or malformed means halted (fail closed)."""
    halt_items = tuple(sorted(f"{k}: {v}" for k, v in (halts or {}).items()))
    if not raw:
        return HALTED_MISSING if not halt_items else _with_halts(HALTED_MISSING, halt_items)
    try:
        generation = int(raw.get("generation", ""))
        state = raw["state"]
        if state not in ("engaged", "released"):
            raise ValueError(state)
        scope_text = raw.get("scope") or "all"
        scope = Scope(scope_text)
    except (KeyError, ValueError):
        return ControlState(
            engaged=True,
            scope=Scope.ALL,
            flatten=False,
            reason=f"control key unreadable: {raw!r}"[:200],
            generation=0,
            engaged_by="fail-closed",
            halts=halt_items,
        )
    engaged = state == "engaged"
    return ControlState(
        engaged=engaged,
        scope=scope if engaged else None,
        flatten=engaged and raw.get("flatten") == "1",
        reason=raw.get("reason", ""),
        generation=generation,
        engaged_by=raw.get("engaged_by", ""),
        halts=halt_items,
    )


def _with_halts(state: ControlState, halts: tuple[str, ...]) -> ControlState:
    return ControlState(
        state.engaged, state.scope, state.flatten, state.reason, state.generation, state.engaged_by, halts
    )
