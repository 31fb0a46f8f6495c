"""decide: a TradingPolicy and what gather.py observed, in; the plan for act.py, out (pure).

One function per question the reconcile answers, all over plain data: is the spec runnable, is this a
rollout (``rollout.py`` has the rule), what must be applied, pruned or repaired, which of the operator's
halts to raise or clear, what drifted (``drift.py``), how healthy the policy is (``health.py``), which
Events to post, and the status to write. No server, no Redis, no clock: the time is the observation's.

The status describes the state the plan leaves behind (halts raised or cleared by this plan, a ``control``
key it initialises); children are as observed, so a child the plan creates shows up in the next check
(the child's own watch event triggers it at once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from quantum_trader.contracts.control import ControlState, Scope
from quantum_trader.contracts.heartbeat import HeartbeatRecord
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import PolicySpec
from quantum_trader_operator import kube_view as kv
from quantum_trader_operator import naming as n
from quantum_trader_operator import rollout
from quantum_trader_operator.conditions import condition, merge_conditions
from quantum_trader_operator.config import config_hash, spec_config_data
from quantum_trader_operator.desired import EXECUTORS, OperatorSettings, render_objects, rollout_order
from quantum_trader_operator.drift import (
    DriftFinding,
    DriftKind,
    ExpectedState,
    ObservedState,
    detect_drift,
    digest_of,
    summarize,
)
from quantum_trader_operator.health import HealthInputs, HealthMemory, assess, parse_reconcile_status
from quantum_trader_operator.models import ConditionType
from quantum_trader_operator.observation import PolicyObservation
from quantum_trader_operator.validation import PolicyCheck
from quantum_trader_operator.wiring import groups_to_delete, wiring_condition

OBJECT_DRIFT = frozenset(
    {DriftKind.IMAGE, DriftKind.CONFIG, DriftKind.CONFIG_HASH, DriftKind.IMAGE_ANNOTATION, DriftKind.FIELD_MANAGER}
)
"""findings a forced re-apply (plus the removal of foreign fields) repairs; the others (pods, heartbeats) go
away when the pods do"""
APPLIED_AWAY = OBJECT_DRIFT - {DriftKind.FIELD_MANAGER}
"""differences the apply of this very plan removes: in a check that applies, they are the change, not drift"""
REPAIRED_KINDS = frozenset({"Deployment", "ConfigMap"})
"""the children drift.py checks for foreign field managers, and act.py strips foreign fields from"""


@dataclass(frozen=True, slots=True)
class Timings:
    drift_settle_seconds: float = 10.0
    """the drift halt is released only after this long without drift: a re-apply rolls pods, which takes time"""
    reapply_min_seconds: float = 5.0
    """at most one drift re-apply per policy in this time: evidence a re-apply cannot fix (a foreign heartbeat)
    must not turn every pod event into an apply"""


@dataclass
class PolicyMemory:
    """What a policy's checks remember between runs, in this process (lost on restart by design: every piece
    is either re-derived — rollout state and halts are in Redis — or only dampens repetition)."""

    health: HealthMemory | None = None
    drift_messages: str = ""
    last_drift_ms: int = 0
    last_reapply_ms: int = 0
    problems: tuple[str, ...] = ()
    """the spec problems last announced with an Event"""
    held_back: bool = False
    """a rollout waits for Redis (its halt must be raised first): no drift re-apply may roll it out"""


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class RenderedPolicy:
    """A valid TradingPolicy with everything rendered from it once per check."""

    body: dict[str, Any]
    spec: PolicySpec
    keys: Keys
    desired: list[dict[str, Any]]
    config: dict[str, str]
    config_hash: str

    @property
    def namespace(self) -> str:
        return kv.namespace(self.body)

    @property
    def name(self) -> str:
        return kv.name(self.body)

    @property
    def generation(self) -> int | None:
        return kv.generation(self.body)

    @property
    def digest(self) -> str:
        return n.image_digest(self.spec.image or "")

    @property
    def enabled(self) -> list[str]:
        return self.spec.enabled_components()


def render(body: Mapping[str, Any], spec: PolicySpec, settings: OperatorSettings) -> RenderedPolicy:
    """Everything a check needs from a policy whose ``spec`` :func:`validation.check_policy` parsed and found
    valid: the spec is parsed and judged once per check, never again here."""
    data = spec_config_data(spec)
    return RenderedPolicy(
        body=dict(body),
        spec=spec,
        keys=Keys(n.instance_id(kv.namespace(body), kv.name(body))),
        desired=render_objects(body, spec, data, settings=settings),
        config=data,
        config_hash=config_hash(data),
    )


@dataclass
class PolicyPlan:
    """Everything act.py does for one check of one policy, in the order it does it."""

    memory: PolicyMemory
    status: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    initialize_control: bool = False
    """``control`` is missing: write a released one (components fail closed without it)"""
    start_rollout: rollout.RolloutState | None = None
    raise_halts: dict[str, str] = field(default_factory=dict)
    """the operator's halts to raise, before anything is applied (the rollout's halt first)"""
    create_paper_secret: bool = False
    apply: list[dict[str, Any]] = field(default_factory=list)
    """server-side apply, forced, in this order"""
    drain_executors: bool = False
    """wait (bounded) for the executor path's in-flight messages before its first manifest"""
    repair: list[dict[str, Any]] = field(default_factory=list)
    """after applying, remove from these children the fields other managers own and the manifest lacks"""
    delete: list[tuple[str, str, str]] = field(default_factory=list)
    """(apiVersion, kind, name) of children no longer rendered"""
    clear_halts: list[str] = field(default_factory=list)
    clear_rollout: bool = False
    destroy_groups: list[tuple[str, str]] = field(default_factory=list)
    drift_detected: bool = False
    """new drift (for the drift counter)"""


