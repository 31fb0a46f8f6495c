"""The real operator (``qt operator`` in a subprocess) against a Kubernetes API emulator and a real redis-server.

``cluster``: the emulator (``harness/kube_emulator.py``) on a loopback port, a kubeconfig for it, and a raw-JSON
client (the operator's own ``runtime_io.Kube``) — tests talk to it over HTTP as the operator does, in a fresh
namespace.
``operator``: ``qt operator -A`` with that kubeconfig, every policy's Redis overridden to the session's
redis-server (QT_OPERATOR_REDIS_URL_OVERRIDE), and short timer intervals; its log is printed when a test fails
(or always with QT_TEST_OPERATOR_LOG=1).
``helm``: tests/chart's helm binary, for rendering the chart's RBAC.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from kubernetes import client as k8s_client

from harness.kube_emulator import EmulatedCluster, EmulatorThread
from quantum_trader_operator.runtime_io import Kube
from tests.chart.chartlib import helm
from tests.operator.integration.support import Operator, start_operator

__all__ = ["helm"]  # a real helm binary (or a skip with the reason), for the test of the chart's RBAC


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmulatedCluster]:
    emulator = EmulatorThread().start()
    try:
        configuration = k8s_client.Configuration()
        configuration.host = emulator.url
        kube = Kube(k8s_client.ApiClient(configuration), timeout=10)
        namespace = f"t{uuid.uuid4().hex[:8]}"
        yield EmulatedCluster(kube, namespace, emulator.kubeconfig(tmp_path / "kubeconfig"), emulator)
    finally:
        emulator.stop()


@pytest.fixture
def operator_factory(
    cluster: EmulatedCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], Operator]]:
    """Start ``qt operator -A`` with every policy's Redis at the given URL; stopped (log shown on failure) after."""
    started: list[Operator] = []

    def start(redis_url: str) -> Operator:
        op = start_operator(
            kubeconfig=cluster.kubeconfig, redis_url=redis_url, log=tmp_path / f"operator-{len(started)}.log"
        )
        started.append(op)
        return op

    yield start
    report = getattr(request.node, "rep_call", None)
    for op in started:
        op.stop()
        if (report is not None and report.failed) or os.environ.get("QT_TEST_OPERATOR_LOG"):
            sys.stderr.write(f"\n--- operator log ({op.log}) ---\n{op.tail()}\n")


@pytest.fixture
def operator(operator_factory: Callable[[str], Operator], redis_url: str) -> Operator:
    return operator_factory(redis_url)


@pytest.fixture
def r_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # Lets the operator fixture know whether the test failed, to show the operator's log only then.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
