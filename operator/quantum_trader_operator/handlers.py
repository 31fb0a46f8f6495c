"""The kopf handlers: when the operator reads and writes the API server and the instances' Redis (DESIGN §5).

Thin on purpose. What should exist is ``desired.py``; what differs is ``drift.py``; whether streams are wired is
``wiring.py``; how healthy a policy is, is ``health.py``; conditions merge in ``conditions.py``. Requests live in
``runtime_io.py``. What is here is when each of those runs, and the few decisions that need several sources at
once (is a rollout complete, which kill switch is in force, how many pods acked).

Every handler is synchronous: kopf runs it in its thread pool, and the kubernetes client and redis-py are
synchronous. Handlers never raise for a bad spec or an unreachable Redis — they say so in status and return, and
the timers (the level-based backstop) try again. Status is patched field by field (``patch.status[...]``);
handler return values are always None, so nothing leaks into the status schema as ``status.<handler>``.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
import redis

from quantum_trader.bus.control import read_acks, read_control, write_control
from quantum_trader.bus.heartbeat import read_heartbeats
from quantum_trader.contracts.control import ControlState, Scope
from quantum_trader.contracts.heartbeat import HeartbeatRecord
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import Mode, PolicyError, PolicySpec
from quantum_trader.contracts.registry import COMPONENTS
from quantum_trader_operator import naming as n
from quantum_trader_operator import runtime_io as io
from quantum_trader_operator.conditions import condition, merge_conditions
from quantum_trader_operator.desired import (
    EXECUTORS,
    OperatorSettings,
    config_data,
    config_hash,
    desired_objects,
    exit_rollout_status,
    instance_id,
    paper_credentials_secret,
    rollout_config,
    rollout_order,
    validate_policy,
)
from quantum_trader_operator.drift import (
    DriftFinding,
    DriftKind,
    ExpectedState,
    ObservedState,
    detect_drift,
    digest_of,
    summarize,
)
from quantum_trader_operator.health import (
    HealthInputs,
    HealthMemory,
    HealthThresholds,
    assess,
    parse_reconcile_status,
)
from quantum_trader_operator.metrics import (
    DRIFT_DETECTIONS,
    KILL_SWITCH_ACK_LATENCY,
    RECONCILE_SECONDS,
    metrics_port,
    start_metrics_server,
)
from quantum_trader_operator.models import (
    EXIT_ROLLOUT,
    KILL_SWITCH,
    TRADING_POLICY,
    KillSwitchSpec,
    PolicyRef,
    ResourceError,
    exit_rollout_spec,
    kill_switch_spec,
    policy_spec,
)
from quantum_trader_operator.wiring import groups_to_delete, wiring_condition

log = logging.getLogger("quantum_trader_operator")


def _env_seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


# Intervals are read once, when kopf registers the handlers; tests shorten them through the environment.
POLICY_TIMER_SECONDS = _env_seconds("QT_OPERATOR_TIMER_SECONDS", 15)
KILL_SWITCH_TIMER_SECONDS = _env_seconds("QT_OPERATOR_KILLSWITCH_TIMER_SECONDS", 5)
EXIT_ROLLOUT_TIMER_SECONDS = _env_seconds("QT_OPERATOR_EXITROLLOUT_TIMER_SECONDS", 30)
DRIFT_SETTLE_SECONDS = _env_seconds("QT_OPERATOR_DRIFT_SETTLE_SECONDS", 10)
"""the drift halt is released only after this long without drift: a re-apply rolls pods, which takes time"""
REAPPLY_MIN_SECONDS = _env_seconds("QT_OPERATOR_REAPPLY_SECONDS", 5)
"""at most one drift re-apply per policy in this time: evidence that a re-apply cannot fix (a foreign
heartbeat, a foreign field manager) must not turn every pod event into an apply"""
DRAIN_SECONDS = _env_seconds("QT_OPERATOR_DRAIN_SECONDS", 15)
"""how long a rollout waits for the executor path's in-flight messages before updating it anyway"""
DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"

TP = (n.GROUP, n.VERSION, TRADING_POLICY.plural)
XR = (n.GROUP, n.VERSION, EXIT_ROLLOUT.plural)
KS = (n.GROUP, n.VERSION, KILL_SWITCH.plural)
OURS = {n.LABEL_MANAGED_BY: n.MANAGED_BY}

# Findings a forced re-apply repairs; the others (pods, heartbeats) go away when the pods do.
OBJECT_DRIFT = frozenset(
    {DriftKind.IMAGE, DriftKind.CONFIG, DriftKind.CONFIG_HASH, DriftKind.IMAGE_ANNOTATION, DriftKind.FIELD_MANAGER}
)
PRUNED_KINDS = (("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"), ("v1", "Service"), ("v1", "ConfigMap"))
"""children removed when no longer desired (a disabled component, a mode without the simulator). The paper
credentials Secret is not among them: it is created once and must outlive re-renders."""
LIVE_HEARTBEAT_SECONDS = HealthThresholds().heartbeat_stale_seconds


def _now_ms() -> int:
    return int(time.time() * 1000)


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return body.get("metadata") or {}


# ------------------------------------------------------------------ process-wide resources


