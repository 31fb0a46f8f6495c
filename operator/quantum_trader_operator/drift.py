"""Drift: what runs differs from what the TradingPolicy says (DESIGN §5, §6 "two checkouts at different commits").

Each check is a link of a policy chain: it looks at one kind of evidence and returns its findings, or nothing
(an empty list). ``detect_drift`` runs them all over one observed state. The handlers turn findings into
``ImageConsistent=False``, an Event, an automatic ``entries`` kill switch (reason ``drift``) and a forced re-apply.

Plain data in, plain data out: Kubernetes objects are dicts as the API server returns them, heartbeats are
``HeartbeatRecord``. Nothing here imports kopf or the kubernetes client, so every check is a unit test.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from quantum_trader.contracts.heartbeat import HeartbeatRecord
from quantum_trader.contracts.registry import COMPONENTS
from quantum_trader_operator import kube_view as kv
from quantum_trader_operator import naming
from quantum_trader_operator.ownership import ForeignField, foreign_fields

# The spellings desired.py writes (one module, so writer and checker cannot disagree).
COMPONENT_LABEL = naming.LABEL_COMPONENT
CONFIG_HASH_ANNOTATION = naming.CONFIG_HASH_ANNOTATION
IMAGE_DIGEST_ANNOTATION = naming.IMAGE_DIGEST_ANNOTATION

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class DriftKind(StrEnum):
    """What differs. The order is the severity order findings are sorted by (the DRIFT column shows the first)."""

    IMAGE = "image"
    """a container image in a Deployment's pod template is not the policy's ``repo@sha256:...``"""
    IMAGE_ID = "imageID"
    """a running container's resolved image digest (``status.containerStatuses[].imageID``) is another one"""
    IMAGE_DIGEST = "imageDigest"
    """a component's heartbeat reports another image digest"""
    CODE_VERSION = "codeVersion"
    """a component's heartbeat reports another code version"""
    MODEL_DIGEST = "modelDigest"
    """a component's heartbeat reports another model digest"""
    CONFIG = "config"
    """the rendered ConfigMap's data was edited"""
    CONFIG_HASH = "configHash"
    """a pod template's config-hash annotation is not the rendered config's hash"""
    IMAGE_ANNOTATION = "imageAnnotation"
    """a pod template's image-digest annotation is not the policy's digest"""
    FIELD_MANAGER = "fieldManager"
    """someone other than the operator owns a field of a child's spec, data, labels or annotations that the
    policy does not render (``ownership.py``)"""


_KIND_ORDER = {kind: index for index, kind in enumerate(DriftKind)}
MODEL_KINDS = frozenset({DriftKind.MODEL_DIGEST})


@dataclass(frozen=True, slots=True)
class DriftFinding:
    kind: DriftKind
    component: str
    """the registry component the object belongs to; "" for shared objects (the ConfigMap)"""
    object: str
    """``Kind/name`` of the object that shows the drift (``Heartbeat/<component>/<pod>`` for Redis heartbeats)"""
    expected: str
    actual: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind.value,
            "component": self.component,
            "object": self.object,
            "expected": self.expected,
            "actual": self.actual,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class ExpectedState:
    """What the policy says should run. Empty strings and None mean "not checked"."""

    image: str
    """the policy's image, ``repo@sha256:<64 hex>``"""
    config_hash: str = ""
    config_data: Mapping[str, str] | None = None
    """the rendered ConfigMap's ``data``"""
    code_version: str = ""
    model_digest: str = ""
    field_manager: str = ""
    """the operator's server-side-apply field manager"""
    manifests: Mapping[tuple[str, str], Mapping[str, Any]] | None = None
    """(kind, name) -> the desired manifest, for telling a foreign field from one the policy sets; None:
    every field another manager owns counts"""
    ignore_containers: frozenset[str] = frozenset()
    """containers injected by others (a service-mesh sidecar) whose images are not the policy's"""
    rolling_from: frozenset[str] = frozenset()
    """digests of the previous policy image while a rollout replaces it: old pods and their heartbeats report
    them until they are gone, which is progress (health says Progressing), not drift"""

    @property
    def image_digest(self) -> str:
        return digest_of(self.image)


