"""Helpers shared by the operator's integration tests (emulator) and e2e tests (a real cluster).

Starting the real operator (``qt operator`` in a subprocess), polling, the example manifests, and writing
heartbeats and acks into Redis the way components do.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import yaml

from quantum_trader.bus.heartbeat import write_heartbeat
from quantum_trader.contracts.heartbeat import HeartbeatRecord
from quantum_trader.contracts.keys import Keys
from quantum_trader_operator import naming as n
from quantum_trader_operator.runtime_io import Kube, KubeError, object_path
from tests.conftest import REPO, free_port

T = TypeVar("T")

OPERATOR_ENV = {
    # Short intervals so each scenario takes seconds; the defaults are 15 s / 5 s / 30 s / 10 s / 5 s / 15 s.
    "QT_OPERATOR_TIMER_SECONDS": "1",
    "QT_OPERATOR_KILLSWITCH_TIMER_SECONDS": "0.5",
    "QT_OPERATOR_EXITROLLOUT_TIMER_SECONDS": "1",
    "QT_OPERATOR_DRIFT_SETTLE_SECONDS": "2",
    "QT_OPERATOR_REAPPLY_SECONDS": "0.5",
    "QT_OPERATOR_DRAIN_SECONDS": "1",
    "QT_OPERATOR_REDIS_STORAGE": "",
}


def wait_for(check: Callable[[], T], timeout: float = 20.0, interval: float = 0.1, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with the last value (or error) after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (KubeError, AssertionError, KeyError) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@dataclass
class Cluster:
    """A namespace of an API server (the emulator or a real cluster), through the operator's own raw client."""

    kube: Kube
    namespace: str
    kubeconfig: Path | None = None

    def get(self, kind: str, name: str, api_version: str = n.API_VERSION) -> dict[str, Any] | None:
        return self.kube.get(api_version, kind, self.namespace, name)

    def list(self, kind: str, api_version: str = n.API_VERSION) -> list[dict[str, Any]]:
        return self.kube.list(api_version, kind, self.namespace)

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        manifest = copy.deepcopy(manifest)
        manifest["metadata"]["namespace"] = self.namespace
        return self.kube.create(manifest)

    def merge_patch(self, api_version: str, kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.kube.request(
            "PATCH",
            object_path(api_version, kind, self.namespace, name),
            body=body,
            content_type="application/merge-patch+json",
        )

    def json_patch(
        self, api_version: str, kind: str, name: str, ops: list[dict[str, Any]], *, field_manager: str
    ) -> dict[str, Any]:
        """A JSON patch as another tool sends it (``kubectl set env`` ...): an Update by ``field_manager``."""
        return self.kube.request(
            "PATCH",
            object_path(api_version, kind, self.namespace, name),
            query=[("fieldManager", field_manager)],
            body=ops,
            content_type="application/json-patch+json",
        )

    def delete(self, kind: str, name: str, api_version: str = n.API_VERSION) -> None:
        self.kube.delete(api_version, kind, self.namespace, name)

    def status(self, kind: str, name: str) -> dict[str, Any]:
        return (self.get(kind, name) or {}).get("status") or {}

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        events = self.kube.list("v1", "Event", self.namespace)
        return [e for e in events if reason is None or e.get("reason") == reason]


@dataclass
class Operator:
    process: subprocess.Popen
    log: Path
    liveness: str
    metrics: str

    def alive(self) -> bool:
        if self.process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(self.liveness, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics, timeout=2) as response:
            return response.read().decode()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def tail(self, chars: int = 12000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _qt() -> list[str]:
    found = shutil.which("qt", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "quantum_trader_operator"]


def start_operator(
    *, kubeconfig: Path | None, redis_url: str, log: Path, args: Sequence[str] = ("-A",), startup: float = 30
) -> Operator:
    """``qt operator`` in a subprocess with every policy's Redis at ``redis_url``; returns once /healthz answers."""
    liveness_port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        **OPERATOR_ENV,
        "QT_OPERATOR_REDIS_URL_OVERRIDE": redis_url,
        "QT_OPERATOR_METRICS_PORT": str(metrics_port),
        "PYTHONUNBUFFERED": "1",
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*_qt(), "operator", *args, "--liveness", f"http://127.0.0.1:{liveness_port}/healthz"],
            env=env,
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    op = Operator(process, log, f"http://127.0.0.1:{liveness_port}/healthz", f"http://127.0.0.1:{metrics_port}/metrics")
    deadline = time.monotonic() + startup
    while not op.alive():
        if process.poll() is not None or time.monotonic() > deadline:
            op.stop()
            pytest.fail(f"the operator did not start:\n{op.tail(4000)}")
        time.sleep(0.2)
    return op


# ------------------------------------------------------------------ test data


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "examples" / name).read_text())


def paper_policy() -> dict[str, Any]:
    """examples/policy.yaml: paper mode, managed Redis (reached through the override), three symbols."""
    return example("policy.yaml")


def keys_for(namespace: str, policy: str) -> Keys:
    return Keys(n.instance_id(namespace, policy))


def heartbeat_all(
    client: redis.Redis, keys: Keys, components: list[str], digest: str, *, replicas: dict[str, int] | None = None
) -> list[str]:
    """Write a heartbeat per component pod the way ComponentRunner does; returns the ``<component>/<pod>`` names."""
    now = int(time.time() * 1000)
    members = []
    for component in components:
        for index in range((replicas or {}).get(component, 1)):
            pod = f"{component}-{index}"
            write_heartbeat(
                client,
                keys,
                HeartbeatRecord(
                    component=component,
                    pod=pod,
                    time_ms=now,
                    started_ms=now,
                    state="running",
                    code_version="test",
                    image_digest=digest,
                    model_digest="",
                    control_generation=0,
                    counters={"processed": 0},
                    groups={},
                ),
                ttl_seconds=120,
            )
            members.append(f"{component}/{pod}")
    return members


def reconciled(client: redis.Redis, keys: Keys) -> None:
    """The reconciler's status hash after a run that matched the exchange."""
    now = int(time.time() * 1000)
    client.hset(
        keys.component_state("reconciler", "status"), mapping={"matched": "1", "time": now, "runs": 1, "findings": 0}
    )


HANDLED_ANNOTATION = "kopf.quantumtrader.io/last-handled-configuration"


def wait_handled(cluster: Cluster, kind: str, name: str) -> dict[str, Any]:
    """Until the operator's create/update handler finished with the object's current spec (kopf records it)."""
    return wait_for(
        lambda: (
            (obj := cluster.get(kind, name))
            and HANDLED_ANNOTATION in (obj["metadata"].get("annotations") or {})
            and obj
        ),
        what=f"{kind} {name} to be handled",
    )


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})
