"""The operator's scenarios against a real cluster (conftest.py says what is needed and why pods need not run).

One policy (examples/policy.yaml) in the module's namespace, watched by one ``qt operator --namespace``; the tests
run in file order and build on it: children, the rollout's own condition, drift undone (an image, fields of
foreign field managers, a deleted child), kill switch, exit rollout, every printer column, specs the operator
refuses. Then, each with a policy of its own: garbage collection, and an operator killed in the middle of a rollout
whose successor finishes it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from quantum_trader.bus.control import ack_generation, read_control
from quantum_trader.contracts.policy import parse_policy
from quantum_trader.contracts.registry import COMPONENTS as REGISTRY
from quantum_trader_operator import naming as n
from quantum_trader_operator.models import RESOURCES
from tests.e2e.conftest import get_json, idle, kube_cluster, kubectl, kubectl_apply, run_operator, table
from tests.operator.integration.support import (
    OPERATOR_ENV,
    Cluster,
    Operator,
    condition,
    example,
    heartbeat_all,
    keys_for,
    paper_policy,
    wait_for,
    wait_handled,
)

POLICY = paper_policy()
NAME = POLICY["metadata"]["name"]
SPEC = parse_policy(POLICY["spec"])
COMPONENTS = SPEC.enabled_components()
TAGGED = "ghcr.io/quantum-trader/quantum-trader:latest"
FOREIGN_LABEL = "e2e.quantumtrader.io/foreign"
# The operator's own fields of the policy's `halts` hash (docs/OPERATOR.md, "What it never touches").
ROLLOUT_HALT = "operator:rollout"
DRIFT_HALT = "operator:drift"
EXECUTORS = [name for name, spec in REGISTRY.items() if spec.executor]


@pytest.fixture(scope="module")
def policy(cluster: Cluster, e2e_operator: Operator) -> dict:
    kubectl_apply(POLICY, cluster.namespace)
    return wait_handled(cluster, "TradingPolicy", NAME)


@pytest.fixture
def r_client(redis_server: str) -> redis.Redis:
    return redis.Redis.from_url(redis_server, decode_responses=True)


def deployment(cluster: Cluster, component: str, policy: str = NAME) -> dict[str, Any]:
    return get_json("deployment", n.deployment_name(policy, component), "-n", cluster.namespace)


def container(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]["containers"][0]


def template_hash(obj: dict[str, Any]) -> str | None:
    return (obj["spec"]["template"]["metadata"].get("annotations") or {}).get(n.CONFIG_HASH_ANNOTATION)


def recorded_rollout(client: redis.Redis, keys: Any) -> dict[str, str]:
    """``state:operator:rollout``: what a restarted operator resumes (empty when no rollout is in progress)."""
    return client.hgetall(keys.component_state("operator", "rollout"))


def children_of(namespace: str, policy: str) -> list[str]:
    """Every object the operator made for ``policy`` (by its label), as ``kind/name``."""
    kinds = "deployments,statefulsets,services,configmaps,secrets"
    found = get_json(kinds, "-n", namespace, "-l", f"{n.LABEL_POLICY}={policy}")
    return sorted(f"{item['kind']}/{item['metadata']['name']}" for item in found["items"])


def test_children_have_the_policy_as_controller_owner(cluster: Cluster, policy: dict) -> None:
    deployments = wait_for(
        lambda: len(found := get_json("deployments", "-n", cluster.namespace)["items"]) == len(COMPONENTS) and found,
        timeout=60,
        what="a Deployment per component",
    )
    for child in deployments:
        assert container(child)["image"] == SPEC.image
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == policy["metadata"]["uid"] and owner["controller"] and owner["blockOwnerDeletion"]
    assert get_json("configmap", n.config_map_name(NAME), "-n", cluster.namespace)["data"][n.CONFIG_KEY]
    assert get_json("statefulset", f"{NAME}-redis", "-n", cluster.namespace)["metadata"]["ownerReferences"]
    wait_for(lambda: cluster.status("TradingPolicy", NAME).get("health"), timeout=60, what="a health in status")


def test_the_rollout_shows_its_own_condition_not_a_kill_switch(
    cluster: Cluster, policy: dict, r_client: redis.Redis
) -> None:
    """The policy's pods never run here (the image is not pullable), so its first rollout stays in progress: the
    rollout's halt is RolloutInProgress and never Halted / KillSwitchEngaged=True (reason AutomaticHalt), issue 12."""
    keys = keys_for(cluster.namespace, NAME)
    assert ROLLOUT_HALT in r_client.hgetall(keys.halts)
    status = wait_for(
        lambda: (s := cluster.status("TradingPolicy", NAME)).get("conditions") and s, timeout=60, what="conditions"
    )
    assert condition(status, "RolloutInProgress")["status"] == "True", status
    assert condition(status, "RolloutInProgress")["reason"] == "RollingOut"
    assert condition(status, "KillSwitchEngaged")["status"] == "False", condition(status, "KillSwitchEngaged")
    assert status["health"] != "Halted", status


