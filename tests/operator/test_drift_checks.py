"""Drift checks (DESIGN §5): every check positive and negative, imageID formats, managedFields cases, ordering."""

from __future__ import annotations

import random
import subprocess
import sys
from typing import Any

import pytest

from quantum_trader.bus.heartbeat import HeartbeatRecord
from quantum_trader_operator.drift import (
    COMPONENT_LABEL,
    CONFIG_HASH_ANNOTATION,
    IMAGE_DIGEST_ANNOTATION,
    DriftFinding,
    DriftKind,
    ExpectedState,
    ObservedState,
    config_edited,
    deployment_image,
    detect_drift,
    digest_of,
    foreign_field_manager,
    heartbeat_versions,
    pod_image_ids,
    pod_template_annotations,
    summarize,
)

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
OLD = "sha256:" + "c" * 64
IMAGE = f"ghcr.io/acme/quantum-trader@{DIGEST}"
MANAGER = "quantum-trader-operator"
CONFIG = {"config.yaml": "mode: paper\nsymbols: [BTCUSDT]\n"}
CONFIG_HASH = "sha256:" + "1" * 64


def deployment(
    component: str = "governor",
    image: str = IMAGE,
    *,
    annotations: dict[str, str] | None = None,
    init_image: str | None = None,
    sidecar: str | None = None,
    managed_fields: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    containers = [{"name": "component", "image": image}]
    if sidecar:
        containers.append({"name": "istio-proxy", "image": sidecar})
    spec: dict[str, Any] = {"containers": containers}
    if init_image:
        spec["initContainers"] = [{"name": "wait-redis", "image": init_image}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"qt-{component}",
            "labels": {"app.kubernetes.io/component": component},
            "managedFields": managed_fields or [],
        },
        "spec": {
            "replicas": 1,
            "template": {
                "metadata": {
                    "annotations": (
                        {CONFIG_HASH_ANNOTATION: CONFIG_HASH, IMAGE_DIGEST_ANNOTATION: DIGEST}
                        if annotations is None
                        else annotations
                    )
                },
                "spec": spec,
            },
        },
    }


def pod(
    component: str = "governor",
    image_id: str = f"ghcr.io/acme/quantum-trader@{DIGEST}",
    *,
    name: str | None = None,
    init_image_id: str | None = None,
    terminating: bool = False,
) -> dict[str, Any]:
    status: dict[str, Any] = {"containerStatuses": [{"name": "component", "imageID": image_id}]}
    if init_image_id is not None:
        status["initContainerStatuses"] = [{"name": "wait-redis", "imageID": init_image_id}]
    metadata: dict[str, Any] = {
        "name": name or f"qt-{component}-7d9f-x1",
        "labels": {"app.kubernetes.io/component": component},
    }
    if terminating:
        metadata["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {"kind": "Pod", "metadata": metadata, "status": status}


def configmap(data: dict[str, str] | None = None, managed_fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "kind": "ConfigMap",
        "metadata": {"name": "qt-config", "managedFields": managed_fields or []},
        "data": dict(CONFIG if data is None else data),
    }


def beat(
    component: str = "governor",
    *,
    pod_name: str = "qt-governor-7d9f-x1",
    code_version: str = "1.2.3",
    image_digest: str = DIGEST,
    model_digest: str = "",
) -> HeartbeatRecord:
    return HeartbeatRecord(
        component=component,
        pod=pod_name,
        time_ms=1,
        started_ms=0,
        state="running",
        code_version=code_version,
        image_digest=image_digest,
        model_digest=model_digest,
        control_generation=1,
        counters={},
        groups={},
    )


def managed(manager: str, operation: str = "Update", *fields: str, subresource: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "manager": manager,
        "operation": operation,
        "apiVersion": "apps/v1",
        "time": "2024-05-01T10:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {f: {} for f in fields},
    }
    if subresource:
        entry["subresource"] = subresource
    return entry


def kinds(findings: list[DriftFinding]) -> list[DriftKind]:
    return [f.kind for f in findings]


# --- digest_of / imageID formats ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "digest"),
    [
        (f"docker.io/library/quantum-trader@{DIGEST}", DIGEST),
        (f"docker-pullable://quantum-trader@{DIGEST}", DIGEST),
        (f"docker-pullable://ghcr.io/acme/quantum-trader@{DIGEST}", DIGEST),
        (f"ghcr.io/acme/quantum-trader@{DIGEST.upper().replace('SHA256', 'sha256')}", DIGEST),
        (DIGEST, DIGEST),
        (f"localhost:5000/qt@{OTHER}", OTHER),
        ("ghcr.io/acme/quantum-trader:v1.2", ""),
        ("", ""),
    ],
)
def test_digest_of_reads_every_runtime_format(reference, digest):
    assert digest_of(reference) == digest


