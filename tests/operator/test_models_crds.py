"""models.py and crdgen.py: the CRD models, their defaults as the API server applies them, the generator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field

from harness.crd_defaults import apply_defaults
from quantum_trader.contracts.policy import PolicySpec
from quantum_trader_operator import crdgen
from quantum_trader_operator.models import (
    RESOURCES,
    ExitRolloutSpec,
    KillSwitchSpec,
    ResourceError,
    TradingPolicyStatus,
    exit_rollout_spec,
    kill_switch_spec,
    policy_spec,
)

IMAGE = "ghcr.io/quantum-trader/quantum-trader@sha256:" + "ab" * 32


def spec_schema(kind: str) -> dict[str, Any]:
    (resource,) = [r for r in RESOURCES if r.kind == kind]
    return crdgen.spec_schema(resource)


# ---------------------------------------------------------------- defaults: CRD == pydantic


@pytest.mark.parametrize(
    ("kind", "model", "minimal"),
    [
        ("TradingPolicy", PolicySpec, {"image": IMAGE, "redis": {"managed": True}}),
        ("TradingPolicy", PolicySpec, {"image": IMAGE, "redis": {"url": "redis://r/0"}, "risk": {"maxLeverage": 3}}),
        ("ExitRollout", ExitRolloutSpec, {"policyRef": {"name": "p"}}),
        ("KillSwitch", KillSwitchSpec, {"policyRef": {"name": "p"}, "reason": "maintenance"}),
    ],
)  # fmt: skip
def test_api_server_defaults_equal_the_model_defaults(kind: str, model: type[BaseModel], minimal: dict) -> None:
    """What the API server stores after defaulting is exactly what the model would fill in: no default is
    missing from the CRD, and none differs (components and kubectl show the same effective spec)."""
    defaulted = apply_defaults(spec_schema(kind), minimal)
    parsed = model.model_validate(minimal)
    assert defaulted == parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert model.model_validate(defaulted) == parsed


# ---------------------------------------------------------------- ExitRollout and KillSwitch specs


def test_exit_rollout_defaults_to_shadow() -> None:
    spec = exit_rollout_spec({"spec": {"policyRef": {"name": "p"}}})
    assert (spec.mode, spec.percent, spec.pinned_live, spec.pinned_shadow) == ("SHADOW", 0, [], [])


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"percent": 101}, "less than or equal to 100"),
        ({"percent": -5}, "greater than or equal to 0"),
        ({"mode": "live"}, "'SHADOW' or 'LIVE'"),
        ({"pinnedLive": ["BTCUSDT"], "pinnedShadow": ["BTCUSDT"]}, "pinned both live and shadow: BTCUSDT"),
        ({"pinnedLive": ["btcusdt"]}, "pattern"),
        ({"unknown": 1}, "Extra inputs"),
    ],
)
def test_exit_rollout_refusals(spec: dict, fragment: str) -> None:
    with pytest.raises(ResourceError, match=fragment):
        exit_rollout_spec({"spec": {"policyRef": {"name": "p"}, **spec}})


def test_kill_switch_defaults_to_an_engaged_entries_halt() -> None:
    spec = kill_switch_spec({"spec": {"policyRef": {"name": "p"}, "reason": "maintenance"}})
    assert (spec.engaged, spec.scope.value, spec.flatten, spec.expires_at) == (True, "entries", False, None)
    timed = kill_switch_spec({"spec": {"policyRef": {"name": "p"}, "reason": "x", "expiresAt": "2026-11-21T20:00:00Z"}})
    assert timed.expires_at is not None and timed.expires_at.tzinfo is not None


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({}, "reason"),
        ({"reason": ""}, "at least 1 character"),
        ({"reason": "x", "scope": "everything"}, "'entries', 'exits' or 'all'"),
        ({"reason": "x", "scope": "all", "flatten": True}, "flatten closes positions through exits"),
        ({"reason": "x", "expiresAt": "soon"}, "expiresAt"),
    ],
)
def test_kill_switch_refusals(spec: dict, fragment: str) -> None:
    with pytest.raises(ResourceError, match=fragment):
        kill_switch_spec({"spec": {"policyRef": {"name": "p"}, **spec}})


def test_policy_spec_of_a_trading_policy_object() -> None:
    spec = policy_spec({"kind": "TradingPolicy", "spec": {"image": IMAGE, "symbols": ["ETHUSDT"]}})
    assert spec.image == IMAGE and spec.symbols == ["ETHUSDT"]


# ---------------------------------------------------------------- status


def test_status_keeps_what_kopf_writes_and_documents_the_rest() -> None:
    status = TradingPolicyStatus.model_validate(
        {
            "health": "Degraded",
            "ready": "10/11",
            "openPositions": 2,
            "drift": "none",
            "conditions": [{"type": "Ready", "status": "False", "reason": "CrashLoop", "message": "governor"}],
            "components": {"governor": {"ready": False, "restarts": 4, "lastTerminationReason": "Error"}},
            "kopf": {"progress": {}},
            "reconcile_policy": {"result": "ok"},
        }
    )
    assert status.health.value == "Degraded"
    assert status.components["governor"].restarts == 4
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["kopf"] == {"progress": {}} and dumped["reconcile_policy"] == {"result": "ok"}


# ---------------------------------------------------------------- the generator's conversions


class _Inner(BaseModel):
    size: float = Field(default=1.0, gt=0, description="a positive size")


class _Sample(BaseModel):
    """A sample model."""

    name: str | None = Field(default=None, description="optional name")
    inner: _Inner = Field(default_factory=_Inner, description="nested, defaulted as a whole")
    tags: list[str] = Field(default_factory=lambda: ["a"], description="a defaulted list")
    items: list[_Inner] = Field(default_factory=list, description="a list of models")


def test_model_schema_is_structural() -> None:
    schema = crdgen.model_schema(_Sample)
    assert schema["properties"]["name"] == {"type": "string", "description": "optional name", "nullable": True}
    inner = schema["properties"]["inner"]
    assert inner["default"] == {"size": 1.0} and inner["type"] == "object"  # in full: checked as written
    assert inner["properties"]["size"] == {
        "type": "number",
        "description": "a positive size",
        "default": 1.0,
        "exclusiveMinimum": True,
        "minimum": 0,
    }
    assert schema["properties"]["tags"]["default"] == ["a"]
    assert schema["properties"]["items"]["items"]["properties"]["size"]["minimum"] == 0
    text = yaml.safe_dump(schema)
    for keyword in ("$ref", "anyOf", "title", "$defs"):
        assert keyword not in text


class _Undescribed(BaseModel):
    value: int = 1


class _Ambiguous(BaseModel):
    value: _Inner | _Undescribed = Field(description="two models")


def test_model_schema_refuses_what_a_crd_cannot_say() -> None:
    with pytest.raises(crdgen.CrdError, match="no description"):
        crdgen.model_schema(_Undescribed)
    with pytest.raises(crdgen.CrdError, match="not structural"):
        crdgen.model_schema(_Ambiguous)


def test_main_writes_every_crd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = crdgen.main(tmp_path / "out")
    assert sorted(p.name for p in written) == ["exitrollouts.yaml", "killswitches.yaml", "tradingpolicies.yaml"]
    rendered = crdgen.render_crds()
    for path in written:
        assert path.read_text() == rendered[path.name]
        assert yaml.safe_load(path.read_text())["kind"] == "CustomResourceDefinition"
    assert capsys.readouterr().out.count(".yaml") == 3


def test_models_modules_stay_pure() -> None:
    # handlers.py is the only module that may talk to the API server (DESIGN §5).
    package = Path(crdgen.__file__).parent
    for name in ("models.py", "crdgen.py", "desired.py", "naming.py"):
        text = (package / name).read_text()
        for forbidden in ("import kopf", "from kopf", "import kubernetes", "from kubernetes"):
            assert forbidden not in text, f"{name}: {forbidden}"


def test_the_crd_models_condition_types_are_the_ones_health_reports() -> None:
    from quantum_trader_operator.health import CONDITION_REASONS
    from quantum_trader_operator.models import ConditionType

    assert {c.value for c in ConditionType} == set(CONDITION_REASONS)