@dataclass(frozen=True, slots=True)
class ObservedState:
    """What runs: the policy's children as the API server returns them, and the components' heartbeats."""

    deployments: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    configmap: dict[str, Any] | None = None
    heartbeats: list[HeartbeatRecord] = field(default_factory=list)


def digest_of(reference: str) -> str:
    """The ``sha256:<hex>`` in an image reference or imageID, or "" when it carries none.

    Runtimes report imageID as ``docker.io/library/x@sha256:...``, ``docker-pullable://x@sha256:...`` or a
    bare ``sha256:...``; the digest is the only part that identifies the content, so it is all we compare.
    """
    found = _DIGEST.findall(reference.lower())
    # The digest after "@" is the last one; a repository path could in theory contain another.
    return found[-1] if found else ""


def deployment_image(
    deployment: Mapping[str, Any], expected_image: str, ignore_containers: Collection[str] = ()
) -> list[DriftFinding]:
    """Every container (and init container) of the pod template runs exactly the policy's image reference.

    The comparison is on the whole reference, not only the digest: desired.py writes the policy's string
    verbatim, so any other string — a tag, another registry — was written by someone else.
    """
    spec = kv.pod_template_spec(deployment)
    findings = []
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        name = container.get("name", "")
        image = container.get("image", "")
        if name in ignore_containers or image == expected_image:
            continue
        findings.append(
            DriftFinding(
                DriftKind.IMAGE,
                kv.component(deployment),
                kv.ref(deployment, "Deployment"),
                expected_image,
                image,
                f"{kv.ref(deployment, 'Deployment')} container {name} runs {image or '(no image)'}, "
                f"policy image is {expected_image}",
            )
        )
    return findings


def pod_image_ids(
    pods: Iterable[Mapping[str, Any]],
    expected_digest: str,
    ignore_containers: Collection[str] = (),
    rolling_from: Collection[str] = (),
) -> list[DriftFinding]:
    """Every started container of every pod resolved to the policy's digest (or one still being rolled away from).

    A container that has not pulled its image yet reports an empty imageID: it runs nothing, so it is not drift.
    """
    expected = digest_of(expected_digest)
    allowed = {expected, *(digest_of(d) for d in rolling_from)}
    findings = []
    for pod in pods:
        status = pod.get("status") or {}
        statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        for container in statuses:
            name = container.get("name", "")
            image_id = container.get("imageID") or ""
            if name in ignore_containers or not image_id:
                continue
            actual = digest_of(image_id)
            if actual in allowed and actual:
                continue
            findings.append(
                DriftFinding(
                    DriftKind.IMAGE_ID,
                    kv.component(pod),
                    kv.ref(pod, "Pod"),
                    expected,
                    actual or image_id,
                    f"{kv.ref(pod, 'Pod')} container {name} runs image {actual or image_id}, "
                    f"policy digest is {expected}",
                )
            )
    return findings


