"""The operator's I/O helpers: the Kubernetes API (server-side apply, reads, status patches) and the instance's Redis.

handlers.py stays a thin layer of kopf handlers by keeping every request here. Nothing in this module decides
anything: the decisions are in desired.py, drift.py, wiring.py and health.py (pure), and in handlers.py where they
need more than one source. Synchronous on purpose: kopf runs sync handlers in its thread pool, and both the
kubernetes client and the project's bus helpers (redis-py) are synchronous.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from quantum_trader.bus.control import raise_halt, read_acks
from quantum_trader.bus.heartbeat import read_heartbeats
from quantum_trader.contracts.control import ControlState, Scope
from quantum_trader.contracts.heartbeat import HeartbeatRecord
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import PolicySpec
from quantum_trader.contracts.registry import STREAMS
from quantum_trader_operator import naming as n
from quantum_trader_operator.health import GroupStats, parse_xinfo_groups

log = logging.getLogger(__name__)

REDIS_URL_OVERRIDE_ENV = "QT_OPERATOR_REDIS_URL_OVERRIDE"
"""Every policy's Redis at this URL instead of its own (tests, or an operator running outside the cluster)."""

ROLLOUT_HALT = "operator:rollout"
DRIFT_HALT = "operator:drift"
OPERATOR_HALTS = (ROLLOUT_HALT, DRIFT_HALT)
"""the only ``halts`` fields the operator ever raises or clears; the reconciler's and a person's are never touched"""

_PLURALS = {
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Service": "services",
    "Pod": "pods",
    "Event": "events",
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "TradingPolicy": "tradingpolicies",
    "ExitRollout": "exitrollouts",
    "KillSwitch": "killswitches",
}


class KubeError(Exception):
    """A Kubernetes API request that did not succeed: the HTTP status and the server's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def load_kube_config() -> None:
    """In a pod: the service account. Elsewhere: the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{_PLURALS[kind]}"


def object_path(api_version: str, kind: str, namespace: str, name: str) -> str:
    return f"{collection_path(api_version, kind, namespace)}/{name}"


