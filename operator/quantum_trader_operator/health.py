"""Health of a TradingPolicy: one word, the reasons for it, the conditions and the printer columns (DESIGN §5).

``assess`` is pure over what the handlers read — Deployments and Pods as the API server returns them, heartbeats,
``XINFO GROUPS`` rows, DLQ lengths, the reconciler's status hash, the kill switch — and returns plain data.
Health is the worst level among the findings, in this precedence::

    Invalid      the spec has problems, or the wiring leaves a consumed stream without a producer
    Halted       a kill switch is engaged (any scope), an automatic halt other than the rollout's is raised (the
                 reconciler's, the operator's drift halt), or control is unreadable
    Degraded     a component crash-loops, cannot pull or start, is unavailable after its rollout, stopped
                 heartbeating, stalled on its input, keeps messages pending, dead-letters, drifted, or the
                 exchange was not reconciled recently
    Progressing  Deployments are being created or rolled out — the operator's own rollout halt included: it
                 is part of every safe rollout, not a kill switch — and nothing above is wrong
    Healthy      none of the above

Each finding carries a CamelCase reason and a one-line message that names the component and what to look at
(the crash reason of §6 "a service crash-looping on a merge conflict, unnoticed for an hour").
Stall and DLQ growth need the previous check: ``assess`` returns ``memory`` for the handler to pass back in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from quantum_trader.contracts.control import ControlState, parse_control
from quantum_trader.contracts.heartbeat import HeartbeatRecord
from quantum_trader.contracts.registry import COMPONENTS, DLQ_SUFFIX, WiringReport, check_wiring
from quantum_trader_operator import kube_view as kv
from quantum_trader_operator import naming as n
from quantum_trader_operator.conditions import Condition, condition
from quantum_trader_operator.drift import DriftFinding, model_findings, summarize
from quantum_trader_operator.models import ConditionType, Health
from quantum_trader_operator.wiring import WIRING_REASONS, condition_for_report

_RANK = {Health.HEALTHY: 0, Health.PROGRESSING: 1, Health.DEGRADED: 2, Health.HALTED: 3, Health.INVALID: 4}


class Reason(StrEnum):
    """Reason codes of health findings, most important first within a level (the report leads with the first)."""

    SPEC_INVALID = "SpecInvalid"
    WIRING_INVALID = "WiringInvalid"
    CONTROL_UNAVAILABLE = "ControlUnavailable"
    KILL_SWITCH_ENGAGED = "KillSwitchEngaged"
    AUTOMATIC_HALT = "AutomaticHalt"
    CRASH_LOOP = "CrashLoopBackOff"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    CONTAINER_CREATE_FAILED = "ContainerCreateFailed"
    ROLLOUT_STUCK = "ProgressDeadlineExceeded"
    UNAVAILABLE = "Unavailable"
    DRIFT = "DriftDetected"
    HEARTBEAT_MISSING = "HeartbeatMissing"
    HEARTBEAT_STALE = "HeartbeatStale"
    CONSUMER_STALLED = "ConsumerStalled"
    PENDING_HIGH = "PendingHigh"
    DEAD_LETTER_GROWING = "DeadLetterGrowing"
    RECONCILE_STALE = "ReconcileStale"
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    """the operator's ``operator:rollout`` halt: entries wait while a new digest or config rolls out"""
    DEPLOYMENT_PENDING = "DeploymentPending"
    COMPONENTS_NOT_READY = "ComponentsNotReady"
    ROLLING_OUT = "RollingOut"
    ALL_HEALTHY = "AllComponentsHealthy"
    """the reason of a Healthy report; never a finding"""


REASON_LEVEL: dict[Reason, Health] = {
    Reason.SPEC_INVALID: Health.INVALID,
    Reason.WIRING_INVALID: Health.INVALID,
    Reason.CONTROL_UNAVAILABLE: Health.HALTED,
    Reason.KILL_SWITCH_ENGAGED: Health.HALTED,
    Reason.AUTOMATIC_HALT: Health.HALTED,
    Reason.CRASH_LOOP: Health.DEGRADED,
    Reason.IMAGE_PULL_FAILED: Health.DEGRADED,
    Reason.CONTAINER_CREATE_FAILED: Health.DEGRADED,
    Reason.ROLLOUT_STUCK: Health.DEGRADED,
    Reason.UNAVAILABLE: Health.DEGRADED,
    Reason.DRIFT: Health.DEGRADED,
    Reason.HEARTBEAT_MISSING: Health.DEGRADED,
    Reason.HEARTBEAT_STALE: Health.DEGRADED,
    Reason.CONSUMER_STALLED: Health.DEGRADED,
    Reason.PENDING_HIGH: Health.DEGRADED,
    Reason.DEAD_LETTER_GROWING: Health.DEGRADED,
    Reason.RECONCILE_STALE: Health.DEGRADED,
    Reason.ROLLOUT_IN_PROGRESS: Health.PROGRESSING,
    Reason.DEPLOYMENT_PENDING: Health.PROGRESSING,
    Reason.COMPONENTS_NOT_READY: Health.PROGRESSING,
    Reason.ROLLING_OUT: Health.PROGRESSING,
    Reason.ALL_HEALTHY: Health.HEALTHY,
}
_REASON_ORDER = {reason: index for index, reason in enumerate(Reason)}

