"""The operator's Redis I/O: an instance's heartbeats, groups, control, halts, rollout state (Kubernetes is
``runtime_io.py``). Nothing here decides anything: gather.py reads through it, act.py writes through it.

Synchronous on purpose: kopf runs sync handlers in its thread pool, and the project's bus helpers (redis-py)
are synchronous.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from quantum_trader.bus.control import raise_halt, read_acks
from quantum_trader.bus.heartbeat import read_heartbeats
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import PolicySpec
from quantum_trader.contracts.registry import STREAMS
from quantum_trader_operator import kube_view as kv
from quantum_trader_operator import naming as n
from quantum_trader_operator.health import GroupStats, parse_xinfo_groups
from quantum_trader_operator.observation import InstanceReadings
from quantum_trader_operator.rollout import RolloutState

REDIS_URL_OVERRIDE_ENV = "QT_OPERATOR_REDIS_URL_OVERRIDE"
"""Every policy's Redis at this URL instead of its own (tests, or an operator running outside the cluster)."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    url: str
    password: str | None = field(default=None, repr=False)
    """from the policy's passwordSecretRef; never logged, never in status (invariant 10)"""

    @property
    def display(self) -> str:
        return self.url


def redis_target(
    policy_cr: Mapping[str, Any],
    spec: PolicySpec,
    secret_value: Callable[[str, str, str], str | None],
    env: Mapping[str, str],
) -> RedisTarget:
    """Where the operator reaches a policy's Redis.

    ``QT_OPERATOR_REDIS_URL_OVERRIDE`` wins (tests; an operator outside the cluster). A managed Redis is its
    Service by fully-qualified name: the operator runs in another namespace than the policy. The password,
    if any, comes from the referenced Secret through the API, never from the spec.
    """
    namespace, name = kv.namespace(policy_cr), kv.name(policy_cr)
    override = env.get(REDIS_URL_OVERRIDE_ENV)
    if override:
        url = override
    elif spec.redis.managed:
        url = f"redis://{n.redis_name(name)}.{namespace}.svc:{n.REDIS_PORT}/0"
    else:
        url = spec.redis.url or ""
    password = None
    ref = spec.redis.password_secret_ref
    if ref is not None and not override:
        password = secret_value(namespace, ref.name, ref.key)
    return RedisTarget(url, password)


class RedisPool:
    """One client per Redis (redis-py clients are thread-safe and pool their connections)."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str | None], redis.Redis] = {}
        self._lock = threading.Lock()

    def client(self, target: RedisTarget) -> redis.Redis:
        key = (target.url, target.password)
        with self._lock:
            found = self._clients.get(key)
            if found is None:
                # Short timeouts: an unreachable Redis is reported in status, it must not stall every handler.
                found = redis.Redis.from_url(
                    target.url,
                    password=target.password,
                    decode_responses=True,
                    socket_connect_timeout=2,
                    socket_timeout=5,
                )
                self._clients[key] = found
            return found


def read_instance(client: redis.Redis, keys: Keys) -> InstanceReadings:
    """Heartbeats, XINFO GROUPS of every stream, DLQ lengths, open positions, the reconciler's status, control and
    halts. Raises ``redis.RedisError`` when Redis cannot be read (the caller reports it as fail-closed)."""
    heartbeats = read_heartbeats(client, keys)
    groups: list[GroupStats] = []
    existing: dict[str, list[str]] = {}
    for stream in STREAMS:
        try:
            rows = client.xinfo_groups(keys.stream(stream))
        except redis.ResponseError:
            continue  # the stream does not exist yet: nobody produced to it and no group was created
        stats = parse_xinfo_groups(stream, rows)
        groups.extend(stats)
        existing[stream] = [s.group for s in stats]
    with client.pipeline(transaction=False) as pipe:
        for stream in STREAMS:
            pipe.xlen(keys.dlq(stream))
        pipe.hlen(keys.open_positions)
        pipe.hgetall(keys.component_state("reconciler", "status"))
        pipe.hgetall(keys.control)
        pipe.hgetall(keys.halts)
        results = pipe.execute()
    dlq = {stream: int(length) for stream, length in zip(STREAMS, results[: len(STREAMS)], strict=True) if length}
    open_positions, reconcile, control, halts = results[len(STREAMS) :]
    return InstanceReadings(
        heartbeats=heartbeats,
        groups=groups,
        existing_groups=existing,
        dlq_lengths=dlq,
        open_positions=int(open_positions),
        reconcile=dict(reconcile),
        control=dict(control),
        halts=dict(halts),
        acks=read_acks(client, keys),
    )


def raise_operator_halt(client: redis.Redis, keys: Keys, source: str, reason: str) -> bool:
    """Raise one of the operator's automatic entries halts; True when it was not raised before."""
    assert source in n.OPERATOR_HALTS
    existed = client.hexists(keys.halts, source)
    raise_halt(client, keys, source, reason)
    return not existed


