"""Pure: custom resources in, the objects that should exist out (DESIGN §5, §8).

``desired_objects`` turns a TradingPolicy into plain-dict manifests: a ConfigMap with the rendered runtime
config, Services, an optional managed Redis, and one Deployment per enabled component. ExitRollouts and
KillSwitches change no manifest — they reach the components through the ``rollout`` and ``control`` keys
(``rollout_config`` and ``exit_rollout_status`` are the pure halves of that).
The handlers apply them with server-side apply under one field manager; nothing here talks to a server,
reads a clock or makes a random number, so the same input gives byte-identical output.

Secrets never pass through here (invariant 10): credentials reach containers only as ``secretKeyRef``.
The paper-mode key pair lives in a Secret the handler creates once with random values
(:func:`paper_credentials_secret` shapes it from values the caller passes).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quantum_trader.contracts.control import Scope
from quantum_trader.contracts.policy import (
    ComponentSettings,
    Mode,
    PolicyError,
    PolicySpec,
    dump_policy,
    parse_policy,
)
from quantum_trader.contracts.registry import COMPONENTS, check_wiring
from quantum_trader.exits.rollout import SHADOW, RolloutConfig
from quantum_trader_operator import naming as n
from quantum_trader_operator.models import (
    ExitRolloutSpec,
    KillSwitchSpec,
    ResourceError,
    exit_rollout_spec,
    kill_switch_spec,
)

# Components that talk to the exchange and so get BINANCE_API_KEY/SECRET; every other pod runs without
# credentials (least privilege, invariant 10). A component missing from here that needs them exits with
# one clear SettingsError line instead of running half-configured.
EXCHANGE_CLIENTS = frozenset({"apply-layer", "reconciler", "exchange-sim"})

SINGLE_REPLICA = frozenset({"exchange-sim"})
"""one simulated account lives in the simulator's memory: two replicas would be two diverging accounts"""

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
RESOURCE_SECTIONS = frozenset({"requests", "limits"})
REDIS_URL = re.compile(r"rediss?://[^@/]+(/[0-9]+)?")
"""the CRD's CEL rule on redis.url (models.REDIS_URL_CEL), so validate_policy and admission agree"""


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """Operator-wide settings (the chart sets them as environment variables of the operator)."""

    redis_image: str = "redis:7.4-alpine"
    """image of a managed Redis; pin it by digest in production (QT_OPERATOR_REDIS_IMAGE)"""
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


