"""One way to read a Kubernetes object given as the plain dict the API server returns (pure).

Every module reads metadata, labels, the component label and the pod template through these, so a missing
``metadata`` or ``labels`` is handled in one place instead of in a private accessor per module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quantum_trader_operator import naming as n


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def name(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("name") or "")


def namespace(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("namespace") or "")


def generation(obj: Mapping[str, Any]) -> int | None:
    value = meta(obj).get("generation")
    return int(value) if value is not None else None


def labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return meta(obj).get("labels") or {}


def has_labels(obj: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    own = labels(obj)
    return all(own.get(k) == v for k, v in wanted.items())


def component(obj: Mapping[str, Any]) -> str:
    """The ``app.kubernetes.io/component`` label: which registry component (or ``redis``) an object is."""
    return str(labels(obj).get(n.LABEL_COMPONENT, ""))


def ref(obj: Mapping[str, Any], default_kind: str = "Object") -> str:
    """``Kind/name``, as messages name an object."""
    return f"{obj.get('kind') or default_kind}/{name(obj)}"


def key(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, name): what identifies a child of one policy in one namespace."""
    return str(obj.get("kind") or ""), name(obj)


def terminating(obj: Mapping[str, Any]) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def owned_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    return any(r.get("uid") == owner_uid for r in meta(obj).get("ownerReferences") or [])


def owner_kinds(obj: Mapping[str, Any]) -> set[str]:
    return {str(r.get("kind") or "") for r in meta(obj).get("ownerReferences") or []}


def pod_template(workload: Mapping[str, Any]) -> Mapping[str, Any]:
    return (workload.get("spec") or {}).get("template") or {}


def pod_template_spec(workload: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod_template(workload).get("spec") or {}


def template_annotations(workload: Mapping[str, Any]) -> Mapping[str, str]:
    return meta(pod_template(workload)).get("annotations") or {}
