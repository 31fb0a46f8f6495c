"""The chart's RBAC and ValidatingAdmissionPolicy on a real cluster, with the operator authenticated as the chart's
ServiceAccount (a token from ``kubectl create token``): nothing but the chart's rights.

The chart is rendered by helm (.ci/helm.sh; skipped with its reason without one) for a release of its own, with the
operator watching one namespace; only its ServiceAccount, roles, bindings and admission policy are applied (the
operator itself runs on this machine, as everywhere in e2e). The cluster-scoped objects are deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from quantum_trader.contracts.policy import parse_policy
from quantum_trader_operator import naming as n
from tests.e2e.conftest import (
    delete_custom_resources,
    get_json,
    kube_cluster,
    kubectl,
    kubectl_apply,
    render_chart,
    run_operator,
    service_account_kubeconfig,
)
from tests.operator.integration.support import Cluster, Operator, example, paper_policy, wait_for, wait_handled

KINDS = (
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "RoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
)
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
PERSON = "e2e-person@example.com"
POLICY = paper_policy()
NAME = POLICY["metadata"]["name"]
COMPONENTS = parse_policy(POLICY["spec"]).enabled_components()


@dataclass(frozen=True)
class ChartRelease:
    release: str
    namespace: str
    """where the operator's ServiceAccount lives (the release namespace)"""
    watched: str
    """the one namespace the operator watches and the admission policy protects"""
    service_account: str

    @property
    def operator_user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


@pytest.fixture(scope="module")
def chart(
    namespaces: Callable[[str], str], crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartRelease]:
    release = f"e2e{uuid.uuid4().hex[:6]}"
    namespace, watched = namespaces("chart"), namespaces("watched")
    values = {
        "crds": {"create": False},
        "operator": {"watchNamespaces": [watched]},
        "networkPolicy": {"enabled": False},
        "dashboard": {"enabled": False},
    }
    documents = [
        d for d in render_chart(release, namespace, values, tmp_path_factory.mktemp("chart")) if d["kind"] in KINDS
    ]
    assert {d["kind"] for d in documents} == set(KINDS), "the chart rendered fewer kinds than the test applies"
    text = yaml.safe_dump_all(documents)
    kubectl("apply", "-f", "-", stdin=text)
    (account,) = [d["metadata"]["name"] for d in documents if d["kind"] == "ServiceAccount"]
    try:
        yield ChartRelease(release, namespace, watched, account)
    finally:
        cluster_scoped = yaml.safe_dump_all([d for d in documents if d["kind"] in CLUSTER_SCOPED])
        kubectl("delete", "--ignore-not-found", "-f", "-", stdin=cluster_scoped, check=False)


@pytest.fixture(scope="module")
def watched(chart: ChartRelease) -> Cluster:
    return kube_cluster(chart.watched)


