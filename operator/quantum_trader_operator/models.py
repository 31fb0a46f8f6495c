"""The three custom resources as pydantic models: the one source of ``crds/*.yaml`` (DESIGN §5).

- ``TradingPolicy``'s spec IS :class:`quantum_trader.contracts.policy.PolicySpec` — the same model ``qt run``
  reads — never a copy. What only a cluster needs (image required, CEL rules, bounds that keep CEL cheap)
  is added to the generated schema by :func:`_trading_policy_schema`, not by redefining fields.
- ``ExitRollout`` and ``KillSwitch`` specs are defined here; their CEL rules sit next to their fields.
- Status models document what the handlers write. Their roots allow unknown fields because kopf stores its
  own progress and handler results in ``status`` (DESIGN §5: keep those out of a strict status schema).

Pure: pydantic and the project's contracts only; crdgen.py turns :data:`RESOURCES` into YAML.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from quantum_trader.contracts.control import Scope
from quantum_trader.contracts.messages import SYMBOL_PATTERN as MESSAGE_SYMBOL_PATTERN
from quantum_trader.contracts.policy import PolicySpec, describe_validation_error, parse_policy
from quantum_trader.contracts.registry import COMPONENTS
from quantum_trader_operator.naming import CATEGORY, GROUP, VERSION

# Bounds only the CRD needs: the API server estimates a CEL rule's cost from the largest value a field
# can hold, and an unbounded string or list makes even `matches` or `all` exceed the budget, which
# refuses the CRD itself. Real values are far below these.
MAX_SYMBOLS = 256
MAX_SYMBOL_LENGTH = 20
MAX_IMAGE_LENGTH = 512
MAX_URL_LENGTH = 256
MAX_REASON_LENGTH = 256
SYMBOL_PATTERN = f"^{MESSAGE_SYMBOL_PATTERN.pattern}$"
"""contracts.messages.Symbol as a schema pattern: 2-20 upper-case ASCII letters or digits (no look-alikes)"""

# CEL string literal of contracts.policy.IMAGE_DIGEST: `\\s` in CEL source is the regex `\s`.
IMAGE_DIGEST_CEL = "'^[^@\\\\s]+@sha256:[0-9a-f]{64}$'"
REDIS_URL_CEL = "'^rediss?://[^@/]+(/[0-9]+)?$'"
"""host[:port][/db], no user-info: the password comes from a Secret, never from a URL in the spec"""


def cel(rule: str, message: str, *, reason: str | None = None, field_path: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry."""
    entry = {"rule": rule, "message": message}
    if reason is not None:
        entry["reason"] = reason
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


class CrdModel(BaseModel):
    """Spec models of the operator's own CRDs: camelCase on the wire, strict, immutable."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class StatusModel(BaseModel):
    """Nested status objects: documented fields; unknown fields are ignored, never an error."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class StatusRoot(BaseModel):
    """A ``status`` root: kopf writes ``status.kopf`` and handler results next to the documented fields."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


# ---------------------------------------------------------------- shared


class PolicyRef(CrdModel):
    """A TradingPolicy in the same namespace. Immutable: re-pointing a kill switch or a rollout at another
    policy would silently release the first one; delete and create instead."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "policyRef is immutable")]}
    )

    name: str = Field(min_length=1, max_length=253, description="name of the TradingPolicy in the same namespace")


Symbol = Annotated[str, StringConstraints(pattern=SYMBOL_PATTERN, max_length=MAX_SYMBOL_LENGTH)]

# ---------------------------------------------------------------- ExitRollout


