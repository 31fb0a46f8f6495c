"""Every CRD default satisfies every schema rule and CEL rule as the API server checks it when the CRD is created.

The API server checks a default as written, without filling in nested defaults (harness/crd_defaults.py says
how): an object default ``{}`` under a rule ``self.fast < self.slow`` is "no such key", and the CRD is refused. That
is how ``kubectl apply -f crds/`` failed on Kubernetes 1.36 (issue 12); the CRD it refused is kept in
fixtures/tradingpolicies-refused-by-kube-1.36.yaml, and the checker must refuse it with the same three messages.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.crd_defaults import default_violations, defaulted_nodes
from quantum_trader_operator.crdgen import render_crds
from quantum_trader_operator.models import RESOURCES

REPO = Path(__file__).resolve().parents[2]
REFUSED_BY_KUBE_1_36 = Path(__file__).parent / "fixtures" / "tradingpolicies-refused-by-kube-1.36.yaml"
SPEC = "spec.validation.openAPIV3Schema.properties[spec]"


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("name", [r.filename for r in RESOURCES])
def test_checked_in_crd_defaults_pass_the_api_server_checks(name: str) -> None:
    crd = load(REPO / "crds" / name)
    assert default_violations(crd) == []


@pytest.mark.parametrize("name", [r.filename for r in RESOURCES])
def test_generated_crd_defaults_pass_the_api_server_checks(name: str) -> None:
    assert default_violations(yaml.safe_load(render_crds()[name])) == []


def test_the_checks_reach_every_default_and_every_rule_along_it() -> None:
    """Not vacuous: the TradingPolicy CRD has object defaults under CEL rules, and the checks evaluate them."""
    schema = load(REPO / "crds" / "tradingpolicies.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    defaulted = dict(defaulted_nodes(schema, "root"))
    spec = "root.properties[spec]"
    for name in ("risk", "strategy"):
        node = defaulted[f"{spec}.properties[{name}]"]
        assert node["x-kubernetes-validations"] and node["default"], name
    assert f"{spec}.properties[simulator].properties[faults]" in defaulted
    assert f"{spec}.properties[redis]" not in defaulted, "no Redis default can satisfy exactly-one-of"
    assert "redis" in schema["properties"]["spec"]["required"]


ISSUE_12_OUTPUT = """\
The CustomResourceDefinition "tradingpolicies.trading.quantumtrader.io" is invalid:
* spec.validation.openAPIV3Schema.properties[spec].properties[redis].default: Invalid value: redis: set exactly one \
of url or managed: true
* spec.validation.openAPIV3Schema.properties[spec].properties[strategy].default: Invalid value: "object": no such \
key: fast evaluating rule: strategy.fast must be shorter than strategy.slow
* spec.validation.openAPIV3Schema.properties[spec].properties[risk].default: Invalid value: "object": no such key: \
maxNotionalPerTrade evaluating rule: risk.maxNotionalPerTrade must not exceed risk.maxTotalNotional
"""
"""what `kubectl apply -f crds/` printed against the real v1.36.2 API server, as issue 12 quotes it"""


def test_the_crd_kubernetes_1_36_refused_is_refused_here_with_its_messages() -> None:
    """The three errors, character for character: a false rule on an object shows no value (redis), a rule that
    cannot be evaluated on ``{}`` shows the type (risk, strategy)."""
    printed = sorted(line.removeprefix("* ") for line in ISSUE_12_OUTPUT.splitlines()[1:])
    assert sorted(set(default_violations(load(REFUSED_BY_KUBE_1_36)))) == printed


# ---------------------------------------------------------------- the checker's semantics, on small CRDs


def crd(spec_schema: dict[str, Any], *, versions: int = 1) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"spec": spec_schema}}
    return {
        "kind": "CustomResourceDefinition",
        "spec": {
            "versions": [
                {"name": f"v{i + 1}", "schema": {"openAPIV3Schema": copy.deepcopy(schema)}} for i in range(versions)
            ]
        },
    }


def window(default: Any, rule: str = "self.fast < self.slow", **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "default": default,
        "properties": {
            "fast": {"type": "integer", "default": 12, "minimum": 2},
            "slow": {"type": "integer", "default": 48},
        },
        "x-kubernetes-validations": [{"rule": rule, "message": "fast before slow"}],
        **extra,
    }


def spec_with(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def test_an_object_default_is_checked_without_its_nested_defaults() -> None:
    (problem,) = default_violations(crd(spec_with(window=window({}))))
    assert problem == (
        f'{SPEC}.properties[window].default: Invalid value: "object": no such key: fast evaluating rule: '
        "fast before slow"
    )
    assert default_violations(crd(spec_with(window=window({"fast": 12, "slow": 48})))) == []


def test_a_false_rule_names_its_field_path() -> None:
    node = window({"fast": 50, "slow": 48})
    node["x-kubernetes-validations"][0]["fieldPath"] = ".fast"
    assert default_violations(crd(spec_with(window=node))) == [
        f"{SPEC}.properties[window].default.fast: Invalid value: fast before slow"
    ]


@pytest.mark.parametrize(
    ("kind", "default", "shown"),
    [("integer", 5, "5"), ("number", 1e6, "1e+06"), ("number", 0.25, "0.25"), ("boolean", True, "true"),
     ("string", "a\"b", '"a\\"b"'), ("array", [1, 2], None)],
)  # fmt: skip
def test_a_false_rule_shows_a_simple_value_as_go_prints_it_and_leaves_out_a_list(
    kind: str, default: Any, shown: str | None
) -> None:
    node: dict[str, Any] = {
        "type": kind,
        "default": default,
        "x-kubernetes-validations": [{"rule": "false", "message": "never"}],
    }
    if kind == "array":
        node["items"] = {"type": "integer"}
    value = f"Invalid value: {shown}" if shown is not None else "Invalid value"
    assert default_violations(crd(spec_with(field=node))) == [f"{SPEC}.properties[field].default: {value}: never"]


def test_has_guards_make_a_rule_hold_on_an_empty_default() -> None:
    guarded = window({}, rule="!has(self.fast) || !has(self.slow) || self.fast < self.slow")
    assert default_violations(crd(spec_with(window=guarded))) == []


def test_rules_reached_along_a_default_are_checked_and_absent_parts_are_not() -> None:
    outer = {
        "type": "object",
        "default": {"inner": {}},
        "properties": {"inner": window({"fast": 12, "slow": 48}), "unused": window({"fast": 1, "slow": 2})},
    }
    problems = default_violations(crd(spec_with(outer=outer)))
    # inner's rule runs on the {} the outer default holds; unused (absent from outer's default) is not checked
    # there, but its own default is, and breaks its minimum.
    assert problems == [
        f'{SPEC}.properties[outer].default.inner: Invalid value: "object": no such key: fast evaluating rule: '
        "fast before slow",
        f"{SPEC}.properties[outer].properties[unused].default.fast: Invalid value: 1 is less than the minimum of 2",
    ]


def test_a_default_must_be_pruned_and_schema_valid() -> None:
    assert default_violations(crd(spec_with(window=window({"fast": 12, "slow": 48, "medium": 20})))) == [
        f'{SPEC}.properties[window].default: Invalid value: "object": must not have unknown fields (medium)'
    ]
    required = window({"slow": 48}, rule="true", required=["fast"])
    assert default_violations(crd(spec_with(window=required))) == [
        f"{SPEC}.properties[window].default: Invalid value: 'fast' is a required property"
    ]


def test_transition_rules_see_the_default_as_its_own_old_value() -> None:
    frozen = {
        "type": "string",
        "default": "a",
        "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable"}],
    }
    assert default_violations(crd(spec_with(name=frozen))) == []
    changing = {**frozen, "x-kubernetes-validations": [{"rule": "self != oldSelf", "message": "must change"}]}
    assert default_violations(crd(spec_with(name=changing))) == [
        f'{SPEC}.properties[name].default: Invalid value: "a": must change'
    ]


def test_numbers_are_doubles_as_the_api_server_types_them() -> None:
    notional = {
        "type": "object",
        "default": {"perTrade": 1000, "total": 10000.0},
        "properties": {"perTrade": {"type": "number"}, "total": {"type": "number"}},
        "x-kubernetes-validations": [{"rule": "self.perTrade <= self.total", "message": "per trade within total"}],
    }
    assert default_violations(crd(spec_with(notional=notional))) == []


def test_versions_with_different_schemas_are_named_by_version() -> None:
    document = crd(spec_with(window=window({})), versions=2)
    document["spec"]["versions"][1]["schema"]["openAPIV3Schema"]["description"] = "another schema"
    problems = default_violations(document)
    assert [p.split(".properties")[0] for p in problems] == [
        "spec.versions[0].schema.openAPIV3Schema",
        "spec.versions[1].schema.openAPIV3Schema",
    ]