# The reasons each condition type (models.ConditionType, the one list of them) can carry.
CONDITION_REASONS: dict[ConditionType, frozenset[str]] = {
    ConditionType.READY: frozenset(r.value for r in Reason),
    ConditionType.IMAGE_CONSISTENT: frozenset({"ImagesMatchPolicy", "DriftDetected"}),
    ConditionType.WIRING_VALID: WIRING_REASONS,
    ConditionType.MODEL_CONSISTENT: frozenset(
        {"ModelMatchesPolicy", "ModelDrift", "ModelNotReported", "NoModelConfigured"}
    ),
    ConditionType.KILL_SWITCH_ENGAGED: frozenset({"Released", "Engaged", "AutomaticHalt", "ControlUnavailable"}),
    ConditionType.ROLLOUT_IN_PROGRESS: frozenset({"RollingOut", "NoRollout"}),
    ConditionType.EXCHANGE_RECONCILED: frozenset(
        {"PositionsMatched", "PositionsMismatch", "ReconcileStale", "NotReconciledYet", "ReconcilerDisabled"}
    ),
}

# Kubelet waiting reasons, grouped by what a person does about them.
_WAITING_REASONS: dict[str, Reason] = {
    "CrashLoopBackOff": Reason.CRASH_LOOP,
    "ImagePullBackOff": Reason.IMAGE_PULL_FAILED,
    "ErrImagePull": Reason.IMAGE_PULL_FAILED,
    "ErrImageNeverPull": Reason.IMAGE_PULL_FAILED,
    "InvalidImageName": Reason.IMAGE_PULL_FAILED,
    "CreateContainerConfigError": Reason.CONTAINER_CREATE_FAILED,
    "CreateContainerError": Reason.CONTAINER_CREATE_FAILED,
    "RunContainerError": Reason.CONTAINER_CREATE_FAILED,
    "PreStartHookError": Reason.CONTAINER_CREATE_FAILED,
    "PostStartHookError": Reason.CONTAINER_CREATE_FAILED,
}
_MAX_DETAIL_CHARS = 200


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    heartbeat_stale_seconds: float = 30.0
    """heartbeats are written every few seconds with a 15 s TTL; 30 s without one is a dead or wedged loop"""
    stall_seconds: float = 120.0
    """how long a consumer may show no progress with lag waiting before it is stalled"""
    pending_max: int = 500
    """delivered-but-unacknowledged messages of one group; a healthy group acks within a step"""
    reconcile_stale_seconds: float = 120.0
    """the reconciler writes its status every interval (30 s by default); four missed intervals is stale"""


@dataclass(frozen=True, slots=True)
class GroupStats:
    """One row of ``XINFO GROUPS <stream>``."""

    stream: str
    """the registry's stream name (``market.tick``), as heartbeats and ``dlq_lengths`` name it, not the Redis key"""
    group: str
    lag: int | None
    """None when Redis cannot compute it (entries deleted or trimmed past the group)"""
    pending: int
    entries_read: int | None = None
    consumers: int = 0


@dataclass(frozen=True, slots=True)
class ReconcileStatus:
    """The reconciler's ``state:reconciler:status`` hash."""

    matched: bool
    time_ms: int
    runs: int
    findings: int


@dataclass(frozen=True, slots=True)
class ProgressMark:
    """When a consumer group last made progress, and its lag then."""

    since_ms: int
    lag: int
    entries_read: int | None
    processed: int


@dataclass(frozen=True, slots=True)
class HealthMemory:
    """What ``assess`` needs from the previous check: DLQ lengths and consumer progress marks."""

    time_ms: int
    dlq_lengths: dict[str, int] = field(default_factory=dict)
    progress: dict[str, ProgressMark] = field(default_factory=dict)
    """``<stream>/<group>`` -> mark"""


