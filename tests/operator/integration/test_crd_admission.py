"""The emulator refuses a CRD the way the API server does: every default against its node's schema and CEL rules.

Kubernetes 1.36 refused ``kubectl apply -f crds/`` for tradingpolicies (issue 12) while every emulator test passed,
because the emulator stored CRDs unchecked. The refused CRD is kept in tests/operator/fixtures/.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import kube_emulator as emulator_module
from harness.kube_emulator import EmulatedCluster, EmulatorThread

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REFUSED = FIXTURES / "tradingpolicies-refused-by-kube-1.36.yaml"
CRDS = emulator_module.REPO / "crds"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
ISSUE_12_CAUSES = {
    "redis": "Invalid value: redis: set exactly one of url or managed: true",
    "risk": 'Invalid value: "object": no such key: maxNotionalPerTrade evaluating rule: '
    "risk.maxNotionalPerTrade must not exceed risk.maxTotalNotional",
    "strategy": 'Invalid value: "object": no such key: fast evaluating rule: '
    "strategy.fast must be shorter than strategy.slow",
}
"""the cause the v1.36.2 API server gave for each refused default (issue 12), by the spec field it is under"""
ISSUE_12_MESSAGES = tuple(ISSUE_12_CAUSES.values())


def renamed(definition: dict[str, Any], plural: str) -> dict[str, Any]:
    """The same CRD under another name, so it does not collide with the one the emulator already serves."""
    definition = copy.deepcopy(definition)
    group = definition["spec"]["group"]
    definition["metadata"] = {"name": f"{plural}.{group}"}
    definition["spec"]["names"] = {**definition["spec"]["names"], "plural": plural, "kind": plural.capitalize()}
    definition["spec"]["names"].pop("shortNames", None)
    definition["spec"]["names"].pop("listKind", None)
    return definition


def send(cluster: EmulatedCluster, method: str, path: str, body: Any, content_type: str) -> tuple[int, dict[str, Any]]:
    """One raw request: the whole Status body (the operator's client keeps only a one-line message)."""
    assert cluster.emulator is not None
    request = urllib.request.Request(
        cluster.emulator.url + path, data=json.dumps(body).encode(), method=method,
        headers={"Content-Type": content_type, "Accept": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def crd_names(cluster: EmulatedCluster) -> list[str]:
    listed = cluster.kube.request("GET", CRD_PATH)
    return sorted(item["metadata"]["name"] for item in listed["items"])


def test_the_crd_kubernetes_refused_is_refused_with_its_messages(cluster: EmulatedCluster) -> None:
    before = crd_names(cluster)
    body = renamed(yaml.safe_load(REFUSED.read_text()), "oldpolicies")
    code, status = send(cluster, "POST", CRD_PATH, body, "application/json")
    assert (code, status["kind"], status["reason"]) == (422, "Status", "Invalid")
    assert status["message"].startswith(
        'CustomResourceDefinition.apiextensions.k8s.io "oldpolicies.trading.quantumtrader.io" is invalid: '
    )
    causes = status["details"]["causes"]
    assert sorted((c["field"], c["message"]) for c in causes) == [
        (f"spec.validation.openAPIV3Schema.properties[spec].properties[{field}].default", message)
        for field, message in sorted(ISSUE_12_CAUSES.items())
    ]
    assert {c["reason"] for c in causes} == {"FieldValueInvalid"}
    assert crd_names(cluster) == before, "a refused CRD is not stored"


def test_an_apply_of_the_refused_crd_is_refused_too(cluster: EmulatedCluster) -> None:
    body = renamed(yaml.safe_load(REFUSED.read_text()), "oldpolicies")
    path = f"{CRD_PATH}/{body['metadata']['name']}?fieldManager=kubectl&force=true"
    code, status = send(cluster, "PATCH", path, body, "application/apply-patch+yaml")
    assert code == 422 and ISSUE_12_MESSAGES[2] in status["message"]
    assert body["metadata"]["name"] not in crd_names(cluster)


@pytest.mark.parametrize("name", sorted(p.name for p in CRDS.glob("*.yaml")))
def test_the_repository_crds_are_accepted(cluster: EmulatedCluster, name: str) -> None:
    definition = yaml.safe_load((CRDS / name).read_text())
    plural = "copyof" + definition["spec"]["names"]["plural"]
    created = cluster.kube.request("POST", CRD_PATH, body=renamed(definition, plural))
    assert created["metadata"]["name"] == f"{plural}.trading.quantumtrader.io"
    assert created["metadata"]["uid"]


def test_kubectl_shows_the_api_servers_causes(cluster: EmulatedCluster, tmp_path: Path) -> None:
    """What a person sees: kubectl prints one line per refused default, as it did against Kubernetes 1.36."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    manifest = tmp_path / "old.yaml"
    manifest.write_text(yaml.safe_dump(renamed(yaml.safe_load(REFUSED.read_text()), "oldpolicies")))
    assert cluster.kubeconfig is not None
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(cluster.kubeconfig), "create", "--validate=false", "-f", str(manifest)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert 'The CustomResourceDefinition "oldpolicies.trading.quantumtrader.io" is invalid' in result.stderr
    for message in ISSUE_12_MESSAGES:
        assert message in result.stderr, result.stderr


def test_the_emulator_does_not_start_on_a_refused_crd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A defect in crds/ fails the emulator suite at once, with the API server's reasons."""
    (tmp_path / "crds").mkdir()
    for path in CRDS.glob("*.yaml"):
        shutil.copy(path, tmp_path / "crds" / path.name)
    shutil.copy(REFUSED, tmp_path / "crds" / "tradingpolicies.yaml")
    monkeypatch.setattr(emulator_module, "REPO", tmp_path)
    thread = EmulatorThread()
    try:
        with pytest.raises(RuntimeError, match="is invalid") as failed:
            thread.start()
        assert ISSUE_12_MESSAGES[0] in str(failed.value)
    finally:
        thread.stop()