class ExitRolloutSpec(CrdModel):
    """Which symbols run exit-brain's advanced exit logic live; the rest stay in SHADOW (DESIGN §5)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.pinnedLive.all(s, !(s in self.pinnedShadow))",
                    "a symbol cannot be pinned both live and shadow",
                    field_path=".pinnedLive",
                )
            ]
        }
    )

    policy_ref: PolicyRef = Field(description="the TradingPolicy whose exit-brain this rollout steers")
    mode: Literal["SHADOW", "LIVE"] = Field(
        default="SHADOW", description="SHADOW: no symbol is live, pins included; LIVE: the percent and pins apply"
    )
    percent: int = Field(
        default=0,
        ge=0,
        le=100,
        description="share of symbols live in mode LIVE, by a stable sha256 bucket of the symbol; raising it only adds",
    )
    pinned_live: list[Symbol] = Field(
        default_factory=list,
        max_length=MAX_SYMBOLS,
        description="symbols always live in mode LIVE",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    pinned_shadow: list[Symbol] = Field(
        default_factory=list,
        max_length=MAX_SYMBOLS,
        description="symbols never live, whatever the percent",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @model_validator(mode="after")
    def _disjoint(self) -> ExitRolloutSpec:
        both = sorted(set(self.pinned_live) & set(self.pinned_shadow))
        if both:
            raise ValueError(f"symbols pinned both live and shadow: {', '.join(both)}")
        return self


class ExitRolloutStatus(StatusRoot):
    """What the operator computed from the rollout and the policy's symbols."""

    live_symbols: list[str] | None = Field(default=None, description="symbols whose advanced exits are live")
    shadow_symbols: list[str] | None = Field(default=None, description="symbols whose advanced exits are shadow")
    effective_mode: Literal["SHADOW", "LIVE"] | None = Field(
        default=None, description="the mode after the kill switch: scope exits or all forces SHADOW"
    )
    live: str | None = Field(default=None, description="live symbols of all symbols, e.g. 2/5 (the LIVE column)")
    observed_generation: int | None = Field(default=None, description="the spec generation this status is for")
    message: str | None = Field(default=None, description="one line: why the rollout is not applied as written")


# ---------------------------------------------------------------- KillSwitch


_EXIT_STOPPING_SCOPES = [s.value for s in Scope if s.stops_exits]
"""the scopes under which flatten cannot work (``contracts.control.Scope.stops_exits``: all)"""
_FLATTEN_RULE = "!self.flatten || " + " && ".join(f"self.scope != '{scope}'" for scope in _EXIT_STOPPING_SCOPES)
_FLATTEN_REFUSED = f"flatten closes positions through exits, which scope {' and '.join(_EXIT_STOPPING_SCOPES)} blocks"
_FLATTEN_MESSAGE = f"{_FLATTEN_REFUSED}: use scope {' or '.join(s.value for s in Scope if not s.stops_exits)}"