@dataclass(frozen=True)
class HealthInputs:
    now_ms: int
    enabled_components: list[str]
    generation: int | None = None
    """the TradingPolicy's metadata.generation, written as the conditions' observedGeneration"""
    deployments: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    heartbeats: list[HeartbeatRecord] = field(default_factory=list)
    consumer_groups: list[GroupStats] = field(default_factory=list)
    dlq_lengths: dict[str, int] = field(default_factory=dict)
    """stream -> XLEN of its DLQ now"""
    previous: HealthMemory | None = None
    open_positions: int = 0
    reconcile: ReconcileStatus | None = None
    control: ControlState | Mapping[str, str] | None = None
    """the raw ``control`` hash, or a parsed ControlState (as is: the fail-closed state of an unreadable Redis);
    None (missing) means halted — fail closed"""
    halts: Mapping[str, str] | None = None
    """the raw ``halts`` hash (source -> reason), read with a raw ``control``: the operator's rollout halt is
    told apart from the others by its source"""
    wiring: WiringReport | None = None
    """None: computed from ``enabled_components``"""
    drift: list[DriftFinding] = field(default_factory=list)
    spec_problems: list[str] = field(default_factory=list)
    expected_model_digest: str = ""
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)


@dataclass(frozen=True, slots=True)
class HealthFinding:
    level: Health
    reason: Reason
    component: str
    """"" for policy-wide findings (spec, wiring, kill switch, a DLQ)"""
    message: str

    def to_dict(self) -> dict[str, str]:
        return {
            "level": self.level.value,
            "reason": self.reason.value,
            "component": self.component,
            "message": self.message,
        }


@dataclass(frozen=True)
class HealthReport:
    health: Health
    reason: str
    message: str
    findings: list[HealthFinding]
    conditions: list[Condition]
    components: dict[str, dict[str, Any]]
    """component -> models.ComponentStatus fields: ready, replicas, readyReplicas, heartbeatAgeSeconds, lag,
    pending, restarts, lastTerminationReason (camelCase, ready to patch into status)"""
    summary: dict[str, Any]
    """printer columns: ready "N/M", openPositions, lag, pending, heartbeatAgeSeconds, drift"""
    memory: HealthMemory


def parse_reconcile_status(raw: Mapping[str, str] | None) -> ReconcileStatus | None:
    """The reconciler's status hash, or None when it is missing or unreadable (never reconciled, as far as we know)."""
    if not raw:
        return None
    try:
        return ReconcileStatus(
            matched=raw["matched"] == "1",
            time_ms=int(raw["time"]),
            runs=int(raw.get("runs", "0")),
            findings=int(raw.get("findings", "0")),
        )
    except (KeyError, ValueError):
        return None


def parse_xinfo_groups(stream: str, rows: Iterable[Mapping[Any, Any]]) -> list[GroupStats]:
    """``XINFO GROUPS`` rows as redis-py returns them (str or bytes keys and values) as GroupStats."""

    def text(value: Any) -> Any:
        return value.decode() if isinstance(value, bytes) else value

    def number(value: Any) -> int | None:
        return None if value is None else int(text(value))

    result = []
    for row in rows:
        data = {text(k): v for k, v in row.items()}
        result.append(
            GroupStats(
                stream=stream,
                group=str(text(data.get("name", ""))),
                lag=number(data.get("lag")),
                pending=number(data.get("pending")) or 0,
                entries_read=number(data.get("entries-read")),
                consumers=number(data.get("consumers")) or 0,
            )
        )
    return result


def termination_text(terminated: Mapping[str, Any]) -> str:
    """``last exit 1 Error: ModuleNotFoundError: No module named 'yaml'`` from ``lastState.terminated``.

    The termination message (or the log tail, with ``FallbackToLogsOnError``) ends with the line that explains
    the exit: a Python traceback's exception, or the component's final JSON log line.
    """
    head = f"last exit {terminated.get('exitCode', '?')}"
    if terminated.get("reason"):
        head += f" {terminated['reason']}"
    line = _explaining_line(str(terminated.get("message") or ""))
    return f"{head}: {line}" if line else head


def _explaining_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    try:
        record = json.loads(last)
    except ValueError:
        record = None
    if isinstance(record, dict):
        # Components log JSON lines (DESIGN §6 "logs missing from the journal"): say what the line says.
        text = str(record.get("msg") or record.get("message") or "")
        error = str(record.get("error") or "")
        last = f"{text}: {error}" if text and error else (error or text or last)
    return last if len(last) <= _MAX_DETAIL_CHARS else last[: _MAX_DETAIL_CHARS - 1] + "…"


def _time_ms(stamp: str | None) -> int | None:
    if not stamp:
        return None
    try:
        return int(datetime.fromisoformat(stamp).timestamp() * 1000)
    except ValueError:
        return None


