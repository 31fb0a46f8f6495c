"""Foreign fields and their removal (ownership.py), against the emulator's model of server-side apply.

The scenario of issue 12: ``kubectl set env``, ``kubectl label`` and ``kubectl set volume`` on a child. A
forced re-apply does not remove them (checked first, so the test fails where the old repair failed); the
JSON patch of ``removal_patch`` does, and afterwards no manager but the operator owns anything.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonpatch
import pytest

from harness import field_ownership as server
from quantum_trader_operator.ownership import foreign_fields, removal_patch

OURS = "quantum-trader-operator"


def manifest() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "p-governor", "namespace": "t", "labels": {"app.kubernetes.io/component": "governor"}},
        "spec": {
            "replicas": 1,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/component": "governor"}},
                "spec": {
                    "containers": [
                        {
                            "name": "governor",
                            "image": "repo@sha256:" + "a" * 64,
                            "env": [{"name": "QT_COMPONENT", "value": "governor"}],
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def updated(live: dict[str, Any], patch: list[dict[str, Any]], manager: str) -> dict[str, Any]:
    """A JSON patch as a non-apply request by ``manager`` (what kubectl set/label send, as an Update)."""
    new = jsonpatch.apply_patch(copy.deepcopy(live), patch)
    server.record_update(live, new, manager)
    return new


def edited(live: dict[str, Any]) -> dict[str, Any]:
    containers = "/spec/template/spec/containers/0"
    live = updated(
        live, [{"op": "add", "path": f"{containers}/env/-", "value": {"name": "EXTRA", "value": "1"}}], "kubectl-set"
    )
    live = updated(live, [{"op": "add", "path": "/metadata/labels/team", "value": "night-shift"}], "kubectl-label")
    return updated(
        live,
        [
            {"op": "add", "path": "/spec/template/spec/volumes/-", "value": {"name": "extra", "emptyDir": {}}},
            {"op": "add", "path": f"{containers}/volumeMounts/-", "value": {"name": "extra", "mountPath": "/x"}},
        ],
        "kubectl-set",
    )


def managers(obj: dict[str, Any]) -> set[str]:
    return {e["manager"] for e in obj["metadata"].get("managedFields") or []}


def test_a_forced_apply_leaves_foreign_fields_and_the_removal_patch_takes_them_away() -> None:
    live = server.apply({"metadata": {"name": "p-governor"}}, manifest(), OURS, force=True)
    assert managers(live) == {OURS} and foreign_fields(live, manifest(), OURS) == []
    live = edited(live)

    live = server.apply(live, manifest(), OURS, force=True)  # what the operator did before: not enough
    container = live["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "EXTRA", "value": "1"} in container["env"] and live["metadata"]["labels"]["team"]

    found = foreign_fields(live, manifest(), OURS)
    assert sorted(f.path for f in found) == [
        ".metadata.labels.team",
        ".spec.template.spec.containers[name=governor].env[name=EXTRA]",
        ".spec.template.spec.containers[name=governor].volumeMounts[mountPath=/x]",
        ".spec.template.spec.volumes[name=extra]",
    ]
    assert not any(f.desired for f in found)
    live["metadata"]["resourceVersion"] = "42"
    patch = removal_patch(live, found)
    # Guarded: the version read, and the key of every list item whose index the removals use.
    assert patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "42"}
    assert {"op": "test", "path": "/spec/template/spec/containers/0/env/1/name", "value": "EXTRA"} in patch
    assert [op["path"] for op in patch if op["op"] == "remove"] == [
        "/spec/template/spec/volumes/1",
        "/spec/template/spec/containers/0/volumeMounts/1",
        "/spec/template/spec/containers/0/env/1",
        "/metadata/labels/team",
    ]
    repaired = updated(live, patch, OURS)
    assert repaired["spec"] == manifest()["spec"]
    assert repaired["metadata"]["labels"] == manifest()["metadata"]["labels"]
    assert managers(repaired) == {OURS}  # the foreign entries are gone with their fields
    assert foreign_fields(repaired, manifest(), OURS) == []
    # The next forced apply is a no-op: nothing left to take back, nothing re-added.
    assert server.apply(repaired, manifest(), OURS, force=True)["spec"] == repaired["spec"]


def test_a_foreign_value_of_a_desired_field_is_taken_back_by_the_apply_not_removed() -> None:
    live = server.apply({"metadata": {"name": "p-governor"}}, manifest(), OURS, force=True)
    live = updated(
        live,
        [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "repo:latest"}],
        "kubectl-set",
    )
    (found,) = foreign_fields(live, manifest(), OURS)
    assert found.desired and found.path.endswith("containers[name=governor].image")
    assert removal_patch(live, [found]) == []
    live = server.apply(live, manifest(), OURS, force=True)
    assert managers(live) == {OURS} and foreign_fields(live, manifest(), OURS) == []


def test_shared_ownership_of_the_same_value_is_not_drift() -> None:
    live = server.apply({"metadata": {"name": "p-governor"}}, manifest(), OURS, force=True)
    live = server.apply(
        live, {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 1}}, "argocd", force=False
    )
    assert managers(live) == {OURS, "argocd"}
    assert foreign_fields(live, manifest(), OURS) == []


def test_an_apply_changing_another_managers_field_conflicts_unless_forced() -> None:
    live = server.apply({"metadata": {"name": "p-governor"}}, manifest(), OURS, force=True)
    with pytest.raises(server.Conflict, match=re.escape('conflict with "quantum-trader-operator": .spec.replicas')):
        server.apply(live, {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 3}}, "hpa", force=False)
    taken = server.apply(
        live, {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 3}}, "hpa", force=True
    )
    (found,) = foreign_fields(taken, manifest(), OURS)
    assert (found.manager, found.path, found.desired) == ("hpa", ".spec.replicas", True)


def test_an_applier_dropping_a_field_removes_it_unless_someone_else_owns_it() -> None:
    live = server.apply({"metadata": {"name": "p-governor"}}, manifest(), OURS, force=True)
    smaller = manifest()
    smaller["spec"]["template"]["spec"]["containers"][0]["env"] = []
    assert server.apply(live, smaller, OURS, force=True)["spec"]["template"]["spec"]["containers"][0]["env"] == []
    shared = server.apply(
        live, {"apiVersion": "apps/v1", "kind": "Deployment", "spec": manifest()["spec"]}, "argocd", force=False
    )
    kept = server.apply(shared, smaller, OURS, force=True)
    assert kept["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "QT_COMPONENT", "value": "governor"}]


def test_the_message_says_who_how_and_when_and_leaves_out_what_it_does_not_know() -> None:
    live = server.apply({"metadata": {"name": "p-governor"}}, manifest(), OURS, force=True)
    live = edited(live)
    for entry in live["metadata"]["managedFields"]:
        if entry["manager"] == "kubectl-label":
            entry.pop("time")
            entry["subresource"] = "scale"
    label = next(f for f in foreign_fields(live, manifest(), OURS) if f.manager == "kubectl-label")
    assert label.written_by == "kubectl-label (Update via /scale)"
    env = next(f for f in foreign_fields(live, manifest(), OURS) if f.manager == "kubectl-set")
    assert env.written_by.startswith("kubectl-set (Update at 20")


def test_status_writes_and_system_controllers_are_not_foreign() -> None:
    live = server.apply({"metadata": {"name": "p-governor"}}, manifest(), OURS, force=True)
    with_status = {**live, "status": {"replicas": 1}}
    server.record_update(live, with_status, "kube-controller-manager", subresource="status")
    revision = updated(
        with_status,
        [{"op": "add", "path": "/metadata/annotations", "value": {"deployment.kubernetes.io/revision": "1"}}],
        "kube-controller-manager",
    )
    assert managers(revision) >= {"kube-controller-manager"}
    assert foreign_fields(revision, manifest(), OURS) == []