@dataclass
class PolicyState:
    """What the handlers of different resources share about one policy, in this process.

    Deployment and Pod events run in other handlers than the policy's own, so this lives in a registry keyed by
    policy (and is also put in the policy's kopf memo). Lost on restart by design: every piece is either
    re-derived (rollout state and halts are in Redis) or only dampens repetition (events, re-applies).
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    check_requested: bool = False
    health_memory: HealthMemory | None = None
    drift_messages: str = ""
    last_drift_ms: int = 0
    last_reapply_ms: int = 0
    problems: tuple[str, ...] = ()
    """the spec problems last announced with an Event"""
    held_back: bool = False
    """a rollout is waiting for Redis (its halt must be raised first): no drift re-apply may roll it out"""


class Runtime:
    def __init__(self) -> None:
        self.kube = io.Kube()
        self.redis = io.RedisPool()
        self.settings = OperatorSettings.from_env(os.environ)
        self._states: dict[tuple[str, str], PolicyState] = {}
        self._states_lock = threading.Lock()

    def state(self, namespace: str, name: str) -> PolicyState:
        with self._states_lock:
            return self._states.setdefault((namespace, name), PolicyState())

    def forget(self, namespace: str, name: str) -> None:
        with self._states_lock:
            self._states.pop((namespace, name), None)

    @property
    def policies(self) -> int:
        return len(self._states)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            io.load_kube_config()
            _runtime = Runtime()
        return _runtime


@contextmanager
def _timed(kind: str, handler: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        RECONCILE_SECONDS.labels(kind, handler).observe(time.perf_counter() - started)


def _event(body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
    """A Kubernetes Event on the object; a failure to post one never fails the reconcile."""
    try:
        kopf.event(dict(body), type=kind, reason=reason, message=message[:1000])
    except Exception as error:  # events are best effort: the status carries the same facts
        log.warning("event %s not posted: %s", reason, error)


# ------------------------------------------------------------------ startup


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Watches end server-side after a minute and are re-established: a silently dead connection (a load
    # balancer dropping it) costs at most that long; the client timeout is the backstop if the server hangs.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    # Only our explicit events (drift, kill switch, invalid spec) reach Kubernetes; kopf's own log lines don't.
    settings.posting.level = logging.WARNING
    # One replica with strategy Recreate (DESIGN §5): peering is not leader election, so do without it.
    settings.peering.standalone = True
    # kopf's bookkeeping in annotations only: status stays the documented schema.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.quantumtrader.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.quantumtrader.io")
    settings.persistence.finalizer = "trading.quantumtrader.io/operator"
    settings.execution.max_workers = 16
    runtime()
    port = metrics_port(os.environ)
    try:
        if start_metrics_server(port):
            log.info("metrics on :%d/metrics", port)
    except OSError as error:  # a port in use costs the metrics, not the operator
        log.error("metrics endpoint not started on :%d: %s", port, error)


@kopf.on.probe(id="policies")
def probe_policies(**_: Any) -> int:
    """Liveness detail: how many policies this process tracks."""
    return runtime().policies


# ------------------------------------------------------------------ TradingPolicy: the whole check


@dataclass
class Policy:
    """A valid TradingPolicy with everything rendered from it once per check."""

    body: dict[str, Any]
    spec: PolicySpec
    namespace: str
    name: str
    uid: str
    generation: int | None
    keys: Keys
    desired: list[dict[str, Any]]
    config: dict[str, str]
    config_hash: str

    @property
    def image(self) -> str:
        assert self.spec.image is not None
        return self.spec.image

    @property
    def digest(self) -> str:
        return n.image_digest(self.image)

    @property
    def enabled(self) -> list[str]:
        return self.spec.enabled_components()


@dataclass
class Children:
    deployments: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    configmap: dict[str, Any] | None
    others: list[dict[str, Any]]
    """StatefulSets, Services and ConfigMaps of the policy (for pruning and "is it missing")"""

    def names(self) -> set[tuple[str, str]]:
        return {(o.get("kind", ""), _meta(o).get("name", "")) for o in [*self.deployments, *self.others]}


@dataclass
class Readings:
    """The instance's Redis as one check saw it; ``error`` set when it could not be read."""

    target: io.RedisTarget
    client: redis.Redis | None
    data: io.InstanceReadings | None
    rollout: io.RolloutState | None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.data is not None and self.client is not None


def _load_policy(rt: Runtime, body: Mapping[str, Any]) -> Policy:
    meta = _meta(body)
    spec = policy_spec(body)
    desired = desired_objects(body, settings=rt.settings)
    data = config_data(body)
    return Policy(
        body=dict(body),
        spec=spec,
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta["uid"],
        generation=meta.get("generation"),
        keys=Keys(instance_id(meta["namespace"], meta["name"])),
        desired=desired,
        config=data,
        config_hash=config_hash(data),
    )


def _observe_children(rt: Runtime, policy: Policy) -> Children:
    labels = {**OURS, n.LABEL_POLICY: policy.name}
    kube = rt.kube
    deployments = [
        d for d in kube.list("apps/v1", "Deployment", policy.namespace, labels) if io.owned_by(d, policy.uid)
    ]
    # Pods belong to ReplicaSets, not to the policy: the policy label (set by desired.py on the template) says whose.
    pods = kube.list("v1", "Pod", policy.namespace, labels)
    others = [
        o
        for api_version, kind in PRUNED_KINDS
        if kind != "Deployment"
        for o in kube.list(api_version, kind, policy.namespace, labels)
        if io.owned_by(o, policy.uid)
    ]
    configmap = next(
        (o for o in others if o["kind"] == "ConfigMap" and _meta(o).get("name") == n.config_map_name(policy.name)), None
    )
    return Children(deployments, pods, configmap, others)


def _read_redis(rt: Runtime, policy: Policy) -> Readings:
    try:
        target = io.redis_target(policy.body, policy.spec, rt.kube, os.environ)
    except io.KubeError as error:
        return Readings(io.RedisTarget("(password secret unreadable)"), None, None, None, error)
    try:
        client = rt.redis.client(target)
        io.ensure_control(client, policy.keys)
        return Readings(target, client, io.read_instance(client, policy.keys), io.read_rollout(client, policy.keys))
    except redis.RedisError as error:
        return Readings(target, None, None, None, error)


def _template_annotations(deployment: Mapping[str, Any]) -> Mapping[str, str]:
    template = (deployment.get("spec") or {}).get("template") or {}
    return _meta(template).get("annotations") or {}


def _rollout_sources(policy: Policy, children: Children) -> frozenset[str] | None:
    """None when every desired Deployment exists with the policy's digest and config hash; else the digests the
    existing ones run (the rollout is from them; empty for a first creation)."""
    existing = {_meta(d).get("name"): d for d in children.deployments}
    sources: set[str] = set()
    rollout = False
    for obj in policy.desired:
        if obj["kind"] != "Deployment":
            continue
        current = existing.get(obj["metadata"]["name"])
        if current is None:
            rollout = True
            continue
        annotations = _template_annotations(current)
        digest = annotations.get(n.IMAGE_DIGEST_ANNOTATION, "")
        if digest != policy.digest or annotations.get(n.CONFIG_HASH_ANNOTATION) != policy.config_hash:
            rollout = True
            if digest and digest != policy.digest:
                sources.add(digest)
    return frozenset(sources) if rollout else None


