"""The kill switch as every component reads it: the ``control`` hash (DESIGN §4.2, §4.8).

The one model of a kill switch: what each scope stops (:class:`Scope`), which of two is stronger
(``Scope.rank``), and the verdict on one plan (:func:`plan_verdict`). The governor (``risk/limits.py`` and
its Lua copy ``services/governor.lua``, checked against this by a test), the components (``ControlState``)
and the operator (which KillSwitch is in force, which symbols an ExitRollout may run live) all ask here.

``parse_control`` is pure and fails closed: a missing or unreadable key means halted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Scope(StrEnum):
    ENTRIES = "entries"
    EXITS = "exits"
    ALL = "all"

    @property
    def rank(self) -> int:
        """Strength, for choosing among several switches: all > entries > exits."""
        return _RANK[self]

    @property
    def stops_entries(self) -> bool:
        return self in (Scope.ENTRIES, Scope.ALL)

    @property
    def stops_exits(self) -> bool:
        """Only ``all`` stops exits: positions can always be closed otherwise (invariant 8)."""
        return self is Scope.ALL

    @property
    def shadows_advanced_exits(self) -> bool:
        """exit-brain's advanced logic runs SHADOW for every symbol (baseline SL/TP stays live unless ``all``)."""
        return self in (Scope.EXITS, Scope.ALL)


_RANK = {Scope.EXITS: 1, Scope.ENTRIES: 2, Scope.ALL: 3}


def parse_scope(text: str | None) -> Scope | None:
    """The scope field of ``control``: empty means ``all`` (fail closed), an unknown word None (unreadable)."""
    try:
        return Scope(text or Scope.ALL.value)
    except ValueError:
        return None


class PlanVerdict(StrEnum):
    """Why the kill switch refuses a plan (the governor's reason codes for it)."""

    CONTROL_MISSING = "control_missing"
    KILLSWITCH_ALL = "killswitch_all"
    KILLSWITCH_ENTRIES = "killswitch_entries"


_INTEGER = re.compile(r"^\s*[-+]?\d+\s*$")


def plan_verdict(control: Mapping[str, str] | None, *, halted: bool, entry: bool) -> PlanVerdict | None:
    """The kill switch's verdict on one plan (an entry, or an exit), from the raw ``control`` hash.

    Missing or unreadable control refuses every plan (invariant 2). A scope refuses what it stops; flatten
    and any automatic halt (``halted``) refuse entries only. None: the kill switch lets the plan through.
    """
    if not control:
        return PlanVerdict.CONTROL_MISSING
    generation, state = control.get("generation"), control.get("state")
    scope = parse_scope(control.get("scope"))
    if generation is None or not _INTEGER.match(generation) or state not in ("engaged", "released") or scope is None:
        return PlanVerdict.CONTROL_MISSING
    engaged = state == "engaged"
    if engaged and scope.stops_exits:
        return PlanVerdict.KILLSWITCH_ALL
    flatten = engaged and control.get("flatten") == "1"
    if entry and ((engaged and scope.stops_entries) or flatten or halted):
        return PlanVerdict.KILLSWITCH_ENTRIES
    return None


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
    def effective_scope(self) -> Scope | None:
        """The scope in force: None when released; an engaged state without a scope is ``all`` (fail closed)."""
        return (self.scope or Scope.ALL) if self.engaged else None

    @property
    def blocks_entries(self) -> bool:
        scope = self.effective_scope
        return bool(self.halts) or self.flatten or (scope is not None and scope.stops_entries)

    @property
    def blocks_exits(self) -> bool:
        """Only scope ``all`` stops exits; ``exits`` forces advanced exit logic to SHADOW but keeps SL/TP."""
        scope = self.effective_scope
        return scope is not None and scope.stops_exits

    @property
    def advanced_exits_shadow(self) -> bool:
        scope = self.effective_scope
        return scope is not None and scope.shadows_advanced_exits

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
        scope = parse_scope(raw.get("scope"))
        if scope is None:
            raise ValueError(raw.get("scope"))
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
