"""Drift (DESIGN §5): a Deployment edited to another image is reverted by a forced server-side apply;
ImageConsistent goes False then True, the automatic ``operator:drift`` halt is raised then released — and a
person's kill switch and the reconciler's halt are never touched."""

from __future__ import annotations

import redis

from harness.kube_emulator import EmulatedCluster
from quantum_trader_operator import act, decide, gather, validation
from quantum_trader_operator import kube_view as kv
from quantum_trader_operator import naming as n
from quantum_trader_operator.desired import OperatorSettings
from quantum_trader_operator.naming import DRIFT_HALT
from quantum_trader_operator.redis_io import RedisPool
from quantum_trader_operator.runtime_io import object_path
from tests.operator.integration.support import Operator, condition, keys_for, paper_policy, wait_for, wait_handled

TAGGED = "ghcr.io/quantum-trader/quantum-trader:latest"


def _image_consistent(status: dict) -> str | None:
    return condition(status, "ImageConsistent").get("status")


def test_edited_image_is_reverted_and_drift_halt_cleared(
    cluster: EmulatedCluster, operator: Operator, r_client: redis.Redis
) -> None:
    manifest = paper_policy()
    name = manifest["metadata"]["name"]
    image = manifest["spec"]["image"]
    cluster.create(manifest)
    governor = n.deployment_name(name, "governor")
    wait_for(lambda: len(cluster.list("Deployment", "apps/v1")) == 12, what="12 Deployments")
    wait_handled(cluster, "TradingPolicy", name)  # an edit before that would be undone by the create's apply
    wait_for(lambda: _image_consistent(cluster.status("TradingPolicy", name)) == "True", what="ImageConsistent=True")
    keys = keys_for(cluster.namespace, name)
    # Another actor's halt and a person's kill switch: the operator must leave both alone.
    r_client.hset(keys.halts, "reconciler", "unexplained drift on BTCUSDT")
    person_generation = r_client.hincrby(keys.control, "generation", 1)
    r_client.hset(keys.control, mapping={"state": "engaged", "scope": "entries", "engaged_by": "person"})

    deployment = cluster.get("Deployment", governor, "apps/v1")
    assert deployment is not None
    containers = deployment["spec"]["template"]["spec"]["containers"]
    edited = [{**containers[0], "image": TAGGED}]
    # kubectl set image / edit: another field manager writes the pod template.
    cluster.merge_patch("apps/v1", "Deployment", governor, {"spec": {"template": {"spec": {"containers": edited}}}})

    wait_for(lambda: DRIFT_HALT in r_client.hgetall(keys.halts), interval=0.02, what="the operator:drift halt")
    reverted = wait_for(
        lambda: (
            (d := cluster.get("Deployment", governor, "apps/v1"))
            and d["spec"]["template"]["spec"]["containers"][0]["image"] == image
            and d
        ),
        what="the image to be reverted",
    )
    assert reverted["spec"]["template"]["spec"]["containers"] == containers  # the whole container, not just image
    detected = wait_for(lambda: cluster.events("DriftDetected"), what="a DriftDetected event")
    assert TAGGED in detected[0]["message"] and governor in detected[0]["message"]
    assert detected[0]["type"] == "Warning"

    # Released once consistent for QT_OPERATOR_DRIFT_SETTLE_SECONDS; ImageConsistent was False in between.
    wait_for(lambda: DRIFT_HALT not in r_client.hgetall(keys.halts), timeout=15, what="the drift halt to clear")
    wait_for(lambda: cluster.events("DriftResolved"), what="a DriftResolved event")  # kopf posts events async
    history = [v.get("status") or {} for v in cluster.history("TradingPolicy", name)]
    states = [s for s in (_image_consistent(h) for h in history) if s]
    assert "False" in states, states
    false_status = next(h for h in history if _image_consistent(h) == "False")
    message = condition(false_status, "ImageConsistent")["message"]
    assert TAGGED in message
    assert false_status["drift"].startswith("image:governor")
    wait_for(lambda: _image_consistent(cluster.status("TradingPolicy", name)) == "True", what="ImageConsistent=True")
    assert cluster.status("TradingPolicy", name)["drift"] == "none"

    # Never touched: the reconciler's halt and the person's kill switch.
    assert r_client.hget(keys.halts, "reconciler") == "unexplained drift on BTCUSDT"
    control = r_client.hgetall(keys.control)
    assert control["state"] == "engaged" and control["engaged_by"] == "person"
    assert int(control["generation"]) == person_generation
    assert "qt_operator_drift_detections_total" in operator.scrape()


