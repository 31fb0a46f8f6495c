"""Reading and writing the kill switch in Redis: the ``control`` hash, automatic halts and acks.

What the hash means is decided in ``contracts.control`` (pure, fail closed).
"""

from __future__ import annotations

import time

import redis

from quantum_trader.bus.codec import text_dict
from quantum_trader.contracts.control import HALTED_MISSING, ControlState, Scope, parse_control
from quantum_trader.contracts.keys import Keys

__all__ = [
    "HALTED_MISSING",
    "ControlState",
    "Scope",
    "ack_generation",
    "clear_halts",
    "parse_control",
    "raise_halt",
    "read_acks",
    "read_control",
    "write_control",
]


def read_control(client: redis.Redis, keys: Keys) -> ControlState:
    """The current control state; Redis errors mean halted."""
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.control)
            pipe.hgetall(keys.halts)
            raw, halts = pipe.execute()
    except redis.RedisError as error:
        return ControlState(True, Scope.ALL, False, f"redis unavailable: {error}"[:200], 0, "fail-closed")
    return parse_control(text_dict(raw), text_dict(halts))


def write_control(
    client: redis.Redis,
    keys: Keys,
    *,
    engaged: bool,
    scope: Scope = Scope.ENTRIES,
    flatten: bool = False,
    reason: str = "",
    engaged_by: str = "person",
    now_ms: int | None = None,
) -> int:
    """Write a new kill-switch state with a new generation. Only the operator and ``qt`` call this."""
    stamp = now_ms if now_ms is not None else int(time.time() * 1000)
    with client.pipeline(transaction=True) as pipe:
        pipe.hincrby(keys.control, "generation", 1)
        pipe.hset(
            keys.control,
            mapping={
                "state": "engaged" if engaged else "released",
                "scope": scope.value if engaged else "",
                "flatten": "1" if engaged and flatten else "0",
                "reason": reason,
                "engaged_by": engaged_by if engaged else "",
                "updated_at": str(stamp),
            },
        )
        generation, _ = pipe.execute()
    return int(generation)


def raise_halt(client: redis.Redis, keys: Keys, source: str, reason: str) -> None:
    """An automatic entries halt (the reconciler's on unexplained drift); a person clears it."""
    client.hset(keys.halts, source, reason)


def clear_halts(client: redis.Redis, keys: Keys) -> dict[str, str]:
    with client.pipeline(transaction=True) as pipe:
        pipe.hgetall(keys.halts)
        pipe.delete(keys.halts)
        raw, _ = pipe.execute()
    return text_dict(raw)


def ack_generation(client: redis.Redis, keys: Keys, component: str, pod: str, generation: int) -> None:
    client.hset(keys.ack, f"{component}/{pod}", str(generation))


def read_acks(client: redis.Redis, keys: Keys) -> dict[str, int]:
    result = {}
    for member, value in text_dict(client.hgetall(keys.ack)).items():
        try:
            result[member] = int(value)
        except ValueError:
            continue
    return result