RELEASED_CONTROL = {"state": "released", "scope": "", "flatten": "0", "generation": "1"}
"""what act.py writes when ``control`` is missing (as far as reading it goes)"""


def unreachable_control(target: str, error: str) -> ControlState:
    """What health sees when the instance's Redis cannot be read: halted, fail closed (invariant 2)."""
    return ControlState(True, Scope.ALL, False, f"redis unreachable at {target}: {error}"[:300], 0, "fail-closed")


def _deployment_refs(objects: Sequence[Mapping[str, Any]]) -> set[str]:
    return {kv.name(o) for o in objects if o.get("kind") == "Deployment"}


def policy(
    rendered: RenderedPolicy, observed: PolicyObservation, memory: PolicyMemory, timings: Timings, *, apply: bool
) -> PolicyPlan:
    """The plan for one check. ``apply``: the spec changed (create/update/resume) so every desired object is
    applied; otherwise (timers, child events: the level-based backstop) only what is missing, undesired or
    mid-rollout, and what drift needs."""
    memory = replace(memory, problems=())
    plan = PolicyPlan(memory)
    now = observed.now_ms
    children, view = observed.children, observed.redis
    readings = view.readings
    where = f"{rendered.namespace}/{rendered.name}"
    notes: list[str] = []

    control = dict(readings.control) if readings is not None else {}
    halts = dict(readings.halts) if readings is not None else {}
    if readings is not None and not control:
        plan.initialize_control = True
        control = dict(RELEASED_CONTROL)

    # ------------------------------------------------------------------ apply, prune, rollout
    desired_keys = {kv.key(o) for o in rendered.desired}
    present = children.keys()
    undesired = [o for o in [*children.deployments, *children.others] if kv.key(o) not in desired_keys]
    missing = desired_keys - present
    sources = rollout.sources(rendered.desired, children.deployments, rendered.digest, rendered.config_hash)
    previous = view.rollout
    unfinished = memory.held_back or (
        previous is not None and (not previous.targets(rendered.digest, rendered.config_hash) or sources is not None)
    )
    in_force = previous
    held = False
    applying = apply or unfinished or bool(missing) or bool(undesired)
    if applying:
        ordered = rollout_order(rendered.desired)
        if sources is not None and readings is None:
            ordered = rollout.held_back(ordered, present)
            held = True
            note = f"rollout waits for Redis at {view.target} to halt entries first ({view.error})"
            notes.append(note)
            plan.warnings.append(f"{where}: {note}")
        elif sources is not None:
            started = rollout.started(previous, sources, rendered.digest, rendered.config_hash, now)
            plan.start_rollout = in_force = started
            plan.raise_halts[n.ROLLOUT_HALT] = f"rolling out {rendered.digest[:19]} config {rendered.config_hash[:19]}"
            plan.drain_executors = any(kv.component(d) in EXECUTORS for d in children.deployments)
            plan.events.append(
                Event(
                    "Normal",
                    "RolloutStarted",
                    f"entries halted while {rendered.digest} (config {rendered.config_hash}) rolls out"
                    + (f" from {', '.join(sorted(started.from_digests))}" if started.from_digests else ""),
                )
            )
        plan.apply = [dict(o) for o in ordered]
        plan.create_paper_secret = not observed.paper_secret_exists
        if not held:
            plan.delete = [(str(o.get("apiVersion") or _api_version(o)), *kv.key(o)) for o in undesired]
    memory.held_back = held

    # ------------------------------------------------------------------ drift
    desired_deployments = _deployment_refs(rendered.desired)
    heartbeats = readings.heartbeats if readings is not None else []
    findings = detect_drift(
        ObservedState(
            # A Deployment the policy no longer renders is on its way out (pruned by this plan), not drift.
            [d for d in children.deployments if kv.name(d) in desired_deployments],
            children.pods,
            children.configmap(n.config_map_name(rendered.name)),
            heartbeats,
        ),
        _expected(rendered, in_force),
    )
    if applying and not held:
        findings = [f for f in findings if f.kind not in APPLIED_AWAY]
    _react_to_drift(plan, rendered, findings, halts, readings is not None, now, timings)

    # ------------------------------------------------------------------ rollout completion, groups
    if in_force is not None and readings is not None and plan.start_rollout is None:
        if not in_force.targets(rendered.digest, rendered.config_hash):
            waiting = "rollout target differs from the policy; re-applying"
        else:
            waiting = rollout.progress(
                in_force,
                enabled=[c for c in rendered.enabled if _replicas(rendered.spec, c)],
                deployments=children.deployments,
                heartbeats=heartbeats,
                reconcile=readings.reconcile,
                now_ms=now,
            )
        if waiting:
            notes.append(f"rollout: {waiting}")
        else:
            plan.clear_halts.append(n.ROLLOUT_HALT)
            plan.clear_rollout = True
            plan.events.append(
                Event("Normal", "RolloutComplete", f"every component reports {rendered.digest}; entries released")
            )
    elif plan.start_rollout is not None:
        notes.append("rollout: started")
    if readings is not None:
        running = {kv.component(d) for d in children.deployments}
        plan.destroy_groups = [
            (stream, group)
            for stream, group in groups_to_delete(readings.existing_groups, rendered.enabled)
            if group not in running
        ]

    # ------------------------------------------------------------------ status
    after = {**halts, **plan.raise_halts}
    for source in plan.clear_halts:
        after.pop(source, None)
    plan.status = _status(rendered, observed, plan, findings, notes, control, after)
    return plan


