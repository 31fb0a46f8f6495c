"""End-to-end: the real operator against a real cluster (``make e2e``).

Skipped, with the reason, unless ``kubectl`` is installed and the kubeconfig (KUBECONFIG or ~/.kube/config) reaches
a cluster. Each module gets its own namespace; the CRDs are applied with ``kubectl apply -f crds/``; the operator
runs on this machine (``qt operator --namespace <ns>``) with every policy's Redis overridden to the test session's
redis-server, since a policy's managed Redis inside the cluster is not reachable from here. Pods need not start:
the example image is not pullable, and nothing here waits for a pod.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.operator.integration.support import Cluster, Operator, start_operator

CRDS = ("tradingpolicies", "exitrollouts", "killswitches")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


def _why_not() -> str | None:
    """None when a cluster is reachable; else why the e2e tests are skipped."""
    if shutil.which("kubectl") is None:
        return "kubectl is not installed"
    from kubernetes import client, config

    try:
        config.load_kube_config()
    except Exception as error:  # no file, no context, bad file: all mean "no cluster configured"
        return f"no usable kubeconfig ({type(error).__name__}: {error})"
    try:
        client.VersionApi().get_code(_request_timeout=5)
    except Exception as error:
        return f"the kubeconfig's cluster is unreachable ({type(error).__name__}: {error})"
    return None


@pytest.fixture(scope="session")
def real_cluster() -> None:
    reason = _why_not()
    if reason:
        pytest.skip(f"e2e needs a reachable Kubernetes cluster: {reason}")


def kubectl(
    *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess:
    result = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def kubectl_apply(manifest: dict[str, Any], namespace: str, *, check: bool = True) -> subprocess.CompletedProcess:
    manifest = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
    return kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest), check=check)


@pytest.fixture(scope="module")
def namespace(real_cluster: None) -> Iterator[str]:
    name = f"qt-e2e-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def crds(real_cluster: None) -> None:
    kubectl("apply", "-f", str(REPO / "crds"))
    kubectl(
        "wait", "--for", "condition=established", "--timeout=60s", *(f"crd/{p}.trading.quantumtrader.io" for p in CRDS)
    )


@pytest.fixture(scope="module")
def cluster(namespace: str, crds: None) -> Cluster:
    from kubernetes import client

    from quantum_trader_operator.runtime_io import Kube

    return Cluster(Kube(client.ApiClient(), timeout=30), namespace)


@pytest.fixture(scope="module")
def e2e_operator(cluster: Cluster, redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = start_operator(kubeconfig=None, redis_url=redis_server, log=log, args=("--namespace", cluster.namespace))
    try:
        yield op
    finally:
        op.stop()
        print(f"\n--- operator log ({log}) ---\n{op.tail(6000)}")


def get_json(*args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)
