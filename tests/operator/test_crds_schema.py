"""The generated CRDs: checked in as generated, structural, documented, and admitting exactly the right objects.

Without an API server, admission is reproduced in two steps with harness/crd_defaults.py: the schema through
``jsonschema`` (with the API server's defaulting first and unknown fields refused, as ``kubectl``'s strict field
validation does), and the ``x-kubernetes-validations`` rules through a real CEL implementation (``celpy``).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes.client.models import V1JSONSchemaProps, V1ValidationRule

from harness.crd_defaults import apply_defaults, rule_failures, to_json_schema
from quantum_trader.contracts.control import Scope
from quantum_trader_operator.crdgen import render_crds
from quantum_trader_operator.desired import desired_objects, validate_policy
from quantum_trader_operator.models import RESOURCES, ResourceError, kill_switch_spec

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
EXAMPLES = REPO / "examples"
DIGEST = "sha256:" + "0123456789abcdef" * 4
IMAGE = f"ghcr.io/quantum-trader/quantum-trader@{DIGEST}"

SCHEMA_KEYWORDS = frozenset(V1JSONSchemaProps.attribute_map.values())
RULE_KEYWORDS = frozenset(V1ValidationRule.attribute_map.values())
REFUSED = ("$ref", "anyOf", "allOf", "oneOf", "not", "title", "$defs", "definitions")
FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    # RFC 3339 as the API server checks it; jsonschema's own check needs an optional package.
    if isinstance(value, str):
        if "T" not in value.upper():
            raise ValueError(value)
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    return True


# ---------------------------------------------------------------- helpers: load, walk, default, validate


@functools.cache
def _rendered() -> dict[str, str]:
    return render_crds()


def crd_documents() -> dict[str, dict[str, Any]]:
    """Parsed afresh on every call, so no test can change what another one sees."""
    return {filename: yaml.safe_load(text) for filename, text in _rendered().items()}


@functools.cache
def _crds_by_kind() -> dict[str, dict[str, Any]]:
    return {document["spec"]["names"]["kind"]: document for document in crd_documents().values()}


def crd_for(kind: str) -> dict[str, Any]:
    return copy.deepcopy(_crds_by_kind()[kind])


def open_api(kind: str) -> dict[str, Any]:
    return crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")


def all_schemas() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for resource in RESOURCES:
        for path, node in walk(open_api(resource.kind)):
            yield resource.kind, path, node


def schema_errors(kind: str, document: dict[str, Any]) -> list[str]:
    schema = open_api(kind)
    validator = jsonschema.Draft4Validator(to_json_schema(schema, strict=True), format_checker=FORMATS)
    return sorted(error.message for error in validator.iter_errors(apply_defaults(schema, document)))


def cel_rules(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    for path, node in walk(schema):
        for rule in node.get("x-kubernetes-validations") or []:
            yield path, node, rule


# ---------------------------------------------------------------- CEL evaluation (celpy)


def cel_failures(kind: str, document: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Messages of every rule that does not evaluate to true (an evaluation error counts as a failure), on the
    defaulted document; ``old``: the object before an update (transition rules run)."""
    schema = open_api(kind)
    before = apply_defaults(schema, old) if old is not None else None
    return [failure.message for failure in rule_failures(schema, apply_defaults(schema, document), before)]


def admission_errors(kind: str, document: dict[str, Any]) -> list[str]:
    """Schema errors first (the API server stops there), else the CEL rules' messages (when CEL is here)."""
    return schema_errors(kind, document) or cel_failures(kind, document)


# ---------------------------------------------------------------- generated == checked in


def test_checked_in_crds_equal_the_generator() -> None:
    rendered = render_crds()
    assert sorted(p.name for p in CRDS.glob("*.yaml")) == sorted(rendered), "run `qt crds` to regenerate crds/"
    for filename, text in rendered.items():
        assert (CRDS / filename).read_text() == text, f"crds/{filename} is stale: run `qt crds` to regenerate"


def test_generator_is_deterministic() -> None:
    assert render_crds() == render_crds()


@pytest.mark.parametrize(
    ("kind", "plural", "short"),
    [
        ("TradingPolicy", "tradingpolicies", "tp"),
        ("ExitRollout", "exitrollouts", "xr"),
        ("KillSwitch", "killswitches", "ks"),
    ],
)
def test_crd_identity(kind: str, plural: str, short: str) -> None:
    crd = crd_for(kind)
    assert crd["metadata"]["name"] == f"{plural}.trading.quantumtrader.io"
    spec = crd["spec"]
    assert spec["group"] == "trading.quantumtrader.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": kind.lower(),
        "shortNames": [short],
        "categories": ["quantumtrader"],
    }
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


