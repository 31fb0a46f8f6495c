"""Pure: the manifests a TradingPolicy becomes (DESIGN §5, §8).

``desired_objects`` turns a TradingPolicy into plain-dict manifests: a ConfigMap with the rendered runtime
config (``config.py``), Services, an optional managed Redis, and one Deployment per enabled component, once
``validation.py`` finds nothing wrong. ExitRollouts and KillSwitches change no manifest — they reach the
components through the ``rollout`` and ``control`` keys.
The handlers apply them with server-side apply under one field manager; nothing here talks to a server,
reads a clock or makes a random number, so the same input gives byte-identical output.

Secrets never pass through here (invariant 10): credentials reach containers only as ``secretKeyRef``.
The paper-mode key pair lives in a Secret the handler creates once with random values
(:func:`paper_credentials_secret` shapes it from values the caller passes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from quantum_trader.contracts.policy import Mode, PolicySpec
from quantum_trader.contracts.registry import COMPONENTS
from quantum_trader_operator import kube_view as kv
from quantum_trader_operator import naming as n
from quantum_trader_operator.config import config_hash, matching_rollout, spec_config_data
from quantum_trader_operator.models import ExitRolloutSpec
from quantum_trader_operator.validation import SINGLE_REPLICA, InvalidPolicy, checked_spec, validate_policy

# Components that talk to the exchange and so get BINANCE_API_KEY/SECRET; every other pod runs without
# credentials (least privilege, invariant 10). A component missing from here that needs them exits with
# one clear SettingsError line instead of running half-configured.
EXCHANGE_CLIENTS = frozenset({"apply-layer", "reconciler", "exchange-sim"})

EXECUTORS: tuple[str, ...] = tuple(name for name, spec in COMPONENTS.items() if spec.executor)

RUN_AS = 10001

DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    # No CPU limit: CFS throttling shows up as tick-to-order latency; memory is limited so a leak is an
    # OOMKill with a reason in status rather than a node under pressure.
    "requests": {"cpu": "50m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}
COMPONENT_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "ai-engine": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
}
REDIS_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}
MANAGED_REDIS_IMAGE = "redis:7.4-alpine@sha256:ff02b58f971e7d7d156a1267e283fcbbeee91773b6aa36c49dac28ecfe28eadf"
"""the managed Redis: a tag can change content under a running StatefulSet; a digest cannot"""


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """Operator-wide settings (the chart sets them as environment variables of the operator)."""

    redis_image: str = MANAGED_REDIS_IMAGE
    """image of a managed Redis, pinned by digest like every image the operator runs (QT_OPERATOR_REDIS_IMAGE)"""
    redis_storage: str | None = "1Gi"
    """PVC size of a managed Redis; None: an emptyDir (state lost with the pod) (QT_OPERATOR_REDIS_STORAGE)"""
    redis_storage_class: str | None = None
    """None: the cluster's default StorageClass (QT_OPERATOR_REDIS_STORAGE_CLASS)"""
    image_pull_policy: str = "IfNotPresent"
    """a digest never changes content, so pulling again buys nothing"""
    default_resources: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: DEFAULT_RESOURCES)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OperatorSettings:
        """Settings from the operator's environment; an empty QT_OPERATOR_REDIS_STORAGE means emptyDir."""
        defaults = cls()
        storage = env.get("QT_OPERATOR_REDIS_STORAGE", defaults.redis_storage or "")
        return cls(
            redis_image=env.get("QT_OPERATOR_REDIS_IMAGE") or defaults.redis_image,
            redis_storage=storage or None,
            redis_storage_class=env.get("QT_OPERATOR_REDIS_STORAGE_CLASS") or None,
        )


# ---------------------------------------------------------------- small pure helpers


def _identity(cr: Mapping[str, Any]) -> tuple[str, str]:
    """(name, namespace) of a custom resource; both are needed for anything it becomes."""
    name, namespace = kv.name(cr), kv.namespace(cr)
    if not name or not namespace:
        raise ValueError("a custom resource needs metadata.name and metadata.namespace")
    return name, namespace


