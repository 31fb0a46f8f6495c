"""KillSwitch (DESIGN §4.8, §5): engaging writes a new ``control`` generation; components ack it (simulated here
the way ComponentRunner does: the ``ack`` hash, one member per pod); status counts acks against live heartbeats.
Expiry and deletion release it."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import redis

from harness.kube_emulator import EmulatedCluster
from quantum_trader.bus.control import ack_generation, read_control
from quantum_trader.contracts.policy import parse_policy
from quantum_trader_operator import naming as n
from tests.operator.integration.support import (
    Operator,
    condition,
    example,
    heartbeat_all,
    keys_for,
    paper_policy,
    wait_for,
)


def test_kill_switch_engages_counts_acks_and_releases_on_delete(
    cluster: EmulatedCluster, operator: Operator, r_client: redis.Redis
) -> None:
    manifest = paper_policy()
    name = manifest["metadata"]["name"]
    spec = parse_policy(manifest["spec"])
    components = spec.enabled_components()
    cluster.create(manifest)
    keys = keys_for(cluster.namespace, name)
    wait_for(lambda: r_client.hget(keys.control, "state") == "released", what="control initialised")
    before = read_control(r_client, keys).generation
    pods = heartbeat_all(r_client, keys, components, n.image_digest(spec.image or ""), replicas={"governor": 2})
    assert len(pods) == 13

    switch = example("killswitch.yaml")
    switch_name = switch["metadata"]["name"]
    cluster.create(switch)
    control = wait_for(
        lambda: (c := read_control(r_client, keys)).engaged and c, what="control engaged by the KillSwitch"
    )
    assert control.generation == before + 1
    assert control.scope.value == "entries" and control.reason == "maintenance window"
    assert control.engaged_by == f"person:{cluster.namespace}/{switch_name}"

    status = wait_for(
        lambda: (s := cluster.status("KillSwitch", switch_name)).get("generation") == control.generation and s,
        what="KillSwitch status",
    )
    assert status["acked"] == f"0/{len(pods)}" and status["state"] == "Pending"
    assert status["engagedAt"].endswith("Z")
    assert cluster.events("KillSwitchEngaged")

    # Every pod applies the generation; the ack count follows, then the latency is recorded once.
    for member in pods[:5]:
        component, pod = member.split("/")
        ack_generation(r_client, keys, component, pod, control.generation)
    wait_for(lambda: cluster.status("KillSwitch", switch_name).get("acked") == f"5/{len(pods)}", what="5 acks counted")
    for member in pods[5:]:
        component, pod = member.split("/")
        ack_generation(r_client, keys, component, pod, control.generation)
    status = wait_for(
        lambda: (s := cluster.status("KillSwitch", switch_name)).get("acked") == f"{len(pods)}/{len(pods)}" and s,
        what="every ack counted",
    )
    assert status["state"] == "Engaged" and status["ackLatencySeconds"] > 0
    latency = status["ackLatencySeconds"]
    # The policy shows the switch too.
    wait_for(
        lambda: condition(cluster.status("TradingPolicy", name), "KillSwitchEngaged").get("status") == "True",
        what="KillSwitchEngaged=True on the policy",
    )
    assert cluster.status("KillSwitch", switch_name)["ackLatencySeconds"] == latency  # kept, not re-measured
    assert "qt_operator_killswitch_ack_latency_seconds_count 1.0" in operator.scrape()

    # Deleting the engaged switch releases it: a new generation, released.
    cluster.delete("KillSwitch", switch_name)
    released = wait_for(lambda: not (c := read_control(r_client, keys)).engaged and c, what="control released")
    assert released.generation == control.generation + 1
    wait_for(lambda: cluster.get("KillSwitch", switch_name) is None, what="the KillSwitch to be gone")
    assert operator.alive()


def test_kill_switch_expires(cluster: EmulatedCluster, operator: Operator, r_client: redis.Redis) -> None:
    manifest = paper_policy()
    name = manifest["metadata"]["name"]
    cluster.create(manifest)
    keys = keys_for(cluster.namespace, name)
    wait_for(lambda: r_client.hget(keys.control, "state") == "released", what="control initialised")
    switch = copy.deepcopy(example("killswitch.yaml"))
    switch["metadata"]["name"] = "short-halt"
    switch["spec"]["expiresAt"] = (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.create(switch)
    wait_for(lambda: read_control(r_client, keys).engaged, what="engaged")
    wait_for(lambda: not read_control(r_client, keys).engaged, timeout=10, what="released at expiry")
    wait_for(lambda: cluster.status("KillSwitch", "short-halt").get("state") == "Expired", what="state Expired")
    assert "reason" in r_client.hgetall(keys.control)
    assert "expired" in r_client.hget(keys.control, "reason")