def _undesired(policy: Policy, children: Children) -> list[dict[str, Any]]:
    """Children the policy no longer renders (a disabled component, the simulator outside paper mode)."""
    wanted = {(o["kind"], o["metadata"]["name"]) for o in policy.desired}
    return [o for o in [*children.deployments, *children.others] if (o.get("kind"), _meta(o).get("name")) not in wanted]


def _missing(policy: Policy, children: Children) -> list[str]:
    present = children.names()
    return [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in policy.desired
        if (o["kind"], o["metadata"]["name"]) not in present
    ]


def _ensure_paper_secret(rt: Runtime, policy: Policy) -> None:
    """The paper key pair, created once with random values (never re-rendered: that would rotate it)."""
    if policy.spec.mode is not Mode.PAPER:
        return
    name = n.paper_credentials_secret_name(policy.name)
    if rt.kube.get("v1", "Secret", policy.namespace, name) is not None:
        return
    secret = paper_credentials_secret(policy.body, api_key=secrets.token_hex(32), api_secret=secrets.token_hex(32))
    try:
        rt.kube.create(secret)
    except io.KubeError as error:
        if error.status != 409:  # created meanwhile by another path: fine
            raise


def _drain_executors(rt: Runtime, client: redis.Redis, policy: Policy) -> None:
    """Wait (bounded) until the executor path's inputs are consumed and acknowledged, so no plan is in flight
    when governor, apply-layer and position-state are replaced (DESIGN §5 "in-flight plans drained")."""
    pairs = [(stream, component) for component in EXECUTORS for stream in COMPONENTS[component].inputs]
    deadline = time.monotonic() + DRAIN_SECONDS
    while True:
        try:
            remaining = io.group_drain(client, policy.keys, pairs)
        except redis.RedisError as error:
            log.warning(
                "%s/%s: drain check failed (%s); updating the executor path", policy.namespace, policy.name, error
            )
            return
        if remaining == 0:
            return
        if time.monotonic() >= deadline:
            log.warning(
                "%s/%s: %d messages still in flight on the executor path after %gs; updating it anyway",
                policy.namespace,
                policy.name,
                remaining,
                DRAIN_SECONDS,
            )
            return
        time.sleep(0.5)


def _apply(rt: Runtime, policy: Policy, state: PolicyState, children: Children, readings: Readings) -> str:
    """Apply the desired objects in rollout order; returns a note for status ("" when all went out).

    A new digest or config is a rollout: entries are halted first (``operator:rollout`` in ``halts``), the
    executor path goes last, and the halt stays until the timer sees every component report the new digest
    and the reconciler matched. Without Redis the halt cannot be raised, so Deployments wait (Services, the
    managed Redis and a first ConfigMap go out — a managed Redis must exist before it can be reached).
    """
    sources = _rollout_sources(policy, children)
    ordered = rollout_order(policy.desired)
    held_back = ""
    if sources is not None and not readings.ok:
        existing = children.names()
        ordered = [
            o
            for o in ordered
            if o["kind"] not in ("Deployment", "ConfigMap")
            or (o["kind"] == "ConfigMap" and (o["kind"], o["metadata"]["name"]) not in existing)
        ]
        held_back = f"rollout waits for Redis at {readings.target.display} to halt entries first ({readings.error})"
        log.warning("%s/%s: %s", policy.namespace, policy.name, held_back)
    elif sources is not None:
        assert readings.client is not None
        previous = readings.rollout
        carried = previous.from_digests if previous is not None else frozenset()
        rollout = io.RolloutState(
            to_digest=policy.digest,
            config_hash=policy.config_hash,
            from_digests=(carried | sources) - {policy.digest},
            started_ms=_now_ms(),
        )
        # Halt before the first Deployment changes; the state next to it lets a restarted operator finish.
        io.raise_operator_halt(
            readings.client,
            policy.keys,
            io.ROLLOUT_HALT,
            f"rolling out {policy.digest[:19]} config {policy.config_hash[:19]}",
        )
        io.write_rollout(readings.client, policy.keys, rollout)
        readings.rollout = rollout
        _event(
            policy.body,
            "Normal",
            "RolloutStarted",
            f"entries halted while {policy.digest} (config {policy.config_hash}) rolls out"
            + (f" from {', '.join(sorted(rollout.from_digests))}" if rollout.from_digests else ""),
        )
    _ensure_paper_secret(rt, policy)
    executors_exist = any(_component(d) in EXECUTORS for d in children.deployments)
    drained = False
    for obj in ordered:
        if sources is not None and readings.client is not None and not drained and _component(obj) in EXECUTORS:
            drained = True
            if executors_exist:
                _drain_executors(rt, readings.client, policy)
        rt.kube.apply(obj)
    state.held_back = bool(held_back)
    if not held_back:
        _prune(rt, policy, children)
    return held_back


def _component(obj: Mapping[str, Any]) -> str:
    return str((_meta(obj).get("labels") or {}).get(n.LABEL_COMPONENT, ""))


def _prune(rt: Runtime, policy: Policy, children: Children) -> None:
    """Delete children the policy no longer renders."""
    for obj in _undesired(policy, children):
        kind, name = obj.get("kind", ""), _meta(obj).get("name", "")
        api_version = obj.get("apiVersion") or ("apps/v1" if kind in ("Deployment", "StatefulSet") else "v1")
        log.info("%s/%s: deleting %s/%s (no longer desired)", policy.namespace, policy.name, kind, name)
        rt.kube.delete(api_version, kind, policy.namespace, name)


def _expected(policy: Policy, rollout: io.RolloutState | None) -> ExpectedState:
    return ExpectedState(
        image=policy.image,
        config_hash=policy.config_hash,
        config_data=policy.config,
        model_digest=policy.spec.model.digest,
        field_manager=n.MANAGED_BY,
        # Old pods and their heartbeats report the previous digest until they are gone: progress, not drift.
        rolling_from=rollout.from_digests if rollout is not None else frozenset(),
    )