# ---------------------------------------------------------------- structural


@pytest.mark.parametrize("kind", [r.kind for r in RESOURCES])
def test_schema_is_structural(kind: str) -> None:
    for path, node in walk(open_api(kind)):
        for keyword in REFUSED:
            assert keyword not in node, f"{kind}{path}: {keyword}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{kind}{path}: no type"
        unknown = set(node) - SCHEMA_KEYWORDS
        assert not unknown, f"{kind}{path}: keywords Kubernetes does not know: {unknown}"
        if "additionalProperties" in node:
            assert isinstance(node["additionalProperties"], dict), (
                f"{kind}{path}: additionalProperties must be a schema"
            )
            assert "properties" not in node, f"{kind}{path}: properties and additionalProperties are exclusive"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node:
                assert node[bound] is True and ("minimum" in node or "maximum" in node), f"{kind}{path}: {bound}"
        if node.get("x-kubernetes-list-type") == "map":
            required = set(node["items"].get("required", []))
            assert set(node["x-kubernetes-list-map-keys"]) <= required, f"{kind}{path}: map keys must be required"


def test_preserve_unknown_fields_only_on_status_roots() -> None:
    preserved = [(kind, path) for kind, path, node in all_schemas() if node.get("x-kubernetes-preserve-unknown-fields")]
    assert preserved == [(r.kind, ".status") for r in RESOURCES]


def test_every_field_is_described() -> None:
    for kind, path, node in all_schemas():
        if path.startswith((".spec", ".status")) and not path.endswith(("[]", ".*")):
            assert node.get("description"), f"{kind}{path} has no description"


# Defaults against their schema and CEL rules, as the API server checks them: test_crd_defaults_cel.py.


def test_status_documents_the_fields_the_operator_writes() -> None:
    expected = {
        "TradingPolicy": {
            "health", "conditions", "components", "imageDigest", "ready", "openPositions", "lag", "pending",
            "heartbeatAgeSeconds", "drift", "observedGeneration",
        },
        "KillSwitch": {"generation", "engagedAt", "acked", "ackLatencySeconds", "state"},
        "ExitRollout": {"liveSymbols", "shadowSymbols", "effectiveMode", "observedGeneration"},
    }  # fmt: skip
    for kind, fields in expected.items():
        status = open_api(kind)["properties"]["status"]
        assert fields <= set(status["properties"]), kind
    health = open_api("TradingPolicy")["properties"]["status"]["properties"]["health"]
    assert health["enum"] == ["Healthy", "Progressing", "Degraded", "Halted", "Invalid"]
    component = open_api("TradingPolicy")["properties"]["status"]["properties"]["components"]["additionalProperties"]
    assert {"ready", "replicas", "heartbeatAgeSeconds", "lag", "pending", "restarts", "lastTerminationReason"} <= set(
        component["properties"]
    )


def test_the_policy_spec_is_the_contracts_model() -> None:
    # One model, never two copies: every PolicySpec field (camelCase) is in the CRD and nothing else is.
    from quantum_trader.contracts.policy import PolicySpec

    fields = {info.alias or name for name, info in PolicySpec.model_fields.items()}
    assert set(open_api("TradingPolicy")["properties"]["spec"]["properties"]) == fields


# ---------------------------------------------------------------- printer columns


COLUMNS = {
    "TradingPolicy": [
        ("HEALTH", ".status.health"), ("MODE", ".spec.mode"), ("READY", ".status.ready"),
        ("POSITIONS", ".status.openPositions"), ("LAG", ".status.lag"), ("DRIFT", ".status.drift"),
        ("AGE", ".metadata.creationTimestamp"),
    ],
    "KillSwitch": [
        ("ENGAGED", ".spec.engaged"), ("SCOPE", ".spec.scope"), ("ACKED", ".status.acked"),
        ("AGE", ".metadata.creationTimestamp"),
    ],
    "ExitRollout": [
        ("MODE", ".spec.mode"), ("PERCENT", ".spec.percent"), ("LIVE", ".status.live"),
        ("AGE", ".metadata.creationTimestamp"),
    ],
}  # fmt: skip
COLUMN_TYPES = {"string": {"string"}, "integer": {"integer"}, "number": {"number", "integer"}, "boolean": {"boolean"}}