@pytest.fixture(scope="module")
def chart_operator(
    chart: ChartRelease, watched: Cluster, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    tmp = tmp_path_factory.mktemp("chart-operator")
    kubeconfig = service_account_kubeconfig(chart.namespace, chart.service_account, tmp / "kubeconfig")
    op = run_operator(chart.watched, redis_server, tmp / "operator.log", kubeconfig=kubeconfig)
    try:
        yield op
    finally:
        delete_custom_resources(chart.watched)
        op.stop()
        print(f"\n--- operator log, as {chart.operator_user} ---\n{op.tail(6000)}")


def refusals(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if "forbidden" in line.lower()]


def test_the_operator_does_its_work_with_the_chart_rbac_only(
    chart: ChartRelease, watched: Cluster, chart_operator: Operator
) -> None:
    kubectl_apply(POLICY, chart.watched)
    kubectl_apply(example("killswitch.yaml"), chart.watched)
    wait_handled(watched, "TradingPolicy", NAME)
    wait_for(
        lambda: len(get_json("deployments", "-n", chart.watched)["items"]) == len(COMPONENTS),
        timeout=90,
        what="a Deployment per component, created as the ServiceAccount through the admission policy",
    )
    for kind, name in (
        ("configmap", n.config_map_name(NAME)),
        ("statefulset", f"{NAME}-redis"),
        ("secret", n.paper_credentials_secret_name(NAME)),
    ):
        assert get_json(kind, name, "-n", chart.watched)["metadata"]["name"] == name
    wait_for(lambda: watched.status("TradingPolicy", NAME).get("health"), timeout=60, what="TradingPolicy status")
    wait_for(
        lambda: watched.status("KillSwitch", example("killswitch.yaml")["metadata"]["name"]).get("state"),
        timeout=60,
        what="KillSwitch status",
    )
    assert wait_for(lambda: watched.events(), timeout=60, what="an Event from the operator")

    # Fields of another field manager are removed with the chart's rights only (the repair's JSON patch): an env
    # var set through the admission policy as the ServiceAccount, a label on the ConfigMap (no policy there).
    governor = n.deployment_name(NAME, "governor")
    as_operator = ("--as", chart.operator_user, "--as-group", "system:masters")
    kubectl(*as_operator, "set", "env", f"deployment/{governor}", "FOREIGN=1", "-n", chart.watched)
    kubectl("label", "configmap", n.config_map_name(NAME), "e2e.quantumtrader.io/foreign=yes", "-n", chart.watched)

    def foreign_left() -> list[str]:
        left = []
        container = get_json("deployment", governor, "-n", chart.watched)["spec"]["template"]["spec"]["containers"][0]
        if any(e.get("name") == "FOREIGN" for e in container.get("env") or []):
            left.append("env FOREIGN")
        labels = get_json("configmap", n.config_map_name(NAME), "-n", chart.watched)["metadata"].get("labels") or {}
        if "e2e.quantumtrader.io/foreign" in labels:
            left.append("ConfigMap label")
        return left

    wait_for(lambda: not foreign_left(), timeout=60, what="the foreign fields to be removed as the ServiceAccount")

    # Disabling a component deletes its Deployment (the delete right).
    kubectl(
        "patch", "tradingpolicy", NAME, "-n", chart.watched, "--type=merge",
        "-p", '{"spec":{"components":{"harvest":{"enabled":false},"heat-gate":{"enabled":false}}}}',
    )  # fmt: skip
    wait_for(
        lambda: not get_json("deployments", "-n", chart.watched, "-l", f"{n.LABEL_COMPONENT}=harvest")["items"],
        timeout=60,
        what="the disabled component's Deployment to be deleted",
    )
    assert refusals(chart_operator.log) == [], "the operator needed a right the chart does not grant"


def _as_person(*args: str) -> list[str]:
    # system:masters: RBAC lets the person do anything, so what refuses is the admission policy alone.
    return ["--as", PERSON, "--as-group", "system:masters", *args]


def test_the_admission_policy_refuses_a_person_and_allows_the_operator(
    chart: ChartRelease, watched: Cluster, chart_operator: Operator
) -> None:
    target = n.deployment_name(NAME, "governor")
    wait_for(
        lambda: get_json("deployments", "-n", chart.watched, "--field-selector", f"metadata.name={target}")["items"],
        timeout=90,
        what=f"Deployment {target}",
    )

    def refused_update() -> str | None:
        result = kubectl(
            *_as_person("set", "env", f"deployment/{target}", "BY_HAND=1", "-n", chart.watched), check=False
        )
        return result.stderr if result.returncode != 0 else None

    stderr = wait_for(refused_update, timeout=60, interval=1, what="the admission policy to refuse the person")
    assert f"is managed by quantum-trader-operator; {PERSON} may not UPDATE it" in stderr, stderr

    deleted = kubectl(*_as_person("delete", "deployment", target, "-n", chart.watched, "--dry-run=server"), check=False)
    assert deleted.returncode != 0 and f"{PERSON} may not DELETE it" in deleted.stderr, deleted.stderr

    # The same request as the operator's ServiceAccount is admitted (dry run: nothing changes).
    patch = '{"metadata":{"annotations":{"e2e.quantumtrader.io/admitted":"yes"}}}'
    allowed = kubectl(
        "--as", chart.operator_user, "--as-group", "system:masters",
        "patch", "deployment", target, "-n", chart.watched, "--type=merge", "-p", patch, "--dry-run=server",
        check=False,
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr

    # Outside the protected namespace the policy does not apply.
    other = chart.namespace
    kubectl("create", "deployment", "unprotected", "--image=registry.k8s.io/pause:3.9", "-n", other)
    kubectl("label", "deployment", "unprotected", f"{n.LABEL_MANAGED_BY}={n.MANAGED_BY}", "-n", other)
    kubectl(*_as_person("set", "env", "deployment/unprotected", "BY_HAND=1", "-n", other))
