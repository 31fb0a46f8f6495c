"""ExitRollout (DESIGN §5): the operator writes the ``rollout`` hash exit-brain reads and reports which symbols are
live; a kill switch of scope exits forces SHADOW (KILL > MODE > ROLLOUT); deleting it hands back the policy's exits."""

from __future__ import annotations

import copy

import redis

from harness.kube_emulator import EmulatedCluster
from quantum_trader.exits.rollout import stable_bucket
from tests.operator.integration.support import Operator, example, keys_for, paper_policy, wait_for


def test_exit_rollout_writes_hash_and_status(
    cluster: EmulatedCluster, operator: Operator, r_client: redis.Redis
) -> None:
    manifest = paper_policy()
    name = manifest["metadata"]["name"]
    cluster.create(manifest)
    keys = keys_for(cluster.namespace, name)
    wait_for(lambda: r_client.hget(keys.control, "state") == "released", what="control initialised")
    assert stable_bucket("ETHUSDT") >= 33, "examples/exitrollout.yaml's comment: ETHUSDT stays shadow at 33 %"

    rollout = example("exitrollout.yaml")
    rollout_name = rollout["metadata"]["name"]
    cluster.create(rollout)
    wait_for(
        lambda: (
            r_client.hgetall(keys.rollout)
            == {"mode": "LIVE", "percent": "33", "pinned_live": "BTCUSDT", "pinned_shadow": "SOLUSDT"}
        ),
        what="the rollout hash",
    )
    status = wait_for(
        lambda: (s := cluster.status("ExitRollout", rollout_name)).get("effectiveMode") and s, what="status"
    )
    assert status["liveSymbols"] == ["BTCUSDT"]
    assert sorted(status["shadowSymbols"]) == ["ETHUSDT", "SOLUSDT"]
    assert status["effectiveMode"] == "LIVE" and status["live"] == "1/3"

    # A ramp step: raising the percent only adds symbols.
    cluster.merge_patch(rollout["apiVersion"], "ExitRollout", rollout_name, {"spec": {"percent": 100}})
    wait_for(lambda: r_client.hget(keys.rollout, "percent") == "100", what="percent 100 in the hash")
    status = wait_for(
        lambda: (s := cluster.status("ExitRollout", rollout_name)).get("live") == "2/3" and s, what="2/3 live"
    )
    assert sorted(status["liveSymbols"]) == ["BTCUSDT", "ETHUSDT"]

    # A kill switch of scope exits outranks the rollout: everything reported SHADOW.
    switch = copy.deepcopy(example("killswitch.yaml"))
    switch["spec"]["scope"] = "exits"
    cluster.create(switch)
    status = wait_for(
        lambda: (s := cluster.status("ExitRollout", rollout_name)).get("effectiveMode") == "SHADOW" and s,
        what="SHADOW under a kill switch of scope exits",
    )
    assert status["liveSymbols"] == [] and status["live"] == "0/3"

    # Deleting the rollout hands exit-brain back to the policy's own exits (SHADOW in the example).
    cluster.delete("ExitRollout", rollout_name, rollout["apiVersion"])
    wait_for(lambda: r_client.hget(keys.rollout, "mode") == "SHADOW", what="the policy's exits in the hash")
    assert r_client.hget(keys.rollout, "percent") == "0"
    assert operator.alive()