def test_a_changed_image_is_reverted(cluster: Cluster, policy: dict, r_client: redis.Redis) -> None:
    keys = keys_for(cluster.namespace, NAME)
    governor = n.deployment_name(NAME, "governor")
    kubectl("set", "image", f"deployment/{governor}", f"governor={TAGGED}", "-n", cluster.namespace)
    wait_for(lambda: DRIFT_HALT in r_client.hgetall(keys.halts), interval=0.05, timeout=30, what="the drift halt")
    wait_for(lambda: container(deployment(cluster, "governor"))["image"] == SPEC.image, timeout=30, what="the image")
    assert wait_for(lambda: cluster.events("DriftDetected"), timeout=30, what="a DriftDetected event")
    wait_for(lambda: DRIFT_HALT not in r_client.hgetall(keys.halts), timeout=60, what="the drift halt to clear")
    wait_for(
        lambda: condition(cluster.status("TradingPolicy", NAME), "ImageConsistent").get("status") == "True",
        timeout=30,
        what="ImageConsistent=True",
    )


def _foreign_fields_left(obj: dict[str, Any]) -> list[str]:
    """The fields the test added as other managers that are still there (a removed field has no owner left)."""
    left = []
    for variable in ("EXTRA", "APPLIED_BY_HAND"):
        if any(e.get("name") == variable for e in container(obj).get("env") or []):
            left.append(f"env {variable}")
    if FOREIGN_LABEL in (obj["metadata"].get("labels") or {}):
        left.append(f"label {FOREIGN_LABEL}")
    if any(v.get("name") == "foreign" for v in obj["spec"]["template"]["spec"].get("volumes") or []):
        left.append("volume foreign")
    return left


def _managers(obj: dict[str, Any]) -> set[str]:
    return {m.get("manager", "") for m in obj["metadata"].get("managedFields") or []}


def test_fields_of_foreign_field_managers_are_removed(cluster: Cluster, policy: dict, r_client: redis.Redis) -> None:
    """A forced server-side apply does not take away fields another manager owns (issue 12): the repair must."""
    keys = keys_for(cluster.namespace, NAME)
    target = n.deployment_name(NAME, "ai-engine")
    volume = [{"op": "add", "path": "/spec/template/spec/volumes/-", "value": {"name": "foreign", "emptyDir": {}}}]
    kubectl("set", "env", f"deployment/{target}", "EXTRA=1", "-n", cluster.namespace)  # manager kubectl-set
    kubectl("label", "deployment", target, f"{FOREIGN_LABEL}=yes", "-n", cluster.namespace)  # kubectl-label
    kubectl("patch", "deployment", target, "--type=json", "-p", json.dumps(volume), "-n", cluster.namespace)
    # And a field owned through server-side apply by a manager of its own (not a conflict: nobody owns it yet).
    by_hand = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": target},
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "ai-engine", "env": [{"name": "APPLIED_BY_HAND", "value": "1"}]}]}
            }
        },
    }
    kubectl_apply(by_hand, cluster.namespace, "--server-side", "--field-manager=e2e-by-hand")
    # The server records each edit under its own manager (unless the operator already took it away again).
    edited = deployment(cluster, "ai-engine")
    foreign = {"kubectl-set", "kubectl-label", "kubectl-patch", "e2e-by-hand"}
    assert _managers(edited) & foreign or not _foreign_fields_left(edited)
    wait_for(
        lambda: not _foreign_fields_left(deployment(cluster, "ai-engine")),
        timeout=60,
        what="the foreign env vars, label and volume to be gone",
    )
    wait_for(lambda: DRIFT_HALT not in r_client.hgetall(keys.halts), timeout=60, what="the drift halt to clear")
    wait_for(lambda: cluster.status("TradingPolicy", NAME).get("drift") == "none", timeout=60, what="DRIFT none")


def test_a_deleted_child_comes_back(cluster: Cluster, policy: dict) -> None:
    before = deployment(cluster, "harvest")["metadata"]["uid"]
    kubectl("delete", "deployment", n.deployment_name(NAME, "harvest"), "-n", cluster.namespace, "--wait=true")
    wait_for(
        lambda: (
            (found := get_json("deployments", "-n", cluster.namespace, "-l", f"{n.LABEL_COMPONENT}=harvest")["items"])
            and found[0]["metadata"]["uid"] != before
        ),
        timeout=60,
        what="the harvest Deployment to be created again",
    )