def owner_reference(policy_cr: Mapping[str, Any]) -> dict[str, Any]:
    """The controller reference every child carries: deleting the policy garbage-collects its children."""
    meta = kv.meta(policy_cr)
    if not meta.get("uid"):
        # Without the uid the reference is refused or, worse, dangles: a child that outlives its policy.
        raise ValueError("the TradingPolicy has no metadata.uid (render from the object the API server returned)")
    return {
        "apiVersion": n.API_VERSION,
        "kind": "TradingPolicy",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _object_meta(
    policy_cr: Mapping[str, Any], name: str, labels: Mapping[str, str], annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    _, namespace = _identity(policy_cr)
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(policy_cr)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


# ---------------------------------------------------------------- containers


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _component_env(policy: str, namespace: str, component: str, spec: PolicySpec) -> list[dict[str, Any]]:
    assert spec.image is not None
    redis_url = n.managed_redis_url(policy) if spec.redis.managed else spec.redis.url
    env: list[dict[str, Any]] = [
        {"name": "QT_COMPONENT", "value": component},
        {"name": "QT_INSTANCE", "value": n.instance_id(namespace, policy)},
        {"name": "QT_REDIS_URL", "value": redis_url},
    ]
    if spec.redis.password_secret_ref is not None:
        ref = spec.redis.password_secret_ref
        env.append(_secret_env("QT_REDIS_PASSWORD", ref.name, ref.key))
    env += [
        {"name": "QT_CONFIG", "value": n.CONFIG_PATH},
        {"name": "QT_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "QT_HEALTH_PORT", "value": str(n.HEALTH_PORT)},
        {"name": "QT_METRICS_PORT", "value": str(n.METRICS_PORT)},
        {"name": "QT_IMAGE_DIGEST", "value": n.image_digest(spec.image)},
    ]
    if spec.mode is Mode.PAPER:
        env.append({"name": "QT_EXCHANGE_URL", "value": n.exchange_sim_url(policy)})
    if component in EXCHANGE_CLIENTS:
        if spec.mode is Mode.PAPER:
            secret = n.paper_credentials_secret_name(policy)
            key_key, secret_key = n.PAPER_API_KEY_KEY, n.PAPER_API_SECRET_KEY
        else:
            assert spec.exchange_secret_ref is not None  # validate_policy: testnet and live need it
            secret = spec.exchange_secret_ref.name
            key_key, secret_key = spec.exchange_secret_ref.api_key_key, spec.exchange_secret_ref.api_secret_key
        env.append(_secret_env("BINANCE_API_KEY", secret, key_key))
        env.append(_secret_env("BINANCE_API_SECRET", secret, secret_key))
    return env


def _resources(component: str, spec: PolicySpec, settings: OperatorSettings) -> dict[str, dict[str, str]]:
    """Defaults, replaced section by section (requests, limits) by the policy's resources."""
    base = COMPONENT_RESOURCES.get(component, settings.default_resources)
    merged = {section: dict(values) for section, values in base.items()}
    own = spec.components.get(component)
    if own is not None and own.resources:
        for section, values in own.resources.items():
            merged[section] = dict(values)
    return merged


def _container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _http_probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "health"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _component_deployment(
    policy_cr: Mapping[str, Any],
    component: str,
    spec: PolicySpec,
    settings: OperatorSettings,
    data_hash: str,
) -> dict[str, Any]:
    policy, namespace = _identity(policy_cr)
    assert spec.image is not None
    digest = n.image_digest(spec.image)
    own = spec.components.get(component)
    replicas = own.replicas if own is not None else 1
    labels = n.component_labels(policy, component)
    ports = [
        {"name": "health", "containerPort": n.HEALTH_PORT, "protocol": "TCP"},
        {"name": "metrics", "containerPort": n.METRICS_PORT, "protocol": "TCP"},
    ]
    if component == "exchange-sim":
        ports.append({"name": "exchange", "containerPort": n.EXCHANGE_SIM_PORT, "protocol": "TCP"})
    container = {
        "name": component,
        "image": spec.image,  # verbatim: drift compares the whole reference, so a tag can never slip in
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["component", component],  # the image's entrypoint is `qt`
        "env": _component_env(policy, namespace, component, spec),
        "ports": ports,
        # startup gives a slow import (models, numpy) a few minutes without loosening liveness afterwards
        "startupProbe": _http_probe("/healthz", 5, 36),
        "livenessProbe": _http_probe("/healthz", 10, 3),
        "readinessProbe": _http_probe("/readyz", 5, 3),
        "resources": _resources(component, spec, settings),
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "config", "mountPath": n.CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    # Recreate where two pods must never overlap (one simulated account); otherwise surge one new pod
    # before an old one goes, so a component never drops to zero consumers during a rollout.
    strategy: dict[str, Any] = (
        {"type": "Recreate"}
        if component in SINGLE_REPLICA
        else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _object_meta(policy_cr, n.deployment_name(policy, component), labels),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": n.selector_labels(policy, component)},
            "strategy": strategy,
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {n.CONFIG_HASH_ANNOTATION: data_hash, n.IMAGE_DIGEST_ANNOTATION: digest},
                },
                "spec": {
                    # Components never call the Kubernetes API: no token in the pod at all.
                    "automountServiceAccountToken": False,
                    # Service-link variables (<SVC>_PORT=tcp://...) are noise in a QT_* environment.
                    "enableServiceLinks": False,
                    "securityContext": _pod_security(),
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "config",
                            "configMap": {
                                "name": n.config_map_name(policy),
                                "items": [{"key": n.CONFIG_KEY, "path": n.CONFIG_KEY}],
                            },
                        },
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                    ],
                },
            },
        },
    }