def _seconds(ms: int) -> float:
    return round(ms / 1000, 1)


@dataclass
class _Assessment:
    """Working state of one ``assess`` call."""

    inputs: HealthInputs
    findings: list[HealthFinding] = field(default_factory=list)
    progress: dict[str, ProgressMark] = field(default_factory=dict)

    def add(self, reason: Reason, component: str, message: str) -> None:
        self.findings.append(HealthFinding(REASON_LEVEL[reason], reason, component, message))


def _resolve_control(inputs: HealthInputs) -> tuple[ControlState, str | None]:
    """The kill switch and the automatic halts in force apart from the operator's rollout halt, and that halt's
    reason (None: no rollout). The rollout halt is its field of the ``halts`` hash, found by its source."""
    if isinstance(inputs.control, ControlState):
        return inputs.control, None
    others = dict(inputs.halts or {})
    rolling = others.pop(n.ROLLOUT_HALT, None)
    return parse_control(dict(inputs.control) if inputs.control else None, others), rolling


def _is_fail_closed(control: ControlState) -> bool:
    # parse_control marks the states it invented for a missing/unreadable key with this engaged_by.
    return control.engaged and control.engaged_by == "fail-closed"


def _container_statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


@dataclass(frozen=True, slots=True)
class _Containers:
    restarts: int
    problems: bool
    """a container is waiting for a reason a person must fix (crash loop, image pull, config)"""
    last_termination_reason: str
    """``lastState.terminated.reason`` of the most recent termination (Error, OOMKilled), "" when none"""
    running_since: dict[str, int]
    """pod name -> when its component container (last) started, for pods where it is running"""


def _pod_running_since(pod: Mapping[str, Any], component: str) -> int | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    # desired.py names the container after the component; a sidecar's uptime says nothing about ours.
    ours = [c for c in statuses if c.get("name") == component] or statuses
    starts = [_time_ms(((c.get("state") or {}).get("running") or {}).get("startedAt")) for c in ours]
    if not starts or any(t is None for t in starts):
        return None
    return max(t for t in starts if t is not None)


def _assess_containers(work: _Assessment, component: str, pods: list[Mapping[str, Any]]) -> _Containers:
    """Container-level problems of a component's pods, and its restarts and last termination for the detail."""
    restarts = 0
    last: tuple[int, str] | None = None
    """(finished ms, reason) of the most recent termination"""
    worst: dict[Reason, tuple[int, str]] = {}
    """reason -> (restarts, message) of the container with the most restarts"""
    affected: dict[Reason, int] = {}
    running_since: dict[str, int] = {}
    for pod in sorted(pods, key=lambda p: str(kv.meta(p).get("name", ""))):
        pod_name = str(kv.meta(pod).get("name", ""))
        since = _pod_running_since(pod, component)
        if since is not None:
            running_since[pod_name] = since
        for container in _container_statuses(pod):
            count = int(container.get("restartCount") or 0)
            restarts += count
            terminated = (container.get("lastState") or {}).get("terminated")
            detail = termination_text(terminated) if terminated else ""
            if terminated:
                finished = _time_ms(terminated.get("finishedAt")) or 0
                if last is None or finished > last[0]:
                    last = (finished, str(terminated.get("reason") or ""))
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = _WAITING_REASONS.get(str(waiting.get("reason") or ""))
            if reason is None:
                continue
            if reason is Reason.CRASH_LOOP:
                why = detail or str(waiting.get("message") or "no termination recorded")
            else:
                why = str(waiting.get("message") or waiting.get("reason"))[:_MAX_DETAIL_CHARS]
            message = f"{component}: {waiting.get('reason')} ({why}); pod {pod_name}"
            if count:
                message += f", {count} restarts"
            affected[reason] = affected.get(reason, 0) + 1
            if reason not in worst or count > worst[reason][0]:
                worst[reason] = (count, message)
    for reason, (_, message) in worst.items():
        others = affected[reason] - 1
        work.add(reason, component, message + (f" (and {others} more containers)" if others else ""))
    return _Containers(
        restarts=restarts,
        problems=bool(worst),
        last_termination_reason=last[1] if last else "",
        running_since=running_since,
    )


def _deployment_condition(deployment: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    conditions = (deployment.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), {})


@dataclass(frozen=True, slots=True)
class _Replicas:
    ready: int
    desired: int
    all_available: bool


