"""Safe rollout (DESIGN §5): a new digest is rolled out with entries halted (``operator:rollout``), the executor
path last; old pods reporting the old digest meanwhile are progress, not drift; the halt is released only when
every component reports the new digest and the reconciler matched after the rollout began. A component that is
disabled on the way loses its Deployment, then its consumer groups. Without Redis nothing is rolled out."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from harness.kube_emulator import EmulatedCluster
from quantum_trader.contracts.policy import parse_policy
from quantum_trader_operator import naming as n
from quantum_trader_operator.desired import EXECUTORS
from quantum_trader_operator.naming import DRIFT_HALT, ROLLOUT_HALT
from quantum_trader_operator.redis_io import read_rollout
from tests.conftest import free_port
from tests.operator.integration.support import (
    Operator,
    condition,
    heartbeat_all,
    keys_for,
    paper_policy,
    reconciled,
    wait_for,
    wait_handled,
)

NEW_DIGEST = "sha256:" + "b" * 64


def test_new_digest_rolls_out_halted_executors_last(
    cluster: EmulatedCluster, operator: Operator, r_client: redis.Redis
) -> None:
    manifest = paper_policy()
    name = manifest["metadata"]["name"]
    spec = parse_policy(manifest["spec"])
    old_digest = n.image_digest(spec.image or "")
    components = spec.enabled_components()
    keys = keys_for(cluster.namespace, name)
    cluster.create(manifest)
    wait_for(lambda: len(cluster.list("Deployment", "apps/v1")) == 12, what="12 Deployments")
    heartbeat_all(r_client, keys, components, old_digest, replicas={"governor": 2})
    reconciled(r_client, keys)
    wait_for(lambda: ROLLOUT_HALT not in r_client.hgetall(keys.halts), what="the first rollout to complete")
    wait_handled(cluster, "TradingPolicy", name)

    # In flight on the executor path, and a group of the component about to be disabled.
    r_client.xgroup_create(keys.stream("harvest.proposal"), "heat-gate", id="0", mkstream=True)
    r_client.xadd(keys.stream("apply.plan"), {"type": "Plan", "data": "{}"})
    r_client.xgroup_create(keys.stream("apply.plan"), "governor", id="0")

    new_image = spec.image.split("@")[0] + "@" + NEW_DIGEST  # type: ignore[union-attr]
    cluster.merge_patch(
        n.API_VERSION,
        "TradingPolicy",
        name,
        {"spec": {"image": new_image, "components": {"heat-gate": {"enabled": False}}}},
    )
    wait_for(lambda: ROLLOUT_HALT in r_client.hgetall(keys.halts), interval=0.02, what="entries halted for the rollout")
    state = read_rollout(r_client, keys)
    assert state is not None and state.to_digest == NEW_DIGEST and state.from_digests == {old_digest}

    def rolled() -> dict[str, dict] | None:
        found = {d["metadata"]["labels"][n.LABEL_COMPONENT]: d for d in cluster.list("Deployment", "apps/v1")}
        digests = {d["spec"]["template"]["metadata"]["annotations"][n.IMAGE_DIGEST_ANNOTATION] for d in found.values()}
        return found if digests == {NEW_DIGEST} and "heat-gate" not in found else None

    deployments = wait_for(rolled, what="every Deployment on the new digest, heat-gate gone")
    assert len(deployments) == 11
    last_write = {c: int(d["metadata"]["resourceVersion"]) for c, d in deployments.items()}
    assert max(v for c, v in last_write.items() if c not in EXECUTORS) < min(last_write[c] for c in EXECUTORS)
    wait_for(
        lambda: "heat-gate" not in [g["name"] for g in r_client.xinfo_groups(keys.stream("harvest.proposal"))],
        what="the disabled component's consumer group removed",
    )

    # Old pods still heartbeat the old digest: Progressing with the rollout's own condition, no drift, no drift halt.
    time.sleep(1.5)
    status = cluster.status("TradingPolicy", name)
    assert status["drift"] == "none", status["drift"]
    assert status["health"] == "Progressing" and "rollout" in status["message"], status["message"]
    rolling = condition(status, "RolloutInProgress")
    assert rolling["status"] == "True" and NEW_DIGEST[:19] in rolling["message"]
    assert condition(status, "KillSwitchEngaged")["status"] == "False"
    assert DRIFT_HALT not in r_client.hgetall(keys.halts)
    assert ROLLOUT_HALT in r_client.hgetall(keys.halts)

    # New pods replace the old ones; the halt waits for the reconciler to match after the rollout began.
    for key in r_client.scan_iter(match=keys.heartbeat_pattern()):
        r_client.delete(key)
    enabled = [c for c in components if c != "heat-gate"]
    for component in enabled:
        r_client.delete(keys.heartbeat(component, f"{component}-0"))
    heartbeat_all(r_client, keys, enabled, NEW_DIGEST, replicas={"governor": 2})
    time.sleep(1.5)
    assert ROLLOUT_HALT in r_client.hgetall(keys.halts), "released before the reconciler matched again"
    reconciled(r_client, keys)
    wait_for(lambda: ROLLOUT_HALT not in r_client.hgetall(keys.halts), what="entries released")
    assert read_rollout(r_client, keys) is None
    status = wait_for(
        lambda: (s := cluster.status("TradingPolicy", name)).get("health") == "Healthy" and s, what="Healthy"
    )
    assert status["imageDigest"] == NEW_DIGEST and status["ready"] == "11/11"
    assert "heat-gate" not in status["components"]
    assert len(cluster.events("RolloutComplete")) == 2
    assert operator.alive()


def test_unreachable_redis_holds_deployments_back(
    cluster: EmulatedCluster, operator_factory: Callable[[str], Operator]
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    operator = operator_factory(closed)
    manifest = paper_policy()
    name = manifest["metadata"]["name"]
    cluster.create(manifest)
    status = wait_for(
        lambda: (s := cluster.status("TradingPolicy", name)).get("health") == "Halted" and s, what="Halted"
    )
    assert "redis unreachable" in status["message"] and "rollout waits for Redis" in status["message"]
    # Services, the managed Redis and the ConfigMap exist; no component runs without an entries halt.
    assert cluster.get("StatefulSet", n.redis_name(name), "apps/v1") is not None
    assert cluster.get("ConfigMap", n.config_map_name(name), "v1") is not None
    time.sleep(2)
    assert cluster.list("Deployment", "apps/v1") == []
    assert operator.alive()