def test_kill_switch_acks(cluster: Cluster, policy: dict, r_client: redis.Redis) -> None:
    keys = keys_for(cluster.namespace, NAME)
    pods = heartbeat_all(r_client, keys, COMPONENTS, n.image_digest(SPEC.image or ""), replicas={"governor": 2})
    switch = example("killswitch.yaml")
    kubectl_apply(switch, cluster.namespace)
    control = wait_for(lambda: (c := read_control(r_client, keys)).engaged and c, timeout=30, what="engaged")
    for member in pods:
        component, pod = member.split("/")
        ack_generation(r_client, keys, component, pod, control.generation)
    wait_for(
        lambda: cluster.status("KillSwitch", switch["metadata"]["name"]).get("acked") == f"{len(pods)}/{len(pods)}",
        timeout=30,
        what="every ack counted",
    )


def test_exit_rollout(cluster: Cluster, policy: dict, r_client: redis.Redis) -> None:
    keys = keys_for(cluster.namespace, NAME)
    rollout = example("exitrollout.yaml")
    kubectl_apply(rollout, cluster.namespace)
    wait_for(lambda: r_client.hget(keys.rollout, "mode") == "LIVE", timeout=30, what="the rollout hash")
    status = wait_for(
        lambda: (s := cluster.status("ExitRollout", rollout["metadata"]["name"])).get("live") and s,
        timeout=30,
        what="ExitRollout status",
    )
    # The kill switch of the previous test has scope entries: exits stay as the rollout says.
    assert status["liveSymbols"] == ["BTCUSDT"] and status["live"] == "1/3" and status["effectiveMode"] == "LIVE"


def _at(obj: dict[str, Any], json_path: str) -> Any:
    value: Any = obj
    for part in json_path.lstrip(".").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


NAMES = {
    "TradingPolicy": NAME,
    "KillSwitch": example("killswitch.yaml")["metadata"]["name"],
    "ExitRollout": example("exitrollout.yaml")["metadata"]["name"],
}


@pytest.mark.parametrize("resource", RESOURCES, ids=[r.kind for r in RESOURCES])
def test_every_printer_column(cluster: Cluster, policy: dict, resource: Any) -> None:
    """The server's table (what `kubectl get` prints) has every column of the CRD, each showing its field."""
    path = f"/apis/{n.API_VERSION}/namespaces/{cluster.namespace}/{resource.plural}/{NAMES[resource.kind]}"
    found = table(cluster, path)
    columns = [(c["name"], c.get("priority", 0)) for c in found["columnDefinitions"]]
    assert columns == [("Name", 0)] + [(c.name, c.priority) for c in resource.printer_columns]
    (row,) = found["rows"]
    obj = row["object"]
    assert row["cells"][0] == NAMES[resource.kind]
    for column, cell in zip(resource.printer_columns, row["cells"][1:], strict=True):
        if column.type == "date":
            assert isinstance(cell, str) and cell, column.name  # an age, e.g. 5m
        else:
            assert cell == _at(obj, column.json_path), f"{resource.kind} {column.name}: {cell!r}"
    if resource.kind == "TradingPolicy":
        assert obj["status"]["health"] and obj["status"]["ready"] and obj["status"]["drift"]
    headers = kubectl("get", resource.plural, "-n", cluster.namespace, "-o", "wide").stdout.splitlines()[0].split()
    assert headers == ["NAME", *(c.name for c in resource.printer_columns)]


def test_kill_switch_released_on_delete(cluster: Cluster, policy: dict, r_client: redis.Redis) -> None:
    keys = keys_for(cluster.namespace, NAME)
    kubectl("delete", "killswitch", NAMES["KillSwitch"], "-n", cluster.namespace)
    wait_for(lambda: not read_control(r_client, keys).engaged, timeout=30, what="released on delete")


def test_a_spec_the_operator_refuses(cluster: Cluster, policy: dict) -> None:
    unwired = copy.deepcopy(POLICY)
    unwired["metadata"]["name"] = "unwired"
    unwired["spec"]["components"]["market-data"] = {"enabled": False}
    kubectl_apply(unwired, cluster.namespace)  # admissible: wiring is the operator's judgement
    status = wait_for(
        lambda: (s := cluster.status("TradingPolicy", "unwired")).get("health") == "Invalid" and s,
        timeout=30,
        what="Invalid",
    )
    assert condition(status, "WiringValid")["status"] == "False"
    assert children_of(cluster.namespace, "unwired") == []
    kubectl("delete", "tradingpolicy", "unwired", "-n", cluster.namespace)