# --- deployment_image ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "ignore", "expected"),
    [
        (deployment(), (), []),
        (deployment(image="ghcr.io/acme/quantum-trader:latest"), (), ["ghcr.io/acme/quantum-trader:latest"]),
        (deployment(image=f"ghcr.io/acme/quantum-trader@{OTHER}"), (), [f"ghcr.io/acme/quantum-trader@{OTHER}"]),
        # the same digest through another registry path is still another string: someone else wrote it
        (deployment(image=f"docker.io/acme/quantum-trader@{DIGEST}"), (), [f"docker.io/acme/quantum-trader@{DIGEST}"]),
        (deployment(init_image="busybox:1.36"), (), ["busybox:1.36"]),
        (deployment(sidecar="istio/proxyv2:1.22"), (), ["istio/proxyv2:1.22"]),
        (deployment(sidecar="istio/proxyv2:1.22"), ("istio-proxy",), []),
        (deployment(image=""), (), [""]),
    ],
)
def test_deployment_image(obj, ignore, expected):
    findings = deployment_image(obj, IMAGE, ignore)
    assert [f.actual for f in findings] == expected
    assert all(f.kind is DriftKind.IMAGE and f.component == "governor" for f in findings)
    assert all(f.object == "Deployment/qt-governor" and f.expected == IMAGE for f in findings)


def test_deployment_image_message_names_container_and_both_images():
    (finding,) = deployment_image(deployment(image="repo:tag"), IMAGE)
    assert "container component runs repo:tag" in finding.message
    assert IMAGE in finding.message


# --- pod_image_ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image_id",
    [
        f"docker.io/library/quantum-trader@{DIGEST}",
        f"docker-pullable://quantum-trader@{DIGEST}",
        f"ghcr.io/acme/quantum-trader@{DIGEST}",
        DIGEST,
    ],
)
def test_pod_image_id_formats_with_the_policy_digest_are_not_drift(image_id):
    assert pod_image_ids([pod(image_id=image_id)], DIGEST) == []


@pytest.mark.parametrize(
    "image_id",
    [
        f"docker.io/library/quantum-trader@{OTHER}",
        f"docker-pullable://quantum-trader@{OTHER}",
        OTHER,
    ],
)
def test_pod_image_id_with_another_digest_is_drift(image_id):
    (finding,) = pod_image_ids([pod(image_id=image_id)], DIGEST)
    assert (finding.kind, finding.component, finding.object) == (
        DriftKind.IMAGE_ID,
        "governor",
        "Pod/qt-governor-7d9f-x1",
    )
    assert (finding.expected, finding.actual) == (DIGEST, OTHER)


def test_pod_image_id_without_any_digest_reports_the_raw_id():
    (finding,) = pod_image_ids([pod(image_id="docker://deadbeef")], DIGEST)
    assert finding.actual == "docker://deadbeef"


@pytest.mark.parametrize(
    ("pods", "count"),
    [
        ([pod(image_id="")], 0),  # not pulled yet: runs nothing
        ([{"kind": "Pod", "metadata": {"name": "p"}, "status": {"phase": "Pending"}}], 0),
        ([{"kind": "Pod", "metadata": {"name": "p"}}], 0),
        ([pod(init_image_id=f"busybox@{OTHER}")], 1),
        ([pod(init_image_id="")], 0),
        ([pod(), pod(name="qt-governor-7d9f-x2", image_id=OTHER)], 1),
    ],
)
def test_pod_image_ids_cases(pods, count):
    assert len(pod_image_ids(pods, DIGEST)) == count


def test_pod_image_ids_accepts_the_full_reference_as_expected_and_ignores_named_containers():
    assert pod_image_ids([pod()], IMAGE) == []
    assert pod_image_ids([pod(image_id=OTHER)], DIGEST, ignore_containers={"component"}) == []


def test_pod_image_ids_allows_the_image_being_rolled_away_from():
    assert pod_image_ids([pod(image_id=OLD)], DIGEST, rolling_from={OLD}) == []
    assert len(pod_image_ids([pod(image_id=OTHER)], DIGEST, rolling_from={OLD})) == 1


