"""The real operator as a subprocess and a namespace of an API server through the operator's own client —
what the integration tests (the emulator), the e2e tests (a real cluster) and bench/operator.py share.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from quantum_trader.local.redis_server import free_port
from quantum_trader_operator import naming as n
from quantum_trader_operator.runtime_io import Kube, object_path

REPO = Path(__file__).resolve().parents[1]

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
            raise RuntimeError(f"the operator did not start:\n{op.tail(4000)}")
        time.sleep(0.2)
    return op


# ------------------------------------------------------------------ test data


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "examples" / name).read_text())


def paper_policy() -> dict[str, Any]:
    """examples/policy.yaml: paper mode, managed Redis (reached through the override), three symbols."""
    return example("policy.yaml")