# ---------------------------------------------------------------- other objects


def _config_map(policy_cr: Mapping[str, Any], data: Mapping[str, str]) -> dict[str, Any]:
    policy, _ = _identity(policy_cr)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _object_meta(policy_cr, n.config_map_name(policy), n.component_labels(policy, "config", None)),
        "data": dict(data),
    }


def _service(
    policy_cr: Mapping[str, Any],
    name: str,
    component: str,
    selector: Mapping[str, str],
    port: int,
    port_name: str,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    policy, _ = _identity(policy_cr)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _object_meta(policy_cr, name, n.component_labels(policy, component, None), annotations),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(selector),
            "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}],
        },
    }


def _redis_objects(policy_cr: Mapping[str, Any], spec: PolicySpec, settings: OperatorSettings) -> list[dict]:
    policy, _ = _identity(policy_cr)
    name = n.redis_name(policy)
    labels = n.component_labels(policy, n.REDIS_COMPONENT, n.ROLE_REDIS)
    args = [
        "--port",
        str(n.REDIS_PORT),
        "--dir",
        "/data",
        "--appendonly",
        "yes",
        # Evicting keys would silently drop control, positions or reservations: refuse writes instead.
        "--maxmemory-policy",
        "noeviction",
    ]
    env: list[dict[str, Any]] = []
    ref = spec.redis.password_secret_ref
    if ref is not None:
        # $(VAR) is expanded by the kubelet, so the password never appears in the manifest.
        args += ["--requirepass", "$(REDIS_PASSWORD)"]
        env = [_secret_env("REDIS_PASSWORD", ref.name, ref.key), _secret_env("REDISCLI_AUTH", ref.name, ref.key)]
    else:
        # No password: without this Redis refuses every client that is not on loopback.
        args += ["--protected-mode", "no"]
    container: dict[str, Any] = {
        "name": "redis",
        "image": settings.redis_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["redis-server"],
        "args": args,
        "ports": [{"name": "redis", "containerPort": n.REDIS_PORT, "protocol": "TCP"}],
        "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {
            "exec": {"command": ["sh", "-c", "redis-cli ping | grep -q PONG"]},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
        },
        "resources": {section: dict(values) for section, values in REDIS_RESOURCES.items()},
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    if env:
        container["env"] = env
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    statefulset_spec: dict[str, Any] = {
        "serviceName": name,
        "replicas": 1,
        "selector": {"matchLabels": n.selector_labels(policy, n.REDIS_COMPONENT)},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "securityContext": _pod_security(),
                "containers": [container],
                "volumes": volumes,
            },
        },
    }
    if settings.redis_storage:
        claim: dict[str, Any] = {
            "metadata": {"name": "data", "labels": labels},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": settings.redis_storage}},
            },
        }
        if settings.redis_storage_class:
            claim["spec"]["storageClassName"] = settings.redis_storage_class
        statefulset_spec["volumeClaimTemplates"] = [claim]
        # The claim goes with the policy like every other child (ownerReferences cover the StatefulSet only).
        statefulset_spec["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Delete", "whenScaled": "Retain"}
    else:
        volumes.append({"name": "data", "emptyDir": {}})
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _object_meta(policy_cr, name, labels),
        "spec": statefulset_spec,
    }
    selector = n.selector_labels(policy, n.REDIS_COMPONENT)
    return [statefulset, _service(policy_cr, name, n.REDIS_COMPONENT, selector, n.REDIS_PORT, "redis")]


def paper_credentials_secret(policy_cr: Mapping[str, Any], *, api_key: str, api_secret: str) -> dict[str, Any]:
    """The paper-mode key pair Secret, from values the handler generates once (``secrets.token_hex``).

    Not part of :func:`desired_objects`: desired objects are re-applied on every reconcile and would rotate
    the pair; this one is created when absent and then left alone (immutable).
    """
    policy, _ = _identity(policy_cr)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _object_meta(
            policy_cr, n.paper_credentials_secret_name(policy), n.component_labels(policy, "paper-credentials", None)
        ),
        "type": "Opaque",
        "immutable": True,
        "stringData": {n.PAPER_API_KEY_KEY: api_key, n.PAPER_API_SECRET_KEY: api_secret},
    }


