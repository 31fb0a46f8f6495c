"""The operator's scenarios against a real cluster (see conftest.py for what is needed and why pods need not run).

One policy (examples/policy.yaml) per module, in the module's namespace; the tests run in file order and build on
it: children and printer columns, drift, kill switch, exit rollout, then specs the cluster or the operator refuses.
"""

from __future__ import annotations

import copy

import pytest
import redis

from quantum_trader.bus.control import ack_generation, read_control
from quantum_trader.contracts.policy import parse_policy
from quantum_trader_operator import naming as n
from quantum_trader_operator.runtime_io import DRIFT_HALT
from tests.e2e.conftest import get_json, kubectl, kubectl_apply
from tests.operator.integration.support import (
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


@pytest.fixture(scope="module")
def policy(cluster: Cluster, e2e_operator: Operator) -> dict:
    kubectl_apply(POLICY, cluster.namespace)
    return wait_handled(cluster, "TradingPolicy", NAME)


@pytest.fixture
def r_client(redis_server: str) -> redis.Redis:
    return redis.Redis.from_url(redis_server, decode_responses=True)


def test_children_and_printer_columns(cluster: Cluster, policy: dict) -> None:
    deployments = wait_for(
        lambda: len(found := get_json("deployments", "-n", cluster.namespace)["items"]) == len(COMPONENTS) and found,
        timeout=60,
        what="a Deployment per component",
    )
    for deployment in deployments:
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == SPEC.image
        assert deployment["metadata"]["ownerReferences"][0]["uid"] == policy["metadata"]["uid"]
    assert get_json("configmap", n.config_map_name(NAME), "-n", cluster.namespace)["data"][n.CONFIG_KEY]
    wait_for(lambda: cluster.status("TradingPolicy", NAME).get("health"), timeout=60, what="a health in status")
    table = kubectl("get", "tradingpolicies", "-n", cluster.namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "HEALTH", "MODE", "READY", "POSITIONS", "LAG", "DRIFT", "AGE"]
    row = table[1].split()
    assert row[0] == NAME and row[2] == "paper"


def test_drift_is_reverted(cluster: Cluster, policy: dict, r_client: redis.Redis) -> None:
    keys = keys_for(cluster.namespace, NAME)
    governor = n.deployment_name(NAME, "governor")
    kubectl("set", "image", f"deployment/{governor}", f"governor={TAGGED}", "-n", cluster.namespace)
    wait_for(lambda: DRIFT_HALT in r_client.hgetall(keys.halts), interval=0.05, timeout=30, what="the drift halt")
    wait_for(
        lambda: (
            get_json("deployment", governor, "-n", cluster.namespace)["spec"]["template"]["spec"]["containers"][0][
                "image"
            ]
            == SPEC.image
        ),
        timeout=30,
        what="the image to be reverted",
    )
    assert wait_for(lambda: cluster.events("DriftDetected"), timeout=30, what="a DriftDetected event")
    wait_for(lambda: DRIFT_HALT not in r_client.hgetall(keys.halts), timeout=60, what="the drift halt to clear")
    wait_for(
        lambda: condition(cluster.status("TradingPolicy", NAME), "ImageConsistent").get("status") == "True",
        timeout=30,
        what="ImageConsistent=True",
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
    name = switch["metadata"]["name"]
    wait_for(
        lambda: cluster.status("KillSwitch", name).get("acked") == f"{len(pods)}/{len(pods)}",
        timeout=30,
        what="every ack counted",
    )
    table = kubectl("get", "killswitches", "-n", cluster.namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "ENGAGED", "SCOPE", "ACKED", "AGE"]
    kubectl("delete", "killswitch", name, "-n", cluster.namespace)
    wait_for(lambda: not read_control(r_client, keys).engaged, timeout=30, what="released on delete")


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
    assert status["liveSymbols"] == ["BTCUSDT"] and status["live"] == "1/3"


def test_refused_specs(cluster: Cluster, policy: dict) -> None:
    tagged = copy.deepcopy(POLICY)
    tagged["metadata"]["name"] = "tagged"
    tagged["spec"]["image"] = TAGGED
    refused = kubectl_apply(tagged, cluster.namespace, check=False)
    assert refused.returncode != 0 and "pinned by digest" in refused.stderr  # CEL at admission

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
    assert not [
        d
        for d in get_json("deployments", "-n", cluster.namespace)["items"]
        if d["metadata"]["name"].startswith("unwired-")
    ]
