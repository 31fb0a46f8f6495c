"""The model `make run` trades with: the example policy pins exactly the shipped artifact, which loads, is small
enough for git, and was trained on the shared files its manifest names."""

from __future__ import annotations

from pathlib import Path

from quantum_trader.contracts.policy import load_policy
from quantum_trader.research.artifact import load_artifact
from quantum_trader.research.dataset import file_sha256

REPO = Path(__file__).resolve().parents[2]


def test_the_example_policy_pins_the_shipped_artifact():
    policy = load_policy(REPO / "examples" / "local-policy.yaml")
    loaded = load_artifact(policy.model.name, policy.model.digest, REPO / "models")
    assert loaded.digest == policy.model.digest
    assert loaded.manifest["training"]["interval"] == "1h"  # the PyPI sample `make run` replays is hourly too
    size = sum(p.stat().st_size for p in (REPO / "models" / policy.model.name).rglob("*") if p.is_file())
    assert size < 5_000_000


def test_the_shipped_model_was_trained_on_the_shared_files_it_names(shared_klines):
    policy = load_policy(REPO / "examples" / "local-policy.yaml")
    manifest = load_artifact(policy.model.name, policy.model.digest, REPO / "models").manifest
    for entry in manifest["training"]["data"]:
        assert file_sha256(shared_klines / entry["file"]) == entry["sha256"], entry["file"]