class Kube:
    """Raw JSON requests through the kubernetes client's ApiClient (auth, TLS and proxies from its config).

    Raw dicts rather than the client's models: the pure modules read objects as the API server returns them,
    and a model round-trip would drop fields it does not know (and every custom resource field).
    """

    def __init__(self, api_client: k8s_client.ApiClient | None = None, timeout: float = 30.0) -> None:
        self.api = api_client or k8s_client.ApiClient()
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Iterable[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        serialized = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        verb, url, header_params, payload, _ = serialized
        try:
            response = self.api.call_api(
                verb, url, header_params=header_params, body=payload, _request_timeout=self.timeout
            )
            response.read()
        except ApiException as error:
            raise KubeError(error.status or 0, _status_message(error.body) or str(error.reason)) from None
        data = response.data or b""
        if not 200 <= response.status < 300:
            raise KubeError(response.status, _status_message(data) or response.reason or "")
        return json.loads(data) if data else None

    # --------------------------------------------------------------- objects

    def apply(self, manifest: Mapping[str, Any], field_manager: str = n.MANAGED_BY) -> dict[str, Any]:
        """Server-side apply, forced: the operator owns every field it writes (DESIGN §5), so a person's edit
        of one of them is taken back instead of being a conflict."""
        meta = manifest["metadata"]
        path = object_path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        return self.request(
            "PATCH",
            path,
            query=[("fieldManager", field_manager), ("force", "true")],
            body=dict(manifest),
            content_type="application/apply-patch+yaml",
        )

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", object_path(api_version, kind, namespace, name))
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str] | None = None) -> list[dict]:
        """Objects of a kind in a namespace. The label selector is sent, and applied here again: a server that
        ignores it (the test emulator) must not make another policy's objects ours."""
        query = [("labelSelector", ",".join(f"{k}={v}" for k, v in labels.items()))] if labels else []
        items = (self.request("GET", collection_path(api_version, kind, namespace), query=query) or {}).get("items")
        result = []
        for item in items or []:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
            if labels and not _has_labels(item, labels):
                continue
            result.append(item)
        return result

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        return self.request(
            "POST", collection_path(manifest["apiVersion"], manifest["kind"], meta["namespace"]), body=dict(manifest)
        )

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        try:
            # Background: the API server's garbage collector removes the ReplicaSets and pods.
            self.request(
                "DELETE",
                object_path(api_version, kind, namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except KubeError as error:
            if error.status != 404:
                raise

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """A merge patch of ``status`` through the status subresource (for paths outside a kopf handler's patch)."""
        self.request(
            "PATCH",
            object_path(api_version, kind, namespace, name) + "/status",
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        secret = self.get("v1", "Secret", namespace, name)
        if secret is None:
            return None
        raw = (secret.get("data") or {}).get(key)
        if raw is not None:
            return base64.b64decode(raw).decode()
        return (secret.get("stringData") or {}).get(key)


def _has_labels(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    own = (obj.get("metadata") or {}).get("labels") or {}
    return all(own.get(k) == v for k, v in labels.items())


def _status_message(raw: Any) -> str:
    if not raw:
        return ""
    try:
        data = json.loads(raw)
    except (TypeError, ValueError):
        return str(raw)[:300]
    return str(data.get("message") or data.get("reason") or "")[:300] if isinstance(data, dict) else str(data)[:300]


def owned_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner_uid for ref in refs)


# ------------------------------------------------------------------ Redis


@dataclass(frozen=True, slots=True)
class RedisTarget:
    url: str
    password: str | None = field(default=None, repr=False)
    """from the policy's passwordSecretRef; never logged, never in status (invariant 10)"""

    @property
    def display(self) -> str:
        return self.url


def redis_target(policy_cr: Mapping[str, Any], spec: PolicySpec, kube: Kube, env: Mapping[str, str]) -> RedisTarget:
    """Where the operator reaches a policy's Redis.

    ``QT_OPERATOR_REDIS_URL_OVERRIDE`` wins (tests; an operator outside the cluster). A managed Redis is its
    Service by fully-qualified name: the operator runs in another namespace than the policy. The password,
    if any, comes from the referenced Secret through the API, never from the spec.
    """
    meta = policy_cr.get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
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
        password = kube.secret_value(namespace, ref.name, ref.key)
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


@dataclass
class InstanceReadings:
    """What the health and drift checks read from an instance's Redis in one pass."""

    heartbeats: list[HeartbeatRecord]
    groups: list[GroupStats]
    existing_groups: dict[str, list[str]]
    """stream name -> consumer group names (for the clean-up of groups of disabled components)"""
    dlq_lengths: dict[str, int]
    open_positions: int
    reconcile: dict[str, str]
    control: dict[str, str]
    halts: dict[str, str]
    acks: dict[str, int]


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


def unreachable_control(target: RedisTarget, error: Exception) -> ControlState:
    """What health sees when the instance's Redis cannot be read: halted, fail closed (invariant 2)."""
    return ControlState(
        True, Scope.ALL, False, f"redis unreachable at {target.display}: {error}"[:300], 0, "fail-closed"
    )


def raise_operator_halt(client: redis.Redis, keys: Keys, source: str, reason: str) -> bool:
    """Raise one of the operator's automatic entries halts; True when it was not raised before."""
    assert source in OPERATOR_HALTS
    existed = client.hexists(keys.halts, source)
    raise_halt(client, keys, source, reason)
    return not existed


def clear_operator_halt(client: redis.Redis, keys: Keys, source: str) -> bool:
    """Clear one of the operator's own halts, and only that field: ``bus.control.clear_halts`` would also drop
    the reconciler's halt, which a person must clear. True when it was raised."""
    assert source in OPERATOR_HALTS
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


@dataclass(frozen=True, slots=True)
class RolloutState:
    """A rollout in progress, kept in Redis next to its halt so an operator restart resumes it."""

    to_digest: str
    config_hash: str
    from_digests: frozenset[str]
    started_ms: int

    def to_hash(self) -> dict[str, str]:
        return {
            "to_digest": self.to_digest,
            "config_hash": self.config_hash,
            "from_digests": ",".join(sorted(self.from_digests)),
            "started_ms": str(self.started_ms),
        }


def rollout_key(keys: Keys) -> str:
    return keys.component_state("operator", "rollout")


def read_rollout(client: redis.Redis, keys: Keys) -> RolloutState | None:
    raw = client.hgetall(rollout_key(keys))
    if not raw:
        return None
    try:
        return RolloutState(
            to_digest=raw["to_digest"],
            config_hash=raw.get("config_hash", ""),
            from_digests=frozenset(d for d in raw.get("from_digests", "").split(",") if d),
            started_ms=int(raw["started_ms"]),
        )
    except (KeyError, ValueError):
        return None


def write_rollout(client: redis.Redis, keys: Keys, state: RolloutState) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(rollout_key(keys))
        pipe.hset(rollout_key(keys), mapping=state.to_hash())
        pipe.execute()


def clear_rollout(client: redis.Redis, keys: Keys) -> None:
    client.delete(rollout_key(keys))


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