class KillSwitchSpec(CrdModel):
    """A person's (or the operator's) halt of a policy; the operator writes it to the ``control`` key."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [cel(_FLATTEN_RULE, _FLATTEN_MESSAGE, field_path=".flatten")]}
    )

    policy_ref: PolicyRef = Field(description="the TradingPolicy this switch halts")
    engaged: bool = Field(default=True, description="true: the switch is on; false: released")
    scope: Scope = Field(
        default=Scope.ENTRIES,
        description="entries: no risk-increasing order; exits: advanced exits forced to SHADOW; all: no order",
    )
    flatten: bool = Field(default=False, description="close every open position through the normal exit path")
    reason: str = Field(
        min_length=1, max_length=MAX_REASON_LENGTH, description="why: shown in status, events and the control key"
    )
    expires_at: datetime | None = Field(
        default=None, description="RFC 3339 time after which the operator releases the switch (absent: never)"
    )

    @model_validator(mode="after")
    def _flatten_needs_exits(self) -> KillSwitchSpec:
        if self.flatten and self.scope.stops_exits:
            raise ValueError(_FLATTEN_REFUSED)
        return self


class KillSwitchStatus(StatusRoot):
    generation: int | None = Field(default=None, description="control-key generation that carries this switch")
    engaged_at: datetime | None = Field(default=None, description="when the operator wrote the engaged state")
    acked: str | None = Field(default=None, description="components that applied the generation, e.g. 11/11")
    ack_latency_seconds: float | None = Field(
        default=None, description="from writing the control key to the last component's ack"
    )
    state: str | None = Field(default=None, description="Pending | Engaged | Released | Expired")
    observed_generation: int | None = Field(default=None, description="the spec generation this status is for")
    message: str | None = Field(default=None, description="one line: what the switch is waiting for")


# ---------------------------------------------------------------- TradingPolicy status


class Health(StrEnum):
    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    HALTED = "Halted"
    INVALID = "Invalid"


class ConditionType(StrEnum):
    READY = "Ready"
    IMAGE_CONSISTENT = "ImageConsistent"
    WIRING_VALID = "WiringValid"
    MODEL_CONSISTENT = "ModelConsistent"
    KILL_SWITCH_ENGAGED = "KillSwitchEngaged"
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    EXCHANGE_RECONCILED = "ExchangeReconciled"


class Condition(StatusModel):
    """A Kubernetes condition (metav1.Condition's shape)."""

    type: str = Field(
        description="Ready | ImageConsistent | WiringValid | ModelConsistent | KillSwitchEngaged | RolloutInProgress"
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True | False | Unknown")
    reason: str | None = Field(default=None, description="CamelCase reason of the last transition")
    message: str | None = Field(default=None, description="human-readable detail")
    last_transition_time: datetime | None = Field(default=None, description="when status last changed")
    observed_generation: int | None = Field(default=None, description="the spec generation this condition is for")


class ComponentStatus(StatusModel):
    """One component's Deployment, pods and heartbeats."""

    ready: bool | None = Field(default=None, description="every desired replica is ready and heartbeating")
    replicas: int | None = Field(default=None, description="desired replicas")
    ready_replicas: int | None = Field(default=None, description="replicas passing /readyz")
    heartbeat_age_seconds: float | None = Field(default=None, description="age of the oldest live heartbeat")
    lag: int | None = Field(default=None, description="entries not yet delivered to the component's groups")
    pending: int | None = Field(default=None, description="delivered but unacknowledged entries")
    restarts: int | None = Field(default=None, description="container restarts over the component's pods")
    last_termination_reason: str | None = Field(
        default=None, description="reason of the last container termination, e.g. Error or OOMKilled"
    )


class TradingPolicyStatus(StatusRoot):
    health: Health | None = Field(default=None, description="Healthy | Progressing | Degraded | Halted | Invalid")
    message: str | None = Field(default=None, description="one line: why health is not Healthy")
    conditions: list[Condition] | None = Field(
        default=None,
        description="Ready, ImageConsistent, WiringValid, ModelConsistent, KillSwitchEngaged, ExchangeReconciled",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    components: dict[str, ComponentStatus] | None = Field(default=None, description="per-component readiness")
    image_digest: str | None = Field(default=None, description="the image digest every pod was seen running")
    ready: str | None = Field(default=None, description="ready components of enabled components, e.g. 11/11")
    open_positions: int | None = Field(default=None, description="open positions of the instance")
    lag: int | None = Field(default=None, description="total consumer-group lag over the instance's streams")
    pending: int | None = Field(default=None, description="total pending entries over the instance's streams")
    heartbeat_age_seconds: float | None = Field(default=None, description="age of the stalest component heartbeat")
    drift: str | None = Field(default=None, description="none, or a short summary of what differs from the policy")
    observed_generation: int | None = Field(default=None, description="the spec generation this status is for")


# ---------------------------------------------------------------- CRD descriptions


@dataclass(frozen=True, slots=True)
class PrinterColumn:
    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str
    priority: int = 0
    """0: in ``kubectl get``; 1: only with ``-o wide``"""

    def to_crd(self) -> dict[str, Any]:
        column: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        return column


AGE = PrinterColumn("AGE", "date", ".metadata.creationTimestamp", "time since creation")


@dataclass(frozen=True, slots=True)
class CustomResource:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    description: str
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    printer_columns: tuple[PrinterColumn, ...]
    spec_schema_hook: Callable[[dict[str, Any]], None] | None = None
    """cluster-only additions to the spec schema generated from ``spec_model``"""
    categories: tuple[str, ...] = field(default=(CATEGORY,))

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def filename(self) -> str:
        return f"{self.plural}.yaml"

    @property
    def api_version(self) -> str:
        return f"{GROUP}/{VERSION}"


def _node(schema: dict[str, Any], *path: str) -> dict[str, Any]:
    for name in path:
        schema = schema["properties"][name]
    return schema


def _add_rules(node: dict[str, Any], *rules: dict[str, str]) -> None:
    node.setdefault("x-kubernetes-validations", []).extend(rules)


def _trading_policy_schema(spec: dict[str, Any]) -> None:
    """What a cluster adds to the PolicySpec schema; every rule mirrors a PolicySpec validator or
    validate_policy, so a spec admitted here also parses — admission just says it sooner."""
    spec["required"] = sorted({*spec.get("required", []), "image"})
    image = _node(spec, "image")
    # Required in a cluster, so not nullable: a null would be pruned and then be reported as missing.
    image.pop("nullable", None)
    image["maxLength"] = MAX_IMAGE_LENGTH
    # Same for the secret reference the mode rules test with has(): an explicit null must not count.
    _node(spec, "exchangeSecretRef").pop("nullable", None)
    _add_rules(
        spec,
        cel(
            f"self.image.matches({IMAGE_DIGEST_CEL})",
            "image must be pinned by digest: <repository>@sha256:<64 hex>, never a tag",
            reason="FieldValueInvalid",
            field_path=".image",
        ),
        cel(
            "self.mode != 'live' || (has(self.confirmLive) && self.confirmLive && has(self.exchangeSecretRef))",
            "mode live needs confirmLive: true and exchangeSecretRef (real money at risk)",
            field_path=".mode",
        ),
        cel(
            "self.mode != 'testnet' || has(self.exchangeSecretRef)",
            "mode testnet needs exchangeSecretRef",
            field_path=".mode",
        ),
    )

    symbols = _node(spec, "symbols")
    symbols["maxItems"] = MAX_SYMBOLS
    symbols["x-kubernetes-list-type"] = "set"  # the PolicySpec rule "symbols must not repeat"
    symbols["items"].update(pattern=SYMBOL_PATTERN, maxLength=MAX_SYMBOL_LENGTH)
    for name in ("pinnedLive", "pinnedShadow"):
        pinned = _node(spec, "exits", name)
        pinned["maxItems"] = MAX_SYMBOLS
        pinned["items"].update(maxLength=MAX_SYMBOL_LENGTH)

    # No default Redis in a cluster: RedisSpec() (neither url nor managed) is what `qt run` fills in for its
    # embedded Redis, but here it breaks the exactly-one rule below, and the API server checks every default
    # against the rules of its node when the CRD is created (it would refuse the CRD). Required instead, as
    # validate_policy requires one of the two.
    spec["required"] = sorted({*spec["required"], "redis"})
    redis = _node(spec, "redis")
    del redis["default"]
    url = _node(redis, "url")
    url.pop("nullable", None)
    url["maxLength"] = MAX_URL_LENGTH
    _add_rules(
        redis,
        cel(
            "(has(self.managed) && self.managed) != has(self.url)",
            "redis: set exactly one of url or managed: true",
        ),
        cel(
            f"!has(self.url) || self.url.matches({REDIS_URL_CEL})",
            "redis.url must be redis://host:port[/db] without credentials: the password comes from passwordSecretRef",
            field_path=".url",
        ),
    )

    _add_rules(
        _node(spec, "risk"),
        cel(
            "self.maxNotionalPerTrade <= self.maxTotalNotional",
            "risk.maxNotionalPerTrade must not exceed risk.maxTotalNotional",
            field_path=".maxNotionalPerTrade",
        ),
    )
    _add_rules(
        _node(spec, "strategy"),
        cel("self.fast < self.slow", "strategy.fast must be shorter than strategy.slow", field_path=".fast"),
    )

    # The components map becomes one property per registered component: `kubectl explain` lists them, and an
    # unknown name is refused by strict field validation instead of needing a CEL rule over map keys.
    components = _node(spec, "components")
    settings = components.pop("additionalProperties")
    components["properties"] = {
        name: {**settings, "description": f"{name}: {component.description}"} for name, component in COMPONENTS.items()
    }


TRADING_POLICY = CustomResource(
    kind="TradingPolicy",
    plural="tradingpolicies",
    short_names=("tp",),
    description=(
        "A trading instance: the image digest every component runs, mode, Redis, symbols, risk limits, model "
        "and per-component settings. The operator runs one Deployment per enabled component."
    ),
    spec_model=PolicySpec,
    status_model=TradingPolicyStatus,
    printer_columns=(
        PrinterColumn("HEALTH", "string", ".status.health", "Healthy | Progressing | Degraded | Halted | Invalid"),
        PrinterColumn("MODE", "string", ".spec.mode", "paper | testnet | live"),
        PrinterColumn("READY", "string", ".status.ready", "ready components of enabled components"),
        PrinterColumn("POSITIONS", "integer", ".status.openPositions", "open positions"),
        PrinterColumn("LAG", "integer", ".status.lag", "total consumer-group lag"),
        PrinterColumn("DRIFT", "string", ".status.drift", "none, or what differs from the policy"),
        AGE,
        PrinterColumn("IMAGE", "string", ".spec.image", "the pinned image", priority=1),
        PrinterColumn("MESSAGE", "string", ".status.message", "why health is not Healthy", priority=1),
    ),
    spec_schema_hook=_trading_policy_schema,
)

EXIT_ROLLOUT = CustomResource(
    kind="ExitRollout",
    plural="exitrollouts",
    short_names=("xr",),
    description="Rolls exit-brain's advanced exit logic from SHADOW to LIVE per symbol, by percent and pins.",
    spec_model=ExitRolloutSpec,
    status_model=ExitRolloutStatus,
    printer_columns=(
        PrinterColumn("MODE", "string", ".spec.mode", "SHADOW | LIVE"),
        PrinterColumn("PERCENT", "integer", ".spec.percent", "share of symbols live"),
        PrinterColumn("LIVE", "string", ".status.live", "live symbols of all symbols"),
        AGE,
        PrinterColumn("POLICY", "string", ".spec.policyRef.name", "the TradingPolicy", priority=1),
        PrinterColumn("EFFECTIVE", "string", ".status.effectiveMode", "mode after the kill switch", priority=1),
    ),
)

KILL_SWITCH = CustomResource(
    kind="KillSwitch",
    plural="killswitches",
    short_names=("ks",),
    description="Halts a TradingPolicy's orders by scope; every component applies and acks its generation.",
    spec_model=KillSwitchSpec,
    status_model=KillSwitchStatus,
    printer_columns=(
        PrinterColumn("ENGAGED", "boolean", ".spec.engaged", "whether the switch is on"),
        PrinterColumn("SCOPE", "string", ".spec.scope", "entries | exits | all"),
        PrinterColumn("ACKED", "string", ".status.acked", "components that applied it"),
        AGE,
        PrinterColumn("POLICY", "string", ".spec.policyRef.name", "the TradingPolicy", priority=1),
        PrinterColumn("FLATTEN", "boolean", ".spec.flatten", "closing every position", priority=1),
        PrinterColumn("REASON", "string", ".spec.reason", "why", priority=1),
    ),
)

RESOURCES: tuple[CustomResource, ...] = (TRADING_POLICY, EXIT_ROLLOUT, KILL_SWITCH)


# ---------------------------------------------------------------- parsing custom resources


class ResourceError(ValueError):
    """A custom resource whose spec cannot be used, with a one-line explanation."""


def _spec_of(cr: Mapping[str, Any]) -> Any:
    spec = cr.get("spec")
    return {} if spec is None else spec


def policy_spec(cr: Mapping[str, Any]) -> PolicySpec:
    """The PolicySpec of a TradingPolicy object (raises :class:`quantum_trader.contracts.policy.PolicyError`)."""
    return parse_policy(_spec_of(cr))


def exit_rollout_spec(cr: Mapping[str, Any]) -> ExitRolloutSpec:
    try:
        return ExitRolloutSpec.model_validate(_spec_of(cr))
    except ValidationError as error:
        raise ResourceError(describe_validation_error(error)) from None


def kill_switch_spec(cr: Mapping[str, Any]) -> KillSwitchSpec:
    try:
        return KillSwitchSpec.model_validate(_spec_of(cr))
    except ValidationError as error:
        raise ResourceError(describe_validation_error(error)) from None


__all__ = [
    "EXIT_ROLLOUT",
    "KILL_SWITCH",
    "RESOURCES",
    "TRADING_POLICY",
    "ComponentStatus",
    "Condition",
    "ConditionType",
    "CustomResource",
    "ExitRolloutSpec",
    "ExitRolloutStatus",
    "Health",
    "KillSwitchSpec",
    "KillSwitchStatus",
    "PolicyRef",
    "PrinterColumn",
    "ResourceError",
    "TradingPolicyStatus",
    "exit_rollout_spec",
    "kill_switch_spec",
    "policy_spec",
]
