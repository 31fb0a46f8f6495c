"""ai-engine with a real trained artifact, as real processes on a real redis-server.

- a pinned artifact that is missing, modified by one byte, or pinned to another digest: the process exits 2 with
  one line and leaves a heartbeat with the digest it found, from which the operator's drift check names the
  difference (ModelConsistent=False);
- the right artifact: features and ai-engine turn real bars into intents that carry the model digest and the
  feature hash, and the heartbeat reports the digest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml

from quantum_trader.bus.heartbeat import read_heartbeats
from quantum_trader.contracts.envelope import decode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import TradeIntent
from quantum_trader.data.klines import read_klines
from quantum_trader.data.replay import kline_to_tick, tick_id
from quantum_trader.ml.market_features import FEATURE_HASH, WARMUP_BARS
from quantum_trader.ml.models import TrainConfig
from quantum_trader.research.train import TrainSettings, train
from quantum_trader_operator.drift import DriftKind, heartbeat_versions
from tests.conftest import free_port
from tests.factories import send

NAME = "tiny-1h"
FILES = ("BTCUSDT-1h-2023-01-01_2024-05-13.csv", "ETHUSDT-1h-2023-01-01_2024-05-13.csv")


@pytest.fixture(scope="module")
def artifact(shared_klines, tmp_path_factory) -> tuple[Path, str]:
    """(models folder, digest) of a small model really trained on the shared klines."""
    models = tmp_path_factory.mktemp("models")
    settings = TrainSettings(
        name=NAME, max_bars=1500, folds=2, embargo=12,
        model=TrainConfig(seed=3, xgb_rounds=20, mlp_epochs=3, xgb_threads=2),
    )
    outcome = train([shared_klines / f for f in FILES], models / NAME, settings)
    return models, outcome.digest


def policy_file(tmp_path: Path, digest: str, **model: object) -> Path:
    path = tmp_path / "policy.yaml"
    spec = {"symbols": ["ETHUSDT"], "model": {"name": NAME, "digest": digest, **model}}
    path.write_text(yaml.safe_dump(spec))
    return path


def component_env(redis_url: str, instance: str, models: Path, config: Path, pod: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "BINANCE_"))}
    env.update(QT_INSTANCE=instance, QT_REDIS_URL=redis_url, QT_POD=pod, QT_CONFIG=str(config),
               QT_MODELS_DIR=str(models), QT_HEALTH_PORT=str(free_port()), QT_METRICS_PORT=str(free_port()))
    return env


def start(name: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "quantum_trader.cli", "component", name], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def change_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    if data[:1] == b"{":  # a digit becomes another digit: still valid JSON, different model
        i = next(i for i in range(middle, len(data)) if chr(data[i]).isdigit())
        data[i] = ord("7") if data[i] != ord("7") else ord("3")
    else:
        data[middle] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("xgboost.json", "xgboost.json has sha256:"),
        ("manifest.json", "the policy pins"),
        ("missing", "no artifact folder"),
    ],  # every other way (torch weights, wrong pin, no pin) is covered without a process in tests/unit/test_ml_train.py
)
def test_a_bad_artifact_is_refused_with_one_line(artifact, redis_url, instance, tmp_path, damage, message):
    source, digest = artifact
    models = tmp_path / "models"
    shutil.copytree(source, models)
    pinned = digest
    if damage == "missing":
        shutil.rmtree(models / NAME)
    else:
        change_one_byte(models / NAME / damage)
    env = component_env(redis_url, instance, models, policy_file(tmp_path, pinned), "ai-engine-0")
    process = start("ai-engine", env)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    record = json.loads(lines[0])
    assert record["level"] == "error" and record["component"] == "ai-engine"
    assert message in record["msg"], record["msg"]
    if damage != "missing":
        # what the operator computes ModelConsistent from: the refusing pod's heartbeat differs from the pin
        beats = read_heartbeats(redis.Redis.from_url(redis_url), Keys(instance))
        assert [(b.component, b.state) for b in beats] == [("ai-engine", "failed")]
        assert beats[0].model_digest.startswith("sha256:") and beats[0].model_digest != pinned
        findings = heartbeat_versions(beats, "", "", pinned)
        assert [f.kind for f in findings] == [DriftKind.MODEL_DIGEST]
        assert beats[0].model_digest in findings[0].message and pinned in findings[0].message


def test_intents_carry_the_model_digest_and_the_feature_hash(artifact, shared_klines, redis_url, instance, tmp_path):
    models, digest = artifact
    config = policy_file(tmp_path, digest, threshold=0.34)  # a low threshold: many signal changes on 400 bars
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(instance)
    processes = [
        start("features", component_env(redis_url, instance, models, config, "features-0")),
        start("ai-engine", component_env(redis_url, instance, models, config, "ai-engine-0")),
    ]
    try:
        deadline = time.monotonic() + 120
        while not all(client.exists(keys.heartbeat(n, f"{n}-0")) for n in ("features", "ai-engine")):
            assert all(p.poll() is None for p in processes), [p.communicate()[0] for p in processes]
            assert time.monotonic() < deadline, "no heartbeats"
            time.sleep(0.1)
        # bars the model never saw: ETHUSDT before the training slice (the last 1500 bars)
        bars = list(read_klines(shared_klines / FILES[1]))[:400]
        for kline in bars:
            tick = kline_to_tick(kline)
            send(client, keys, "market.tick", tick, id=tick_id(tick))
        stream = keys.stream("trade.intent")
        deadline = time.monotonic() + 120
        vectors = len(bars) - WARMUP_BARS + 1
        while True:
            groups = {g["name"]: g for g in client.xinfo_groups(keys.stream("features"))} if client.exists(
                keys.stream("features")) else {}
            engine = groups.get("ai-engine")
            if client.xlen(keys.stream("features")) == vectors and engine and engine["lag"] == 0 and not engine[
                    "pending"]:
                break
            assert all(p.poll() is None for p in processes), "a component died"
            assert time.monotonic() < deadline, "ai-engine did not read every vector"
            time.sleep(0.2)
        entries = client.xrange(stream)
        beat = client.hgetall(keys.heartbeat("ai-engine", "ai-engine-0"))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.communicate(timeout=30)
    intents = [decode(fields, TradeIntent).message for _, fields in entries]
    assert len(intents) >= 5
    assert {i.model_digest for i in intents} == {digest}
    assert {i.feature_hash for i in intents} == {FEATURE_HASH}
    assert {i.strategy for i in intents} == {"ensemble"}
    for intent in intents:
        assert (intent.stop_loss < intent.entry_price < intent.take_profit) == (intent.side.value == "BUY")
    assert beat["model_digest"] == digest