class InvalidPolicy(ValueError):
    """A TradingPolicy that cannot be rendered; ``problems`` are the one-line messages for status."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


# ---------------------------------------------------------------- small pure helpers


def instance_id(namespace: str, policy: str) -> str:
    """``<namespace>.<policy>``: the instance in every Redis key of the policy (DESIGN §3)."""
    return n.instance_id(namespace, policy)


def config_hash(data: Mapping[str, str]) -> str:
    """``sha256:<hex>`` of a ConfigMap's data: the pod-template annotation that rolls pods on a config change.

    Canonical JSON (sorted keys), so the hash depends on the content only, not on dict order.
    """
    text = json.dumps(dict(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _metadata(cr: Mapping[str, Any]) -> tuple[str, str]:
    meta = cr.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    if not name or not namespace:
        raise ValueError("a custom resource needs metadata.name and metadata.namespace")
    return name, namespace


def owner_reference(policy_cr: Mapping[str, Any]) -> dict[str, Any]:
    """The controller reference every child carries: deleting the policy garbage-collects its children."""
    meta = policy_cr.get("metadata") or {}
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
    _, namespace = _metadata(policy_cr)
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(policy_cr)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


# ---------------------------------------------------------------- validation


def _service_names(policy: str, spec: PolicySpec) -> list[str]:
    names = [n.metrics_service_name(policy)]
    if spec.mode is Mode.PAPER:
        names.append(n.exchange_sim_service_name(policy))
    if spec.redis.managed:
        names.append(n.redis_name(policy))
    return names


def _spec_problem(text: str) -> str:
    """'risk: Value error, x' -> 'spec.risk: x'; '<root>: Value error, x' -> 'spec: x'."""
    location, _, message = text.partition(": ")
    message = message.removeprefix("Value error, ")
    return f"spec: {message}" if location == "<root>" else f"spec.{location}: {message}"


def validate_policy(cr: Mapping[str, Any]) -> list[str]:
    """Every reason the TradingPolicy is Invalid, one line each; [] when it can be rendered and run.

    The CRD's schema and CEL rules refuse most of these at admission; this is the same judgement for
    objects admitted before a rule existed, or through a path that skips validation.
    """
    problems: list[str] = []
    meta = cr.get("metadata") or {}
    policy, namespace = meta.get("name") or "", meta.get("namespace") or ""
    if not policy or not namespace:
        problems.append("metadata.name and metadata.namespace are required")
    try:
        spec = parse_policy(cr.get("spec") or {})
    except PolicyError as error:
        return problems + [_spec_problem(part) for part in str(error).split("; ")]
    if spec.image is None:
        problems.append("spec.image is required: <repository>@sha256:<64 hex>")
    if policy and namespace:
        try:
            n.instance_id(namespace, policy)
        except ValueError as error:
            problems.append(f"metadata: {error}")
        for name in _service_names(policy, spec):
            if len(name) > n.MAX_SERVICE_NAME:
                problems.append(f"metadata.name: Service name {name!r} would exceed {n.MAX_SERVICE_NAME} characters")
        if spec.redis.managed and len(n.redis_name(policy)) > n.MAX_STATEFULSET_NAME:
            problems.append(
                f"metadata.name: StatefulSet name {n.redis_name(policy)!r} would exceed "
                f"{n.MAX_STATEFULSET_NAME} characters"
            )
    redis = spec.redis
    if redis.managed == (redis.url is not None):
        problems.append("spec.redis: set exactly one of url or managed: true")
    if redis.url is not None and not REDIS_URL.fullmatch(redis.url):
        if "@" in redis.url:
            # The password belongs in a Secret; a URL with credentials would land in the ConfigMap and env.
            problems.append("spec.redis.url: must not contain credentials; use passwordSecretRef")
        else:
            problems.append("spec.redis.url: must be redis://host:port[/db] or rediss://host:port[/db]")
    enabled = spec.enabled_components()
    report = check_wiring(enabled)
    if not report.valid:
        problems.append(f"spec.components: wiring: {report.describe()}")
    for name, settings in spec.components.items():
        if name in SINGLE_REPLICA and name in enabled and settings.replicas > 1:
            problems.append(f"spec.components.{name}.replicas: at most 1 (one simulated account per policy)")
        unknown = sorted(set(settings.resources or {}) - RESOURCE_SECTIONS)
        if unknown:
            problems.append(f"spec.components.{name}.resources: only requests and limits, not {', '.join(unknown)}")
    return problems


def _checked_spec(policy_cr: Mapping[str, Any]) -> PolicySpec:
    problems = validate_policy(policy_cr)
    if problems:
        raise InvalidPolicy(problems)
    return parse_policy(policy_cr.get("spec") or {})


# ---------------------------------------------------------------- config


def _as_exit_rollout(exit_rollout: Mapping[str, Any] | ExitRolloutSpec | None) -> ExitRolloutSpec | None:
    """The spec of an ExitRollout given as an object, a bare spec mapping, or a model."""
    if exit_rollout is None or isinstance(exit_rollout, ExitRolloutSpec):
        return exit_rollout
    return exit_rollout_spec(exit_rollout if "spec" in exit_rollout else {"spec": exit_rollout})


def _as_kill_switch(kill_switch: Mapping[str, Any] | KillSwitchSpec | None) -> KillSwitchSpec | None:
    if kill_switch is None or isinstance(kill_switch, KillSwitchSpec):
        return kill_switch
    return kill_switch_spec(kill_switch if "spec" in kill_switch else {"spec": kill_switch})


def runtime_spec(spec: PolicySpec) -> PolicySpec:
    """The policy as components read it from QT_CONFIG: the spec, minus what only Kubernetes uses.

    ``components`` keeps only the disabled ones (components need ``enabled`` for the wiring they expect);
    replicas and resources live on the Deployments. Were they in the config, scaling one component would
    change the config hash and restart every pod of the policy (with entries halted for the rollout).
    """
    disabled = {name: ComponentSettings(enabled=False) for name, own in spec.components.items() if not own.enabled}
    return spec.model_copy(update={"components": disabled})


def _matching_rollout(policy: str, exit_rollout: Mapping[str, Any] | ExitRolloutSpec | None) -> ExitRolloutSpec | None:
    rollout = _as_exit_rollout(exit_rollout)
    if rollout is not None and rollout.policy_ref.name != policy:
        raise ValueError(f"ExitRollout targets policy {rollout.policy_ref.name!r}, not {policy!r}")
    return rollout


def config_data(policy_cr: Mapping[str, Any]) -> dict[str, str]:
    """The ConfigMap's data: ``config.yaml`` = ``dump_policy(runtime_spec(spec))``, every default resolved.

    The ExitRollout is deliberately not in it: exit-brain reads the ``rollout`` hash every few seconds
    (:func:`rollout_config` is what the handler writes there), so a rollout step changes no pod; in the
    ConfigMap it would change the config hash and restart every component for each step of a ramp.
    The policy's own ``exits`` stay as exit-brain's fallback when the hash is missing.

    It holds Secret *references* (exchangeSecretRef, redis.passwordSecretRef) because the components
    validate the same PolicySpec (live mode needs exchangeSecretRef); never a credential value.
    """
    _metadata(policy_cr)
    return _config_data(_checked_spec(policy_cr))


def _config_data(spec: PolicySpec) -> dict[str, str]:
    return {n.CONFIG_KEY: dump_policy(runtime_spec(spec))}


def rollout_config(spec: PolicySpec, exit_rollout: Mapping[str, Any] | ExitRolloutSpec | None = None) -> RolloutConfig:
    """The rollout the handler writes to the instance's ``rollout`` hash (``RolloutConfig.to_hash()``).

    The ExitRollout when there is one (it outranks the policy's ``exits``), else the policy's ``exits``.
    exit-brain re-reads the hash every few seconds, so no pod restarts for a rollout step.
    """
    rollout = _as_exit_rollout(exit_rollout)
    if rollout is None:  # no ExitRollout: the policy's own exits settings
        exits = spec.exits
        return RolloutConfig(
            mode=exits.mode,
            percent=exits.rollout_percent,
            pinned_live=tuple(exits.pinned_live),
            pinned_shadow=tuple(exits.pinned_shadow),
            source="policy",
        )
    return _from_exit_rollout(rollout)


def _from_exit_rollout(rollout: ExitRolloutSpec) -> RolloutConfig:
    return RolloutConfig(
        mode=rollout.mode,
        percent=rollout.percent,
        pinned_live=tuple(rollout.pinned_live),
        pinned_shadow=tuple(rollout.pinned_shadow),
        source="exitrollout",
    )


def exit_rollout_status(
    spec: Mapping[str, Any] | ExitRolloutSpec,
    symbols: Iterable[str],
    *,
    kill_switch: Mapping[str, Any] | KillSwitchSpec | None = None,
) -> dict[str, Any]:
    """The ExitRollout's status: ``{liveSymbols, shadowSymbols, effectiveMode, live}`` (DESIGN §5).

    ``spec`` is the ExitRollout (object, bare spec or model). The split is exits/rollout.py's stable-hash
    rule, the one exit-brain applies. ``kill_switch`` is the switch in effect (None: released); scope exits
    or all outranks the rollout (KILL > MODE > ROLLOUT) and puts every symbol in SHADOW.
    """
    rollout = _as_exit_rollout(spec)
    assert rollout is not None
    switch = _as_kill_switch(kill_switch)
    config = _from_exit_rollout(rollout)
    names = list(dict.fromkeys(symbols))
    forced_shadow = switch is not None and switch.engaged and switch.scope in (Scope.EXITS, Scope.ALL)
    if forced_shadow:
        live: tuple[str, ...] = ()
        shadow = tuple(names)
        effective = SHADOW
    else:
        live, shadow = config.split(names)
        effective = config.mode
    return {
        "liveSymbols": list(live),
        "shadowSymbols": list(shadow),
        "effectiveMode": effective,
        "live": f"{len(live)}/{len(names)}",
    }


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
    policy, namespace = _metadata(policy_cr)
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
    policy, _ = _metadata(policy_cr)
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
    policy, _ = _metadata(policy_cr)
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
    policy, _ = _metadata(policy_cr)
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
    policy, _ = _metadata(policy_cr)
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


def paper_credentials_secret_name(policy: str) -> str:
    return n.paper_credentials_secret_name(policy)


# ---------------------------------------------------------------- the whole set


def desired_objects(
    policy_cr: Mapping[str, Any],
    *,
    exit_rollout: Mapping[str, Any] | ExitRolloutSpec | None = None,
    kill_switch: Mapping[str, Any] | KillSwitchSpec | None = None,
    settings: OperatorSettings | None = None,
) -> list[dict[str, Any]]:
    """Every object a TradingPolicy should have, as plain manifests in a stable order.

    ConfigMap ``<policy>-config``; Service ``<policy>-metrics`` (9100); in paper mode Service
    ``<policy>-exchange-sim`` (8090); with ``redis.managed`` a StatefulSet and Service ``<policy>-redis``; then
    one Deployment ``<policy>-<component>`` per enabled component in registry order (exchange-sim only in
    paper mode). Apply them in :func:`rollout_order`.

    ``exit_rollout`` and ``kill_switch`` are accepted so the handler passes every related resource the same
    way, but neither changes a manifest: they travel through the ``rollout`` and ``control`` keys, so a
    rollout step or a kill switch restarts nothing. An ExitRollout of another policy is still an error.

    Raises :class:`InvalidPolicy` (with every problem) when :func:`validate_policy` finds any, and
    ``ValueError`` for an object without name, namespace or uid, or an ExitRollout of another policy.
    """
    settings = settings or OperatorSettings()
    policy, _ = _metadata(policy_cr)
    spec = _checked_spec(policy_cr)
    owner_reference(policy_cr)  # fail before building anything when the uid is missing
    _matching_rollout(policy, exit_rollout)
    _as_kill_switch(kill_switch)  # by design no effect on manifests (see the docstring); still checked
    data = _config_data(spec)
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


def component_of(obj: Mapping[str, Any]) -> str:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(n.LABEL_COMPONENT, "")


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
        component = component_of(obj)
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
    "InvalidPolicy",
    "OperatorSettings",
    "ResourceError",
    "component_of",
    "config_data",
    "config_hash",
    "desired_objects",
    "exit_rollout_status",
    "instance_id",
    "owner_reference",
    "paper_credentials_secret",
    "paper_credentials_secret_name",
    "rollout_config",
    "rollout_order",
    "runtime_spec",
    "validate_policy",
]