# --- heartbeat_versions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected_kinds"),
    [
        (beat(), []),
        (beat(code_version="1.2.2"), [DriftKind.CODE_VERSION]),
        (beat(image_digest=OTHER), [DriftKind.IMAGE_DIGEST]),
        (beat(image_digest=f"ghcr.io/acme/quantum-trader@{DIGEST}"), []),  # a full reference with our digest
        (beat(image_digest=""), [DriftKind.IMAGE_DIGEST]),  # not one of the operator's pods
        (beat(code_version=""), [DriftKind.CODE_VERSION]),
        (beat("ai-engine", model_digest="sha256:m1"), []),
        (beat("ai-engine", model_digest="sha256:m0"), [DriftKind.MODEL_DIGEST]),
        (beat("governor", model_digest=""), []),  # no model loaded in this component
        (
            beat(code_version="0.9", image_digest=OTHER, model_digest="sha256:m0"),
            [DriftKind.CODE_VERSION, DriftKind.IMAGE_DIGEST, DriftKind.MODEL_DIGEST],
        ),
    ],
)
def test_heartbeat_versions(record, expected_kinds):
    findings = heartbeat_versions([record], "1.2.3", DIGEST, "sha256:m1")
    assert kinds(findings) == expected_kinds
    for finding in findings:
        assert finding.component == record.component
        assert finding.object == f"Heartbeat/{record.component}/{record.pod}"
        assert record.pod in finding.message


def test_heartbeat_versions_does_not_check_empty_expectations():
    record = beat(code_version="0.9", image_digest=OTHER, model_digest="sha256:m0")
    assert heartbeat_versions([record], "", "", "") == []


def test_heartbeat_versions_skips_old_pods_of_a_rollout():
    old_pod = beat(code_version="1.2.2", image_digest=OLD)
    assert heartbeat_versions([old_pod], "1.2.3", DIGEST, "", rolling_from={OLD}) == []
    assert kinds(heartbeat_versions([old_pod], "1.2.3", DIGEST, "")) == [DriftKind.CODE_VERSION, DriftKind.IMAGE_DIGEST]


# --- config_edited ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cm", "fragments"),
    [
        (configmap(), None),
        (None, None),  # not created yet: the next apply creates it
        (configmap({"config.yaml": "mode: live\n"}), ["changed config.yaml"]),
        (configmap({}), ["removed config.yaml"]),
        (configmap({**CONFIG, "extra.yaml": "x"}), ["added extra.yaml"]),
        (
            configmap({"config.yaml": "edited", "b": "1", "a": "2"}),
            ["changed config.yaml", "added a, b"],
        ),
        ({**configmap(), "binaryData": {"blob": "AAAA"}}, ["added binaryData.blob"]),
        ({"kind": "ConfigMap", "metadata": {"name": "qt-config"}}, ["removed config.yaml"]),  # no data at all
    ],
)
def test_config_edited(cm, fragments):
    findings = config_edited(cm, CONFIG)
    if fragments is None:
        assert findings == []
        return
    (finding,) = findings
    assert finding.kind is DriftKind.CONFIG and finding.object == "ConfigMap/qt-config"
    assert finding.expected != finding.actual
    for fragment in fragments:
        assert fragment in finding.message
    assert "mode: live" not in finding.message  # config values never go into status


# --- foreign_field_manager ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "managers"),
    [
        ([], []),
        ([managed(MANAGER, "Apply", "f:metadata", "f:spec")], []),
        ([managed(MANAGER, "Update", "f:spec")], []),  # our own non-apply patch
        ([managed("kube-controller-manager", "Update", "f:status", subresource="status")], []),
        ([managed("kube-controller-manager", "Update", "f:metadata")], []),  # revision annotation
        ([managed("kube-controller-manager", "Update", "f:spec")], []),  # a system controller, ignored by name
        ([managed("kubelet", "Update", "f:status")], []),
        ([managed("kubectl-edit", "Update", "f:status", subresource="status")], []),
        # a status write is a status write, whatever its field set claims
        ([managed("some-controller", "Update", "f:status", "f:spec", subresource="status")], []),
        ([managed("kubectl", "Update", "f:metadata")], []),  # metadata beyond labels/annotations: bookkeeping
        # a label or annotation nobody desired is someone's edit, and the repair removes it
        (
            [{**managed("kubectl-label"), "fieldsV1": {"f:metadata": {"f:labels": {f"f:{COMPONENT_LABEL}": {}}}}}],
            ["kubectl-label"],
        ),
        ([managed("kubectl-edit", "Update", "f:spec")], ["kubectl-edit"]),
        ([managed("kubectl", "Apply", "f:spec")], ["kubectl"]),
        # fields the object does not have (a Deployment has no data): nothing there to repair
        ([managed("kubectl-client-side-apply", "Update", "f:data")], []),
        ([managed("kubectl-patch", "Update", "f:binaryData")], []),
        ([managed("kubectl", "Update", "f:spec", subresource="scale")], ["kubectl"]),
        (
            [managed("kubectl-rollout", "Update", "f:spec"), managed("argocd", "Apply", "f:spec")],
            ["argocd", "kubectl-rollout"],
        ),
        ([managed("kubectl-edit", "Update", "f:spec"), managed("kubectl-edit", "Update", "f:data")], ["kubectl-edit"]),
        ([managed("", "Update", "f:spec")], ["(unnamed)"]),
    ],
)
def test_foreign_field_manager(entries, managers):
    findings = foreign_field_manager(deployment(managed_fields=entries), MANAGER)
    assert [f.actual for f in findings] == managers
    for finding in findings:
        assert finding.kind is DriftKind.FIELD_MANAGER
        assert finding.expected == MANAGER
        assert finding.object == "Deployment/qt-governor"