@pytest.mark.parametrize("kind", sorted(COLUMNS))
def test_printer_columns(kind: str) -> None:
    columns = crd_for(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
    default = [(c["name"], c["jsonPath"]) for c in columns if not c.get("priority")]
    assert default == COLUMNS[kind]
    schema = open_api(kind)
    for column in columns:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        node = schema
        for part in column["jsonPath"].lstrip(".").split("."):
            node = node["properties"][part]
        assert node["type"] in COLUMN_TYPES[column["type"]], f"{kind} {column['name']}: {node['type']}"


# ---------------------------------------------------------------- CEL rules: plausible and cheap without CEL


def test_cel_rules_are_plausible_and_bounded() -> None:
    """Without a CEL library: balanced, keys Kubernetes knows, every ``self.<field>`` exists at the rule's node,
    and every string a rule regex-matches or list it iterates is bounded (the API server estimates a rule's
    cost from the largest possible value and refuses the CRD when a rule could exceed its budget)."""
    seen = 0
    for resource in RESOURCES:
        for path, node, rule in cel_rules(open_api(resource.kind)):
            seen += 1
            where = f"{resource.kind}{path}: {rule['rule']}"
            assert set(rule) <= RULE_KEYWORDS and rule.get("message"), where
            text = re.sub(r"'(?:[^'\\]|\\.)*'", "''", rule["rule"])  # string literals out of the way
            assert text.count("(") == text.count(")") and "'" not in text.replace("''", ""), where
            props = node.get("properties") or {}
            for name in re.findall(r"\bself\.([A-Za-z_]\w*)", text):
                assert name in props, f"{where}: no field {name}"
            for name in re.findall(r"\bself\.([A-Za-z_]\w*)\.matches\(", text):
                assert props[name].get("maxLength"), f"{where}: {name} needs maxLength"
            for name in re.findall(r"\bself\.([A-Za-z_]\w*)\.(?:all|exists)\(", text):
                assert props[name].get("maxItems") and props[name]["items"].get("maxLength"), where
            if "fieldPath" in rule:
                assert rule["fieldPath"].lstrip(".") in props, where
    assert seen >= 10


def test_required_cel_rules_are_present() -> None:
    spec = open_api("TradingPolicy")["properties"]["spec"]
    rules = " ".join(r["rule"] for _, _, r in cel_rules(spec))
    assert "self.image.matches('^[^@\\\\s]+@sha256:[0-9a-f]{64}$')" in rules
    assert "self.mode != 'live'" in rules and "self.confirmLive" in rules and "has(self.exchangeSecretRef)" in rules
    assert "self.mode != 'testnet'" in rules
    assert "self.maxNotionalPerTrade <= self.maxTotalNotional" in rules
    assert "image" in spec["required"]
    percent = open_api("ExitRollout")["properties"]["spec"]["properties"]["percent"]
    assert (percent["minimum"], percent["maximum"]) == (0, 100)
    scope = open_api("KillSwitch")["properties"]["spec"]["properties"]["scope"]
    assert scope["enum"] == ["entries", "exits", "all"]


def test_every_cel_rule_compiles() -> None:
    celpy = pytest.importorskip("celpy")
    env = celpy.Environment()
    for resource in RESOURCES:
        for path, _, rule in cel_rules(open_api(resource.kind)):
            env.compile(rule["rule"])  # raises CELParseError on a syntax error
            assert path is not None


# ---------------------------------------------------------------- admission: examples and refusals


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


@pytest.mark.parametrize("name", ["policy.yaml", "exitrollout.yaml", "killswitch.yaml"])
def test_examples_are_admitted(name: str) -> None:
    document = example(name)
    assert admission_errors(document["kind"], document) == []


def test_example_policy_renders() -> None:
    document = example("policy.yaml")
    assert document["spec"]["mode"] == "paper"
    assert re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", document["spec"]["image"])
    assert validate_policy(document) == []
    document["metadata"]["uid"] = "0b7c1f9e-example"
    assert desired_objects(document, exit_rollout=example("exitrollout.yaml"))


def policy(**spec: Any) -> dict[str, Any]:
    body = {"image": IMAGE, "redis": {"managed": True}}
    body.update(spec)
    return {
        "apiVersion": "trading.quantumtrader.io/v1alpha1",
        "kind": "TradingPolicy",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {k: v for k, v in body.items() if v is not None},
    }


SECRET = {"name": "binance"}

# (case, spec changes, admission message fragment, validate_policy message fragment or None when the field
#  never reaches the operator: Kubernetes prunes unknown fields, and strict field validation refuses them)
POLICY_REFUSALS = [
    (
        "tag instead of digest",
        {"image": "ghcr.io/quantum-trader/quantum-trader:1.2.3"},
        "pinned by digest",
        "pinned by digest",
    ),
    ("digest too short", {"image": "ghcr.io/q/q@sha256:abc"}, "pinned by digest", "pinned by digest"),
    ("no image", {"image": None}, "'image' is a required property", "spec.image is required"),
    ("live unconfirmed", {"mode": "live", "exchangeSecretRef": SECRET}, "confirmLive", "confirmLive"),
    ("live without secret", {"mode": "live", "confirmLive": True}, "mode live needs", "exchangeSecretRef"),
    ("testnet without secret", {"mode": "testnet"}, "mode testnet needs", "exchangeSecretRef"),
    ("per trade over total", {"risk": {"maxNotionalPerTrade": 20000}}, "maxNotionalPerTrade", "maxNotionalPerTrade"),
    ("fast not under slow", {"strategy": {"fast": 50, "slow": 20}}, "strategy.fast", "strategy.fast"),
    ("redis url and managed", {"redis": {"managed": True, "url": "redis://r:6379"}}, "exactly one", "exactly one"),
    ("no redis", {"redis": {}}, "exactly one", "exactly one"),
    ("redis left out", {"redis": None}, "'redis' is a required property", "exactly one"),
    ("negative max open positions", {"risk": {"maxOpenPositions": -3}}, "less than the minimum", "maxOpenPositions"),
    ("password in redis url", {"redis": {"url": "redis://:hunter2@r:6379/0"}}, "without credentials", "credentials"),
    ("unknown mode", {"mode": "yolo"}, "'yolo' is not one of", "mode"),
    ("lower-case symbol", {"symbols": ["btcusdt"]}, "does not match", "upper-case"),
    ("look-alike symbol", {"symbols": ["BTCUSD\uff34"]}, "does not match", "ASCII"),
    ("symbol over 20 characters", {"symbols": ["A" * 21]}, "is too long", "ASCII"),
    ("one-character symbol", {"symbols": ["B"]}, "does not match", "ASCII"),
    ("repeated symbol", {"symbols": ["BTCUSDT", "BTCUSDT"]}, "non-unique", "must not repeat"),
    ("no symbols", {"symbols": []}, "non-empty", "symbols"),
    ("too many replicas", {"components": {"governor": {"replicas": 64}}}, "greater than the maximum", "replicas"),
    ("unknown component", {"components": {"governer": {"replicas": 2}}}, "Additional properties", None),
    ("unknown field", {"leverage": 100}, "Additional properties", None),
]


@pytest.mark.parametrize(
    ("case", "changes", "admission", "flagged"), POLICY_REFUSALS, ids=[c[0] for c in POLICY_REFUSALS]
)
def test_bad_policies_are_refused(case: str, changes: dict[str, Any], admission: str, flagged: str | None) -> None:
    document = policy(**changes)
    if flagged is not None:  # first, so it is checked even where the CEL half has to be skipped
        problems = validate_policy(document)
        assert any(flagged in p for p in problems), f"{case}: validate_policy said {problems}"
    errors = admission_errors("TradingPolicy", document)
    assert any(admission in e for e in errors), f"{case}: admission said {errors}"


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"mode": "testnet", "exchangeSecretRef": SECRET},
        {"mode": "live", "confirmLive": True, "exchangeSecretRef": SECRET},
        {"redis": {"url": "redis://redis.shared:6379/3", "passwordSecretRef": {"name": "r", "key": "password"}}},
        {"components": {"harvest": {"enabled": False}, "heat-gate": {"enabled": False}}},
    ],
)
def test_good_policies_are_admitted(spec: dict[str, Any]) -> None:
    document = policy(**spec)
    assert admission_errors("TradingPolicy", document) == []
    assert validate_policy(document) == []