def _react_to_drift(
    rt: Runtime, policy: Policy, state: PolicyState, findings: list[DriftFinding], readings: Readings
) -> None:
    """DESIGN §5: on drift an Event, an automatic entries halt (``operator:drift``) and a forced re-apply; the
    halt is released once nothing differs for DRIFT_SETTLE_SECONDS. Only the operator's own halt is touched."""
    now = _now_ms()
    where = f"{policy.namespace}/{policy.name}"
    if findings:
        messages = "; ".join(f.message for f in findings)
        if readings.client is not None:
            try:
                io.raise_operator_halt(readings.client, policy.keys, io.DRIFT_HALT, f"drift: {summarize(findings)}")
            except redis.RedisError as error:
                log.warning("%s: drift halt not raised: %s", where, error)
        if messages != state.drift_messages:
            DRIFT_DETECTIONS.labels(policy.namespace, policy.name).inc()
            for finding in findings:
                log.warning("%s: drift: %s", where, finding.message)
            _event(policy.body, "Warning", "DriftDetected", f"{len(findings)} differences: {messages}")
        state.drift_messages = messages
        state.last_drift_ms = now
        fixable = [f for f in findings if f.kind in OBJECT_DRIFT]
        # Not while a rollout waits for its halt: re-applying would roll the new version out unhalted.
        if fixable and not state.held_back and (now - state.last_reapply_ms) / 1000 >= REAPPLY_MIN_SECONDS:
            state.last_reapply_ms = now
            for obj in rollout_order(policy.desired):
                rt.kube.apply(obj)
            log.warning("%s: desired spec applied again after drift", where)
        return
    if state.last_drift_ms and (now - state.last_drift_ms) / 1000 < DRIFT_SETTLE_SECONDS:
        return  # consistent, but not for long enough yet: a re-apply's pods may still be rolling
    state.drift_messages = ""
    state.last_drift_ms = 0
    if readings.client is not None:
        try:
            if io.clear_operator_halt(readings.client, policy.keys, io.DRIFT_HALT):
                log.info("%s: consistent again; drift halt released", where)
                _event(
                    policy.body, "Normal", "DriftResolved", "every child matches the policy again; drift halt released"
                )
        except redis.RedisError as error:
            log.warning("%s: drift halt not released: %s", where, error)


def rollout_progress(
    rollout: io.RolloutState,
    *,
    enabled: Sequence[str],
    deployments: Sequence[Mapping[str, Any]],
    heartbeats: Sequence[HeartbeatRecord],
    reconcile: Mapping[str, str] | None,
    now_ms: int,
) -> str:
    """ "" when the rollout is complete, else what it waits for (pure; DESIGN §5 "released only when every
    component reports the new digest and the reconciler has matched the exchange").

    Complete means: every enabled Deployment runs the new template and its controller reports every replica
    updated and available with no old one left; every live heartbeat of an enabled component comes from a
    process started after the rollout began with the new digest (a config-only rollout keeps the digest, so
    the start time tells old pods from new), as many as the replicas; and the reconciler matched after it began.
    """
    by_component = {_component(d): d for d in deployments}
    for component in enabled:
        deployment = by_component.get(component)
        if deployment is None:
            return f"{component}: Deployment not created yet"
        annotations = _template_annotations(deployment)
        if annotations.get(n.IMAGE_DIGEST_ANNOTATION) != rollout.to_digest or (
            rollout.config_hash and annotations.get(n.CONFIG_HASH_ANNOTATION) != rollout.config_hash
        ):
            return f"{component}: new template not applied yet"
        spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
        replicas = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
        if int(status.get("observedGeneration") or 0) < int(_meta(deployment).get("generation") or 0):
            return f"{component}: Deployment controller has not seen the new template"
        if int(status.get("updatedReplicas") or 0) < replicas or int(status.get("availableReplicas") or 0) < replicas:
            return f"{component}: {status.get('availableReplicas') or 0}/{replicas} new replicas available"
        if int(status.get("replicas") or 0) > replicas:
            return f"{component}: old replicas still running"
        live = [b for b in heartbeats if b.component == component and b.age_seconds(now_ms) <= LIVE_HEARTBEAT_SECONDS]
        new = [b for b in live if digest_of(b.image_digest) == rollout.to_digest and b.started_ms >= rollout.started_ms]
        if len(new) < len(live):
            return f"{component}: {len(live) - len(new)} pods still report the previous version"
        if len(new) < replicas:
            return f"{component}: {len(new)}/{replicas} pods report {rollout.to_digest[:19]}"
    wanted = set(enabled)
    stray = sorted(
        {
            b.component
            for b in heartbeats
            if b.component not in wanted and b.age_seconds(now_ms) <= LIVE_HEARTBEAT_SECONDS
        }
    )
    if stray:
        # A disabled component's pod still running the previous version would be drift the moment this ends.
        return f"{', '.join(stray)}: disabled, but still heartbeating"
    if "reconciler" in enabled:
        status = parse_reconcile_status(reconcile)
        if status is None or status.time_ms < rollout.started_ms:
            return "reconciler: no reconciliation since the rollout began"
        if not status.matched:
            return f"reconciler: {status.findings} positions differ from the exchange"
    return ""


def _finish_rollout(policy: Policy, children: Children, readings: Readings) -> str:
    """Release ``operator:rollout`` when the rollout is complete; returns what it still waits for."""
    if readings.rollout is None or readings.data is None or readings.client is None:
        return ""
    if readings.rollout.to_digest != policy.digest or readings.rollout.config_hash != policy.config_hash:
        return "rollout target differs from the policy; re-applying"
    waiting = rollout_progress(
        readings.rollout,
        enabled=[
            c for c in policy.enabled if (policy.spec.components.get(c) is None or policy.spec.components[c].replicas)
        ],
        deployments=children.deployments,
        heartbeats=readings.data.heartbeats,
        reconcile=readings.data.reconcile,
        now_ms=_now_ms(),
    )
    if waiting:
        return waiting
    io.clear_operator_halt(readings.client, policy.keys, io.ROLLOUT_HALT)
    io.clear_rollout(readings.client, policy.keys)
    readings.rollout = None
    log.info("%s/%s: rollout of %s complete; entries released", policy.namespace, policy.name, policy.digest)
    _event(policy.body, "Normal", "RolloutComplete", f"every component reports {policy.digest}; entries released")
    return ""


