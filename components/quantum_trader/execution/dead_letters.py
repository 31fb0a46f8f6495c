"""What apply-layer releases for an approval that went to its DLQ (pure; ``services/apply_layer/dlq_release.py``
reads and writes).

A dead-lettered approval gets no result, so position-state never releases what the governor reserved
for it. Its reservation, entry lock and exit lock are released when both hold:

- the plan is identified: the dead-lettered entry's envelope id is the governor's ``apr:<plan id>``
  (the one approval the governor ever writes for a plan; the id is read even when the data is not);
- no order can exist for it: its in-flight marker is absent. The marker is set (7 days) in the same
  round trip that precedes any request, so without it no attempt ever got as far as sending. With
  it, an order may have filled: the reservation is kept, since releasing it would let the governor
  admit past its limits while a position may be real. Nothing releases it automatically then: the
  reconciler is what finds such a position at the exchange, and an operator deletes the plan's field
  of ``governor:reservations`` (and its lock) once the position is accounted for.

An entry whose envelope id is missing or not ``apr:...`` cannot be tied to a plan: nothing is
released, its reservation stays until an operator deletes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

APPROVAL_ID_PREFIX = "apr:"
"""the governor's approval envelope id is ``apr:<plan id>`` (governor.approval_id)"""
MAX_PLAN_ID_CHARS = 200


def dead_lettered_plan(record: Mapping[str, str]) -> str | None:
    """The plan id of a dead-lettered approval (a ``<stream>.dlq`` record's ``orig.id``), or None when
    the entry cannot be tied to a plan: no readable envelope id, or not the governor's ``apr:<plan id>``."""
    message_id = record.get("orig.id")
    if message_id is None or not message_id.startswith(APPROVAL_ID_PREFIX):
        return None
    plan_id = message_id.removeprefix(APPROVAL_ID_PREFIX)
    if not plan_id or len(plan_id) > MAX_PLAN_ID_CHARS or not plan_id.isprintable() or not plan_id.isascii():
        return None
    return plan_id


@dataclass(frozen=True, slots=True)
class Release:
    """What the governor holds for a dead-lettered plan that no order can exist for."""

    reservation: bool
    """the plan's field of ``governor:reservations`` is there"""
    entry_locks: tuple[str, ...]
    exit_locks: tuple[str, ...]
    """the symbols whose entry / exit lock the plan holds"""


def release_for(
    plan_id: str, *, marked: bool, reserved: bool, entry_locks: Mapping[str, str], exit_locks: Mapping[str, str]
) -> Release | None:
    """What to release for ``plan_id``; None when its in-flight marker says an order may exist (kept)."""
    if marked:
        return None
    return Release(
        reservation=reserved,
        entry_locks=tuple(symbol for symbol, holder in entry_locks.items() if holder == plan_id),
        exit_locks=tuple(symbol for symbol, holder in exit_locks.items() if holder == plan_id),
    )