def _assess_rollout(
    work: _Assessment, component: str, deployment: Mapping[str, Any] | None, container_problems: bool
) -> _Replicas:
    """The component's replica counts and whether all its replicas are available; adds rollout findings."""
    if deployment is None:
        work.add(Reason.DEPLOYMENT_PENDING, component, f"{component}: Deployment not created yet")
        return _Replicas(0, 0, False)
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    ready = int(status.get("readyReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    current = int(status.get("replicas") or 0)
    generation = int(kv.meta(deployment).get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    name = kv.meta(deployment).get("name", component)
    progressing = _deployment_condition(deployment, "Progressing")
    all_available = available >= desired

    if progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        # The Deployment controller gave up waiting: the rollout failed, it is not merely slow.
        work.add(
            Reason.ROLLOUT_STUCK,
            component,
            f"{component}: rollout of {name} exceeded its progress deadline "
            f"({progressing.get('message') or 'no message'}); {available}/{desired} available",
        )
        return _Replicas(ready, desired, all_available)

    # The same tests as `kubectl rollout status`, in its order.
    waiting_for = ""
    if observed < generation:
        waiting_for = f"spec generation {generation} not observed yet (at {observed})"
    elif updated < desired:
        waiting_for = f"{updated}/{desired} replicas updated"
    elif current > updated:
        waiting_for = f"{current - updated} old replicas terminating"
    elif available < desired and progressing.get("reason") != "NewReplicaSetAvailable":
        waiting_for = f"{available}/{desired} updated replicas available"
    if waiting_for:
        work.add(Reason.ROLLING_OUT, component, f"{component}: rolling out {name}: {waiting_for}")
    elif not all_available and not container_problems:
        # The rollout had completed and replicas went away since: a node, a probe, an eviction.
        available_condition = _deployment_condition(deployment, "Available")
        why = available_condition.get("message") or available_condition.get("reason") or "replicas not available"
        work.add(Reason.UNAVAILABLE, component, f"{component}: {available}/{desired} available ({why})")
    return _Replicas(ready, desired, all_available)


def _assess_heartbeat(
    work: _Assessment, component: str, beats: list[HeartbeatRecord], running_since: dict[str, int], desired: int
) -> tuple[float | None, bool]:
    """The age of the oldest live heartbeat in seconds, and whether every pod heartbeats on time.

    Each pod writes its own heartbeat (``QT_POD`` is the pod name), so a wedged replica shows even while
    another one of the same component is fine. When the pods are not known, the component's heartbeats are
    judged as a whole. Adds HeartbeatMissing / HeartbeatStale.
    """
    now = work.inputs.now_ms
    limit = work.inputs.thresholds.heartbeat_stale_seconds
    newest: dict[str, HeartbeatRecord] = {}
    for beat in beats:
        if beat.pod not in newest or beat.time_ms > newest[beat.pod].time_ms:
            newest[beat.pod] = beat
    if running_since:
        # A heartbeat of a pod that is gone lingers until its TTL; it says nothing about the component now.
        live = {pod: newest[pod] for pod in running_since if pod in newest}
        for pod, since in sorted(running_since.items()):
            # Only a container running longer than the limit owes a heartbeat: a new one has not written yet.
            if pod not in newest and desired and (now - since) / 1000 > limit:
                work.add(
                    Reason.HEARTBEAT_MISSING,
                    component,
                    f"{component}: no heartbeat from pod {pod}, running for {_seconds(now - since):g}s",
                )
        on_time = all(pod in newest for pod in running_since)
    else:
        live = newest
        on_time = bool(newest) or not desired
    if not desired:
        on_time = True  # no replica is owed: a pod still terminating after a scale-down does not count
    if not live:
        return None, on_time
    oldest = min(live.values(), key=lambda b: b.time_ms)
    age = oldest.age_seconds(now)
    if desired and age > limit:
        on_time = False
        work.add(
            Reason.HEARTBEAT_STALE,
            component,
            f"{component}: last heartbeat {age:.0f}s ago from pod {oldest.pod} (limit {limit:g}s)",
        )
    return round(age, 1), on_time


def _group_views(
    component: str, groups: list[GroupStats], beats: list[HeartbeatRecord]
) -> dict[str, tuple[int | None, int, int | None]]:
    """stream -> (lag, pending, entries_read) of the component's groups: XINFO first, heartbeats as fallback.

    XINFO is the group's own account; a heartbeat only fills a stream whose XINFO the handler could not read.
    Every pod of a component reports the same group, so the largest report is the freshest worst case.
    """
    views: dict[str, tuple[int | None, int, int | None]] = {
        g.stream: (g.lag, g.pending, g.entries_read) for g in groups if g.group == component
    }
    # Heartbeats report -1 for a lag Redis could not compute; that is unknown, not zero.
    lags: dict[str, list[int]] = {}
    pendings: dict[str, list[int]] = {}
    for beat in beats:
        for stream, info in beat.groups.items():
            if stream in views:
                continue
            lags.setdefault(stream, [])
            if int(info.get("lag", -1)) >= 0:
                lags[stream].append(int(info["lag"]))
            pendings.setdefault(stream, []).append(int(info.get("pending", 0)))
    for stream, reported in lags.items():
        views[stream] = (max(reported) if reported else None, max(pendings[stream]), None)
    return dict(sorted(views.items()))


def _assess_consumers(
    work: _Assessment, component: str, groups: list[GroupStats], beats: list[HeartbeatRecord]
) -> tuple[int, int]:
    """Sum of lag and pending over the component's groups; adds ConsumerStalled / PendingHigh."""
    inputs = work.inputs
    now = inputs.now_ms
    thresholds = inputs.thresholds
    processed = sum(int(b.counters.get("processed", 0)) for b in beats)
    total_lag = total_pending = 0
    for stream, (lag, pending, entries_read) in _group_views(component, groups, beats).items():
        total_lag += max(lag or 0, 0)
        total_pending += pending
        if pending > thresholds.pending_max:
            work.add(
                Reason.PENDING_HIGH,
                component,
                f"{component}: {pending} pending on {stream} (limit {thresholds.pending_max}); "
                "delivered but never acknowledged",
            )
        if lag is None:
            continue  # unknown lag: no evidence either way, and no mark to compare later
        key = f"{stream}/{component}"
        previous = inputs.previous.progress.get(key) if inputs.previous else None
        # Progress is "read more entries or processed more": a restart resets the counter, which also
        # counts as movement — a restart is not a stall (a crash loop is reported on its own).
        moved = previous is None or (previous.entries_read, previous.processed) != (entries_read, processed)
        mark = ProgressMark(now, lag, entries_read, processed) if moved or previous is None else previous
        work.progress[key] = mark
        idle_seconds = (now - mark.since_ms) / 1000
        if not moved and lag > 0 and lag >= mark.lag and idle_seconds >= thresholds.stall_seconds:
            work.add(
                Reason.CONSUMER_STALLED,
                component,
                f"{component}: stalled on {stream}: lag {mark.lag} -> {lag} with nothing processed "
                f"for {idle_seconds:.0f}s",
            )
    return total_lag, total_pending


def _assess_dead_letters(work: _Assessment) -> None:
    previous = work.inputs.previous
    if previous is None:
        return  # growth needs a previous length; the first check only records it
    for stream, length in sorted(work.inputs.dlq_lengths.items()):
        before = previous.dlq_lengths.get(stream, 0)
        if length > before:
            name = stream if stream.endswith(DLQ_SUFFIX) else stream + DLQ_SUFFIX
            work.add(Reason.DEAD_LETTER_GROWING, "", f"{name} grew from {before} to {length} since the last check")


def _assess_control(work: _Assessment, control: ControlState, rolling: str | None) -> tuple[Condition, Condition]:
    """KillSwitchEngaged and RolloutInProgress. The operator's rollout halt (``rolling``, its reason) stops
    entries like any halt, but it is the normal course of a rollout, so it is reported as one (Progressing),
    never as a kill switch; ``control`` is the rest."""
    generation = work.inputs.generation
    halts = control.halts
    if rolling is not None:
        work.add(Reason.ROLLOUT_IN_PROGRESS, "", f"entries wait for the rollout: {rolling}")
        rollout = condition(ConditionType.ROLLOUT_IN_PROGRESS, True, "RollingOut", rolling, generation)
    else:
        rollout = condition(ConditionType.ROLLOUT_IN_PROGRESS, False, "NoRollout", "no rollout in progress", generation)
    if _is_fail_closed(control):
        message = f"control unavailable, halted (fail closed): {control.reason}"
        work.add(Reason.CONTROL_UNAVAILABLE, "", message)
        return condition(ConditionType.KILL_SWITCH_ENGAGED, True, "ControlUnavailable", message, generation), rollout
    described = control.describe()
    if control.engaged:
        work.add(Reason.KILL_SWITCH_ENGAGED, "", f"kill switch {described}")
    if halts:
        work.add(Reason.AUTOMATIC_HALT, "", "entries halted automatically: " + "; ".join(halts))
    if control.engaged:
        return condition(ConditionType.KILL_SWITCH_ENGAGED, True, "Engaged", described, generation), rollout
    if halts:
        return condition(ConditionType.KILL_SWITCH_ENGAGED, True, "AutomaticHalt", described, generation), rollout
    return condition(ConditionType.KILL_SWITCH_ENGAGED, False, "Released", described, generation), rollout


def _assess_reconcile(work: _Assessment, reconciler_beats: list[HeartbeatRecord]) -> Condition:
    inputs = work.inputs
    generation = inputs.generation
    limit = inputs.thresholds.reconcile_stale_seconds
    if "reconciler" not in inputs.enabled_components:
        return condition(
            ConditionType.EXCHANGE_RECONCILED, None, "ReconcilerDisabled", "the reconciler is not enabled", generation
        )
    status = inputs.reconcile
    if status is None or status.runs == 0:
        started = min((b.started_ms for b in reconciler_beats), default=None)
        if started is not None and (inputs.now_ms - started) / 1000 > limit:
            # Running for longer than the limit without one reconciliation: usually an unreachable exchange.
            message = f"running for {(inputs.now_ms - started) / 1000:.0f}s without a reconciliation"
            work.add(Reason.RECONCILE_STALE, "reconciler", f"reconciler: {message}")
            return condition(ConditionType.EXCHANGE_RECONCILED, False, "ReconcileStale", message, generation)
        return condition(
            ConditionType.EXCHANGE_RECONCILED,
            None,
            "NotReconciledYet",
            "the reconciler has not reported yet",
            generation,
        )
    age = (inputs.now_ms - status.time_ms) / 1000
    if age > limit:
        message = f"last reconciliation {age:.0f}s ago (limit {limit:g}s)"
        work.add(Reason.RECONCILE_STALE, "reconciler", f"reconciler: {message}")
        return condition(ConditionType.EXCHANGE_RECONCILED, False, "ReconcileStale", message, generation)
    if not status.matched:
        # Not a health finding by itself: an order in flight during a run is an explained, transient mismatch;
        # an unexplained one raises the reconciler's automatic halt, which shows as Halted.
        message = f"{status.findings} positions differ from the exchange (run {status.runs}, {age:.0f}s ago)"
        return condition(ConditionType.EXCHANGE_RECONCILED, False, "PositionsMismatch", message, generation)
    return condition(
        ConditionType.EXCHANGE_RECONCILED,
        True,
        "PositionsMatched",
        f"internal positions match the exchange (run {status.runs}, {age:.0f}s ago)",
        generation,
    )


def _model_condition(inputs: HealthInputs, heartbeats: list[HeartbeatRecord]) -> Condition:
    generation = inputs.generation
    differing = model_findings(inputs.drift)
    if differing:
        message = "; ".join(f.message for f in differing[:3])
        if len(differing) > 3:
            message += f" (+{len(differing) - 3} more)"
        return condition(ConditionType.MODEL_CONSISTENT, False, "ModelDrift", message, generation)
    if not inputs.expected_model_digest:
        return condition(
            ConditionType.MODEL_CONSISTENT, True, "NoModelConfigured", "the policy names no model digest", generation
        )
    reporting = sorted({b.component for b in heartbeats if b.model_digest})
    if not reporting:
        return condition(
            ConditionType.MODEL_CONSISTENT,
            None,
            "ModelNotReported",
            "no component has reported a model digest yet",
            generation,
        )
    return condition(
        ConditionType.MODEL_CONSISTENT,
        True,
        "ModelMatchesPolicy",
        f"{', '.join(reporting)} report model {inputs.expected_model_digest}",
        generation,
    )


def _image_condition(inputs: HealthInputs) -> Condition:
    if not inputs.drift:
        return condition(
            ConditionType.IMAGE_CONSISTENT,
            True,
            "ImagesMatchPolicy",
            "every child matches the policy",
            inputs.generation,
        )
    message = f"{summarize(inputs.drift)}: " + "; ".join(f.message for f in inputs.drift[:3])
    if len(inputs.drift) > 3:
        message += f" (+{len(inputs.drift) - 3} more)"
    return condition(ConditionType.IMAGE_CONSISTENT, False, "DriftDetected", message, inputs.generation)


def _sort_key(finding: HealthFinding) -> tuple[int, int, str, str]:
    return (-_RANK[finding.level], _REASON_ORDER[finding.reason], finding.component, finding.message)


def assess(observed: HealthInputs) -> HealthReport:
    """The policy's health, findings, conditions, per-component detail, printer columns and memory for next time."""
    work = _Assessment(observed)
    enabled = list(dict.fromkeys(observed.enabled_components))
    generation = observed.generation

    if observed.spec_problems:
        work.add(Reason.SPEC_INVALID, "", "spec invalid: " + "; ".join(observed.spec_problems))
    wiring = observed.wiring if observed.wiring is not None else check_wiring(enabled)
    wiring_condition = condition_for_report(wiring, generation)
    if not wiring_condition.is_true:
        work.add(Reason.WIRING_INVALID, "", wiring_condition.message)

    control, rolling = _resolve_control(observed)
    kill_switch_condition, rollout_condition = _assess_control(work, control, rolling)

    enabled_set = set(enabled)
    deployments = {kv.component(d): d for d in observed.deployments if kv.component(d) in enabled_set}
    pods: dict[str, list[Mapping[str, Any]]] = {}
    for pod in observed.pods:
        # A terminating pod's state is the past; its replacement is what the component is now.
        if kv.component(pod) in enabled_set and not kv.meta(pod).get("deletionTimestamp"):
            pods.setdefault(kv.component(pod), []).append(pod)
    beats: dict[str, list[HeartbeatRecord]] = {}
    for beat in observed.heartbeats:
        if beat.component in enabled_set:
            beats.setdefault(beat.component, []).append(beat)

    details: dict[str, dict[str, Any]] = {}
    ready_components = 0
    ages: list[float] = []
    total_lag = total_pending = 0
    for component in enabled:
        if component not in COMPONENTS:
            continue  # already reported by the wiring check as unknown
        containers = _assess_containers(work, component, pods.get(component, []))
        replicas = _assess_rollout(work, component, deployments.get(component), containers.problems)
        age, heartbeating = _assess_heartbeat(
            work, component, beats.get(component, []), containers.running_since, replicas.desired
        )
        lag, pending = _assess_consumers(work, component, observed.consumer_groups, beats.get(component, []))
        total_lag += lag
        total_pending += pending
        # models.ComponentStatus: "every desired replica is ready and heartbeating"; a container in a crash loop
        # may still be counted available by the Deployment for a moment, it is not ready.
        ready = replicas.all_available and heartbeating and not containers.problems
        ready_components += ready
        detail: dict[str, Any] = {
            "ready": ready,
            "replicas": replicas.desired,
            "readyReplicas": replicas.ready,
            "lag": lag,
            "pending": pending,
            "restarts": containers.restarts,
        }
        if age is not None:
            detail["heartbeatAgeSeconds"] = age
            ages.append(age)
        if containers.last_termination_reason:
            detail["lastTerminationReason"] = containers.last_termination_reason
        details[component] = detail

    # Never Healthy below N/N: a component that is not ready and has no finding of its own (no pods listed yet,
    # no heartbeat yet within its grace) still keeps the policy Progressing.
    explained = {f.component for f in work.findings}
    waiting = [c for c, d in details.items() if not d["ready"] and c not in explained]
    if waiting:
        work.add(
            Reason.COMPONENTS_NOT_READY,
            "",
            f"{ready_components}/{len(details)} components ready; waiting for {', '.join(waiting)}",
        )
    _assess_dead_letters(work)
    for finding in observed.drift:
        work.add(Reason.DRIFT, finding.component, finding.message)
    reconcile_condition = _assess_reconcile(work, beats.get("reconciler", []))

    findings = sorted(work.findings, key=_sort_key)
    if findings:
        top = findings[0]
        health, reason = top.level, top.reason.value
        message = top.message
        shown = 1
        # A kill switch or an automatic halt leads with Halted, possibly exactly when a new pod crashes: name the
        # first Degraded finding too, so the crash reason is in status (§6).
        broken = next((f for f in findings if f.level is Health.DEGRADED), None)
        if broken is not None and top.level is not Health.DEGRADED:
            message += f"; {broken.message}"
            shown = 2
        if len(findings) > shown:
            message += f" (+{len(findings) - shown} more)"
    else:
        health, reason, message = Health.HEALTHY, Reason.ALL_HEALTHY.value, "all components healthy"
    ready_condition = condition(ConditionType.READY, health is Health.HEALTHY, reason, message, generation)
    conditions = [
        ready_condition,
        _image_condition(observed),
        wiring_condition,
        _model_condition(observed, [b for bs in beats.values() for b in bs]),
        kill_switch_condition,
        rollout_condition,
        reconcile_condition,
    ]
    summary: dict[str, Any] = {
        "ready": f"{ready_components}/{len([c for c in enabled if c in COMPONENTS])}",
        "openPositions": observed.open_positions,
        "lag": total_lag,
        "pending": total_pending,
        "drift": summarize(observed.drift),
    }
    if ages:
        summary["heartbeatAgeSeconds"] = max(ages)
    memory = HealthMemory(observed.now_ms, dict(observed.dlq_lengths), work.progress)
    return HealthReport(health, reason, message, findings, conditions, details, summary, memory)