def heartbeat_versions(
    heartbeats: Iterable[HeartbeatRecord],
    expected_code_version: str,
    expected_image_digest: str,
    expected_model_digest: str,
    rolling_from: Collection[str] = (),
) -> list[DriftFinding]:
    """Every component process reports the policy's code version, image digest and model digest.

    This is the check that catches a process outside the operator's pods (the second checkout of §6) writing
    into the instance's Redis. An empty expected value is not checked. An empty *reported* image digest or code
    version is drift: the operator's pods always set them, so a process without them is not one of ours. An
    empty reported model digest is not: only components that load a model report one. A process that reports
    an image in ``rolling_from`` is an old pod of a rollout in progress: its versions are the old image's.
    """
    expected_image = digest_of(expected_image_digest) or expected_image_digest
    old_images = {digest_of(d) for d in rolling_from} - {""}
    findings = []
    for beat in heartbeats:
        if digest_of(beat.image_digest) in old_images:
            continue
        source = f"Heartbeat/{beat.component}/{beat.pod}"
        checks = (
            (DriftKind.CODE_VERSION, "code version", expected_code_version, beat.code_version, True),
            (
                DriftKind.IMAGE_DIGEST,
                "image digest",
                expected_image,
                digest_of(beat.image_digest) or beat.image_digest,
                True,
            ),
            (DriftKind.MODEL_DIGEST, "model digest", expected_model_digest, beat.model_digest, False),
        )
        for kind, label, expected, actual, empty_is_drift in checks:
            if not expected or actual == expected or (not actual and not empty_is_drift):
                continue
            findings.append(
                DriftFinding(
                    kind,
                    beat.component,
                    source,
                    expected,
                    actual,
                    f"{beat.component} pod {beat.pod} reports {label} {actual or '(none)'}, policy has {expected}",
                )
            )
    return findings


def _data_hash(data: Mapping[str, str], binary_data: Mapping[str, str] | None = None) -> str:
    # A short content hash gives expected/actual something comparable without copying config into status.
    content: dict[str, Any] = {"data": dict(data)}
    if binary_data:
        content["binaryData"] = dict(binary_data)
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:12]


def config_edited(configmap: Mapping[str, Any] | None, expected_data: Mapping[str, str]) -> list[DriftFinding]:
    """The rendered ConfigMap's data is exactly what the policy renders; the finding names the keys that differ.

    A ConfigMap that does not exist yet is not an edit: the next apply creates it.
    """
    if configmap is None:
        return []
    actual = configmap.get("data") or {}
    changed = sorted(k for k in expected_data if k in actual and actual[k] != expected_data[k])
    removed = sorted(k for k in expected_data if k not in actual)
    added = sorted(k for k in actual if k not in expected_data)
    # binaryData is never rendered by the operator; any key there is an addition too.
    added_binary = sorted(f"binaryData.{k}" for k in configmap.get("binaryData") or {})
    if not (changed or removed or added or added_binary):
        return []
    parts = []
    if changed:
        parts.append("changed " + ", ".join(changed))
    if removed:
        parts.append("removed " + ", ".join(removed))
    if added or added_binary:
        parts.append("added " + ", ".join([*added, *added_binary]))
    ref = kv.ref(configmap, "ConfigMap")
    return [
        DriftFinding(
            DriftKind.CONFIG,
            kv.component(configmap),
            ref,
            _data_hash(expected_data),
            _data_hash(actual, configmap.get("binaryData")),
            f"{ref} was edited: " + "; ".join(parts),
        )
    ]


def foreign_field_manager(
    obj: Mapping[str, Any], our_manager: str, desired: Mapping[str, Any] | None = None
) -> list[DriftFinding]:
    """Nobody but the operator's field manager owns a field of the object's spec, data, labels or annotations
    that the desired manifest does not set the same way (``ownership.foreign_fields``). One finding per manager.

    ``kubectl edit``/``patch``/``scale``/``set env``/``label``/``rollout restart`` all show up here; status
    writes and the system controllers do not. ``desired`` None: every foreign field counts.
    """
    by_manager: dict[str, list[ForeignField]] = {}
    for found in foreign_fields(obj, desired, our_manager):
        by_manager.setdefault(found.manager, []).append(found)
    ref = kv.ref(obj)
    findings = []
    for manager, fields in sorted(by_manager.items()):
        paths = ", ".join(f.path for f in fields[:3]) + (f" (+{len(fields) - 3} more)" if len(fields) > 3 else "")
        findings.append(
            DriftFinding(
                DriftKind.FIELD_MANAGER,
                kv.component(obj),
                ref,
                our_manager,
                manager or "(unnamed)",
                f"{ref} {paths} written by {fields[0].written_by}, not by {our_manager}",
            )
        )
    return findings


