"""desired.py: a TradingPolicy in, the manifests that should exist out — no server, plain dicts."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from quantum_trader.contracts.control import parse_control
from quantum_trader.contracts.policy import PolicySpec, parse_policy
from quantum_trader.contracts.registry import COMPONENTS
from quantum_trader.exits.rollout import split_symbols
from quantum_trader_operator import naming as n
from quantum_trader_operator.config import config_data, config_hash, exit_rollout_status, rollout_config, runtime_spec
from quantum_trader_operator.desired import (
    EXCHANGE_CLIENTS,
    MANAGED_REDIS_IMAGE,
    OperatorSettings,
    desired_objects,
    paper_credentials_secret,
    rollout_order,
)
from quantum_trader_operator.naming import instance_id, paper_credentials_secret_name
from quantum_trader_operator.validation import InvalidPolicy, validate_policy

DIGEST = "sha256:" + "5f1f2a8f0c9e4a3b" * 4
IMAGE = f"ghcr.io/quantum-trader/quantum-trader@{DIGEST}"
UID = "6d1c9a52-policy-uid"
SECRET = {"name": "binance-live", "apiKeyKey": "key", "apiSecretKey": "secret"}
ALL = list(COMPONENTS)
WITHOUT_SIM = [c for c in ALL if c != "exchange-sim"]


def policy(name: str = "alpha", namespace: str = "trading", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"image": IMAGE, "redis": {"managed": True}, "symbols": ["BTCUSDT", "ETHUSDT"]}
    body.update(spec)
    return {
        "apiVersion": n.API_VERSION,
        "kind": "TradingPolicy",
        "metadata": {"name": name, "namespace": namespace, "uid": UID, "generation": 3},
        "spec": body,
    }


def live(**spec: Any) -> dict[str, Any]:
    return policy(mode="live", confirmLive=True, exchangeSecretRef=SECRET, **spec)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def deployments(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """component -> Deployment"""
    return {o["metadata"]["labels"][n.LABEL_COMPONENT]: o for o in objects if o["kind"] == "Deployment"}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(deployment)["env"]}


def pod_templates(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            yield obj["metadata"]["name"], obj["spec"]["template"]


# ---------------------------------------------------------------- which objects


@pytest.mark.parametrize(
    ("cr", "components"),
    [
        (policy(), ALL),
        (policy(mode="testnet", exchangeSecretRef=SECRET), WITHOUT_SIM),
        (live(), WITHOUT_SIM),
        (policy(components={"harvest": {"enabled": False}, "heat-gate": {"enabled": False}}),
         [c for c in ALL if c not in ("harvest", "heat-gate")]),
        (live(components={"exchange-sim": {"enabled": True}}), WITHOUT_SIM),
    ],
    ids=["paper", "testnet", "live", "disabled", "sim-never-outside-paper"],
)  # fmt: skip
def test_one_deployment_per_enabled_component_in_registry_order(cr: dict[str, Any], components: list[str]) -> None:
    objects = desired_objects(cr)
    assert list(deployments(objects)) == components
    for component, deployment in deployments(objects).items():
        assert deployment["metadata"]["name"] == f"alpha-{component}"
        assert deployment["metadata"]["namespace"] == "trading"


def test_object_set_of_a_paper_policy_with_managed_redis() -> None:
    kinds = [(o["kind"], o["metadata"]["name"]) for o in desired_objects(policy())]
    assert kinds[:5] == [
        ("ConfigMap", "alpha-config"),
        ("Service", "alpha-metrics"),
        ("Service", "alpha-exchange-sim"),
        ("StatefulSet", "alpha-redis"),
        ("Service", "alpha-redis"),
    ]
    assert not [k for k, _ in kinds if k == "Secret"], "desired objects never carry a Secret"


@pytest.mark.parametrize("cr", [live(), policy(mode="testnet", exchangeSecretRef=SECRET)], ids=["live", "testnet"])
def test_exchange_sim_only_in_paper(cr: dict[str, Any]) -> None:
    objects = desired_objects(cr)
    assert "alpha-exchange-sim" not in by_kind(objects, "Service")
    assert "exchange-sim" not in deployments(objects)
    for deployment in deployments(objects).values():
        assert "QT_EXCHANGE_URL" not in env_of(deployment)
        rendered = json.dumps(deployment)
        assert "paper-credentials" not in rendered


def test_paper_mode_wires_the_simulator() -> None:
    objects = desired_objects(policy())
    service = by_kind(objects, "Service")["alpha-exchange-sim"]
    assert service["spec"]["ports"] == [{"name": "exchange", "port": 8090, "targetPort": "exchange", "protocol": "TCP"}]
    assert service["spec"]["selector"] == n.selector_labels("alpha", "exchange-sim")
    sim = deployments(objects)["exchange-sim"]
    assert {"name": "exchange", "containerPort": 8090, "protocol": "TCP"} in container(sim)["ports"]
    assert sim["spec"]["strategy"] == {"type": "Recreate"}, "two simulators would be two accounts"
    for deployment in deployments(objects).values():
        assert env_of(deployment)["QT_EXCHANGE_URL"] == {
            "name": "QT_EXCHANGE_URL",
            "value": "http://alpha-exchange-sim:8090",
        }


@pytest.mark.parametrize(
    ("redis", "managed", "url"),
    [
        ({"managed": True}, True, "redis://alpha-redis:6379/0"),
        ({"url": "redis://redis.shared.svc:6379/2"}, False, "redis://redis.shared.svc:6379/2"),
    ],
    ids=["managed", "external"],
)
def test_managed_redis_only_when_managed(redis: dict[str, Any], managed: bool, url: str) -> None:
    objects = desired_objects(policy(redis=redis))
    assert ("alpha-redis" in by_kind(objects, "StatefulSet")) is managed
    assert ("alpha-redis" in by_kind(objects, "Service")) is managed
    for deployment in deployments(objects).values():
        assert env_of(deployment)["QT_REDIS_URL"] == {"name": "QT_REDIS_URL", "value": url}
        assert "QT_REDIS_PASSWORD" not in env_of(deployment)


def test_managed_redis_shape() -> None:
    settings = OperatorSettings(redis_image="redis:7.4-alpine", redis_storage="2Gi", redis_storage_class="fast")
    objects = desired_objects(policy(), settings=settings)
    redis = by_kind(objects, "StatefulSet")["alpha-redis"]
    spec = redis["spec"]
    assert spec["replicas"] == 1 and spec["serviceName"] == "alpha-redis"
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert spec["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    (box,) = spec["template"]["spec"]["containers"]
    assert box["image"] == "redis:7.4-alpine"
    assert box["args"][box["args"].index("--maxmemory-policy") + 1] == "noeviction"
    assert "--protected-mode" in box["args"] and "--requirepass" not in box["args"]
    service = by_kind(objects, "Service")["alpha-redis"]
    assert service["spec"]["ports"][0]["port"] == 6379
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]

    ephemeral = by_kind(desired_objects(policy(), settings=OperatorSettings(redis_storage=None)), "StatefulSet")
    assert "volumeClaimTemplates" not in ephemeral["alpha-redis"]["spec"]
    # By default the managed Redis is pinned by digest, like the policy's own image.
    (default_box,) = ephemeral["alpha-redis"]["spec"]["template"]["spec"]["containers"]
    assert default_box["image"] == MANAGED_REDIS_IMAGE and n.image_digest(MANAGED_REDIS_IMAGE)
    volumes = {v["name"]: v for v in ephemeral["alpha-redis"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}


def test_redis_password_only_from_a_secret() -> None:
    ref = {"name": "redis-auth", "key": "password"}
    for redis in ({"managed": True, "passwordSecretRef": ref}, {"url": "redis://r:6379/0", "passwordSecretRef": ref}):
        objects = desired_objects(policy(redis=redis))
        for deployment in deployments(objects).values():
            assert env_of(deployment)["QT_REDIS_PASSWORD"] == {
                "name": "QT_REDIS_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "password"}},
            }
    managed = by_kind(desired_objects(policy(redis={"managed": True, "passwordSecretRef": ref})), "StatefulSet")
    (box,) = managed["alpha-redis"]["spec"]["template"]["spec"]["containers"]
    assert box["args"][box["args"].index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert {e["name"]: e["valueFrom"]["secretKeyRef"] for e in box["env"]} == {
        "REDIS_PASSWORD": ref,
        "REDISCLI_AUTH": ref,
    }


def test_operator_settings_from_env() -> None:
    assert OperatorSettings.from_env({}) == OperatorSettings()
    custom = OperatorSettings.from_env(
        {"QT_OPERATOR_REDIS_IMAGE": "mirror/redis@sha256:" + "1" * 64, "QT_OPERATOR_REDIS_STORAGE": ""}
    )
    assert custom.redis_image.startswith("mirror/redis@") and custom.redis_storage is None


# ---------------------------------------------------------------- every Deployment


@pytest.mark.parametrize("cr", [policy(), live()], ids=["paper", "live"])
def test_every_container_runs_the_policy_digest(cr: dict[str, Any]) -> None:
    for component, deployment in deployments(desired_objects(cr)).items():
        box = container(deployment)
        assert box["image"] == IMAGE
        assert box["args"] == ["component", component]
        assert box["name"] == component
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations[n.IMAGE_DIGEST_ANNOTATION] == DIGEST
        assert annotations[n.CONFIG_HASH_ANNOTATION].startswith("sha256:")
        env = env_of(deployment)
        assert env["QT_IMAGE_DIGEST"]["value"] == DIGEST
        assert env["QT_COMPONENT"]["value"] == component


def test_component_environment() -> None:
    env = env_of(deployments(desired_objects(policy()))["governor"])
    assert env["QT_INSTANCE"] == {"name": "QT_INSTANCE", "value": "trading.alpha"}
    assert env["QT_CONFIG"] == {"name": "QT_CONFIG", "value": "/etc/quantum-trader/config.yaml"}
    assert env["QT_POD"] == {"name": "QT_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    assert env["QT_HEALTH_PORT"]["value"] == "8080" and env["QT_METRICS_PORT"]["value"] == "9100"
    assert "BINANCE_API_KEY" not in env, "the governor never talks to the exchange"


def test_labels_and_owner_references_on_every_object() -> None:
    owner = {
        "apiVersion": "trading.quantumtrader.io/v1alpha1",
        "kind": "TradingPolicy",
        "name": "alpha",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for obj in desired_objects(policy()):
        meta = obj["metadata"]
        assert meta["ownerReferences"] == [owner], meta["name"]
        labels = meta["labels"]
        assert labels[n.LABEL_NAME] == "quantum-trader"
        assert labels[n.LABEL_INSTANCE] == "alpha"
        assert labels[n.LABEL_MANAGED_BY] == "quantum-trader-operator"
        assert labels[n.LABEL_POLICY] == "alpha"
        assert labels[n.LABEL_COMPONENT]
        if obj["kind"] in ("Deployment", "StatefulSet"):
            template_labels = obj["spec"]["template"]["metadata"]["labels"]
            assert template_labels == labels
            selector = obj["spec"]["selector"]["matchLabels"]
            assert selector.items() <= template_labels.items()


def test_metrics_service_selects_component_pods_only() -> None:
    objects = desired_objects(policy())
    service = by_kind(objects, "Service")["alpha-metrics"]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}]
    selector = service["spec"]["selector"].items()
    selected = [name for name, template in pod_templates(objects) if selector <= template["metadata"]["labels"].items()]
    assert sorted(selected) == sorted(f"alpha-{c}" for c in ALL)
    for _, template in pod_templates(objects):
        if selector <= template["metadata"]["labels"].items():
            assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in template["spec"]["containers"][0][
                "ports"
            ]


def test_restricted_pod_security_everywhere() -> None:
    for name, template in pod_templates(desired_objects(policy())):
        pod = template["spec"]
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        }, name
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["tmp"]
        for box in pod["containers"]:
            security = box["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert {"name": "tmp", "mountPath": "/tmp"} in box["volumeMounts"]
            assert "privileged" not in security and "hostNetwork" not in pod


def test_probes_and_config_volume() -> None:
    for deployment in deployments(desired_objects(policy())).values():
        box = container(deployment)
        assert box["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert box["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
        assert box["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in box["ports"]
        assert {"name": "config", "mountPath": "/etc/quantum-trader", "readOnly": True} in box["volumeMounts"]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["config"]["configMap"]["name"] == "alpha-config"


def test_replicas_and_resources_honoured() -> None:
    cr = policy(
        components={
            "governor": {"replicas": 3},
            "features": {"replicas": 0},
            "apply-layer": {"resources": {"limits": {"memory": "2Gi", "cpu": "1"}}},
        }
    )
    found = deployments(desired_objects(cr))
    assert found["governor"]["spec"]["replicas"] == 3
    assert found["features"]["spec"]["replicas"] == 0
    assert found["market-data"]["spec"]["replicas"] == 1
    apply_layer = container(found["apply-layer"])["resources"]
    assert apply_layer["limits"] == {"memory": "2Gi", "cpu": "1"}
    assert apply_layer["requests"] == {"cpu": "50m", "memory": "128Mi"}, "an unset section keeps its default"
    assert container(found["ai-engine"])["resources"]["limits"]["memory"] == "1Gi"


def test_rolling_update_never_drops_a_component_to_zero() -> None:
    for component, deployment in deployments(desired_objects(policy())).items():
        if component != "exchange-sim":
            assert deployment["spec"]["strategy"] == {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            }


# ---------------------------------------------------------------- secrets (invariant 10)


SECRETISH = ("KEY", "SECRET", "PASSWORD", "TOKEN", "AUTH")
REDIS_AUTH = {"name": "redis-auth", "key": "pw"}


@pytest.mark.parametrize(
    "cr",
    [
        policy(),
        live(redis={"url": "redis://r:6379/0", "passwordSecretRef": REDIS_AUTH}),
        policy(mode="testnet", exchangeSecretRef=SECRET, redis={"managed": True, "passwordSecretRef": REDIS_AUTH}),
    ],
    ids=["paper", "live", "testnet"],
)  # fmt: skip
def test_credentials_only_as_secret_key_refs(cr: dict[str, Any]) -> None:
    objects = desired_objects(cr)
    for _, template in pod_templates(objects):
        for box in template["spec"]["containers"]:
            for entry in box.get("env", []):
                if any(word in entry["name"] for word in SECRETISH):
                    assert "value" not in entry, entry["name"]
                    assert set(entry["valueFrom"]) == {"secretKeyRef"}, entry["name"]
    for component, deployment in deployments(objects).items():
        has_credentials = {"BINANCE_API_KEY", "BINANCE_API_SECRET"} <= set(env_of(deployment))
        assert has_credentials is (component in EXCHANGE_CLIENTS), component
    mode = cr["spec"].get("mode", "paper")
    expected = paper_credentials_secret_name("alpha") if mode == "paper" else SECRET["name"]
    refs = env_of(deployments(objects)["apply-layer"])
    assert refs["BINANCE_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == expected
    assert refs["BINANCE_API_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == (
        "apiSecret" if mode == "paper" else "secret"
    )
    # The config holds no credential: the paper key pair's Secret is not even named there.
    text = by_kind(objects, "ConfigMap")["alpha-config"]["data"]["config.yaml"]
    assert "paper-credentials" not in text and "BINANCE" not in text


def test_paper_credentials_secret_is_shaped_from_the_callers_values_only() -> None:
    cr = policy()
    key, secret = "k-" + "9" * 30, "s-" + "8" * 30
    manifest = paper_credentials_secret(cr, api_key=key, api_secret=secret)
    assert manifest["metadata"]["name"] == "alpha-paper-credentials"
    assert manifest["stringData"] == {"apiKey": key, "apiSecret": secret}
    assert manifest["immutable"] is True
    assert manifest["metadata"]["ownerReferences"][0]["uid"] == UID
    rendered = json.dumps(desired_objects(cr))
    assert key not in rendered and secret not in rendered


def test_a_password_in_the_redis_url_is_refused() -> None:
    with pytest.raises(InvalidPolicy, match="credentials"):
        desired_objects(policy(redis={"url": "redis://:hunter2@r:6379/0"}))


# ---------------------------------------------------------------- config and its hash


def test_config_map_holds_the_resolved_policy() -> None:
    cr = policy(risk={"maxOpenPositions": 4})
    objects = desired_objects(cr)
    config = by_kind(objects, "ConfigMap")["alpha-config"]
    assert list(config["data"]) == ["config.yaml"]
    assert config["data"] == config_data(cr)
    parsed = parse_policy(yaml.safe_load(config["data"]["config.yaml"]))
    assert parsed == runtime_spec(parse_policy(cr["spec"]))
    assert parsed.risk.max_open_positions == 4
    assert parsed.image == IMAGE
    for deployment in deployments(objects).values():
        annotation = deployment["spec"]["template"]["metadata"]["annotations"][n.CONFIG_HASH_ANNOTATION]
        assert annotation == config_hash(config["data"])


def test_config_hash_is_of_content_only() -> None:
    assert config_hash({"a": "1", "b": "2"}) == config_hash({"b": "2", "a": "1"})
    assert config_hash({"a": "1"}) != config_hash({"a": "2"})
    assert len(config_hash({})) == len("sha256:") + 64


def _hash(cr: dict[str, Any], **kwargs: Any) -> str:
    deployment = deployments(desired_objects(cr, **kwargs))["market-data"]
    return deployment["spec"]["template"]["metadata"]["annotations"][n.CONFIG_HASH_ANNOTATION]


def _changed(cr: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(cr)
    *parents, last = path.split(".")
    node = changed
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return changed


ROLLOUT = {"kind": "ExitRollout", "spec": {"policyRef": {"name": "alpha"}, "mode": "LIVE", "percent": 50}}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.risk", {"maxOpenPositions": 3}),
        ("spec.symbols", ["BTCUSDT"]),
        ("spec.image", "ghcr.io/quantum-trader/quantum-trader@sha256:" + "e" * 64),
        ("spec.exits", {"mode": "LIVE", "rolloutPercent": 10}),
        ("spec.components", {"harvest": {"enabled": False}, "heat-gate": {"enabled": False}}),
        ("spec.streams", {"maxLen": 5000}),
    ],
)
def test_config_hash_changes_with_what_components_read(path: str, value: Any) -> None:
    assert _hash(_changed(policy(), path, value)) != _hash(policy())


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("metadata.labels", {"team": "quant"}),
        ("metadata.annotations", {"note": "x"}),
        ("metadata.generation", 99),
        ("metadata.uid", "another-uid"),
        ("status", {"health": "Degraded"}),
        ("spec.components", {"governor": {"replicas": 5}}),
        ("spec.components", {"ai-engine": {"resources": {"limits": {"memory": "4Gi"}}}}),
    ],
)
def test_config_hash_stays_for_what_components_do_not_read(path: str, value: Any) -> None:
    # Scaling or resizing one component must not restart every pod of the policy.
    assert _hash(_changed(policy(), path, value)) == _hash(policy())


def test_rollouts_and_kill_switches_change_no_manifest() -> None:
    # They travel through the rollout and control keys: a ramp step or a halt restarts nothing.
    plain = desired_objects(policy())
    assert desired_objects(policy(), exit_rollout=ROLLOUT) == plain


def test_an_exit_rollout_of_another_policy_is_an_error() -> None:
    other = {"spec": {"policyRef": {"name": "beta"}}}
    with pytest.raises(ValueError, match="beta"):
        desired_objects(policy(), exit_rollout=other)


def test_rendering_is_deterministic_and_pure() -> None:
    cr = policy(components={"governor": {"replicas": 2}})
    before = copy.deepcopy(cr)
    first = desired_objects(cr)
    assert desired_objects(cr) == first
    assert cr == before, "the input object is not modified"
    assert json.dumps(first, sort_keys=True) == json.dumps(desired_objects(copy.deepcopy(cr)), sort_keys=True)


# ---------------------------------------------------------------- rollout order


def test_rollout_order_puts_executors_last() -> None:
    ordered = rollout_order(desired_objects(policy()))
    kinds = [o["kind"] for o in ordered]
    first_deployment = kinds.index("Deployment")
    assert set(kinds[:first_deployment]) == {"ConfigMap", "Service", "StatefulSet"}
    assert kinds.index("StatefulSet") > max(i for i, k in enumerate(kinds) if k in ("ConfigMap", "Service"))
    components = [o["metadata"]["labels"][n.LABEL_COMPONENT] for o in ordered if o["kind"] == "Deployment"]
    executors = [c for c, spec in COMPONENTS.items() if spec.executor]
    assert sorted(components[-len(executors) :]) == sorted(executors)
    assert components[-len(executors) :] == ["position-state", "apply-layer", "governor"]
    assert components[: -len(executors)] == [c for c in ALL if c not in executors]


def test_rollout_order_is_a_permutation() -> None:
    objects = desired_objects(policy())
    ordered = rollout_order(reversed(objects))
    assert sorted(json.dumps(o, sort_keys=True) for o in ordered) == sorted(
        json.dumps(o, sort_keys=True) for o in objects
    )
    assert rollout_order(ordered) == ordered


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("cr", "fragment"),
    [
        (policy(image="ghcr.io/quantum-trader/quantum-trader:latest"), "pinned by digest"),
        (policy(image=None), "spec.image is required"),
        (policy(mode="live", exchangeSecretRef=SECRET), "confirmLive"),
        (policy(mode="testnet"), "exchangeSecretRef"),
        (policy(redis={}), "exactly one of url or managed"),
        (policy(redis={"url": "http://r:6379"}), "redis://"),
        (policy(components={"governor": {"enabled": False}}), "apply.approved is read by apply-layer"),
        (policy(components={"exchange-sim": {"replicas": 2}}), "at most 1"),
        (policy(components={"governor": {"resources": {"request": {"cpu": "1"}}}}), "only requests and limits"),
        (policy(components={"governer": {}}), "unknown components"),
        (policy(name="p" * 60), "exceed 63"),
        (policy(name="p" * 47), "StatefulSet name"),
        (policy(name="Alpha"), "instance"),
        ({"kind": "TradingPolicy", "spec": {"image": IMAGE, "redis": {"managed": True}}}, "metadata.name"),
    ],
)
def test_validate_policy_flags_what_makes_it_invalid(cr: dict[str, Any], fragment: str) -> None:
    problems = validate_policy(cr)
    assert any(fragment in p for p in problems), problems
    assert all("\n" not in p for p in problems)
    with pytest.raises((InvalidPolicy, ValueError)):
        desired_objects(cr)


def test_invalid_policy_carries_every_problem() -> None:
    cr = policy(redis={}, components={"exchange-sim": {"replicas": 3}})
    with pytest.raises(InvalidPolicy) as raised:
        desired_objects(cr)
    assert len(raised.value.problems) == 2
    assert raised.value.problems == validate_policy(cr)


def test_policy_name_limits_only_apply_to_what_is_created() -> None:
    # 47 characters: too long for a managed Redis StatefulSet, fine with an external Redis in live mode.
    assert validate_policy(live(name="p" * 47, redis={"url": "redis://r:6379/0"})) == []


def test_missing_uid_is_refused_before_rendering() -> None:
    cr = policy()
    del cr["metadata"]["uid"]
    with pytest.raises(ValueError, match="uid"):
        desired_objects(cr)


# ---------------------------------------------------------------- exit rollout status and instance


def test_instance_id() -> None:
    assert instance_id("trading", "alpha") == "trading.alpha"
    with pytest.raises(ValueError):
        instance_id("Trading", "alpha")


SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT", "DOGEUSDT", "ADAUSDT", "LINKUSDT"]


@pytest.mark.parametrize(
    "spec",
    [
        {"policyRef": {"name": "alpha"}},
        {"policyRef": {"name": "alpha"}, "mode": "LIVE", "percent": 0},
        {"policyRef": {"name": "alpha"}, "mode": "LIVE", "percent": 50},
        {"policyRef": {"name": "alpha"}, "mode": "LIVE", "percent": 100, "pinnedShadow": ["ETHUSDT"]},
        {"policyRef": {"name": "alpha"}, "mode": "LIVE", "percent": 0, "pinnedLive": ["SOLUSDT"]},
        {"policyRef": {"name": "alpha"}, "mode": "SHADOW", "percent": 100, "pinnedLive": ["SOLUSDT"]},
    ],
)
def test_exit_rollout_status_uses_the_exit_brain_rule(spec: dict[str, Any]) -> None:
    status = exit_rollout_status({"kind": "ExitRollout", "spec": spec}, SYMBOLS)
    live_symbols, shadow_symbols = split_symbols(
        SYMBOLS,
        spec.get("mode", "SHADOW"),
        spec.get("percent", 0),
        spec.get("pinnedLive", ()),
        spec.get("pinnedShadow", ()),
    )
    assert status == {
        "liveSymbols": list(live_symbols),
        "shadowSymbols": list(shadow_symbols),
        "effectiveMode": spec.get("mode", "SHADOW"),
        "live": f"{len(live_symbols)}/{len(SYMBOLS)}",
    }
    assert exit_rollout_status(spec, SYMBOLS) == status, "a bare spec works too"


@pytest.mark.parametrize(("scope", "forced"), [("entries", False), ("exits", True), ("all", True)])
def test_kill_switch_outranks_the_rollout(scope: str, forced: bool) -> None:
    spec = {"policyRef": {"name": "alpha"}, "mode": "LIVE", "percent": 100}
    engaged = parse_control({"state": "engaged", "scope": scope, "generation": "4", "reason": "test"})
    status = exit_rollout_status(spec, SYMBOLS, control=engaged)
    assert status["effectiveMode"] == ("SHADOW" if forced else "LIVE")
    assert status["liveSymbols"] == ([] if forced else SYMBOLS)
    released = parse_control({"state": "released", "generation": "5"})
    assert exit_rollout_status(spec, SYMBOLS, control=released)["liveSymbols"] == SYMBOLS
    # Control that cannot be read fails closed: every symbol SHADOW.
    assert exit_rollout_status(spec, SYMBOLS, control=parse_control(None))["liveSymbols"] == []


def test_rollout_config_for_the_rollout_hash() -> None:
    spec = PolicySpec(exits={"mode": "LIVE", "rollout_percent": 20, "pinned_live": ["BTCUSDT"]})
    from_policy = rollout_config(spec)
    assert (from_policy.mode, from_policy.percent, from_policy.pinned_live) == ("LIVE", 20, ("BTCUSDT",))
    from_rollout = rollout_config(spec, ROLLOUT)
    assert from_rollout.to_hash() == {"mode": "LIVE", "percent": "50", "pinned_live": "", "pinned_shadow": ""}


def test_the_example_rollout_on_the_example_policy() -> None:
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "examples"
    cr = yaml.safe_load((examples / "policy.yaml").read_text())
    rollout = yaml.safe_load((examples / "exitrollout.yaml").read_text())
    status = exit_rollout_status(rollout, cr["spec"]["symbols"])
    assert status == {
        "liveSymbols": ["BTCUSDT"],
        "shadowSymbols": ["ETHUSDT", "SOLUSDT"],
        "effectiveMode": "LIVE",
        "live": "1/3",
    }