def test_foreign_field_manager_message_says_what_how_and_when():
    (finding,) = foreign_field_manager(
        deployment(managed_fields=[managed("kubectl", "Update", "f:spec", subresource="scale")]), MANAGER
    )
    assert finding.message == (
        f"Deployment/qt-governor .spec written by kubectl (Update via /scale at 2024-05-01T10:00:00Z), not by {MANAGER}"
    )


def test_foreign_field_manager_on_a_configmap():
    cm = configmap(managed_fields=[managed("kubectl-edit", "Update", "f:data")])
    (finding,) = foreign_field_manager(cm, MANAGER)
    assert finding.object == "ConfigMap/qt-config" and finding.component == ""
    assert ".data written by kubectl-edit" in finding.message


# --- pod_template_annotations -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "expected_hash", "expected_digest", "expected_kinds"),
    [
        (None, CONFIG_HASH, DIGEST, []),
        (None, CONFIG_HASH, IMAGE, []),  # the full reference works as the expected digest
        ({IMAGE_DIGEST_ANNOTATION: DIGEST}, CONFIG_HASH, DIGEST, [DriftKind.CONFIG_HASH]),
        (
            {CONFIG_HASH_ANNOTATION: "sha256:old", IMAGE_DIGEST_ANNOTATION: DIGEST},
            CONFIG_HASH,
            DIGEST,
            [DriftKind.CONFIG_HASH],
        ),
        ({CONFIG_HASH_ANNOTATION: CONFIG_HASH}, CONFIG_HASH, DIGEST, [DriftKind.IMAGE_ANNOTATION]),
        (
            {CONFIG_HASH_ANNOTATION: CONFIG_HASH, IMAGE_DIGEST_ANNOTATION: OTHER},
            CONFIG_HASH,
            DIGEST,
            [DriftKind.IMAGE_ANNOTATION],
        ),
        ({}, CONFIG_HASH, DIGEST, [DriftKind.CONFIG_HASH, DriftKind.IMAGE_ANNOTATION]),
        ({}, "", "", []),  # nothing expected, nothing checked
    ],
)
def test_pod_template_annotations(annotations, expected_hash, expected_digest, expected_kinds):
    findings = pod_template_annotations(deployment(annotations=annotations), expected_hash, expected_digest)
    assert kinds(findings) == expected_kinds


def test_missing_annotation_says_missing():
    (finding,) = pod_template_annotations(
        deployment(annotations={IMAGE_DIGEST_ANNOTATION: DIGEST}), CONFIG_HASH, DIGEST
    )
    assert "(missing)" in finding.message and finding.actual == ""


# --- detect_drift and summarize -----------------------------------------------------------------


def expected_state(**overrides: Any) -> ExpectedState:
    values: dict[str, Any] = {
        "image": IMAGE,
        "config_hash": CONFIG_HASH,
        "config_data": CONFIG,
        "code_version": "1.2.3",
        "model_digest": "sha256:m1",
        "field_manager": MANAGER,
    }
    values.update(overrides)
    return ExpectedState(**values)


def consistent() -> ObservedState:
    return ObservedState(
        deployments=[deployment(c) for c in ("governor", "ai-engine", "market-data")],
        pods=[pod(c, name=f"qt-{c}-1") for c in ("governor", "ai-engine", "market-data")],
        configmap=configmap(),
        heartbeats=[beat("governor"), beat("ai-engine", model_digest="sha256:m1")],
    )


def test_a_consistent_policy_has_no_drift():
    assert detect_drift(consistent(), expected_state()) == []
    assert summarize([]) == "none"