def _api_version(obj: Mapping[str, Any]) -> str:
    return "apps/v1" if obj.get("kind") in ("Deployment", "StatefulSet") else "v1"


def _replicas(spec: PolicySpec, component: str) -> int:
    own = spec.components.get(component)
    return 1 if own is None else own.replicas


def _expected(rendered: RenderedPolicy, in_force: rollout.RolloutState | None) -> ExpectedState:
    return ExpectedState(
        image=rendered.spec.image or "",
        config_hash=rendered.config_hash,
        config_data=rendered.config,
        model_digest=rendered.spec.model.digest,
        field_manager=n.MANAGED_BY,
        manifests={kv.key(o): o for o in rendered.desired},
        # Old pods and their heartbeats report the previous digest until they are gone: progress, not drift.
        rolling_from=in_force.from_digests if in_force is not None else frozenset(),
    )


def _react_to_drift(
    plan: PolicyPlan,
    rendered: RenderedPolicy,
    findings: list[DriftFinding],
    halts: Mapping[str, str],
    redis_ok: bool,
    now: int,
    timings: Timings,
) -> None:
    """DESIGN §5: on drift an Event, an automatic entries halt (``operator:drift``) and a forced re-apply that
    also strips foreign fields; the halt is released once nothing differs for ``drift_settle_seconds``."""
    memory = plan.memory
    where = f"{rendered.namespace}/{rendered.name}"
    if findings:
        messages = "; ".join(f.message for f in findings)
        if redis_ok:
            plan.raise_halts.setdefault(n.DRIFT_HALT, f"drift: {summarize(findings)}")
        if messages != memory.drift_messages:
            plan.drift_detected = True
            plan.warnings += [f"{where}: drift: {f.message}" for f in findings]
            plan.events.append(Event("Warning", "DriftDetected", f"{len(findings)} differences: {messages}"))
        memory.drift_messages = messages
        memory.last_drift_ms = now
        fixable = [f for f in findings if f.kind in OBJECT_DRIFT]
        # Not while a rollout waits for its halt: re-applying would roll the new version out unhalted.
        if fixable and not memory.held_back and (now - memory.last_reapply_ms) / 1000 >= timings.reapply_min_seconds:
            memory.last_reapply_ms = now
            if not plan.apply:
                plan.apply = [dict(o) for o in rollout_order(rendered.desired)]
            foreign = {f.object for f in findings if f.kind is DriftKind.FIELD_MANAGER}
            plan.repair = [o for o in rendered.desired if o["kind"] in REPAIRED_KINDS and kv.ref(o) in foreign]
            plan.warnings.append(f"{where}: desired spec applied again after drift")
        return
    if memory.last_drift_ms and (now - memory.last_drift_ms) / 1000 < timings.drift_settle_seconds:
        return  # consistent, but not for long enough yet: a re-apply's pods may still be rolling
    memory.drift_messages = ""
    memory.last_drift_ms = 0
    if redis_ok and n.DRIFT_HALT in halts:
        plan.clear_halts.append(n.DRIFT_HALT)
        plan.events.append(
            Event("Normal", "DriftResolved", "every child matches the policy again; drift halt released")
        )


