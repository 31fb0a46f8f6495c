"""A paper TradingPolicy becomes its children: Deployments on the policy's digest, ConfigMap, Services, Secret;
the rollout halts entries until every component reports the digest and the reconciler matched."""

from __future__ import annotations

import redis

from harness.kube_emulator import EmulatedCluster
from quantum_trader.contracts.policy import parse_policy
from quantum_trader_operator import naming as n
from quantum_trader_operator.desired import EXECUTORS
from quantum_trader_operator.naming import DRIFT_HALT, ROLLOUT_HALT
from tests.operator.integration.support import (
    Operator,
    condition,
    heartbeat_all,
    keys_for,
    paper_policy,
    reconciled,
    wait_for,
)


def test_policy_becomes_children_and_rollout_releases_entries(
    cluster: EmulatedCluster, operator: Operator, r_client: redis.Redis
) -> None:
    manifest = paper_policy()
    name = manifest["metadata"]["name"]
    spec = parse_policy(manifest["spec"])
    image, digest = spec.image, n.image_digest(spec.image or "")
    components = spec.enabled_components()
    assert "exchange-sim" in components and len(components) == 12
    created = cluster.create(manifest)
    uid = created["metadata"]["uid"]

    deployments = wait_for(
        lambda: (
            (found := {d["metadata"]["name"]: d for d in cluster.list("Deployment", "apps/v1")})
            and len(found) == len(components)
            and found
        ),
        what="a Deployment per enabled component",
    )
    for component in components:
        deployment = deployments[n.deployment_name(name, component)]
        meta = deployment["metadata"]
        assert meta["labels"] == n.component_labels(name, component)
        assert meta["ownerReferences"] == [
            {
                "apiVersion": n.API_VERSION,
                "kind": "TradingPolicy",
                "name": name,
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        template = deployment["spec"]["template"]
        assert [c["image"] for c in template["spec"]["containers"]] == [image]
        assert template["metadata"]["annotations"][n.IMAGE_DIGEST_ANNOTATION] == digest
    assert deployments[n.deployment_name(name, "governor")]["spec"]["replicas"] == 2

    configmap = cluster.get("ConfigMap", n.config_map_name(name), "v1")
    assert configmap is not None and n.CONFIG_KEY in configmap["data"]
    services = {s["metadata"]["name"] for s in cluster.list("Service", "v1")}
    assert services == {n.metrics_service_name(name), n.exchange_sim_service_name(name), n.redis_name(name)}
    assert cluster.get("StatefulSet", n.redis_name(name), "apps/v1") is not None
    secret = cluster.get("Secret", n.paper_credentials_secret_name(name), "v1")
    assert secret is not None and set(secret.get("stringData") or secret.get("data") or {}) == {"apiKey", "apiSecret"}

    # Entries are halted for the rollout (first creation included) and control was initialised released.
    keys = keys_for(cluster.namespace, name)
    assert r_client.hget(keys.control, "state") == "released"
    assert ROLLOUT_HALT in r_client.hgetall(keys.halts)
    status = wait_for(lambda: (s := cluster.status("TradingPolicy", name)).get("health") and s, what="a status")
    assert status["observedGeneration"] == created["metadata"]["generation"]
    # README: HEALTH goes from Progressing to Healthy. The rollout halt is the rollout's own condition, not a
    # kill switch: no KillSwitch exists, so KillSwitchEngaged stays False.
    assert status["health"] == "Progressing", status
    assert condition(status, "RolloutInProgress")["status"] == "True"
    assert condition(status, "RolloutInProgress")["reason"] == "RollingOut"
    assert condition(status, "KillSwitchEngaged")["status"] == "False", condition(status, "KillSwitchEngaged")
    assert {c["type"] for c in status["conditions"]} >= {"Ready", "ImageConsistent", "WiringValid", "KillSwitchEngaged"}

    # Components come up on the new digest and the reconciler matches the exchange: entries are released.
    heartbeat_all(r_client, keys, components, digest, replicas={"governor": 2})
    assert ROLLOUT_HALT in r_client.hgetall(keys.halts), "released before the reconciler matched"
    reconciled(r_client, keys)
    wait_for(lambda: ROLLOUT_HALT not in r_client.hgetall(keys.halts), what="the rollout halt to be released")
    status = wait_for(
        lambda: (s := cluster.status("TradingPolicy", name)).get("health") == "Healthy" and s, what="Healthy"
    )
    assert status["ready"] == f"{len(components)}/{len(components)}"
    assert condition(status, "RolloutInProgress")["status"] == "False"
    healths = [h for h in (v.get("status", {}).get("health") for v in cluster.history("TradingPolicy", name)) if h]
    # up to the first Healthy (what follows depends on heartbeats this test stops writing: a stale one is not ready)
    assert "Healthy" in healths and set(healths[: healths.index("Healthy")]) == {"Progressing"}, healths
    assert status["drift"] == "none" and status["imageDigest"] == digest
    assert status["openPositions"] == 0 and status["lag"] == 0
    assert DRIFT_HALT not in r_client.hgetall(keys.halts)
    assert cluster.events("RolloutComplete")
    assert operator.alive()
    assert "qt_operator_reconcile_duration_seconds_count" in operator.scrape()


def test_executor_path_is_applied_last(cluster: EmulatedCluster, operator: Operator) -> None:
    manifest = paper_policy()
    name = manifest["metadata"]["name"]
    cluster.create(manifest)
    wait_for(lambda: len(cluster.list("Deployment", "apps/v1")) == 12, what="12 Deployments")
    # The emulator's resourceVersion is one global counter: a first version's tells the order of creation.
    versions = {
        d["metadata"]["labels"][n.LABEL_COMPONENT]: cluster.first_version("apps/v1/deployments", d["metadata"]["name"])
        for d in cluster.list("Deployment", "apps/v1")
    }
    executors = [versions[c] for c in EXECUTORS]
    others = [v for c, v in versions.items() if c not in EXECUTORS]
    assert max(others) < min(executors), versions
    # downstream first: position-state, apply-layer, governor
    assert versions["position-state"] < versions["apply-layer"] < versions["governor"]
    assert cluster.get("TradingPolicy", name) is not None


def test_a_deleted_policy_takes_its_control_and_halts_out_of_its_redis(
    cluster: EmulatedCluster, operator: Operator, r_client: redis.Redis
) -> None:
    """An external Redis outlives the policy: a policy created again under the same name must start released,
    not under the old one's kill switch, halts or rollout."""
    manifest = paper_policy()
    name = manifest["metadata"]["name"]
    keys = keys_for(cluster.namespace, name)
    cluster.create(manifest)
    wait_for(lambda: ROLLOUT_HALT in r_client.hgetall(keys.halts), what="the rollout halt")
    r_client.hset(keys.ack, "governor/governor-0", "1")
    other = keys_for(cluster.namespace, "another-policy")
    r_client.hset(other.control, mapping={"state": "engaged", "scope": "all", "generation": "7"})
    assert r_client.exists(keys.control, keys.halts, keys.ack) == 3

    cluster.delete("TradingPolicy", name)
    wait_for(lambda: cluster.get("TradingPolicy", name) is None, what="the policy to be gone (finalizer removed)")
    assert r_client.exists(keys.control, keys.halts, keys.ack, keys.component_state("operator", "rollout")) == 0
    assert r_client.hget(other.control, "generation") == "7", "another instance's keys are not touched"
    assert operator.alive()
