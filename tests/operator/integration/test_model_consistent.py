"""ModelConsistent on a cluster (issue 7, acceptance 2): a real ai-engine refusing a tampered artifact, and the
operator reporting it in the TradingPolicy's status with the reason.

The ai-engine is a real ``qt component ai-engine`` process, as a pod would run it: the policy's spec as its
config, the instance id the operator derives for the policy, the operator's Redis. It refuses the artifact whose
``xgboost.json`` has one byte changed and leaves a ``failed`` heartbeat with the digest it found; the operator's
next pass turns that into ``ModelConsistent=False`` (reason ``ModelDrift``) naming both digests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml

from harness.kube_emulator import EmulatedCluster
from tests.conftest import free_port
from tests.operator.integration.support import (
    Operator,
    condition,
    heartbeat_all,
    keys_for,
    paper_policy,
    wait_for,
    wait_handled,
)

REPOSITORY = Path(__file__).resolve().parents[3]
SHIPPED = "ensemble-1h-v1"


def _shipped_digest() -> str:
    policy = yaml.safe_load((REPOSITORY / "examples" / "local-policy.yaml").read_text())
    assert policy["model"]["name"] == SHIPPED
    return policy["model"]["digest"]


def _tampered_models(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    shutil.copytree(REPOSITORY / "models" / SHIPPED, models / SHIPPED)
    weights = models / SHIPPED / "xgboost.json"
    data = bytearray(weights.read_bytes())
    i = next(i for i in range(len(data) // 2, len(data)) if chr(data[i]).isdigit())
    data[i] = ord("7") if data[i] != ord("7") else ord("3")  # still valid JSON, another model
    weights.write_bytes(bytes(data))
    return models


def _ai_engine_pod(spec: dict, instance: str, redis_url: str, models: Path, tmp_path: Path) -> str:
    """Run ai-engine once as its pod would; it must refuse to start. Returns its one output line."""
    config = tmp_path / "spec.yaml"
    config.write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "BINANCE_"))}
    env.update(
        QT_INSTANCE=instance, QT_REDIS_URL=redis_url, QT_POD="ai-engine-0", QT_CONFIG=str(config),
        QT_MODELS_DIR=str(models), QT_HEALTH_PORT=str(free_port()), QT_METRICS_PORT=str(free_port()),
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "quantum_trader.cli", "component", "ai-engine"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 2, output
    assert len(output.splitlines()) == 1, output
    return output


@pytest.mark.timeout(180)
def test_a_tampered_artifact_shows_model_consistent_false_with_the_reason(
    cluster: EmulatedCluster, operator: Operator, redis_url: str, r_client: redis.Redis, tmp_path: Path
) -> None:
    pinned = _shipped_digest()
    manifest = paper_policy()
    manifest["spec"]["model"] = {"name": SHIPPED, "digest": pinned}
    name = manifest["metadata"]["name"]
    cluster.create(manifest)
    wait_handled(cluster, "TradingPolicy", name)
    keys = keys_for(cluster.namespace, name)
    heartbeat_all(r_client, keys, ["market-data", "features"], "")  # components without a model report none

    line = _ai_engine_pod(manifest["spec"], keys.instance, redis_url, _tampered_models(tmp_path), tmp_path)
    assert "xgboost.json has sha256:" in line, line

    def model_condition() -> dict | None:
        found = condition(cluster.status("TradingPolicy", name), "ModelConsistent")
        return found if found.get("status") == "False" else None

    found = wait_for(model_condition, timeout=30, what="ModelConsistent=False")
    assert found["reason"] == "ModelDrift"
    assert pinned in found["message"], found["message"]
    refused = [b for b in r_client.scan_iter(match=keys.heartbeat("ai-engine", "*"))]
    assert refused, "the refusing pod left its heartbeat"
    found_digest = r_client.hget(refused[0], "model_digest")
    assert found_digest and found_digest != pinned and found_digest in found["message"], found["message"]