def rollout(**spec: Any) -> dict[str, Any]:
    return {"kind": "ExitRollout", "metadata": {"name": "x"}, "spec": {"policyRef": {"name": "p"}, **spec}}


def switch(**spec: Any) -> dict[str, Any]:
    body = {"policyRef": {"name": "p"}, "reason": "test", **spec}
    return {"kind": "KillSwitch", "metadata": {"name": "k"}, "spec": {k: v for k, v in body.items() if v is not None}}


OTHER_REFUSALS = [
    ("percent over 100", rollout(percent=101), "greater than the maximum"),
    ("negative percent", rollout(percent=-1), "less than the minimum"),
    ("pinned both ways", rollout(pinnedLive=["BTCUSDT"], pinnedShadow=["BTCUSDT"]), "pinned both live and shadow"),
    ("mode case", rollout(mode="Live"), "is not one of"),
    ("no policy", {"kind": "ExitRollout", "spec": {"percent": 5}}, "'policyRef' is a required property"),
    ("unknown scope", switch(scope="everything"), "is not one of"),
    ("flatten under all", switch(scope="all", flatten=True), "flatten closes positions"),
    ("no reason", switch(reason=None), "'reason' is a required property"),
    ("empty reason", switch(reason=""), "non-empty"),
    ("bad expiry", switch(expiresAt="tomorrow"), "is not a 'date-time'"),
]