def pod_template_annotations(
    deployment: Mapping[str, Any], expected_config_hash: str, expected_digest: str
) -> list[DriftFinding]:
    """The pod template carries the rendered config's hash and the policy's digest (empty expected: not checked).

    These annotations are what makes a config or image change roll the pods; a template without them would
    keep running an old config while looking up to date.
    """
    annotations = kv.template_annotations(deployment)
    ref = kv.ref(deployment, "Deployment")
    findings = []
    actual_hash = annotations.get(CONFIG_HASH_ANNOTATION, "")
    if expected_config_hash and actual_hash != expected_config_hash:
        findings.append(
            DriftFinding(
                DriftKind.CONFIG_HASH,
                kv.component(deployment),
                ref,
                expected_config_hash,
                actual_hash,
                f"{ref} pod template {CONFIG_HASH_ANNOTATION} is {actual_hash or '(missing)'}, "
                f"rendered config is {expected_config_hash}",
            )
        )
    expected = digest_of(expected_digest) or expected_digest
    raw_digest = annotations.get(IMAGE_DIGEST_ANNOTATION, "")
    actual_digest = digest_of(raw_digest) or raw_digest
    if expected and actual_digest != expected:
        findings.append(
            DriftFinding(
                DriftKind.IMAGE_ANNOTATION,
                kv.component(deployment),
                ref,
                expected,
                actual_digest,
                f"{ref} pod template {IMAGE_DIGEST_ANNOTATION} is {actual_digest or '(missing)'}, "
                f"policy has {expected}",
            )
        )
    return findings


def _sort_key(finding: DriftFinding) -> tuple[int, str, str, str, str]:
    return (_KIND_ORDER[finding.kind], finding.component, finding.object, finding.expected, finding.actual)


def detect_drift(observed: ObservedState, expected: ExpectedState) -> list[DriftFinding]:
    """Every check over every child, sorted by severity, component and object (stable across runs and input order)."""
    findings: list[DriftFinding] = []
    digest = expected.image_digest
    deployments = _component_workloads(observed.deployments)
    for deployment in deployments:
        findings += deployment_image(deployment, expected.image, expected.ignore_containers)
        findings += pod_template_annotations(deployment, expected.config_hash, digest)
    findings += pod_image_ids(
        _component_workloads(_live_pods(observed.pods)), digest, expected.ignore_containers, expected.rolling_from
    )
    findings += heartbeat_versions(
        observed.heartbeats, expected.code_version, digest, expected.model_digest, expected.rolling_from
    )
    if expected.config_data is not None:
        findings += config_edited(observed.configmap, expected.config_data)
    if expected.field_manager:
        children = [*deployments, *([observed.configmap] if observed.configmap is not None else [])]
        for child in children:
            desired = None if expected.manifests is None else expected.manifests.get(kv.key(child))
            findings += foreign_field_manager(child, expected.field_manager, desired)
    # The same evidence can arrive twice (a pod listed by two watches); one finding per fact.
    return sorted(set(findings), key=_sort_key)


def _component_workloads(objects: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    # Only trading components run the policy image. A policy's other workloads (the managed Redis runs the
    # Redis image) share its labels, so a handler listing by policy label would otherwise report them as drift.
    return [o for o in objects if kv.component(o) in COMPONENTS]


def _live_pods(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    # A terminating pod of the previous ReplicaSet still reports the old imageID during every rollout;
    # it is on its way out, so it is not drift.
    return [p for p in pods if not kv.terminating(p)]


def summarize(findings: list[DriftFinding]) -> str:
    """The DRIFT printer column: "none", or the first finding as ``kind:component`` and how many more."""
    if not findings:
        return "none"
    first = findings[0]
    where = first.component or first.object
    more = f",+{len(findings) - 1}" if len(findings) > 1 else ""
    return f"{first.kind.value}:{where}{more}"


def model_findings(findings: Iterable[DriftFinding]) -> list[DriftFinding]:
    """The findings that make ``ModelConsistent=False``."""
    return [f for f in findings if f.kind in MODEL_KINDS]