def policy_of_child(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, policy) whose check a Deployment or Pod event asks for; None: the object is not one of a
    policy's children. kopf filters the watch by labels already; this repeats it (and, for a Deployment, the
    owner's kind), so a server that ignores label selectors cannot make someone else's object a policy's."""
    labels = kv.labels(obj)
    policy_name, namespace = labels.get(n.LABEL_POLICY), kv.namespace(obj)
    if not policy_name or not namespace or labels.get(n.LABEL_MANAGED_BY) != n.MANAGED_BY:
        return None
    # Pods belong to ReplicaSets; a Deployment of ours is owned by its TradingPolicy.
    if obj.get("kind") == "Deployment" and "TradingPolicy" not in kv.owner_kinds(obj):
        return None
    return namespace, str(policy_name)


def seen_digest(
    pods: Sequence[Mapping[str, Any]], deployments: Sequence[Mapping[str, Any]], heartbeats: Sequence[HeartbeatRecord]
) -> str:
    """The digest pods and heartbeats report (several, comma-separated, while they disagree)."""
    digests = {
        digest_of(c.get("imageID") or "")
        for pod in pods
        if not kv.terminating(pod)
        for c in (pod.get("status") or {}).get("containerStatuses") or []
    } | {digest_of(b.image_digest) for b in heartbeats}
    digests.discard("")
    if not digests:
        digests = {kv.template_annotations(d).get(n.IMAGE_DIGEST_ANNOTATION, "") for d in deployments} - {""}
    return ",".join(sorted(digests))


