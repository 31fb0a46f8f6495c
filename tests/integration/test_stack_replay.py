"""The whole paper stack as processes: it trades on real data, it is deterministic, bad input goes to DLQs.

Acceptance items 1, 6 and 8 of the execution-spine issue.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quantum_trader.bus.drain import all_drained
from quantum_trader.contracts.registry import COMPONENTS, STREAMS
from tests.factories import send, tick
from tests.stack import running_stack, sim_orders, stream, wait_for

REAL_FILE = "ETHUSDT-1h-2023-01-01_2024-05-13.csv"


def replay_policy(klines, **market) -> dict:
    return {
        "symbols": ["ETHUSDT"],
        "marketData": {"source": "replay", "files": [str(klines / REAL_FILE)], **market},
        "risk": {"cooldownSeconds": 0, "maxEntriesPerHour": 10, "maxEntriesPerFiveMinutes": 10},
        "strategy": {"fast": 8, "slow": 24, "notional": 500},
        "exits": {"mode": "LIVE", "rolloutPercent": 100},
        "reconciler": {"intervalSeconds": 3600},
    }


def ledger_of(r, stack) -> dict:
    orders = [
        {k: o[k] for k in ("clientOrderId", "side", "quantity", "reduceOnly", "outcome", "avgPrice")}
        for o in sim_orders(stack)
    ]
    return {
        "orders": orders,
        "closed": [
            {
                k: t[k]
                for k in ("trade_id", "side", "qty", "entry_price", "exit_price", "realized_pnl", "fees", "exit_reason")
            }
            for t in stream(r, stack, "trade.closed")
        ],
        "ledger": r.hgetall(stack.keys.ledger_equity),
    }


@pytest.mark.timeout(400)
def test_replaying_the_same_data_twice_gives_identical_orders_and_ledger(
    shared_klines, redis_url, r, tmp_path, monkeypatch
):
    spec = replay_policy(shared_klines, lockstep=True, maxBars=600)
    runs = []
    for run in ("a", "b"):
        instance = f"det-{run}-{tmp_path.name[-6:].lower().replace('_', '-')}"
        with running_stack(spec, redis_url, instance, tmp_path / run, monkeypatch) as stack:
            wait_for(
                lambda stack=stack: (
                    r.hget(stack.keys.component_state("market-data", "progress"), "published") == "600"
                    and all_drained(r, stack.keys)
                ),
                300,
                "the replay to finish",
                stack,
            )
            runs.append(ledger_of(r, stack))
    first, second = runs
    assert len(first["orders"]) >= 4 and len(first["closed"]) >= 2, "the replay should trade"
    assert first == second


@pytest.mark.timeout(180)
def test_a_malformed_message_on_every_input_stream_goes_to_its_dlq_and_the_next_valid_one_is_processed(
    shared_klines, redis_url, r, instance, tmp_path, monkeypatch
):
    spec = replay_policy(shared_klines, maxBars=1, speed=1)  # market-data publishes one bar, then idles
    with running_stack(spec, redis_url, instance, tmp_path, monkeypatch) as stack:
        keys = stack.keys
        consumed = sorted({s for c in COMPONENTS.values() for s in c.inputs})
        for name in consumed:
            r.xadd(
                keys.stream(name),
                {
                    "type": STREAMS[name].message.MESSAGE_TYPE,
                    "v": "1",
                    "id": f"bad-{name}",
                    "corr": "x",
                    "symbol": "ETHUSDT",
                    "data": '{"nonsense": true}',
                },
            )
        send(r, keys, "market.tick", tick("ETHUSDT", 1234.5, 10**13), id="valid-after-garbage")
        for name in consumed:
            readers = [c.name for c in COMPONENTS.values() if name in c.inputs]
            wait_for(
                lambda name=name, readers=readers: r.xlen(keys.dlq(name)) >= len(readers),
                30,
                f"{len(readers)} DLQ entries on {name}.dlq",
                stack,
            )
            for _, fields in r.xrange(keys.dlq(name)):
                assert "invalid" in fields["reason"] and "nonsense" in fields["reason"], fields
        # the features component went on to the valid tick after the garbage
        wait_for(
            lambda: (
                r.hget(keys.component_state("features", "ETHUSDT"), "data")
                and "1234.5" in r.hget(keys.component_state("features", "ETHUSDT"), "data")
            ),
            30,
            "the valid tick to be processed",
            stack,
        )
        assert all(p.restarts == 0 for p in stack.processes.values()), "no consumer crashed on bad input"


@pytest.mark.timeout(300)
def test_qt_run_trades_on_real_data_and_shows_a_ledger(shared_klines, tmp_path):
    policy = tmp_path / "policy.yaml"
    spec = replay_policy(shared_klines, speed=360000)  # 100 hourly bars a second
    policy.write_text(json.dumps(spec))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantum_trader.cli",
            "run",
            "-f",
            str(policy),
            "--duration",
            "60",
            "--no-table",
            "--redis",
            "redis-server",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**_env(), "QT_STATE_DIR": str(tmp_path / "state")},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ledger_row = next(line for line in done.stdout.splitlines() if line.strip().startswith("ledger "))
    ledger = json.loads(Path(ledger_row.split(None, 1)[1].strip()).read_text())
    assert int(ledger["ledger"]["trades"]) >= 1, done.stdout[-3000:]
    footer = [line for line in done.stdout.splitlines() if "kill switch" in line and "DLQ" in line][-1]
    assert "restarts" in done.stdout and "DLQ 0 " in footer, footer


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