def _clean_groups(rt: Runtime, policy: Policy, children: Children, readings: Readings) -> None:
    """XGROUP DESTROY groups of components no longer enabled, once their Deployment is gone (wiring.py)."""
    if readings.data is None or readings.client is None:
        return
    running = {_component(d) for d in children.deployments}
    stale = [
        (stream, group)
        for stream, group in groups_to_delete(readings.data.existing_groups, policy.enabled)
        if group not in running
    ]
    if stale:
        done = io.destroy_groups(readings.client, policy.keys, stale)
        if done:
            log.info("%s/%s: removed consumer groups of disabled components: %s", policy.namespace, policy.name, done)


def _seen_digest(children: Children, heartbeats: Sequence[HeartbeatRecord]) -> str:
    """The digest pods and heartbeats report (several, comma-separated, while they disagree)."""
    digests = {
        digest_of(c.get("imageID") or "")
        for pod in children.pods
        if not _meta(pod).get("deletionTimestamp")
        for c in (pod.get("status") or {}).get("containerStatuses") or []
    } | {digest_of(b.image_digest) for b in heartbeats}
    digests.discard("")
    if not digests:
        digests = {_template_annotations(d).get(n.IMAGE_DIGEST_ANNOTATION, "") for d in children.deployments} - {""}
    return ",".join(sorted(digests))


def _policy_status(
    policy: Policy,
    state: PolicyState,
    children: Children,
    readings: Readings,
    findings: list[DriftFinding],
    notes: Sequence[str],
) -> dict[str, Any]:
    now = _now_ms()
    data = readings.data
    if data is not None and readings.client is not None:
        # This check may have raised or released halts since it read them: report the state it leaves behind.
        try:
            data.control = readings.client.hgetall(policy.keys.control)
            data.halts = readings.client.hgetall(policy.keys.halts)
        except redis.RedisError as error:
            readings.error, data = error, None
    inputs = HealthInputs(
        now_ms=now,
        enabled_components=policy.enabled,
        generation=policy.generation,
        deployments=children.deployments,
        pods=children.pods,
        heartbeats=data.heartbeats if data else [],
        consumer_groups=data.groups if data else [],
        dlq_lengths=data.dlq_lengths if data else {},
        previous=state.health_memory,
        open_positions=data.open_positions if data else 0,
        reconcile=parse_reconcile_status(data.reconcile) if data else None,
        control=data.control if data else io.unreachable_control(readings.target, readings.error or Exception("?")),
        halts=data.halts if data else None,
        drift=findings,
        expected_model_digest=policy.spec.model.digest,
    )
    report = assess(inputs)
    if data is not None:
        state.health_memory = report.memory  # stall and DLQ growth compare against the previous check
    message = report.message
    extra = [note for note in notes if note]
    if extra:
        message = f"{message}; {'; '.join(extra)}"
    old = policy.body.get("status") or {}
    # Status is written as a merge patch: a component no longer enabled must be removed explicitly (None).
    components: dict[str, Any] = {name: None for name in old.get("components") or {} if name not in report.components}
    components.update(report.components)
    status: dict[str, Any] = {
        "health": report.health.value,
        "message": message,
        "conditions": merge_conditions(old.get("conditions"), report.conditions, datetime.now(UTC)),
        "components": components,
        "imageDigest": _seen_digest(children, data.heartbeats if data else []) or None,
        "observedGeneration": policy.generation,
        "heartbeatAgeSeconds": None,
        **report.summary,
    }
    return status


def _invalid_status(body: Mapping[str, Any], problems: Sequence[str]) -> dict[str, Any]:
    generation = _meta(body).get("generation")
    message = "spec invalid: " + "; ".join(problems)
    new = [condition("Ready", False, "SpecInvalid", message, generation)]
    try:
        enabled = policy_spec(body).enabled_components()
    except PolicyError:
        enabled = None
    if enabled is not None:
        # The wiring verdict names the streams nobody produces; it is the reason nothing was rolled out.
        new.append(wiring_condition(enabled, generation))
    return {
        "health": "Invalid",
        "message": message,
        "conditions": merge_conditions((body.get("status") or {}).get("conditions"), new, datetime.now(UTC)),
        "observedGeneration": generation,
    }


def check_policy(body: Mapping[str, Any], *, apply: bool, announce: bool) -> dict[str, Any] | None:
    """Everything the operator does for one TradingPolicy; returns the status to write (None: write nothing).

    ``apply``: apply every desired object (create/update/resume); otherwise only what is missing or mid-rollout
    (timers and child events — the level-based backstop). ``announce``: post an Event for an invalid spec (the
    spec changed), not on every timer tick.
    """
    rt = runtime()
    meta = _meta(body)
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    if meta.get("deletionTimestamp"):
        return None
    state = rt.state(namespace, name)
    problems = validate_policy(body)
    if problems:
        # Nothing is touched: running children keep running what they run until the spec is fixed.
        # Announced once per distinct set of problems, by the spec-change handlers only (a timer may see the
        # policy first, and must neither post the Event nor keep the handler from posting it).
        if announce and tuple(problems) != state.problems:
            log.warning("%s/%s: invalid spec: %s", namespace, name, "; ".join(problems))
            _event(body, "Warning", "InvalidSpec", "; ".join(problems))
            state.problems = tuple(problems)
        return _invalid_status(body, problems)
    state.problems = ()
    policy = _load_policy(rt, body)
    children = _observe_children(rt, policy)
    readings = _read_redis(rt, policy)
    notes: list[str] = []
    rollout = readings.rollout
    # A rollout still in progress (a failed apply, an operator restart, one waiting for Redis) goes on; any other
    # difference a timer or an event finds is drift, handled below.
    unfinished = state.held_back or (
        rollout is not None
        and (
            (rollout.to_digest, rollout.config_hash) != (policy.digest, policy.config_hash)
            or _rollout_sources(policy, children) is not None
        )
    )
    if apply or unfinished or _missing(policy, children) or _undesired(policy, children):
        notes.append(_apply(rt, policy, state, children, readings))
        children = _observe_children(rt, policy)
    # A Deployment the policy no longer renders is on its way out (pruned above), not drift.
    desired_names = {o["metadata"]["name"] for o in policy.desired if o["kind"] == "Deployment"}
    findings = detect_drift(
        ObservedState(
            [d for d in children.deployments if _meta(d).get("name") in desired_names],
            children.pods,
            children.configmap,
            readings.data.heartbeats if readings.data else [],
        ),
        _expected(policy, readings.rollout),
    )
    _react_to_drift(rt, policy, state, findings, readings)
    if any(f.kind in OBJECT_DRIFT for f in findings):
        children = _observe_children(rt, policy)
    try:
        waiting = _finish_rollout(policy, children, readings)
        if waiting:
            notes.append(f"rollout: {waiting}")
        _clean_groups(rt, policy, children, readings)
    except redis.RedisError as error:
        notes.append(f"redis: {error}")
    return _policy_status(policy, state, children, readings, findings, notes)


