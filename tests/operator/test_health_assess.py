"""Policy health (DESIGN §5, §6): precedence, every reason code, crash reasons, staleness, stalls, DLQ growth."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from quantum_trader.bus.control import parse_control
from quantum_trader.bus.heartbeat import HeartbeatRecord
from quantum_trader.contracts.registry import COMPONENTS, components_for_mode
from quantum_trader_operator.drift import DriftFinding, DriftKind
from quantum_trader_operator.health import (
    CONDITION_REASONS,
    REASON_LEVEL,
    GroupStats,
    Health,
    HealthInputs,
    HealthMemory,
    HealthReport,
    ProgressMark,
    Reason,
    ReconcileStatus,
    assess,
    parse_reconcile_status,
    parse_xinfo_groups,
    termination_text,
)

NOW_MS = 1_714_557_600_000  # 2024-05-01T10:00:00Z
MINUTE = 60_000
PAPER = components_for_mode("paper")
MODEL = "sha256:" + "e" * 64
RELEASED = parse_control({"state": "released", "generation": "3", "scope": "", "flatten": "0"})
ENGAGED = parse_control(
    {"state": "engaged", "generation": "4", "scope": "entries", "reason": "maintenance", "engaged_by": "alice"}
)
CRASH_MESSAGE = (
    "Traceback (most recent call last):\n"
    '  File "/app/quantum_trader/services/governor.py", line 3, in <module>\n'
    "ModuleNotFoundError: No module named 'yaml'\n"
)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- builders -----------------------------------------------------------------------------------


def deployment(
    component: str,
    *,
    desired: int = 1,
    ready: int | None = None,
    available: int | None = None,
    updated: int | None = None,
    replicas: int | None = None,
    generation: int = 2,
    observed: int = 2,
    progressing: tuple[str, str, str] = ("True", "NewReplicaSetAvailable", ""),
    available_message: str = "",
) -> dict[str, Any]:
    available = desired if available is None else available
    status_progressing, reason, message = progressing
    return {
        "kind": "Deployment",
        "metadata": {
            "name": f"qt-{component}",
            "generation": generation,
            "labels": {"app.kubernetes.io/component": component},
        },
        "spec": {"replicas": desired},
        "status": {
            "observedGeneration": observed,
            "replicas": desired if replicas is None else replicas,
            "updatedReplicas": desired if updated is None else updated,
            "readyReplicas": available if ready is None else ready,
            "availableReplicas": available,
            "conditions": [
                {
                    "type": "Available",
                    "status": "True" if available >= desired else "False",
                    "reason": "MinimumReplicasAvailable" if available >= desired else "MinimumReplicasUnavailable",
                    "message": available_message or "Deployment has minimum availability.",
                },
                {"type": "Progressing", "status": status_progressing, "reason": reason, "message": message},
            ],
        },
    }


def running(started_ms: int = NOW_MS - 10 * MINUTE, restarts: int = 0) -> dict[str, Any]:
    return {
        "name": "component",
        "imageID": "ghcr.io/acme/qt@sha256:" + "a" * 64,
        "restartCount": restarts,
        "state": {"running": {"startedAt": iso(started_ms)}},
        "lastState": {},
    }


def crash_looping(
    restarts: int = 7,
    *,
    exit_code: int = 1,
    reason: str = "Error",
    message: str = CRASH_MESSAGE,
    finished_ms: int = NOW_MS - 20_000,
) -> dict[str, Any]:
    return {
        "name": "component",
        "imageID": "ghcr.io/acme/qt@sha256:" + "a" * 64,
        "restartCount": restarts,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container"}},
        "lastState": {
            "terminated": {
                "exitCode": exit_code,
                "reason": reason,
                "message": message,
                "finishedAt": iso(finished_ms),
            }
        },
    }


def waiting(reason: str, message: str) -> dict[str, Any]:
    return {
        "name": "component",
        "imageID": "",
        "restartCount": 0,
        "state": {"waiting": {"reason": reason, "message": message}},
    }


def pod(component: str, *containers: dict[str, Any], name: str = "", terminating: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name or f"qt-{component}-5d8c-0",
        "labels": {"app.kubernetes.io/component": component},
    }
    if terminating:
        metadata["deletionTimestamp"] = iso(NOW_MS)
    return {"kind": "Pod", "metadata": metadata, "status": {"containerStatuses": list(containers or [running()])}}


def beat(
    component: str,
    *,
    age_s: float = 2,
    processed: int = 100,
    model_digest: str = "",
    started_ms: int = NOW_MS - 10 * MINUTE,
    pod_name: str = "",
    groups: dict[str, dict[str, int]] | None = None,
) -> HeartbeatRecord:
    return HeartbeatRecord(
        component=component,
        pod=pod_name or f"qt-{component}-5d8c-0",
        time_ms=int(NOW_MS - age_s * 1000),
        started_ms=started_ms,
        state="running",
        code_version="1.2.3",
        image_digest="sha256:" + "a" * 64,
        model_digest=model_digest,
        control_generation=3,
        counters={"processed": processed},
        groups=groups or {},
    )


def all_groups(lag: int = 0, pending: int = 0, entries_read: int = 1000) -> list[GroupStats]:
    return [
        GroupStats(stream, name, lag, pending, entries_read, consumers=1)
        for name, spec in COMPONENTS.items()
        for stream in spec.inputs
    ]


def healthy(**overrides: Any) -> HealthInputs:
    values: dict[str, Any] = {
        "now_ms": NOW_MS,
        "enabled_components": list(PAPER),
        "generation": 5,
        "deployments": [deployment(c) for c in PAPER],
        "pods": [pod(c) for c in PAPER],
        "heartbeats": [beat(c, model_digest=MODEL if c == "ai-engine" else "") for c in PAPER],
        "consumer_groups": all_groups(),
        "dlq_lengths": {},
        "open_positions": 3,
        "reconcile": ReconcileStatus(matched=True, time_ms=NOW_MS - 20_000, runs=12, findings=0),
        "control": RELEASED,
        "expected_model_digest": MODEL,
    }
    values.update(overrides)
    return HealthInputs(**values)


def with_deployment(inputs: HealthInputs, component: str, **kwargs: Any) -> HealthInputs:
    deployments = [d for d in inputs.deployments if d["metadata"]["labels"]["app.kubernetes.io/component"] != component]
    return replace(inputs, deployments=[*deployments, deployment(component, **kwargs)])


def with_pods(inputs: HealthInputs, component: str, *pods: dict[str, Any]) -> HealthInputs:
    kept = [p for p in inputs.pods if p["metadata"]["labels"]["app.kubernetes.io/component"] != component]
    return replace(inputs, pods=[*kept, *pods])


def with_beats(inputs: HealthInputs, component: str, *beats: HeartbeatRecord) -> HealthInputs:
    kept = [b for b in inputs.heartbeats if b.component != component]
    return replace(inputs, heartbeats=[*kept, *beats])


def with_group(inputs: HealthInputs, stream: str, group: str, **kwargs: Any) -> HealthInputs:
    groups = []
    for g in inputs.consumer_groups:
        groups.append(replace(g, **kwargs) if (g.stream, g.group) == (stream, group) else g)
    return replace(inputs, consumer_groups=groups)


def crash(inputs: HealthInputs) -> HealthInputs:
    return with_pods(inputs, "governor", pod("governor", crash_looping()))


def rolling(inputs: HealthInputs) -> HealthInputs:
    return with_deployment(inputs, "features", updated=0, available=1, progressing=("True", "ReplicaSetUpdated", ""))


def stalled(inputs: HealthInputs) -> HealthInputs:
    # heat-gate: lag growing on harvest.proposal, the group read nothing and the component processed nothing
    inputs = with_group(inputs, "harvest.proposal", "heat-gate", lag=900, entries_read=40)
    inputs = with_beats(inputs, "heat-gate", beat("heat-gate", processed=0))
    mark = ProgressMark(since_ms=NOW_MS - 8 * 60 * MINUTE, lag=40, entries_read=40, processed=0)
    return replace(inputs, previous=HealthMemory(NOW_MS - MINUTE, {}, {"harvest.proposal/heat-gate": mark}))


def drift_finding(kind: DriftKind = DriftKind.IMAGE_ID, component: str = "governor") -> DriftFinding:
    return DriftFinding(kind, component, f"Pod/qt-{component}-1", "sha256:a", "sha256:b", f"{component} runs sha256:b")


# --- the scenario table: one fault each, the health it gives and the leading reason ---------------

Transform = Callable[[HealthInputs], HealthInputs]

SCENARIOS: list[tuple[str, Transform, Health, Reason]] = [
    ("healthy", lambda i: i, Health.HEALTHY, Reason.ALL_HEALTHY),
    (
        "spec invalid",
        lambda i: replace(i, spec_problems=["image is a tag", "live needs confirmation"]),
        Health.INVALID,
        Reason.SPEC_INVALID,
    ),
    (
        "no market data",
        lambda i: replace(i, enabled_components=[c for c in PAPER if c != "market-data"]),
        Health.INVALID,
        Reason.WIRING_INVALID,
    ),
    (
        "unknown component",
        lambda i: replace(i, enabled_components=[*PAPER, "heatgate"]),
        Health.INVALID,
        Reason.WIRING_INVALID,
    ),
    ("control missing", lambda i: replace(i, control=None), Health.HALTED, Reason.CONTROL_UNAVAILABLE),
    ("control unreadable", lambda i: replace(i, control={"state": "weird"}), Health.HALTED, Reason.CONTROL_UNAVAILABLE),
    ("kill switch", lambda i: replace(i, control=ENGAGED), Health.HALTED, Reason.KILL_SWITCH_ENGAGED),
    (
        "kill switch exits",
        lambda i: replace(i, control={"state": "engaged", "generation": "5", "scope": "exits"}),
        Health.HALTED,
        Reason.KILL_SWITCH_ENGAGED,
    ),
    (
        "automatic halt",
        lambda i: replace(
            i,
            control={"state": "released", "generation": "3"},
            halts={"reconciler": "unexplained drift on BTCUSDT: QTY_MISMATCH"},
        ),
        Health.HALTED,
        Reason.AUTOMATIC_HALT,
    ),
    (
        # The operator's own rollout halt is part of every rollout: Progressing with its own condition, no kill switch.
        "rollout halt",
        lambda i: replace(
            i,
            control={"state": "released", "generation": "3"},
            halts={"operator:rollout": "rolling out sha256:bbbb config sha256:cccc"},
        ),
        Health.PROGRESSING,
        Reason.ROLLOUT_IN_PROGRESS,
    ),
    (
        # The drift halt stops entries because something differs: Halted, as an automatic halt.
        "drift halt during a rollout",
        lambda i: replace(
            i,
            control={"state": "released", "generation": "3"},
            halts={"operator:rollout": "rolling out sha256:bbbb", "operator:drift": "drift: image:governor"},
        ),
        Health.HALTED,
        Reason.AUTOMATIC_HALT,
    ),
    ("crash loop", crash, Health.DEGRADED, Reason.CRASH_LOOP),
    (
        "image pull",
        lambda i: with_pods(
            i,
            "governor",
            pod("governor", waiting("ImagePullBackOff", 'Back-off pulling image "ghcr.io/acme/qt@sha256:aa"')),
        ),
        Health.DEGRADED,
        Reason.IMAGE_PULL_FAILED,
    ),
    (
        "create config error",
        lambda i: with_pods(
            i, "apply-layer", pod("apply-layer", waiting("CreateContainerConfigError", 'secret "binance" not found'))
        ),
        Health.DEGRADED,
        Reason.CONTAINER_CREATE_FAILED,
    ),
    (
        "deadline",
        lambda i: with_deployment(
            i,
            "governor",
            available=0,
            updated=1,
            progressing=(
                "False",
                "ProgressDeadlineExceeded",
                'ReplicaSet "qt-governor-5d8c" has timed out progressing.',
            ),
        ),
        Health.DEGRADED,
        Reason.ROLLOUT_STUCK,
    ),
    (
        "unavailable",
        lambda i: with_deployment(i, "governor", available=0, available_message="readiness probe failed"),
        Health.DEGRADED,
        Reason.UNAVAILABLE,
    ),
    ("drift", lambda i: replace(i, drift=[drift_finding()]), Health.DEGRADED, Reason.DRIFT),
    ("heartbeat missing", lambda i: with_beats(i, "governor"), Health.DEGRADED, Reason.HEARTBEAT_MISSING),
    (
        "heartbeat stale",
        lambda i: with_beats(i, "governor", beat("governor", age_s=45)),
        Health.DEGRADED,
        Reason.HEARTBEAT_STALE,
    ),
    ("stalled consumer", stalled, Health.DEGRADED, Reason.CONSUMER_STALLED),
    ("pending", lambda i: with_group(i, "apply.plan", "governor", pending=7996), Health.DEGRADED, Reason.PENDING_HIGH),
    (
        "dlq growing",
        lambda i: replace(i, dlq_lengths={"apply.plan": 7}, previous=HealthMemory(NOW_MS - MINUTE, {"apply.plan": 3})),
        Health.DEGRADED,
        Reason.DEAD_LETTER_GROWING,
    ),
    (
        "reconcile stale",
        lambda i: replace(i, reconcile=ReconcileStatus(True, NOW_MS - 10 * MINUTE, 9, 0)),
        Health.DEGRADED,
        Reason.RECONCILE_STALE,
    ),
    ("never reconciled", lambda i: replace(i, reconcile=None), Health.DEGRADED, Reason.RECONCILE_STALE),
    (
        "deployment missing",
        lambda i: replace(i, deployments=[d for d in i.deployments if d["metadata"]["name"] != "qt-harvest"]),
        Health.PROGRESSING,
        Reason.DEPLOYMENT_PENDING,
    ),
    ("rolling: updated", rolling, Health.PROGRESSING, Reason.ROLLING_OUT),
    (
        "rolling: generation",
        lambda i: with_deployment(i, "features", generation=3, observed=2),
        Health.PROGRESSING,
        Reason.ROLLING_OUT,
    ),
    (
        "rolling: old replicas",
        lambda i: with_deployment(i, "features", replicas=2),
        Health.PROGRESSING,
        Reason.ROLLING_OUT,
    ),
    (
        "rolling: starting",
        lambda i: with_deployment(i, "features", available=0, progressing=("True", "ReplicaSetUpdated", "")),
        Health.PROGRESSING,
        Reason.ROLLING_OUT,
    ),
    # the conditions' own states, on otherwise healthy policies
    (
        "positions mismatch",
        lambda i: replace(i, reconcile=ReconcileStatus(False, NOW_MS - 5000, 13, 2)),
        Health.HEALTHY,
        Reason.ALL_HEALTHY,
    ),
    (
        "reconciler starting",
        lambda i: with_beats(replace(i, reconcile=None), "reconciler", beat("reconciler", started_ms=NOW_MS - 5000)),
        Health.HEALTHY,
        Reason.ALL_HEALTHY,
    ),
    (
        "reconciler disabled",
        lambda i: replace(i, enabled_components=[c for c in PAPER if c != "reconciler"]),
        Health.HEALTHY,
        Reason.ALL_HEALTHY,
    ),
    ("no model", lambda i: replace(i, expected_model_digest=""), Health.HEALTHY, Reason.ALL_HEALTHY),
    (
        "no pods listed and no heartbeats yet",
        lambda i: replace(i, pods=[], heartbeats=[]),
        Health.PROGRESSING,
        Reason.COMPONENTS_NOT_READY,
    ),
    ("model not reported", lambda i: with_beats(i, "ai-engine", beat("ai-engine")), Health.HEALTHY, Reason.ALL_HEALTHY),
    (
        "model drift",
        lambda i: replace(i, drift=[drift_finding(DriftKind.MODEL_DIGEST, "ai-engine")]),
        Health.DEGRADED,
        Reason.DRIFT,
    ),
]


def run(transform: Transform) -> HealthReport:
    return assess(transform(healthy()))


@pytest.mark.parametrize(("name", "transform", "health", "reason"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_scenario(name, transform, health, reason):
    report = run(transform)
    assert (report.health, report.reason) == (health, reason.value), report.findings
    ready = report.conditions[0]
    assert (ready.type, ready.status, ready.reason) == (
        "Ready",
        "True" if health is Health.HEALTHY else "False",
        reason.value,
    )
    assert all(c.observed_generation == 5 for c in report.conditions)


def condition_reasons(report: HealthReport) -> dict[str, str]:
    return {c.type: c.reason for c in report.conditions}


def test_every_reason_code_is_reached():
    reports = [run(s[1]) for s in SCENARIOS]
    finding_reasons = {f.reason for r in reports for f in r.findings}
    assert finding_reasons == set(Reason) - {Reason.ALL_HEALTHY}
    assert {r.reason for r in reports} == {r.value for r in Reason}
    for type_, declared in CONDITION_REASONS.items():
        reached = {condition_reasons(r)[type_] for r in reports}
        assert reached == declared, type_
    assert set(REASON_LEVEL) == set(Reason)


def test_conditions_come_in_the_documented_order():
    report = run(lambda i: i)
    assert [c.type for c in report.conditions] == [
        "Ready",
        "ImageConsistent",
        "WiringValid",
        "ModelConsistent",
        "KillSwitchEngaged",
        "RolloutInProgress",
        "ExchangeReconciled",
    ]
    assert [c.status for c in report.conditions] == ["True", "True", "True", "True", "False", "False", "True"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("healthy", {"ImageConsistent": "True", "ModelConsistent": "True", "KillSwitchEngaged": "False"}),
        ("drift", {"ImageConsistent": "False", "ModelConsistent": "True"}),
        ("model drift", {"ImageConsistent": "False", "ModelConsistent": "False"}),
        ("model not reported", {"ModelConsistent": "Unknown"}),
        ("kill switch", {"KillSwitchEngaged": "True", "RolloutInProgress": "False"}),
        ("automatic halt", {"KillSwitchEngaged": "True"}),
        ("rollout halt", {"KillSwitchEngaged": "False", "RolloutInProgress": "True"}),
        ("drift halt during a rollout", {"KillSwitchEngaged": "True", "RolloutInProgress": "True"}),
        ("control missing", {"KillSwitchEngaged": "True"}),
        ("positions mismatch", {"ExchangeReconciled": "False"}),
        ("reconcile stale", {"ExchangeReconciled": "False"}),
        ("reconciler starting", {"ExchangeReconciled": "Unknown"}),
        ("reconciler disabled", {"ExchangeReconciled": "Unknown"}),
        ("no market data", {"WiringValid": "False"}),
    ],
)
def test_condition_statuses(name, expected):
    transform = next(s[1] for s in SCENARIOS if s[0] == name)
    statuses = {c.type: c.status for c in run(transform).conditions}
    for type_, status in expected.items():
        assert statuses[type_] == status, type_


# --- precedence ---------------------------------------------------------------------------------

FAULTS: list[tuple[Health, Transform]] = [
    (Health.INVALID, lambda i: replace(i, spec_problems=["image is a tag"])),
    (Health.HALTED, lambda i: replace(i, control=ENGAGED)),
    (Health.DEGRADED, crash),
    (Health.PROGRESSING, rolling),
]


@pytest.mark.parametrize("present", list(itertools.product([False, True], repeat=len(FAULTS))))
def test_precedence_matrix(present):
    inputs = healthy()
    for (_, fault), on in zip(FAULTS, present, strict=True):
        if on:
            inputs = fault(inputs)
    report = assess(inputs)
    expected = next((health for (health, _), on in zip(FAULTS, present, strict=True) if on), Health.HEALTHY)
    assert report.health is expected
    # every fault stays visible in the findings even when a higher level leads
    levels = {f.level for f in report.findings}
    assert levels == {health for (health, _), on in zip(FAULTS, present, strict=True) if on}


def test_the_message_counts_what_the_leading_finding_hides():
    report = assess(crash(rolling(replace(healthy(), control=ENGAGED))))
    assert report.health is Health.HALTED
    # halted leads, and the first broken thing is named with it: a rollout runs halted, and its crash must show
    assert report.message.startswith("kill switch engaged scope=entries reason=maintenance by=alice")
    assert "; governor: CrashLoopBackOff (last exit 1 Error: ModuleNotFoundError" in report.message
    assert report.message.endswith("(+1 more)")


def test_a_degraded_lead_does_not_repeat_itself():
    report = assess(crash(rolling(healthy())))
    assert report.message.count("CrashLoopBackOff") == 1
    assert report.message.endswith("(+1 more)")


# --- crash loops and container states -----------------------------------------------------------


def finding_messages(report: HealthReport, reason: Reason) -> list[str]:
    return [f.message for f in report.findings if f.reason is reason]


def test_a_crash_loop_names_the_component_the_exit_and_the_exception():
    report = run(crash)
    assert report.health is Health.DEGRADED
    assert report.message == (
        "governor: CrashLoopBackOff (last exit 1 Error: ModuleNotFoundError: No module named 'yaml'); "
        "pod qt-governor-5d8c-0, 7 restarts"
    )
    detail = report.components["governor"]
    assert (detail["restarts"], detail["lastTerminationReason"], detail["ready"]) == (7, "Error", False)
    ready = report.conditions[0]
    assert "ModuleNotFoundError: No module named 'yaml'" in ready.message
    # the crash explains the unavailability; it is not reported twice
    assert finding_messages(report, Reason.UNAVAILABLE) == []


def test_crash_loop_with_an_unavailable_deployment_reports_the_crash_not_the_count():
    report = run(lambda i: with_deployment(crash(i), "governor", available=0))
    assert [f.reason for f in report.findings] == [Reason.CRASH_LOOP]


@pytest.mark.parametrize(
    ("terminated", "text"),
    [
        (
            {"exitCode": 1, "reason": "Error", "message": CRASH_MESSAGE},
            "last exit 1 Error: ModuleNotFoundError: No module named 'yaml'",
        ),
        ({"exitCode": 137, "reason": "OOMKilled"}, "last exit 137 OOMKilled"),
        (
            {
                "exitCode": 2,
                "reason": "Error",
                "message": '{"level":"error","msg":"setting missing","error":"QT_CONFIG"}\n',
            },
            "last exit 2 Error: setting missing: QT_CONFIG",
        ),
        ({"exitCode": 2, "message": '{"level":"error","msg":"component failed"}'}, "last exit 2: component failed"),
        ({"exitCode": 1, "message": "x" * 500}, "last exit 1: " + "x" * 199 + "…"),
        ({"exitCode": 1, "message": "\n\n"}, "last exit 1"),
        ({}, "last exit ?"),
    ],
)
def test_termination_text(terminated, text):
    assert termination_text(terminated) == text


def test_the_pod_with_the_most_restarts_speaks_for_the_component():
    report = run(
        lambda i: with_pods(
            i,
            "governor",
            pod("governor", crash_looping(3, exit_code=2, message="first"), name="qt-governor-a"),
            pod("governor", crash_looping(9, exit_code=1, message="second"), name="qt-governor-b"),
        )
    )
    (message,) = finding_messages(report, Reason.CRASH_LOOP)
    assert message == (
        "governor: CrashLoopBackOff (last exit 1 Error: second); pod qt-governor-b, 9 restarts (and 1 more containers)"
    )
    assert report.components["governor"]["restarts"] == 12


def test_the_latest_termination_is_the_detail():
    report = run(
        lambda i: with_pods(
            i,
            "governor",
            pod("governor", crash_looping(3, message="older", finished_ms=NOW_MS - 5 * MINUTE), name="qt-governor-a"),
            pod(
                "governor",
                running(restarts=1)
                | {
                    "lastState": {
                        "terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": iso(NOW_MS - MINUTE)}
                    }
                },
                name="qt-governor-b",
            ),
        )
    )
    assert report.components["governor"]["lastTerminationReason"] == "OOMKilled"


def test_a_running_container_that_restarted_is_not_degraded_but_counted():
    report = run(lambda i: with_pods(i, "governor", pod("governor", running(restarts=2))))
    assert report.health is Health.HEALTHY
    assert report.components["governor"]["restarts"] == 2


def test_terminating_pods_are_the_past():
    report = run(
        lambda i: with_pods(
            i, "governor", pod("governor"), pod("governor", crash_looping(), name="old", terminating=True)
        )
    )
    assert report.health is Health.HEALTHY


def test_an_init_container_crash_loop_counts():
    def transform(i: HealthInputs) -> HealthInputs:
        broken = pod("governor")
        broken["status"]["initContainerStatuses"] = [crash_looping(4, message="redis unreachable")]
        return with_pods(i, "governor", broken)

    assert run(transform).reason == Reason.CRASH_LOOP.value


def test_pods_of_disabled_components_are_ignored():
    enabled = [c for c in PAPER if c not in ("harvest", "heat-gate")]
    report = run(
        lambda i: with_pods(replace(i, enabled_components=enabled), "harvest", pod("harvest", crash_looping()))
    )
    assert report.health is Health.HEALTHY
    assert "harvest" not in report.components


# --- rollout --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"generation": 3, "observed": 2}, "spec generation 3 not observed yet (at 2)"),
        ({"desired": 2, "updated": 1, "available": 2}, "1/2 replicas updated"),
        ({"replicas": 3, "desired": 2}, "1 old replicas terminating"),
        ({"available": 0, "progressing": ("True", "ReplicaSetUpdated", "")}, "0/1 updated replicas available"),
    ],
)
def test_rolling_out_says_what_it_waits_for(kwargs, fragment):
    report = run(lambda i: with_deployment(i, "features", **kwargs))
    assert report.health is Health.PROGRESSING
    assert report.message == f"features: rolling out qt-features: {fragment}"


def test_a_deployment_without_conditions_yet_is_progressing_not_unavailable():
    def transform(i: HealthInputs) -> HealthInputs:
        fresh = deployment("features", available=0)
        fresh["status"]["conditions"] = []
        kept = [d for d in i.deployments if d["metadata"]["name"] != "qt-features"]
        return replace(i, deployments=[*kept, fresh])

    assert run(transform).health is Health.PROGRESSING


def test_unavailable_after_the_rollout_quotes_the_deployment():
    report = run(lambda i: with_deployment(i, "governor", available=0, available_message="readiness probe failed"))
    assert report.message == "governor: 0/1 available (readiness probe failed)"
    assert report.summary["ready"] == f"{len(PAPER) - 1}/{len(PAPER)}"
    detail = report.components["governor"]
    assert (detail["ready"], detail["replicas"], detail["readyReplicas"]) == (False, 1, 0)


def test_a_component_scaled_to_zero_is_ready_and_owes_no_heartbeat():
    report = run(lambda i: with_pods(with_beats(with_deployment(i, "harvest", desired=0), "harvest"), "harvest"))
    assert report.health is Health.HEALTHY
    detail = report.components["harvest"]
    assert (detail["ready"], detail["replicas"], detail["readyReplicas"]) == (True, 0, 0)
    assert report.summary["ready"] == f"{len(PAPER)}/{len(PAPER)}"


def test_a_pod_still_terminating_after_scaling_to_zero_owes_no_heartbeat():
    report = run(lambda i: with_beats(with_deployment(i, "harvest", desired=0), "harvest"))
    assert report.health is Health.HEALTHY
    assert report.components["harvest"]["ready"] is True


def test_a_lingering_heartbeat_of_a_component_scaled_to_zero_is_not_stale():
    report = run(lambda i: with_beats(with_deployment(i, "harvest", desired=0), "harvest", beat("harvest", age_s=600)))
    assert report.health is Health.HEALTHY


# --- heartbeats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age_s", "stale"),
    [(0, False), (29.9, False), (30, False), (30.1, True), (45, True), (8 * 3600, True)],
)
def test_stale_heartbeat(age_s, stale):
    report = run(lambda i: with_beats(i, "governor", beat("governor", age_s=age_s)))
    assert (Reason.HEARTBEAT_STALE in {f.reason for f in report.findings}) is stale
    assert report.components["governor"]["heartbeatAgeSeconds"] == round(age_s, 1)


def test_stale_message_names_pod_and_age():
    report = run(lambda i: with_beats(i, "governor", beat("governor", age_s=45)))
    assert report.message == "governor: last heartbeat 45s ago from pod qt-governor-5d8c-0 (limit 30s)"
    assert report.components["governor"]["ready"] is False


def two_replicas(inputs: HealthInputs, *beats: HeartbeatRecord) -> HealthInputs:
    inputs = with_deployment(inputs, "governor", desired=2)
    inputs = with_pods(inputs, "governor", pod("governor", name="qt-governor-a"), pod("governor", name="qt-governor-b"))
    return with_beats(inputs, "governor", *beats)


@pytest.mark.parametrize(
    ("beats", "reasons", "age"),
    [
        ((beat("governor", pod_name="qt-governor-a"), beat("governor", pod_name="qt-governor-b")), set(), 2.0),
        # the newest heartbeat of each pod counts
        (
            (
                beat("governor", pod_name="qt-governor-a", age_s=300),
                beat("governor", pod_name="qt-governor-a", age_s=1),
                beat("governor", pod_name="qt-governor-b", age_s=3),
            ),
            set(),
            3.0,
        ),
        # one wedged replica shows although the other is fine
        (
            (beat("governor", pod_name="qt-governor-a"), beat("governor", pod_name="qt-governor-b", age_s=50)),
            {Reason.HEARTBEAT_STALE},
            50.0,
        ),
        ((beat("governor", pod_name="qt-governor-a"),), {Reason.HEARTBEAT_MISSING}, 2.0),
        # a heartbeat of a pod that is gone lingers until its TTL: it neither helps nor hurts
        (
            (
                beat("governor", pod_name="qt-governor-a"),
                beat("governor", pod_name="qt-governor-b"),
                beat("governor", pod_name="qt-governor-old", age_s=14),
            ),
            set(),
            2.0,
        ),
        (
            (beat("governor", pod_name="qt-governor-a"), beat("governor", pod_name="qt-governor-old")),
            {Reason.HEARTBEAT_MISSING},
            2.0,
        ),
    ],
)
def test_every_replica_heartbeats(beats, reasons, age):
    report = run(lambda i: two_replicas(i, *beats))
    assert {f.reason for f in report.findings} == reasons
    assert report.components["governor"]["heartbeatAgeSeconds"] == age
    assert report.components["governor"]["ready"] is not reasons


def test_without_pods_the_component_heartbeats_are_judged_as_a_whole():
    inputs = replace(healthy(), pods=[])
    assert assess(inputs).health is Health.HEALTHY
    stale = assess(with_beats(inputs, "governor", beat("governor", pod_name="x", age_s=40)))
    assert stale.reason == Reason.HEARTBEAT_STALE.value
    silent = assess(with_beats(inputs, "governor"))
    assert silent.components["governor"]["ready"] is False  # nobody heartbeats: not ready
    # no pod known to owe a heartbeat, so nothing is broken, but the policy is not Healthy below N/N
    assert (silent.health, silent.reason) == (Health.PROGRESSING, Reason.COMPONENTS_NOT_READY.value)
    assert "waiting for governor" in silent.message


def test_the_component_container_uptime_decides_not_a_sidecar():
    sidecar = running(started_ms=NOW_MS - 5000) | {"name": "istio-proxy"}
    ours = running(started_ms=NOW_MS - 10 * MINUTE) | {"name": "governor"}
    report = run(lambda i: with_beats(with_pods(i, "governor", pod("governor", ours, sidecar)), "governor"))
    assert [f.reason for f in report.findings] == [Reason.HEARTBEAT_MISSING]


def test_a_crash_looping_container_owes_no_heartbeat_even_beside_a_running_sidecar():
    sidecar = running() | {"name": "istio-proxy"}
    ours = crash_looping() | {"name": "governor"}
    report = run(lambda i: with_beats(with_pods(i, "governor", pod("governor", ours, sidecar)), "governor"))
    assert [f.reason for f in report.findings] == [Reason.CRASH_LOOP]


@pytest.mark.parametrize(("running_for_s", "missing"), [(5, False), (30, False), (31, True), (600, True)])
def test_missing_heartbeat_waits_for_the_first_one(running_for_s, missing):
    report = run(
        lambda i: with_beats(
            with_pods(i, "governor", pod("governor", running(started_ms=NOW_MS - running_for_s * 1000))), "governor"
        )
    )
    assert (Reason.HEARTBEAT_MISSING in {f.reason for f in report.findings}) is missing
    assert "heartbeatAgeSeconds" not in report.components["governor"]


def test_summary_heartbeat_age_is_the_oldest_component():
    report = run(lambda i: with_beats(i, "harvest", beat("harvest", age_s=12.34)))
    assert report.summary["heartbeatAgeSeconds"] == 12.3


# --- consumers: lag, pending, stalls ----------------------------------------------------------------


def test_the_production_stall_heat_gate_idle_for_eight_hours():
    report = run(stalled)
    assert report.health is Health.DEGRADED
    assert report.message == "heat-gate: stalled on harvest.proposal: lag 40 -> 900 with nothing processed for 28800s"
    assert report.memory.progress["harvest.proposal/heat-gate"].since_ms == NOW_MS - 8 * 60 * MINUTE


def two_checks(
    first: dict[str, Any], second: dict[str, Any], gap_ms: int = 10 * MINUTE, processed: tuple[int, int] = (0, 0)
) -> HealthReport:
    """assess twice, 'gap_ms' apart, with the heat-gate group and counters given for each check."""
    base = healthy()
    one = with_beats(
        with_group(base, "harvest.proposal", "heat-gate", **first),
        "heat-gate",
        beat("heat-gate", processed=processed[0]),
    )
    memory = assess(
        replace(
            one, now_ms=NOW_MS - gap_ms, heartbeats=[replace(b, time_ms=b.time_ms - gap_ms) for b in one.heartbeats]
        )
    ).memory
    two = with_beats(
        with_group(base, "harvest.proposal", "heat-gate", **second),
        "heat-gate",
        beat("heat-gate", processed=processed[1]),
    )
    return assess(replace(two, previous=memory))


@pytest.mark.parametrize(
    ("first", "second", "gap_ms", "processed", "is_stalled"),
    [
        ({"lag": 10, "entries_read": 5}, {"lag": 50, "entries_read": 5}, 10 * MINUTE, (0, 0), True),
        ({"lag": 10, "entries_read": 5}, {"lag": 10, "entries_read": 5}, 10 * MINUTE, (0, 0), True),  # flat backlog
        ({"lag": 10, "entries_read": 5}, {"lag": 50, "entries_read": 5}, MINUTE, (0, 0), False),  # not long enough
        ({"lag": 10, "entries_read": 5}, {"lag": 50, "entries_read": 9}, 10 * MINUTE, (0, 0), False),  # read more
        ({"lag": 10, "entries_read": 5}, {"lag": 50, "entries_read": 5}, 10 * MINUTE, (3, 8), False),  # processed
        ({"lag": 10, "entries_read": 5}, {"lag": 50, "entries_read": 5}, 10 * MINUTE, (8, 0), False),  # restarted
        ({"lag": 0, "entries_read": 5}, {"lag": 0, "entries_read": 5}, 10 * MINUTE, (0, 0), False),  # idle, no work
        ({"lag": 10, "entries_read": 5}, {"lag": None, "entries_read": 5}, 10 * MINUTE, (0, 0), False),  # unknown
    ],
)
def test_stalled_consumer(first, second, gap_ms, processed, is_stalled):
    report = two_checks(first, second, gap_ms, processed)
    assert (Reason.CONSUMER_STALLED in {f.reason for f in report.findings}) is is_stalled


def test_a_stall_is_measured_from_the_last_progress_not_the_last_check():
    """Checks every 30 s: no single gap is long enough, yet the consumer has been stuck for minutes."""
    inputs = with_beats(
        with_group(healthy(), "harvest.proposal", "heat-gate", lag=5, entries_read=5),
        "heat-gate",
        beat("heat-gate", processed=0),
    )
    memory = None
    stalls = []
    for step in range(10):
        now = NOW_MS + step * 30_000
        report = assess(
            replace(
                inputs,
                now_ms=now,
                previous=memory,
                heartbeats=[replace(b, time_ms=now - 1000) for b in inputs.heartbeats],
            )
        )
        memory = report.memory
        stalls.append(Reason.CONSUMER_STALLED in {f.reason for f in report.findings})
    assert stalls == [False, False, False, False, True, True, True, True, True, True]


def test_pending_above_the_limit():
    report = run(lambda i: with_group(i, "apply.plan", "governor", pending=7996))
    assert report.message == "governor: 7996 pending on apply.plan (limit 500); delivered but never acknowledged"
    assert run(lambda i: with_group(i, "apply.plan", "governor", pending=500)).health is Health.HEALTHY


def test_lag_and_pending_columns_sum_the_enabled_groups():
    def transform(i: HealthInputs) -> HealthInputs:
        i = with_group(i, "apply.plan", "governor", lag=1_500_000, pending=481)
        i = with_group(i, "market.tick", "features", lag=20, pending=3)
        return replace(i, consumer_groups=[*i.consumer_groups, GroupStats("market.tick", "old-tool", 999, 999)])

    report = run(transform)
    assert (report.summary["lag"], report.summary["pending"]) == (1_500_020, 484)
    assert (report.components["governor"]["lag"], report.components["governor"]["pending"]) == (1_500_000, 481)


def test_heartbeat_groups_fill_in_when_xinfo_is_missing():
    def transform(i: HealthInputs) -> HealthInputs:
        groups = [g for g in i.consumer_groups if g.group != "exit-brain"]
        beats = [
            beat(
                "exit-brain",
                pod_name="a",
                groups={"market.tick": {"lag": 7, "pending": 1}, "position.snapshot": {"lag": -1, "pending": 0}},
            ),
            beat("exit-brain", pod_name="b", groups={"market.tick": {"lag": 9, "pending": 0}}),
        ]
        return with_beats(replace(i, consumer_groups=groups), "exit-brain", *beats)

    report = run(transform)
    detail = report.components["exit-brain"]
    assert (detail["lag"], detail["pending"]) == (9, 1)
    # -1 is "Redis could not compute the lag": unknown, so no progress mark to judge a stall by
    assert "market.tick/exit-brain" in report.memory.progress
    assert "position.snapshot/exit-brain" not in report.memory.progress


# --- dead letters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "now", "growing"),
    [
        (None, {"apply.plan": 7}, False),  # first check: nothing to compare with
        ({"apply.plan": 7}, {"apply.plan": 7}, False),
        ({"apply.plan": 3}, {"apply.plan": 7}, True),
        ({}, {"apply.plan": 1}, True),
        ({"apply.plan": 9}, {"apply.plan": 2}, False),  # trimmed or drained
    ],
)
def test_dead_letter_growth(before, now, growing):
    previous = None if before is None else HealthMemory(NOW_MS - MINUTE, before)
    report = assess(healthy(dlq_lengths=now, previous=previous))
    assert (report.health is Health.DEGRADED) is growing
    assert report.memory.dlq_lengths == now


def test_dead_letter_message():
    report = assess(healthy(dlq_lengths={"apply.plan.dlq": 7}, previous=HealthMemory(0, {"apply.plan.dlq": 3})))
    assert report.message == "apply.plan.dlq grew from 3 to 7 since the last check"


# --- kill switch, reconcile, drift, summary -----------------------------------------------------------


def test_control_as_raw_hash_with_halts():
    report = assess(healthy(control={"state": "released", "generation": "3"}, halts={"reconciler": "drift on ETHUSDT"}))
    assert report.health is Health.HALTED
    assert report.message == "entries halted automatically: reconciler: drift on ETHUSDT"


def test_both_a_person_and_an_automatic_halt_are_listed():
    report = assess(healthy(control=replace(ENGAGED, halts=("reconciler: x",))))
    assert [f.reason for f in report.findings] == [Reason.KILL_SWITCH_ENGAGED, Reason.AUTOMATIC_HALT]


def test_drift_summary_and_condition_message():
    findings = [drift_finding(DriftKind.IMAGE), drift_finding(DriftKind.IMAGE_ID), drift_finding(DriftKind.CONFIG, "")]
    report = assess(healthy(drift=findings))
    assert report.summary["drift"] == "image:governor,+2"
    image = next(c for c in report.conditions if c.type == "ImageConsistent")
    assert image.message.startswith("image:governor,+2: governor runs sha256:b")


def test_summary_columns_of_a_healthy_policy():
    report = run(lambda i: i)
    assert report.summary == {
        "ready": f"{len(PAPER)}/{len(PAPER)}",
        "openPositions": 3,
        "lag": 0,
        "pending": 0,
        "drift": "none",
        "heartbeatAgeSeconds": 2.0,
    }
    assert set(report.components) == set(PAPER)
    assert report.components["governor"] == {
        "ready": True,
        "replicas": 1,
        "readyReplicas": 1,
        "lag": 0,
        "pending": 0,
        "restarts": 0,
        "heartbeatAgeSeconds": 2.0,
    }


def test_findings_are_deterministic():
    def everything(i: HealthInputs) -> HealthInputs:
        return stalled(crash(rolling(replace(i, drift=[drift_finding()], control=ENGAGED))))

    first = run(everything)
    shuffled = everything(healthy())
    shuffled = replace(
        shuffled,
        deployments=shuffled.deployments[::-1],
        pods=shuffled.pods[::-1],
        heartbeats=shuffled.heartbeats[::-1],
        consumer_groups=shuffled.consumer_groups[::-1],
    )
    assert assess(shuffled).findings == first.findings


# --- parsers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        (None, None),
        ({}, None),
        ({"matched": "1", "time": "1000", "runs": "4", "findings": "0"}, ReconcileStatus(True, 1000, 4, 0)),
        ({"matched": "0", "time": "1000", "runs": "5", "findings": "2"}, ReconcileStatus(False, 1000, 5, 2)),
        ({"matched": "1", "time": "1000"}, ReconcileStatus(True, 1000, 0, 0)),
        ({"matched": "1"}, None),
        ({"matched": "1", "time": "soon"}, None),
    ],
)
def test_parse_reconcile_status(raw, parsed):
    assert parse_reconcile_status(raw) == parsed


def test_parse_xinfo_groups_as_redis_py_returns_them():
    rows = [
        {"name": b"governor", "consumers": 2, "pending": 3, "last-delivered-id": b"1-0", "entries-read": 10, "lag": 4},
        {"name": "audit", "consumers": 0, "pending": 0, "last-delivered-id": "0-0", "entries-read": None, "lag": None},
    ]
    assert parse_xinfo_groups("apply.plan", rows) == [
        GroupStats("apply.plan", "governor", 4, 3, 10, 2),
        GroupStats("apply.plan", "audit", None, 0, None, 0),
    ]