def desired_objects(
    policy_cr: Mapping[str, Any],
    *,
    exit_rollout: Mapping[str, Any] | ExitRolloutSpec | None = None,
    settings: OperatorSettings | None = None,
) -> list[dict[str, Any]]:
    """Every object a TradingPolicy should have, as plain manifests in a stable order.

    ConfigMap ``<policy>-config``; Service ``<policy>-metrics`` (9100); in paper mode Service
    ``<policy>-exchange-sim`` (8090); with ``redis.managed`` a StatefulSet and Service ``<policy>-redis``; then
    one Deployment ``<policy>-<component>`` per enabled component in registry order (exchange-sim only in
    paper mode). Apply them in :func:`rollout_order`.

    ``exit_rollout`` changes no manifest (it travels through the ``rollout`` hash, so a rollout step restarts
    nothing, and neither does a kill switch through ``control``); an ExitRollout of another policy is an error.

    Raises :class:`InvalidPolicy` (with every problem) when :func:`validate_policy` finds any, and
    ``ValueError`` for an object without name, namespace or uid, or an ExitRollout of another policy.
    """
    _identity(policy_cr)
    spec = checked_spec(policy_cr)
    return render_objects(policy_cr, spec, spec_config_data(spec), exit_rollout=exit_rollout, settings=settings)


def render_objects(
    policy_cr: Mapping[str, Any],
    spec: PolicySpec,
    data: Mapping[str, str],
    *,
    exit_rollout: Mapping[str, Any] | ExitRolloutSpec | None = None,
    settings: OperatorSettings | None = None,
) -> list[dict[str, Any]]:
    """:func:`desired_objects` of a policy whose ``spec`` was parsed and found valid once for this reconcile
    (``validation.check_policy``), and the ConfigMap data rendered from it (``config.spec_config_data``)."""
    settings = settings or OperatorSettings()
    policy, _ = _identity(policy_cr)
    owner_reference(policy_cr)  # fail before building anything when the uid is missing
    matching_rollout(policy, exit_rollout)
    data_hash = config_hash(data)
    objects: list[dict[str, Any]] = [_config_map(policy_cr, data)]
    objects.append(
        _service(
            policy_cr,
            n.metrics_service_name(policy),
            "metrics",
            {n.LABEL_INSTANCE: policy, n.LABEL_NAME: n.APP_NAME, n.LABEL_ROLE: n.ROLE_COMPONENT},
            n.METRICS_PORT,
            "metrics",
            {"prometheus.io/scrape": "true", "prometheus.io/port": str(n.METRICS_PORT)},
        )
    )
    if spec.mode is Mode.PAPER:
        objects.append(
            _service(
                policy_cr,
                n.exchange_sim_service_name(policy),
                "exchange-sim",
                n.selector_labels(policy, "exchange-sim"),
                n.EXCHANGE_SIM_PORT,
                "exchange",
            )
        )
    if spec.redis.managed:
        objects += _redis_objects(policy_cr, spec, settings)
    for component in spec.enabled_components():
        objects.append(_component_deployment(policy_cr, component, spec, settings, data_hash))
    return objects


def rollout_order(objects: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The order to apply objects in during a rollout (DESIGN §5 "executor path updated last").

    Config, Services and Redis first (what pods need to start), then non-executor Deployments in registry
    order, then the executors — downstream first (position-state, apply-layer, governor), so no new
    approval reaches an old apply-layer and no new result an old position-state.
    """
    registry = list(COMPONENTS)
    executors_downstream_first = list(reversed(EXECUTORS))

    def key(item: tuple[int, Mapping[str, Any]]) -> tuple[int, int, int]:
        index, obj = item
        component = kv.component(obj)
        if obj.get("kind") != "Deployment":
            return (0 if obj.get("kind") != "StatefulSet" else 1, 0, index)
        if component in executors_downstream_first:
            return (3, executors_downstream_first.index(component), index)
        return (2, registry.index(component) if component in registry else len(registry), index)

    return [obj for _, obj in sorted(enumerate(objects), key=key)]


__all__ = [
    "DEFAULT_RESOURCES",
    "EXCHANGE_CLIENTS",
    "EXECUTORS",
    "MANAGED_REDIS_IMAGE",
    "InvalidPolicy",
    "OperatorSettings",
    "desired_objects",
    "owner_reference",
    "paper_credentials_secret",
    "render_objects",
    "rollout_order",
    "validate_policy",
]