def _guarded_check(body: Mapping[str, Any], *, apply: bool) -> dict[str, Any] | None:
    """check_policy, with every failure turned into status: a handler that raised would be retried by kopf
    (a storm for a permanent problem such as a 422); the timers are the retry."""
    meta = _meta(body)
    where = f"{meta.get('namespace')}/{meta.get('name')}"
    try:
        return check_policy(body, apply=apply, announce=apply)
    except io.KubeError as error:
        log.error("%s: API request failed: %s", where, error)
        return {"health": "Degraded", "message": f"applying children failed: {error}"}
    except redis.RedisError as error:
        log.error("%s: Redis failed mid-check: %s", where, error)
        return {"health": "Degraded", "message": f"redis failed mid-check: {error}"}
    except Exception as error:
        log.exception("%s: check failed", where)
        return {"health": "Degraded", "message": f"operator error: {type(error).__name__}: {error}"}


def _run_check(body: Mapping[str, Any], patch: kopf.Patch, memo: kopf.Memo, *, apply: bool, handler: str) -> None:
    rt = runtime()
    meta = _meta(body)
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    state = rt.state(namespace, name)
    memo["policy_state"] = state  # the per-policy memory, reachable from kopf's memo of this object too
    with _timed("TradingPolicy", handler), state.lock:
        state.check_requested = False
        status = _guarded_check(body, apply=apply)
    if status:
        for key, value in status.items():
            patch.status[key] = value
    if state.check_requested:
        _coalesced_check(rt, namespace, name)  # child events that arrived while this check held the lock


