"""Status conditions in the ``metav1.Condition`` shape (DESIGN §5), kept the way cert-manager and CloudNativePG do.

A condition's ``lastTransitionTime`` is when its *status* last changed, not when it was last written:
``merge_conditions`` keeps the old time while the status stays the same, so ``kubectl describe`` and alerts
("False for more than 10 minutes") see how long a state has lasted. Pure: no kopf, no kubernetes client.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

TRUE = "True"
FALSE = "False"
UNKNOWN = "Unknown"
STATUSES = frozenset({TRUE, FALSE, UNKNOWN})

# The API server validates metav1.Condition.reason with this pattern; CamelCase is the convention on top of it.
_REASON = re.compile(r"^[A-Z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
# metav1.Condition.message is limited to 32768 characters; a status patch over the limit is refused whole.
MAX_MESSAGE_CHARS = 32768


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str
    """"True", "False" or "Unknown"."""
    reason: str
    """CamelCase, machine-readable; alerts and tests key on it."""
    message: str
    observed_generation: int | None = None
    last_transition_time: str | None = None
    """RFC 3339 UTC; set by ``merge_conditions``."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"condition {self.type}: status {self.status!r} is not one of {sorted(STATUSES)}")
        if not _REASON.match(self.reason):
            raise ValueError(f"condition {self.type}: reason {self.reason!r} is not CamelCase")

    @property
    def is_true(self) -> bool:
        return self.status == TRUE

    def to_dict(self) -> dict[str, Any]:
        """The condition as it appears in ``status.conditions``."""
        result: dict[str, Any] = {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message[:MAX_MESSAGE_CHARS],
        }
        if self.observed_generation is not None:
            result["observedGeneration"] = self.observed_generation
        if self.last_transition_time is not None:
            result["lastTransitionTime"] = self.last_transition_time
        return result


def condition(
    type_: str, ok: bool | None, reason: str, message: str, observed_generation: int | None = None
) -> Condition:
    """A condition from a tri-state: True, False, or None for Unknown."""
    status = UNKNOWN if ok is None else (TRUE if ok else FALSE)
    return Condition(str(type_), status, reason, message, observed_generation)


def format_time(now: datetime | str) -> str:
    """RFC 3339 in UTC with second precision, as the API server writes ``metav1.Time``."""
    if isinstance(now, str):
        return now
    if now.tzinfo is None:
        # A naive datetime is ambiguous; the operator always works in UTC, so say so instead of guessing local time.
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    old: Iterable[Mapping[str, Any]] | None, new: Iterable[Condition], now: datetime | str
) -> list[dict[str, Any]]:
    """The new ``status.conditions``: ``new`` in its order, then old conditions of other types unchanged.

    ``lastTransitionTime`` is kept from the old condition of the same type when the status did not change and
    set to ``now`` otherwise. Old conditions of types not in ``new`` are kept, because another writer (a kopf
    handler of a different concern) may own them and dropping them would make them flap.
    """
    stamp = format_time(now)
    old_by_type = {str(c.get("type")): c for c in (old or ()) if c.get("type")}
    merged: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in new:
        if item.type in seen:
            raise ValueError(f"condition {item.type} given twice")
        seen.add(item.type)
        previous = old_by_type.get(item.type)
        unchanged = previous is not None and previous.get("status") == item.status
        kept_time = previous.get("lastTransitionTime") if previous is not None and unchanged else None
        result = item.to_dict()
        result["lastTransitionTime"] = kept_time or stamp
        merged.append(result)
    merged.extend(dict(c) for t, c in old_by_type.items() if t not in seen)
    return merged


def find_condition(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    """The condition of ``type_`` in a ``status.conditions`` list, or None."""
    return next((c for c in conditions or () if c.get("type") == type_), None)
