"""``make run``'s policy trades with the shipped ensemble (issue 7, acceptance 5), as real processes.

``make run`` is ``qt run -f examples/local-policy.yaml``; its data is the PyPI sample, fetched over the network,
which tests never reach. So this runs that same policy file on a real shared hourly file instead, on a
redis-server of the test's own that outlives the run, and reads what the stack left there: intents from the
shipped artifact (its digest and the feature hash in every one), fills, and ai-engine's heartbeat digest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml

from quantum_trader.bus.heartbeat import read_heartbeats
from quantum_trader.contracts.envelope import decode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import TradeIntent
from quantum_trader.ml.market_features import FEATURE_HASH

REPOSITORY = Path(__file__).resolve().parents[2]
POLICY = REPOSITORY / "examples" / "local-policy.yaml"
DATA = "ETHUSDT-1h-2023-01-01_2024-05-13.csv"
DB = 11  # a database of its own on the session's redis-server: `qt run` always uses the instance "local"


@pytest.mark.timeout(300)
def test_the_make_run_policy_trades_with_the_shipped_ensemble(shared_klines, redis_url, tmp_path):
    pinned = yaml.safe_load(POLICY.read_text())["model"]
    url = f"{redis_url.rsplit('/', 1)[0]}/{DB}"  # the session's URL ends in its database number
    client = redis.Redis.from_url(url)
    client.flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "BINANCE_"))}
    done = subprocess.run(
        [sys.executable, "-m", "quantum_trader.cli", "run", "-f", str(POLICY), "--data", str(shared_klines / DATA),
         "--speed", "max", "--duration", "45", "--no-table", "--redis-url", url],
        capture_output=True, text=True, timeout=240, env={**env, "QT_STATE_DIR": str(tmp_path / "state")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    keys = Keys("local")
    intents = [decode(fields, TradeIntent).message for _, fields in client.xrange(keys.stream("trade.intent"))]
    assert intents, done.stdout[-3000:]
    assert all(isinstance(i, TradeIntent) for i in intents)
    assert {i.model_digest for i in intents} == {pinned["digest"]}
    assert {i.feature_hash for i in intents} == {FEATURE_HASH}
    [engine] = [b for b in read_heartbeats(client, keys) if b.component == "ai-engine"]
    assert engine.model_digest == pinned["digest"]
    ledger_row = next(line for line in done.stdout.splitlines() if line.strip().startswith("ledger "))
    ledger = json.loads(Path(ledger_row.split(None, 1)[1].strip()).read_text())
    fills = [r for r in ledger["results"] if r.get("status") == "FILLED"]
    assert fills, f"the ensemble's intents should fill: {json.dumps(ledger)[-2000:]}"
    client.flushdb()