def drifted() -> ObservedState:
    state = consistent()
    return ObservedState(
        deployments=[
            deployment(
                "governor",
                image="ghcr.io/acme/quantum-trader:hotfix",
                managed_fields=[managed("kubectl-edit", "Update", "f:spec")],
            ),
            deployment("ai-engine", annotations={IMAGE_DIGEST_ANNOTATION: DIGEST}),
            deployment("market-data"),
        ],
        pods=[
            pod("governor", image_id=OTHER, name="qt-governor-1"),
            pod("market-data", name="qt-market-data-1"),
            pod("market-data", image_id=OLD, name="qt-market-data-0", terminating=True),
        ],
        configmap=configmap({"config.yaml": "mode: live\n"}),
        heartbeats=[*state.heartbeats, beat("harvest", pod_name="laptop", code_version="0.1.0", image_digest="")],
    )


def test_detect_drift_runs_every_check_in_severity_order():
    findings = detect_drift(drifted(), expected_state())
    assert [(f.kind, f.component or f.object) for f in findings] == [
        (DriftKind.IMAGE, "governor"),
        (DriftKind.IMAGE_ID, "governor"),
        (DriftKind.IMAGE_DIGEST, "harvest"),
        (DriftKind.CODE_VERSION, "harvest"),
        (DriftKind.CONFIG, "ConfigMap/qt-config"),
        (DriftKind.CONFIG_HASH, "ai-engine"),
        (DriftKind.FIELD_MANAGER, "governor"),
    ]
    assert summarize(findings) == "image:governor,+6"


def test_detect_drift_is_deterministic_whatever_the_input_order():
    state = drifted()
    reference = detect_drift(state, expected_state())
    rng = random.Random(7)
    for _ in range(20):
        shuffled = ObservedState(
            deployments=rng.sample(state.deployments, len(state.deployments)),
            pods=rng.sample(state.pods, len(state.pods)) * 2,  # a pod seen twice is one fact
            configmap=state.configmap,
            heartbeats=rng.sample(state.heartbeats, len(state.heartbeats)),
        )
        assert detect_drift(shuffled, expected_state()) == reference


def test_detect_drift_checks_trading_components_only():
    """The managed Redis shares the policy's labels but runs the Redis image: not drift."""
    redis_pod = pod("redis", image_id=f"docker.io/library/redis@{OTHER}", name="qt-redis-0")
    redis_workload = deployment("redis", image="docker.io/library/redis:7.4")
    state = ObservedState(deployments=[redis_workload], pods=[redis_pod])
    assert detect_drift(state, expected_state(config_data=None)) == []


def test_detect_drift_skips_what_is_not_expected():
    state = drifted()
    findings = detect_drift(state, expected_state(config_data=None, field_manager="", code_version="", config_hash=""))
    assert DriftKind.CONFIG not in kinds(findings)
    assert DriftKind.FIELD_MANAGER not in kinds(findings)
    assert DriftKind.CODE_VERSION not in kinds(findings)
    assert DriftKind.CONFIG_HASH not in kinds(findings)


def test_detect_drift_during_a_rollout_allows_the_old_digest_on_pods_and_heartbeats_only():
    state = ObservedState(
        deployments=[deployment("governor")],
        pods=[pod("governor", image_id=OLD, name="qt-governor-old")],
        heartbeats=[beat("governor", code_version="1.2.2", image_digest=OLD)],
    )
    assert detect_drift(state, expected_state(config_data=None, rolling_from=frozenset({OLD}))) == []
    assert kinds(detect_drift(state, expected_state(config_data=None))) == [
        DriftKind.IMAGE_ID,
        DriftKind.IMAGE_DIGEST,
        DriftKind.CODE_VERSION,
    ]


@pytest.mark.parametrize(
    ("findings", "text"),
    [
        ([], "none"),
        (
            [DriftFinding(DriftKind.MODEL_DIGEST, "ai-engine", "Heartbeat/ai-engine/p", "m1", "m0", "")],
            "modelDigest:ai-engine",
        ),
        (
            [DriftFinding(DriftKind.CONFIG, "", "ConfigMap/qt-config", "x", "y", "")] * 3,
            "config:ConfigMap/qt-config,+2",
        ),
    ],
)
def test_summarize(findings, text):
    assert summarize(findings) == text


def test_finding_to_dict_is_plain():
    (finding,) = config_edited(configmap({}), CONFIG)
    assert finding.to_dict()["kind"] == "config"
    assert set(finding.to_dict()) == {"kind", "component", "object", "expected", "actual", "message"}


def test_the_pure_modules_import_neither_kopf_nor_kubernetes():
    """handlers.py is the only module that talks to the API server; these stay unit-testable without one."""
    code = (
        "import sys\n"
        "import quantum_trader_operator.drift, quantum_trader_operator.wiring\n"
        "import quantum_trader_operator.health, quantum_trader_operator.conditions\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kopf', 'kubernetes')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