@kopf.on.resume(*TP)
@kopf.on.create(*TP)
@kopf.on.update(*TP)
def reconcile_policy(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Validate, render and apply (safe rollout), then write status."""
    _run_check(body, patch, memo, apply=True, handler="reconcile")


@kopf.timer(*TP, interval=POLICY_TIMER_SECONDS, initial_delay=min(POLICY_TIMER_SECONDS, 5.0))
def policy_timer(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """The level-based backstop: missing children, drift, rollout completion, group clean-up, health."""
    _run_check(body, patch, memo, apply=False, handler="timer")


@kopf.on.delete(*TP, optional=True)
def forget_policy(namespace: str | None, name: str | None, **_: Any) -> None:
    """Children go with the policy (ownerReferences); only this process's memory of it is dropped."""
    runtime().forget(namespace or "", name or "")


# ------------------------------------------------------------------ Deployments and Pods: drift as it happens


def _on_child_event(event: Mapping[str, Any]) -> None:
    obj = event.get("object") or {}
    meta = _meta(obj)
    labels = meta.get("labels") or {}
    policy_name = labels.get(n.LABEL_POLICY)
    namespace = meta.get("namespace")
    # kopf filters by labels already; repeat it (and the owner kind) so a server ignoring selectors changes nothing.
    if not policy_name or not namespace or labels.get(n.LABEL_MANAGED_BY) != n.MANAGED_BY:
        return
    if obj.get("kind") == "Deployment" and not any(
        ref.get("kind") == "TradingPolicy" for ref in meta.get("ownerReferences") or []
    ):
        return
    rt = runtime()
    rt.state(namespace, policy_name).check_requested = True
    _coalesced_check(rt, namespace, policy_name)


def _coalesced_check(rt: Runtime, namespace: str, name: str) -> None:
    """Run the check unless one is running; the one running sees ``check_requested`` and runs again.
    A rollout is dozens of child events a second: one check after the burst sees all of them."""
    state = rt.state(namespace, name)
    while state.check_requested:
        if not state.lock.acquire(blocking=False):
            return
        try:
            state.check_requested = False
            with _timed("TradingPolicy", "child-event"):
                _check_from_event(rt, namespace, name)
        finally:
            state.lock.release()


def _check_from_event(rt: Runtime, namespace: str, name: str) -> None:
    try:
        body = rt.kube.get(n.API_VERSION, "TradingPolicy", namespace, name)
        if body is None:
            return
        status = _guarded_check(body, apply=False)
        if status:
            rt.kube.patch_status(n.API_VERSION, "TradingPolicy", namespace, name, status)
    except io.KubeError as error:
        log.warning("%s/%s: check after a child event failed: %s", namespace, name, error)


@kopf.on.event("apps", "v1", "deployments", labels=OURS)
def deployment_event(event: kopf.RawEvent, **_: Any) -> None:
    _on_child_event(event)


@kopf.on.event("", "v1", "pods", labels=OURS)
def pod_event(event: kopf.RawEvent, **_: Any) -> None:
    _on_child_event(event)


# ------------------------------------------------------------------ helpers for ExitRollout and KillSwitch


@dataclass
class PolicyRedis:
    body: dict[str, Any]
    spec: PolicySpec
    keys: Keys
    client: redis.Redis
    target: io.RedisTarget


def _policy_redis(rt: Runtime, namespace: str, policy_name: str) -> PolicyRedis | str:
    """The referenced policy and a client for its Redis, or why not (a one-line status message)."""
    body = rt.kube.get(n.API_VERSION, "TradingPolicy", namespace, policy_name)
    if body is None:
        return f"TradingPolicy {policy_name} not found in {namespace}"
    try:
        spec = policy_spec(body)
    except PolicyError as error:
        return f"TradingPolicy {policy_name} is invalid: {error}"
    try:
        target = io.redis_target(body, spec, rt.kube, os.environ)
    except io.KubeError as error:
        return f"TradingPolicy {policy_name}: Redis password unreadable: {error}"
    keys = Keys(instance_id(namespace, policy_name))
    return PolicyRedis(body, spec, keys, rt.redis.client(target), target)


def _live_pods(heartbeats: Sequence[HeartbeatRecord], enabled: Sequence[str], now_ms: int) -> list[str]:
    """``<component>/<pod>`` of every live component process: who must ack a kill-switch generation."""
    wanted = set(enabled)
    return sorted(
        f"{b.component}/{b.pod}"
        for b in heartbeats
        if b.component in wanted and b.age_seconds(now_ms) <= LIVE_HEARTBEAT_SECONDS
    )


# ------------------------------------------------------------------ ExitRollout


def _exit_rollout(body: Mapping[str, Any], *, deleting: bool = False) -> dict[str, Any]:
    meta = _meta(body)
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    status: dict[str, Any] = {"observedGeneration": meta.get("generation")}
    try:
        spec = exit_rollout_spec(body)
    except ResourceError as error:
        return {**status, "message": f"invalid: {error}"}
    found = _policy_redis(runtime(), namespace, spec.policy_ref.name)
    if isinstance(found, str):
        return {**status, "message": found}
    try:
        # Deleting the rollout hands exit-brain back to the policy's own exits settings.
        fields = rollout_config(found.spec, None if deleting else spec).to_hash()
        if io.write_rollout_hash(found.client, found.keys, fields):
            log.info("%s/%s: rollout hash written: %s", namespace, name, fields)
        control = read_control(found.client, found.keys)
    except redis.RedisError as error:
        return {**status, "message": f"redis unreachable at {found.target.display}: {error}"}
    switch = None
    if control.engaged:
        # KILL > MODE > ROLLOUT: whatever engaged control (a KillSwitch, `qt killswitch`, fail-closed) outranks it.
        switch = KillSwitchSpec(
            policy_ref=PolicyRef(name=spec.policy_ref.name),
            engaged=True,
            scope=control.scope or Scope.ALL,
            reason=control.reason or "engaged",
        )
    computed = exit_rollout_status(spec, found.spec.symbols, kill_switch=switch)
    message = (
        ""
        if switch is None or computed["effectiveMode"] == spec.mode
        else f"forced SHADOW: kill switch {control.describe()}"
    )
    return {**status, **computed, "message": message}


def _guarded(kind: str, body: Mapping[str, Any], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()``'s status, or the failure as a status message: raising would make kopf retry the handler; the
    timers are the retry (the API or Redis being unreachable is reported, never a crash)."""
    meta = _meta(body)
    try:
        return fn()
    except io.KubeError as error:
        log.error("%s %s/%s: API request failed: %s", kind, meta.get("namespace"), meta.get("name"), error)
        return {"message": f"API request failed: {error}"}
    except redis.RedisError as error:
        return {"message": f"redis unreachable: {error}"}
    except Exception as error:
        log.exception("%s %s/%s: failed", kind, meta.get("namespace"), meta.get("name"))
        return {"message": f"operator error: {type(error).__name__}: {error}"}


@kopf.on.resume(*XR)
@kopf.on.create(*XR)
@kopf.on.update(*XR)
def reconcile_exit_rollout(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    with _timed("ExitRollout", "reconcile"):
        for key, value in _guarded("ExitRollout", body, lambda: _exit_rollout(body)).items():
            patch.status[key] = value


@kopf.timer(*XR, interval=EXIT_ROLLOUT_TIMER_SECONDS, initial_delay=min(EXIT_ROLLOUT_TIMER_SECONDS, 5.0))
def exit_rollout_timer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Re-asserts the hash (a Redis restarted empty) and follows the policy's symbols and the kill switch."""
    with _timed("ExitRollout", "timer"):
        for key, value in _guarded("ExitRollout", body, lambda: _exit_rollout(body)).items():
            patch.status[key] = value


@kopf.on.delete(*XR)
def delete_exit_rollout(body: kopf.Body, **_: Any) -> None:
    with _timed("ExitRollout", "delete"):
        _guarded("ExitRollout", body, lambda: _exit_rollout(body, deleting=True))


# ------------------------------------------------------------------ KillSwitch

_SCOPE_RANK = {Scope.ALL: 3, Scope.ENTRIES: 2, Scope.EXITS: 1}


def _switch_owner(namespace: str, name: str) -> str:
    return f"person:{namespace}/{name}"


def effective_switch(
    switches: Sequence[Mapping[str, Any]], policy: str, now: datetime
) -> tuple[str, KillSwitchSpec] | None:
    """The KillSwitch in force for a policy among several (pure): engaged, not expired, not being deleted; the
    strongest scope wins (all > entries > exits), then flatten, then the newest. None: all are released."""
    candidates = []
    for body in switches:
        meta = _meta(body)
        if meta.get("deletionTimestamp"):
            continue
        try:
            spec = kill_switch_spec(body)
        except ResourceError:
            continue
        if spec.policy_ref.name != policy or not spec.engaged or _expired(spec, now):
            continue
        rank = (_SCOPE_RANK[spec.scope], spec.flatten, str(meta.get("creationTimestamp") or ""), meta.get("name", ""))
        candidates.append((rank, meta.get("name", ""), spec))
    if not candidates:
        return None
    _, name, spec = max(candidates, key=lambda c: c[0])
    return name, spec


def _expired(spec: KillSwitchSpec, now: datetime) -> bool:
    if spec.expires_at is None:
        return False
    expires = spec.expires_at if spec.expires_at.tzinfo else spec.expires_at.replace(tzinfo=UTC)
    return expires <= now


def _matches(control: ControlState, spec: KillSwitchSpec, owner: str) -> bool:
    return (
        control.engaged
        and control.scope is spec.scope
        and control.flatten == spec.flatten
        and control.reason == spec.reason
        and control.engaged_by == owner
    )


def _kill_switch(body: Mapping[str, Any], *, deleting: bool = False) -> dict[str, Any]:
    """Write ``control`` for the switch in force, then report this switch's generation, acks and state."""
    rt = runtime()
    meta = _meta(body)
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    old = body.get("status") or {}
    status: dict[str, Any] = {"observedGeneration": meta.get("generation")}
    try:
        spec = kill_switch_spec(body)
    except ResourceError as error:
        return {**status, "state": "Pending", "message": f"invalid: {error}"}
    found = _policy_redis(rt, namespace, spec.policy_ref.name)
    if isinstance(found, str):
        return {**status, "state": "Pending", "message": found}
    now = datetime.now(UTC)
    policy = spec.policy_ref.name
    others = [s for s in rt.kube.list(n.API_VERSION, "KillSwitch", namespace) if _meta(s).get("name") != name]
    in_force = effective_switch([*others, *([] if deleting else [body])], policy, now)
    client, keys = found.client, found.keys
    try:
        io.ensure_control(client, keys)
        control = read_control(client, keys)
        if in_force is not None:
            owner_name, owner_spec = in_force
            owner = _switch_owner(namespace, owner_name)
            if not _matches(control, owner_spec, owner):
                generation = write_control(
                    client,
                    keys,
                    engaged=True,
                    scope=owner_spec.scope,
                    flatten=owner_spec.flatten,
                    reason=owner_spec.reason,
                    engaged_by=owner,
                )
                log.warning(
                    "%s/%s: kill switch %s engaged (%s), generation %d",
                    namespace,
                    policy,
                    owner_name,
                    owner_spec.scope.value,
                    generation,
                )
                _event(
                    body,
                    "Warning",
                    "KillSwitchEngaged",
                    f"{policy}: scope {owner_spec.scope.value}, reason {owner_spec.reason!r}, generation {generation}",
                )
        elif control.engaged and control.engaged_by.startswith(_switch_owner(namespace, "")):
            # Only what a KillSwitch engaged is released here: `qt killswitch engage` (engaged_by "person") and a
            # fail-closed state are not ours to release, and the automatic halts are another key altogether.
            why = "expired" if _expired(spec, now) and spec.engaged else "deleted" if deleting else "released"
            generation = write_control(client, keys, engaged=False, reason=f"kill switch {name} {why}")
            log.warning("%s/%s: kill switch %s %s, generation %d", namespace, policy, name, why, generation)
            _event(body, "Normal", "KillSwitchReleased", f"{policy}: {why}, generation {generation}")
        raw_control = client.hgetall(keys.control)
        control = read_control(client, keys)
        heartbeats = read_heartbeats(client, keys)
        acks = read_acks(client, keys)
    except redis.RedisError as error:
        return {**status, "state": "Pending", "message": f"redis unreachable at {found.target.display}: {error}"}
    if deleting:
        return {}
    written_ms = int(raw_control.get("updated_at") or 0)
    ms_now = _now_ms()
    pods = _live_pods(heartbeats, found.spec.enabled_components(), ms_now)
    missing = [p for p in pods if acks.get(p, 0) < control.generation]
    acked = len(pods) - len(missing)
    status.update(generation=control.generation, acked=f"{acked}/{len(pods)}")
    if written_ms:
        status["engagedAt"] = _rfc3339(written_ms)
    all_acked = bool(pods) and not missing
    if all_acked:
        if old.get("generation") == control.generation and old.get("ackLatencySeconds") is not None:
            status["ackLatencySeconds"] = old["ackLatencySeconds"]
        elif written_ms:
            # First time every live pod acked this generation: the latency is up to now (timer resolution).
            latency = round(max(0.0, (ms_now - written_ms) / 1000), 3)
            status["ackLatencySeconds"] = latency
            KILL_SWITCH_ACK_LATENCY.observe(latency)
    else:
        status["ackLatencySeconds"] = None
    if spec.engaged and _expired(spec, now):
        state, message = "Expired", f"expired at {spec.expires_at}"
    elif not spec.engaged:
        state, message = "Released", ""
    elif in_force is not None and in_force[0] != name:
        state, message = (
            ("Engaged" if all_acked else "Pending"),
            f"in force through KillSwitch {in_force[0]} (stronger)",
        )
    else:
        state = "Engaged" if all_acked else "Pending"
        message = (
            ""
            if all_acked
            else (
                "no live component to ack yet"
                if not pods
                else f"waiting for acks of {', '.join(missing[:5])}"
                + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
            )
        )
    return {**status, "state": state, "message": message}


@kopf.on.resume(*KS)
@kopf.on.create(*KS)
@kopf.on.update(*KS)
def reconcile_kill_switch(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    with _timed("KillSwitch", "reconcile"):
        for key, value in _guarded("KillSwitch", body, lambda: _kill_switch(body)).items():
            patch.status[key] = value


@kopf.timer(*KS, interval=KILL_SWITCH_TIMER_SECONDS, initial_delay=min(KILL_SWITCH_TIMER_SECONDS, 1.0))
def kill_switch_timer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Acks, ack latency, expiry, and re-asserting ``control`` (a Redis restarted empty is fail-closed, not this)."""
    with _timed("KillSwitch", "timer"):
        for key, value in _guarded("KillSwitch", body, lambda: _kill_switch(body)).items():
            patch.status[key] = value


@kopf.on.delete(*KS, retries=30, backoff=10)
def delete_kill_switch(body: kopf.Body, **_: Any) -> None:
    """Deleting an engaged switch releases it (unless another one stays in force). Redis being unreachable
    retries (bounded): the object goes only once the release is written or retries are exhausted."""
    with _timed("KillSwitch", "delete"):
        result = _guarded("KillSwitch", body, lambda: _kill_switch(body, deleting=True))
    if result.get("message", "").startswith("redis unreachable"):
        raise kopf.TemporaryError(result["message"], delay=10)


# ------------------------------------------------------------------ running


def run(
    *,
    namespaces: Sequence[str] = (),
    clusterwide: bool = False,
    liveness: str | None = DEFAULT_LIVENESS,
    verbose: bool = False,
) -> None:
    """Run the operator in this process until SIGINT/SIGTERM: one replica, no peering (DESIGN §5)."""
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON)
    kopf.run(
        standalone=True,
        clusterwide=clusterwide and not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness or None,
    )
