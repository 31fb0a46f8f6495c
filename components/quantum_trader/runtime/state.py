"""A component's per-key state in Redis, saved in the same step as its outputs.

A restart continues exactly where the last applied message left it, and two replicas that race on
one key cannot both apply: the save is guarded by the sequence number read with the state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from quantum_trader.bus.step import Step


@dataclass(frozen=True, slots=True)
class Stored:
    data: dict[str, Any] | None
    seq: str | None


def load_state(client: redis.Redis, key: str) -> Stored:
    raw = client.hmget(key, "data", "seq")
    data, seq = (v.decode() if isinstance(v, bytes) else v for v in raw)
    return Stored(json.loads(data) if data else None, seq)


def save_state(step: Step, key: str, stored: Stored, data: dict[str, Any]) -> Step:
    """Write ``data`` only if nobody saved since ``stored`` was read (else the step conflicts and is redone)."""
    next_seq = str(int(stored.seq or 0) + 1)
    step.guard(key, "seq", stored.seq)
    return step.write("HSET", key, "data", json.dumps(data, separators=(",", ":")), "seq", next_seq)