def _status(
    rendered: RenderedPolicy,
    observed: PolicyObservation,
    plan: PolicyPlan,
    findings: list[DriftFinding],
    notes: Sequence[str],
    control: Mapping[str, str],
    halts: Mapping[str, str],
) -> dict[str, Any]:
    readings = observed.redis.readings
    children = observed.children
    inputs = HealthInputs(
        now_ms=observed.now_ms,
        enabled_components=rendered.enabled,
        generation=rendered.generation,
        deployments=children.deployments,
        pods=children.pods,
        heartbeats=readings.heartbeats if readings else [],
        consumer_groups=readings.groups if readings else [],
        dlq_lengths=readings.dlq_lengths if readings else {},
        previous=plan.memory.health,
        open_positions=readings.open_positions if readings else 0,
        reconcile=parse_reconcile_status(readings.reconcile) if readings else None,
        control=control if readings else unreachable_control(observed.redis.target, observed.redis.error or "?"),
        halts=halts if readings else None,
        drift=findings,
        expected_model_digest=rendered.spec.model.digest,
    )
    report = assess(inputs)
    if readings is not None:
        plan.memory.health = report.memory  # stall and DLQ growth compare against the previous check
    message = report.message
    extra = [note for note in notes if note]
    if extra:
        message = f"{message}; {'; '.join(extra)}"
    old = rendered.body.get("status") or {}
    # Status is written as a merge patch: a component no longer enabled must be removed explicitly (None).
    components: dict[str, Any] = {c: None for c in old.get("components") or {} if c not in report.components}
    components.update(report.components)
    return {
        "health": report.health.value,
        "message": message,
        "conditions": merge_conditions(old.get("conditions"), report.conditions, _now(observed.now_ms)),
        "components": components,
        "imageDigest": seen_digest(children.pods, children.deployments, readings.heartbeats if readings else [])
        or None,
        "observedGeneration": rendered.generation,
        "heartbeatAgeSeconds": None,
        **report.summary,
    }


def _now(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def invalid_policy(
    body: Mapping[str, Any], check: PolicyCheck, memory: PolicyMemory, *, announce: bool, now_ms: int
) -> PolicyPlan:
    """Nothing is touched: running children keep running what they run until the spec is fixed. The problems
    are announced once per distinct set, by the spec-change handlers only (a timer may see the policy first,
    and must neither post the Event nor keep the handler from posting it)."""
    problems = check.problems
    plan = PolicyPlan(memory)
    if announce and tuple(problems) != memory.problems:
        plan.warnings.append(f"{kv.namespace(body)}/{kv.name(body)}: invalid spec: {'; '.join(problems)}")
        plan.events.append(Event("Warning", "InvalidSpec", "; ".join(problems)))
        memory.problems = tuple(problems)
    generation = kv.generation(body)
    message = "spec invalid: " + "; ".join(problems)
    new = [condition(ConditionType.READY, False, "SpecInvalid", message, generation)]
    if check.spec is not None:
        # The wiring verdict names the streams nobody produces; it is the reason nothing was rolled out.
        new.append(wiring_condition(check.spec.enabled_components(), generation))
    plan.status = {
        "health": "Invalid",
        "message": message,
        "conditions": merge_conditions((body.get("status") or {}).get("conditions"), new, _now(now_ms)),
        "observedGeneration": generation,
    }
    return plan
