"""Is a TradingPolicy runnable? Every reason it is not, one line each (pure; DESIGN §5 "Invalid").

The CRD's schema and CEL rules refuse most of these at admission; this is the same judgement for objects
admitted before a rule existed, or through a path that skips validation, and the one the handlers act on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quantum_trader.contracts.policy import Mode, PolicyError, PolicySpec, parse_policy
from quantum_trader.contracts.registry import check_wiring
from quantum_trader_operator import kube_view as kv
from quantum_trader_operator import naming as n

SINGLE_REPLICA = frozenset({"exchange-sim"})
"""one simulated account lives in the simulator's memory: two replicas would be two diverging accounts"""
RESOURCE_SECTIONS = frozenset({"requests", "limits"})
REDIS_URL = re.compile(r"rediss?://[^@/]+(/[0-9]+)?")
"""the CRD's CEL rule on redis.url (models.REDIS_URL_CEL), so validate_policy and admission agree"""


class InvalidPolicy(ValueError):
    """A TradingPolicy that cannot be rendered; ``problems`` are the one-line messages for status."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


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


@dataclass(frozen=True)
class PolicyCheck:
    """A TradingPolicy parsed and judged once: a reconcile passes this on instead of parsing the spec again."""

    spec: PolicySpec | None
    """None when the spec does not even parse"""
    problems: list[str]
    """every reason the policy is Invalid, one line each; [] when it can be rendered and run"""


def check_policy(cr: Mapping[str, Any]) -> PolicyCheck:
    """The TradingPolicy's spec, parsed once, and every reason it is Invalid.

    The CRD's schema and CEL rules refuse most of these at admission; this is the same judgement for
    objects admitted before a rule existed, or through a path that skips validation.
    """
    problems: list[str] = []
    policy, namespace = kv.name(cr), kv.namespace(cr)
    if not policy or not namespace:
        problems.append("metadata.name and metadata.namespace are required")
    try:
        spec = parse_policy(cr.get("spec") or {})
    except PolicyError as error:
        return PolicyCheck(None, problems + [_spec_problem(part) for part in str(error).split("; ")])
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
    return PolicyCheck(spec, problems)


def validate_policy(cr: Mapping[str, Any]) -> list[str]:
    """Every reason the TradingPolicy is Invalid, one line each; [] when it can be rendered and run."""
    return check_policy(cr).problems


def checked_spec(policy_cr: Mapping[str, Any]) -> PolicySpec:
    """The PolicySpec of a policy :func:`check_policy` finds nothing wrong with; else InvalidPolicy."""
    check = check_policy(policy_cr)
    if check.problems or check.spec is None:
        raise InvalidPolicy(check.problems)
    return check.spec
