"""Names, labels and annotations of everything the operator creates (DESIGN §5).

One module so desired.py (which writes them), the drift/health checks (which read them) and the handlers
(which list children by them) cannot disagree on a spelling. Pure: standard library only.
"""

from __future__ import annotations

import re

from quantum_trader.contracts.keys import validate_instance

GROUP = "trading.quantumtrader.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "quantumtrader"

APP_NAME = "quantum-trader"
MANAGED_BY = "quantum-trader-operator"
"""value of app.kubernetes.io/managed-by, and the server-side-apply field manager the handlers use"""

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_POLICY = "quantumtrader.io/policy"
LABEL_ROLE = "quantumtrader.io/role"
"""``component`` on trading component pods, ``redis`` on the managed Redis: the metrics Service selects
components only (a selector cannot say "not redis", so the role is a positive label)."""
ROLE_COMPONENT = "component"
ROLE_REDIS = "redis"

ROLLOUT_HALT = "operator:rollout"
"""the operator's automatic entries halt while a new digest or config rolls out (a field of ``halts``)"""
DRIFT_HALT = "operator:drift"
"""the operator's automatic entries halt while a child differs from the policy"""
OPERATOR_HALTS = (ROLLOUT_HALT, DRIFT_HALT)
"""the only ``halts`` fields the operator ever raises or clears; the reconciler's and a person's are never touched"""

CONFIG_HASH_ANNOTATION = "quantumtrader.io/config-hash"
IMAGE_DIGEST_ANNOTATION = "quantumtrader.io/image-digest"

REDIS_COMPONENT = "redis"
CONFIG_KEY = "config.yaml"
CONFIG_DIR = "/etc/quantum-trader"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"

HEALTH_PORT = 8080
METRICS_PORT = 9100
EXCHANGE_SIM_PORT = 8090
"""exchange-sim listens on the port of QT_EXCHANGE_URL (services/exchange_sim.py DEFAULT_PORT too)"""
REDIS_PORT = 6379

PAPER_API_KEY_KEY = "apiKey"
PAPER_API_SECRET_KEY = "apiSecret"

# Service names are DNS-1035 labels (<= 63 characters). A StatefulSet's pods carry the label
# controller-revision-hash=<name>-<10 char hash>, and label values are <= 63 too, so a StatefulSet
# name must stay <= 52 (the known Kubernetes limit).
MAX_SERVICE_NAME = 63
MAX_STATEFULSET_NAME = 52

_DIGEST = re.compile(r"@(sha256:[0-9a-f]{64})$")


def instance_id(namespace: str, policy: str) -> str:
    """The instance in every Redis key of this policy: ``<namespace>.<policy>`` (DESIGN §3)."""
    return validate_instance(f"{namespace}.{policy}")


def image_digest(image: str) -> str:
    """``sha256:<64 hex>`` of a ``repo@sha256:<64 hex>`` reference; "" when it is not pinned."""
    found = _DIGEST.search(image)
    return found.group(1) if found else ""


def deployment_name(policy: str, component: str) -> str:
    return f"{policy}-{component}"


def config_map_name(policy: str) -> str:
    return f"{policy}-config"


def metrics_service_name(policy: str) -> str:
    return f"{policy}-metrics"


def exchange_sim_service_name(policy: str) -> str:
    return f"{policy}-exchange-sim"


def redis_name(policy: str) -> str:
    """The managed Redis StatefulSet and its Service."""
    return f"{policy}-redis"


def paper_credentials_secret_name(policy: str) -> str:
    """The Secret with the paper-mode key pair; the handler creates it once with random values."""
    return f"{policy}-paper-credentials"


def exchange_sim_url(policy: str) -> str:
    return f"http://{exchange_sim_service_name(policy)}:{EXCHANGE_SIM_PORT}"


def managed_redis_url(policy: str) -> str:
    return f"redis://{redis_name(policy)}:{REDIS_PORT}/0"


def policy_labels(policy: str) -> dict[str, str]:
    """Labels on every object of a policy; also the selector the handlers list children with."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: policy,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_POLICY: policy,
    }


def component_labels(policy: str, component: str, role: str | None = ROLE_COMPONENT) -> dict[str, str]:
    """Labels of one part of a policy; ``role`` only on workloads and their pods (None: no role label)."""
    labels = {**policy_labels(policy), LABEL_COMPONENT: component}
    if role is not None:
        labels[LABEL_ROLE] = role
    return labels


def selector_labels(policy: str, component: str) -> dict[str, str]:
    """A workload's selector: immutable once created, so only labels that never change for it."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: policy, LABEL_COMPONENT: component}