@pytest.mark.parametrize(("case", "document", "message"), OTHER_REFUSALS, ids=[c[0] for c in OTHER_REFUSALS])
def test_bad_rollouts_and_switches_are_refused(case: str, document: dict[str, Any], message: str) -> None:
    errors = admission_errors(document["kind"], document)
    assert any(message in e for e in errors), f"{case}: {errors}"


@pytest.mark.parametrize(
    "document",
    [
        rollout(),
        rollout(mode="LIVE", percent=100, pinnedShadow=["ETHUSDT"]),
        switch(),
        switch(scope="exits", flatten=True),
    ],
)
def test_good_rollouts_and_switches_are_admitted(document: dict[str, Any]) -> None:
    assert admission_errors(document["kind"], document) == []


@pytest.mark.parametrize("scope", list(Scope), ids=[s.value for s in Scope])
def test_flatten_is_refused_exactly_under_the_scopes_that_stop_exits(scope: Scope) -> None:
    """The CRD's rule and the model's validator are the kill-switch model's ``Scope.stops_exits``, not a copy."""
    document = switch(scope=scope.value, flatten=True)
    refused_by_admission = bool(admission_errors("KillSwitch", document))
    try:
        kill_switch_spec(document)
        refused_by_model = False
    except ResourceError:
        refused_by_model = True
    assert refused_by_admission is refused_by_model is scope.stops_exits


@pytest.mark.parametrize("kind", ["ExitRollout", "KillSwitch"])
def test_policy_ref_is_immutable(kind: str) -> None:
    make = rollout if kind == "ExitRollout" else switch
    before = make()
    after = copy.deepcopy(before)
    after["spec"]["policyRef"]["name"] = "other"
    assert cel_failures(kind, after, old=before) == ["policyRef is immutable"]
    assert cel_failures(kind, before, old=before) == []


@pytest.mark.parametrize(
    "image",
    [
        IMAGE,
        "registry.example.com:5000/team/svc@" + DIGEST,
        "ghcr.io/quantum-trader/quantum-trader:1.2.3",
        "ghcr.io/quantum-trader/quantum-trader:1.2.3@" + DIGEST,
        "ghcr.io/q q@" + DIGEST,
        "ghcr.io/q@" + DIGEST.upper(),
        "ghcr.io/q@sha256:" + "a" * 63,
        "@" + DIGEST,
        "ghcr.io/q@sha512:" + "a" * 64,
    ],
)
def test_admission_and_the_policy_model_agree_on_pinned_images(image: str) -> None:
    """The CEL rule is contracts.policy.IMAGE_DIGEST: what one admits, the other parses."""
    from quantum_trader.contracts.policy import IMAGE_DIGEST

    admitted = "pinned by digest" not in " ".join(cel_failures("TradingPolicy", policy(image=image)))
    assert admitted is bool(IMAGE_DIGEST.match(image))


@pytest.mark.parametrize(
    "url",
    [
        "redis://r:6379/0",
        "rediss://redis.shared.svc:6380",
        "redis://r",
        "redis://:pw@r:6379/0",
        "redis://user:pw@r:6379",
        "http://r:6379",
        "redis://r:6379/db",
        "unix:///tmp/redis.sock",
    ],
)
def test_admission_and_validate_policy_agree_on_redis_urls(url: str) -> None:
    problems = [p for p in validate_policy(policy(redis={"url": url})) if "redis.url" in p]
    refused = any("redis.url" in m for m in cel_failures("TradingPolicy", policy(redis={"url": url})))
    assert refused is bool(problems), problems