def clear_operator_halt(client: redis.Redis, keys: Keys, source: str) -> bool:
    """Clear one of the operator's own halts, and only that field: ``bus.control.clear_halts`` would also drop
    the reconciler's halt, which a person must clear. True when it was raised."""
    assert source in n.OPERATOR_HALTS
    return bool(client.hdel(keys.halts, source))


def ensure_control(client: redis.Redis, keys: Keys) -> bool:
    """Write a released ``control`` when the key is missing: components fail closed without it (invariant 2),
    so a new instance would never trade. Never touches an existing key. True when it was written."""
    fields = {
        "state": "released",
        "scope": "",
        "flatten": "0",
        "reason": "initialized by the operator",
        "engaged_by": "",
        "updated_at": str(int(time.time() * 1000)),
        "generation": "1",
    }
    # WATCH/MULTI: the whole hash appears at once (a half-written one reads as unreadable, i.e. halted), and a
    # KillSwitch written meanwhile is never overwritten.
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(keys.control)
            if pipe.exists(keys.control):
                return False
            pipe.multi()
            pipe.hset(keys.control, mapping=fields)
            pipe.execute()
        except redis.WatchError:
            return False
    return True


# ------------------------------------------------------------------ rollout state


def rollout_key(keys: Keys) -> str:
    return keys.component_state("operator", "rollout")


def read_rollout(client: redis.Redis, keys: Keys) -> RolloutState | None:
    return RolloutState.from_hash(client.hgetall(rollout_key(keys)))


def write_rollout(client: redis.Redis, keys: Keys, state: RolloutState) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(rollout_key(keys))
        pipe.hset(rollout_key(keys), mapping=state.to_hash())
        pipe.execute()


def finish_rollout(client: redis.Redis, keys: Keys) -> None:
    """Release the rollout's halt and forget the rollout, at once: no reader sees one without the other."""
    with client.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.halts, n.ROLLOUT_HALT)
        pipe.delete(rollout_key(keys))
        pipe.execute()


def write_rollout_hash(client: redis.Redis, keys: Keys, fields: Mapping[str, str]) -> bool:
    """Replace the ``rollout`` hash exit-brain reads; True when it changed."""
    if client.hgetall(keys.rollout) == dict(fields):
        return False
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(keys.rollout)
        pipe.hset(keys.rollout, mapping=dict(fields))
        pipe.execute()
    return True


def group_drain(client: redis.Redis, keys: Keys, pairs: Iterable[tuple[str, str]]) -> int:
    """Lag + pending over the given (stream, group) pairs; 0 when none exists. Unknown lag counts as 0."""
    total = 0
    for stream, group in pairs:
        try:
            rows = client.xinfo_groups(keys.stream(stream))
        except redis.ResponseError:
            continue
        for stats in parse_xinfo_groups(stream, rows):
            if stats.group == group:
                total += max(stats.lag or 0, 0) + stats.pending
    return total


def destroy_groups(client: redis.Redis, keys: Keys, pairs: Iterable[tuple[str, str]]) -> list[str]:
    done = []
    for stream, group in pairs:
        try:
            if client.xgroup_destroy(keys.stream(stream), group):
                done.append(f"{stream}/{group}")
        except redis.ResponseError:
            continue
    return done


def forget_instance(client: redis.Redis, keys: Keys) -> int:
    """A deleted policy's ``control``, ``halts`` and the operator's rollout state, gone. A managed Redis goes
    with its StatefulSet; an external one outlives the policy, and a later policy of the same name must start
    from a fresh, released ``control`` rather than inherit a kill switch or a halt. Returns the keys deleted."""
    return int(client.delete(keys.control, keys.halts, keys.ack, rollout_key(keys)))
