"""On the real API server: every CRD and example applies, the CRD Kubernetes 1.36 refused is refused for the reasons
harness/crd_defaults.py gives, and admission refuses bad specs with the messages the unit tests expect.

No operator is needed here: this is what the API server alone decides.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.crd_defaults import default_violations
from tests.conftest import REPO
from tests.e2e.conftest import kubectl, kubectl_apply, server_version

EXAMPLES = sorted(
    (path.name, index)
    for path in (REPO / "examples").glob("*.yaml")
    for index, doc in enumerate(yaml.safe_load_all(path.read_text()))
    if doc and str(doc.get("apiVersion", "")).startswith("trading.quantumtrader.io/")
)
REFUSED_CRD = REPO / "tests" / "operator" / "fixtures" / "tradingpolicies-refused-by-kube-1.36.yaml"
TAGGED = "ghcr.io/quantum-trader/quantum-trader:latest"
SECRET = {"name": "binance"}


def example(name: str, index: int = 0) -> dict[str, Any]:
    return list(yaml.safe_load_all((REPO / "examples" / name).read_text()))[index]


@pytest.mark.parametrize("directory", ["crds", "charts/quantum-trader/crds-src"])
def test_every_crd_passes_a_server_side_dry_run(directory: str) -> None:
    """The repository's CRDs and the chart's copy (what `helm install` creates) as the API server judges them."""
    for path in sorted((REPO / directory).glob("*.yaml")):
        result = kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
        assert result.returncode == 0, f"{directory}/{path.name}: {result.stderr.strip()}"


def test_every_crd_applies_and_is_established(crds: None) -> None:
    for plural in ("tradingpolicies", "exitrollouts", "killswitches"):
        crd = yaml.safe_load(kubectl("get", "crd", f"{plural}.trading.quantumtrader.io", "-o", "yaml").stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True", plural


def test_the_refused_crd_is_refused_by_the_server_for_the_reasons_the_checker_gives(tmp_path: Path) -> None:
    """The checker the unit tests and the emulator use agrees with the real API server, message for message."""
    definition = yaml.safe_load(REFUSED_CRD.read_text())
    definition["metadata"]["name"] = "oldpolicies.trading.quantumtrader.io"
    names = definition["spec"]["names"]
    names.update(plural="oldpolicies", singular="oldpolicy", kind="OldPolicy", listKind="OldPolicyList")
    names.pop("shortNames", None)
    names.pop("categories", None)
    path = tmp_path / "oldpolicies.yaml"
    path.write_text(yaml.safe_dump(definition))
    result = kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode != 0
    problems = set(default_violations(definition))
    assert len(problems) == 3
    if server_version() < (1, 35):
        # Before 1.35 a false rule showed the node's type as its value (harness/crd_defaults.py): what follows
        # "Invalid value: " agrees, the full line does not.
        problems = {p.split(": Invalid value: ", 1)[1] for p in problems}
    for message in problems:
        assert message in result.stderr, f"the server did not say {message!r}: {result.stderr}"


@pytest.mark.parametrize(("name", "index"), EXAMPLES)
def test_every_example_applies(crds: None, namespace: str, name: str, index: int) -> None:
    document = example(name, index)
    dry = kubectl_apply(document, namespace, "--dry-run=server", check=False)
    assert dry.returncode == 0, f"examples/{name}: {dry.stderr.strip()}"
    kubectl_apply(document, namespace)
    kind = document["kind"].lower()
    stored = yaml.safe_load(kubectl("get", kind, document["metadata"]["name"], "-n", namespace, "-o", "yaml").stdout)
    assert within(document["spec"], stored["spec"]), f"examples/{name}: the stored spec lost or changed a field"
    kubectl("delete", kind, document["metadata"]["name"], "-n", namespace, "--wait=false")


def within(written: Any, stored: Any) -> bool:
    """Everything written is stored as written (the API server may only add defaults around it)."""
    if isinstance(written, dict):
        return isinstance(stored, dict) and all(k in stored and within(v, stored[k]) for k, v in written.items())
    return written == stored


def _policy(**changes: Any) -> dict[str, Any]:
    policy = example("policy.yaml")
    policy["metadata"]["name"] = "refused"
    for key, value in changes.items():
        if value is None:
            policy["spec"].pop(key, None)
        else:
            policy["spec"][key] = value
    return policy


def _with(document: dict[str, Any], **changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(document)
    document["spec"].update(changes)
    return document


# (case, document, fragment of what the API server says): the same cases as tests/operator/test_crds_schema.py
REFUSALS = [
    ("tag image", _policy(image=TAGGED), "image must be pinned by digest"),
    ("negative max open positions", _policy(risk={"maxOpenPositions": -3}), "should be greater than or equal to 1"),
    ("unknown field", _policy(leverage=100), 'unknown field "spec.leverage"'),
    ("unknown component", _policy(components={"governer": {}}), 'unknown field "spec.components.governer"'),
    ("redis url and managed", _policy(redis={"managed": True, "url": "redis://r:6379/0"}), "exactly one of url"),
    ("redis neither", _policy(redis={}), "exactly one of url or managed"),
    ("redis left out", _policy(redis=None), "spec.redis: Required value"),
    ("password in redis url", _policy(redis={"url": "redis://:pw@r:6379/0"}), "without credentials"),
    ("fast not under slow", _policy(strategy={"fast": 50, "slow": 20}), "strategy.fast must be shorter than"),
    ("per trade over total", _policy(risk={"maxNotionalPerTrade": 20000}), "must not exceed risk.maxTotalNotional"),
    ("live unconfirmed", _policy(mode="live", exchangeSecretRef=SECRET), "mode live needs confirmLive"),
    ("testnet without secret", _policy(mode="testnet"), "mode testnet needs exchangeSecretRef"),
    ("lower-case symbol", _policy(symbols=["btcusdt"]), "should match"),
    ("repeated symbol", _policy(symbols=["BTCUSDT", "BTCUSDT"]), "Duplicate value"),
    ("flatten under scope all", _with(example("killswitch.yaml"), scope="all", flatten=True), "flatten closes"),
    ("pinned both ways", _with(example("exitrollout.yaml"), pinnedShadow=["BTCUSDT"]), "pinned both live and shadow"),
    ("percent over 100", _with(example("exitrollout.yaml"), percent=101), "should be less than or equal to 100"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "document", "message"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_admission_refuses_with_its_message(
    crds: None, namespace: str, case: str, document: dict[str, Any], message: str
) -> None:
    result = kubectl_apply(document, namespace, "--dry-run=server", check=False)
    assert result.returncode != 0, f"{case}: admitted"
    assert message in result.stderr, f"{case}: {result.stderr.strip()}"


def test_policy_ref_is_immutable(crds: None, namespace: str) -> None:
    switch = example("killswitch.yaml")
    switch["metadata"]["name"] = "immutable-ref"
    kubectl_apply(switch, namespace)
    try:
        moved = _with(switch, policyRef={"name": "another-policy"})
        result = kubectl_apply(moved, namespace, check=False)
        assert result.returncode != 0 and "policyRef is immutable" in result.stderr, result.stderr
    finally:
        kubectl("delete", "killswitch", "immutable-ref", "-n", namespace, "--wait=false", check=False)