def test_deleting_a_policy_deletes_every_child(cluster: Cluster, policy: dict) -> None:
    """The cluster's garbage collector follows the ownerReferences: nothing is left behind."""
    doomed = idle(POLICY)
    doomed["metadata"]["name"] = "doomed"
    kubectl_apply(doomed, cluster.namespace)
    wait_for(
        lambda: (
            len([c for c in children_of(cluster.namespace, "doomed") if c.startswith("Deployment/")]) == len(COMPONENTS)
        ),
        timeout=60,
        what="the doomed policy's Deployments",
    )
    assert any(c.startswith("StatefulSet/") for c in children_of(cluster.namespace, "doomed"))
    kubectl("delete", "tradingpolicy", "doomed", "-n", cluster.namespace, "--wait=true", timeout=180)
    wait_for(lambda: children_of(cluster.namespace, "doomed") == [], timeout=120, what="every child to be collected")
    assert len(get_json("deployments", "-n", cluster.namespace, "-l", f"{n.LABEL_POLICY}={NAME}")["items"]) == len(
        COMPONENTS
    ), "another policy's children were left alone"


def test_an_operator_killed_mid_rollout_is_finished_by_the_next(
    namespaces: Callable[[str], str],
    crds: None,
    redis_server: str,
    r_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL while the executor path waits for in-flight plans to drain: the halt stays, and a new operator
    reads the recorded rollout, applies the rest, and releases the halt once every Deployment runs the target."""
    namespace = namespaces("restart")
    cluster = kube_cluster(namespace)
    policy = idle(POLICY)
    name = policy["metadata"]["name"] = "restart-demo"
    keys = keys_for(namespace, name)
    monkeypatch.setitem(OPERATOR_ENV, "QT_OPERATOR_DRAIN_SECONDS", "300")
    first = run_operator(namespace, redis_server, tmp_path / "first.log")
    try:
        kubectl_apply(policy, namespace)
        wait_for(
            lambda: (
                len(get_json("deployments", "-n", namespace)["items"]) == len(COMPONENTS)
                and ROLLOUT_HALT not in r_client.hgetall(keys.halts)
                and not recorded_rollout(r_client, keys)
            ),
            timeout=90,
            what="the first rollout to complete",
        )
        old_hash = template_hash(deployment(cluster, "governor", name))
        # A plan in flight at governor (delivered, not acknowledged): the next rollout waits before the executor path.
        stream = keys.stream(REGISTRY["governor"].inputs[0])
        r_client.xadd(stream, {"e2e": "in flight"})
        r_client.xgroup_create(stream, "governor", id="0", mkstream=True)
        assert r_client.xreadgroup("governor", "governor-e2e", {stream: ">"}, count=1)
        change = json.dumps({"spec": {"strategy": {"fast": 10}}})
        kubectl("patch", "tradingpolicy", name, "-n", namespace, "--type=merge", "-p", change)

        def new_hash() -> str | None:
            found = template_hash(deployment(cluster, "market-data", name))
            return found if found != old_hash else None

        target = wait_for(new_hash, timeout=60, what="market-data at the new config")
        assert template_hash(deployment(cluster, "governor", name)) == old_hash, "the executor path waits to drain"
        first.process.kill()
        first.process.wait(10)
        assert ROLLOUT_HALT in r_client.hgetall(keys.halts), "entries stay halted while nobody finishes the rollout"
        assert recorded_rollout(r_client, keys).get("config_hash") == target, "the rollout is recorded for the next"
    finally:
        first.stop()

    monkeypatch.setitem(OPERATOR_ENV, "QT_OPERATOR_DRAIN_SECONDS", "1")
    second = run_operator(namespace, redis_server, tmp_path / "second.log")
    try:
        wait_for(
            lambda: (
                all(template_hash(d) == target for d in get_json("deployments", "-n", namespace)["items"])
                and ROLLOUT_HALT not in r_client.hgetall(keys.halts)
                and not recorded_rollout(r_client, keys)
            ),
            timeout=120,
            what="every Deployment at the new config and the rollout halt released",
        )
        assert all(template_hash(deployment(cluster, component, name)) == target for component in EXECUTORS), (
            "the executor path got the new template"
        )
        generation = get_json("tradingpolicy", name, "-n", namespace)["metadata"]["generation"]
        wait_for(
            lambda: cluster.status("TradingPolicy", name).get("observedGeneration") == generation,
            timeout=60,
            what="status for the new generation",
        )
    finally:
        second.stop()
        kubectl("delete", "tradingpolicy", name, "-n", namespace, "--wait=false", check=False)
