"""A policy the operator cannot run (DESIGN §5): the emulator runs no CEL, so the operator's own validate_policy is
what refuses a tag instead of a digest, or wiring with an unproduced stream. Status says Invalid with the reason,
an Event is posted, nothing is created, and the operator keeps serving other policies."""

from __future__ import annotations

import copy

from harness.kube_emulator import EmulatedCluster
from quantum_trader_operator import naming as n
from tests.operator.integration.support import Operator, condition, paper_policy, wait_for


def test_tag_instead_of_digest_is_invalid_and_operator_keeps_running(
    cluster: EmulatedCluster, operator: Operator
) -> None:
    bad = paper_policy()
    bad["metadata"]["name"] = "tagged"
    bad["spec"]["image"] = "ghcr.io/quantum-trader/quantum-trader:latest"
    cluster.create(bad)
    status = wait_for(
        lambda: (s := cluster.status("TradingPolicy", "tagged")).get("health") == "Invalid" and s, what="Invalid"
    )
    assert "pinned by digest" in status["message"] and "spec.image" in status["message"]
    ready = condition(status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "SpecInvalid"
    events = wait_for(lambda: cluster.events("InvalidSpec"), what="an InvalidSpec event")
    assert events[0]["type"] == "Warning" and "pinned by digest" in events[0]["message"]

    # A good policy next to it is reconciled: the operator neither crashed nor got stuck retrying the bad one.
    good = paper_policy()
    cluster.create(good)
    wait_for(lambda: len(cluster.list("Deployment", "apps/v1")) == 12, what="the good policy's Deployments")
    assert all(not d["metadata"]["name"].startswith("tagged-") for d in cluster.list("Deployment", "apps/v1"))
    assert cluster.get("ConfigMap", n.config_map_name("tagged"), "v1") is None
    assert operator.alive()
    assert len(cluster.events("InvalidSpec")) == 1, "the timer must not repeat the event every tick"

    # Fixing the spec rolls the policy out.
    cluster.merge_patch(n.API_VERSION, "TradingPolicy", "tagged", {"spec": {"image": good["spec"]["image"]}})
    wait_for(
        lambda: cluster.get("Deployment", n.deployment_name("tagged", "governor"), "apps/v1") is not None,
        what="the fixed policy's Deployments",
    )
    wait_for(lambda: cluster.status("TradingPolicy", "tagged").get("health") != "Invalid", what="no longer Invalid")


def test_unwired_stream_is_invalid_and_nothing_rolls_out(cluster: EmulatedCluster, operator: Operator) -> None:
    policy = copy.deepcopy(paper_policy())
    policy["metadata"]["name"] = "unwired"
    # market-data produces market.tick; features, exit-brain, harvest and exchange-sim read it.
    policy["spec"]["components"]["market-data"] = {"enabled": False}
    cluster.create(policy)
    status = wait_for(
        lambda: (s := cluster.status("TradingPolicy", "unwired")).get("health") == "Invalid" and s, what="Invalid"
    )
    wiring = condition(status, "WiringValid")
    assert wiring["status"] == "False" and wiring["reason"] == "UnproducedStreams"
    assert "market.tick" in wiring["message"]
    assert cluster.list("Deployment", "apps/v1") == []
    assert operator.alive()