def test_fields_another_manager_added_are_removed_and_the_drift_halt_released(
    cluster: EmulatedCluster, operator: Operator, r_client: redis.Redis
) -> None:
    """``kubectl set env``, ``kubectl label`` and ``kubectl set volume``: fields the operator never applies,
    owned by other field managers — a forced apply alone leaves them there (and the drift halt forever)."""
    manifest = paper_policy()
    name = manifest["metadata"]["name"]
    cluster.create(manifest)
    governor = n.deployment_name(name, "governor")
    wait_for(lambda: len(cluster.list("Deployment", "apps/v1")) == 12, what="12 Deployments")
    wait_handled(cluster, "TradingPolicy", name)
    wait_for(lambda: _image_consistent(cluster.status("TradingPolicy", name)) == "True", what="ImageConsistent=True")
    keys = keys_for(cluster.namespace, name)
    before = cluster.get("Deployment", governor, "apps/v1")
    assert before is not None
    container = "/spec/template/spec/containers/0"
    cluster.json_patch(
        "apps/v1",
        "Deployment",
        governor,
        [{"op": "add", "path": f"{container}/env/-", "value": {"name": "EXTRA", "value": "1"}}],
        field_manager="kubectl-set",
    )
    cluster.json_patch(
        "apps/v1",
        "Deployment",
        governor,
        [{"op": "add", "path": "/metadata/labels/team", "value": "night-shift"}],
        field_manager="kubectl-label",
    )
    cluster.json_patch(
        "apps/v1",
        "Deployment",
        governor,
        [
            {"op": "add", "path": "/spec/template/spec/volumes/-", "value": {"name": "extra", "emptyDir": {}}},
            {"op": "add", "path": f"{container}/volumeMounts/-", "value": {"name": "extra", "mountPath": "/extra"}},
        ],
        field_manager="kubectl-set",
    )
    wait_for(lambda: DRIFT_HALT in r_client.hgetall(keys.halts), interval=0.02, what="the operator:drift halt")

    def repaired() -> dict | None:
        d = cluster.get("Deployment", governor, "apps/v1")
        return d if d and d["spec"] == before["spec"] and "team" not in d["metadata"]["labels"] else None

    after = wait_for(repaired, what="the foreign env var, label and volume to be removed")
    assert {e["manager"] for e in after["metadata"]["managedFields"]} == {n.MANAGED_BY}
    assert after["metadata"]["labels"] == before["metadata"]["labels"]
    detected = wait_for(lambda: cluster.events("DriftDetected"), what="a DriftDetected event")
    assert "kubectl-set" in detected[0]["message"] and "env[name=EXTRA]" in detected[0]["message"]
    wait_for(lambda: DRIFT_HALT not in r_client.hgetall(keys.halts), timeout=15, what="the drift halt to clear")
    # Field drift leaves ImageConsistent alone; status.drift is rewritten by the next policy pass after the repair.
    wait_for(lambda: cluster.status("TradingPolicy", name)["drift"] == "none", timeout=15, what="status.drift=none")
    assert _image_consistent(cluster.status("TradingPolicy", name)) == "True"


def test_a_repair_of_a_child_changed_since_it_was_read_reads_it_again_and_removes_the_fields(
    cluster: EmulatedCluster,
) -> None:
    """On a cluster the Deployment controller writes status between the operator's apply and its patch (a status
    write changes the resourceVersion the patch tests): the repair reads the child again and patches again, in the
    same check, instead of leaving the foreign field to a later one."""
    body = cluster.create(paper_policy())
    check = validation.check_policy(body)
    assert check.spec is not None
    rendered = decide.render(body, check.spec, OperatorSettings(redis_storage=None))
    (manifest,) = [
        o for o in rendered.desired if kv.ref(o) == f"Deployment/{n.deployment_name(rendered.name, 'governor')}"
    ]
    sources = gather.Sources(cluster.kube, RedisPool(), env={})
    governor = kv.name(manifest)
    cluster.kube.apply(manifest)
    env = {"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": {"name": "EXTRA", "value": "1"}}
    cluster.json_patch("apps/v1", "Deployment", governor, [env], field_manager="kubectl-set")
    read = cluster.get("Deployment", governor, "apps/v1")
    assert read is not None
    status = object_path("apps/v1", "Deployment", cluster.namespace, governor) + "/status"
    cluster.kube.request(
        "PATCH",
        status,
        query=[("fieldManager", "kube-controller-manager")],
        body={"status": {"observedGeneration": 99}},
        content_type="application/merge-patch+json",
    )
    now = cluster.get("Deployment", governor, "apps/v1")
    assert now is not None and now["metadata"]["resourceVersion"] != read["metadata"]["resourceVersion"]

    removed = act.strip_foreign_fields(sources, manifest, read)
    assert removed and "env[name=EXTRA]" in removed[0] and "kubectl-set" in removed[0]
    after = cluster.get("Deployment", governor, "apps/v1")
    assert after is not None
    assert all(e["name"] != "EXTRA" for e in after["spec"]["template"]["spec"]["containers"][0]["env"])
