"""A component's per-key state in Redis, saved in the same step as its outputs.

A restart continues exactly where the last applied message left it, and two replicas that race on
one key cannot both apply: the save is guarded by the sequence number read with the state.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis

from quantum_trader.bus.step import Step

StateT = TypeVar("StateT")


@dataclass(frozen=True, slots=True)
class Stored:
    data: dict[str, Any] | None
    seq: str | None


def load_state(client: redis.Redis, key: str) -> Stored:
    raw = client.hmget(key, "data", "seq")
    data, seq = (v.decode() if isinstance(v, bytes) else v for v in raw)
    return Stored(json.loads(data) if data else None, seq)


def save_state(step: Step, key: str, stored: Stored, data: dict[str, Any], *, writer: int = 0) -> Step:
    """Write ``data`` only if nobody saved since ``stored`` was read (else the step conflicts and is redone).

    The new ``seq`` is ``next_seq``: the stored one plus one, or, for a named ``writer``, tagged with it.
    """
    step.guard(key, "seq", stored.seq)
    return step.write("HSET", key, "data", json.dumps(data, separators=(",", ":")), "seq", next_seq(stored, writer))


WRITER_BITS = 24


def next_seq(stored: Stored, writer: int = 0) -> str:
    """``writer`` 0: the stored ``seq`` plus one. Else a number whose low ``WRITER_BITS`` are the writer's
    tag, above a counter one past the stored one's. It stays a decimal integer, which builds that only add
    one (an older replica during a rollout) still read and write."""
    stored_seq = int(stored.seq or 0)
    if not writer:
        return str(stored_seq + 1)
    return str((((stored_seq >> WRITER_BITS) + 1) << WRITER_BITS) | writer)


class HeldStates(Generic[StateT]):
    """Per-key states kept in the process between steps, so a message costs no read of its state.

    Each step still writes the state it produced, guarded by the ``seq`` the previous write left, so
    Redis stays the truth a restart resumes from; the process only skips the read. ``checkout`` hands
    out the held state when the message is newer than the last one folded into it, and reads the key
    otherwise. That covers every way the held state can be wrong: a step that was not applied (a guard
    conflict because another replica wrote the key, or a failed script) makes the consumer run the
    handler again for the same message, which is then not newer than the held state, so the state is
    read back; and every later message built on an unapplied state fails its guard the same way. A
    state checked out is no longer held until ``save``: a handler that raises after folding the message
    in (its step never made) leaves nothing behind, and the next message reads the key.

    The steps of one batch chain their guards (each expects the ``seq`` the one before writes), so
    handlers using this may be ``independent_steps``: their pipeline is applied in order. The ``seq``
    this process writes carries a tag of its own (``next_seq``): with a plain counter, two
    replicas' chains could reach the same number, and a step built on a state that was never applied
    would pass a guard meant for another state.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._writer = 1 + secrets.randbelow((1 << WRITER_BITS) - 1)
        self._held: dict[str, tuple[StateT, str]] = {}

    def checkout(
        self, key: str, newer: Callable[[StateT], bool], restore: Callable[[dict[str, Any] | None], StateT]
    ) -> tuple[StateT, Stored]:
        """The state to fold the next message into, and the ``Stored`` its step's guard expects.

        ``newer(state)`` says whether the message comes after everything folded into ``state``;
        ``restore`` builds a state from the stored data (``None``: nothing stored yet).
        """
        held = self._held.pop(key, None)  # held again only once ``save`` has a step for it
        if held is not None and newer(held[0]):
            return held[0], Stored(None, held[1])
        stored = load_state(self._client, key)
        return restore(stored.data), stored

    def save(self, step: Step, key: str, stored: Stored, state: StateT, data: dict[str, Any]) -> Step:
        """``save_state`` of ``data`` (``state``'s persisted form), keeping ``state`` for the next message."""
        save_state(step, key, stored, data, writer=self._writer)
        self._held[key] = (state, next_seq(stored, self._writer))
        return step
