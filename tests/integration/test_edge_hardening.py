"""Issue 8, defects 2, 3 and 6 on real component processes (``qt component``) and a real redis-server.

- 2: entries that used to kill every consumer (an integer of thousands of digits, deep nesting,
  invalid UTF-8 in any field) go to the DLQ with their reason and the original bytes; the process
  keeps running and handles the next valid message.
- 3: an ``Infinity`` (or ``true``) price no longer crashes the exchange simulator.
- 6: a tick for a symbol outside the allowlist, or a look-alike symbol, is dead-lettered before any
  per-symbol state exists; a symbol outside the allowlist with an open position is still watched.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
import redis

from quantum_trader.contracts.envelope import encode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import PositionSide, PositionSnapshot
from tests.factories import tick
from tests.malformed import T, all_running, as_bytes, restored
from tests.stack import running_stack, wait_for

ALLOWED = ["BTCUSDT"]


def policy() -> dict:
    return {"symbols": ALLOWED, "streams": {"claimIdleMs": 500}}


def dlq(client: redis.Redis, keys: Keys, stream: str) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in client.xrange(keys.dlq(stream))]


def poisoned_ticks() -> dict[str, dict]:
    """Each of these killed every consumer of market.tick before issue 8."""
    base = encode(tick("BTCUSDT", 100.0, T), id="poison")
    entries: dict[str, dict] = {
        "huge-int": {**base, "id": "huge-int",
                     "data": base["data"].replace(f'"event_time":{T}', '"event_time":' + "9" * 5000)},
        "deep-nesting": {**base, "id": "deep-nesting", "data": "[" * 100_000 + "]" * 100_000},
    }
    for name in ("type", "v", "id", "corr", "symbol", "data"):
        fields = {k.encode(): v.encode() for k, v in {**base, "id": f"utf8-{name}"}.items()}
        fields[name.encode()] = b"\xff" + fields[name.encode()]
        entries[f"utf8-{name}"] = fields
    return entries


@pytest.mark.timeout(180)
def test_entries_that_crashed_every_consumer_go_to_the_dlq_and_the_next_one_is_processed(
    redis_url, instance, tmp_path, monkeypatch
):
    client = redis.Redis.from_url(redis_url)
    with running_stack(policy(), redis_url, instance, tmp_path, monkeypatch, only=["features"]) as stack:
        keys = stack.keys
        wait_for(lambda: client.exists(keys.heartbeat("features", "features-0")), 60, "features to start", stack)
        poisoned = poisoned_ticks()
        written = {client.xadd(keys.stream("market.tick"), fields).decode(): as_bytes(fields)
                   for fields in poisoned.values()}
        client.xadd(keys.stream("market.tick"), encode(tick("BTCUSDT", 101.0, T + 1), id="after"))
        wait_for(lambda: client.exists(keys.done("features", "after")), 60, "the valid tick after them", stack)
        assert all_running(stack), "a malformed entry killed the features process"
        records = {r["entry_id"]: r for r in dlq(client, keys, "market.tick")}
        assert set(records) == set(written)
        for entry_id, original in written.items():
            assert records[entry_id]["reason"] and records[entry_id]["group"] == "features"
            assert restored(records[entry_id]) == original, "the DLQ keeps the original bytes"
        reasons = " | ".join(r["reason"] for r in records.values())
        assert "number out of range" in reasons and "recursion limit" in reasons and "UTF-8" in reasons
        assert client.xpending(keys.stream("market.tick"), "features")["pending"] == 0


def sim_state(stack) -> dict:
    with urllib.request.urlopen(f"{stack.exchange_url}/sim/state", timeout=10) as answer:
        return json.loads(answer.read())


@pytest.mark.timeout(180)
def test_an_infinite_or_boolean_price_does_not_crash_the_exchange_simulator(
    redis_url, instance, tmp_path, monkeypatch
):
    client = redis.Redis.from_url(redis_url)
    with running_stack(policy(), redis_url, instance, tmp_path, monkeypatch, only=["exchange-sim"]) as stack:
        keys = stack.keys
        base = encode(tick("BTCUSDT", 100.0, T), id="x")
        bad = {
            "infinity": base["data"].replace('"price":100.0', '"price":Infinity'),
            "nan": base["data"].replace('"bid":100.0', '"bid":NaN'),
            "true": base["data"].replace('"price":100.0', '"price":true'),
            "huge": base["data"].replace('"ask":100.0', '"ask":1e400'),
        }
        ids = [client.xadd(keys.stream("market.tick"), {**base, "id": name, "data": data}).decode()
               for name, data in bad.items()]
        client.xadd(keys.stream("market.tick"), encode(tick("BTCUSDT", 123.5, T + 1), id="after"))
        wait_for(lambda: "123.5" in json.dumps(sim_state(stack)), 60, "the simulator to price the valid tick", stack)
        assert all_running(stack), "a non-finite price crashed the simulator"
        records = {r["entry_id"]: r for r in dlq(client, keys, "market.tick")}
        assert set(records) == set(ids)
        assert all(r["group"] == "exchange-sim" for r in records.values())
        reasons = {r["orig.id"]: r["reason"] for r in records.values()}
        assert "finite" in reasons["infinity"] and "finite" in reasons["nan"] and "finite" in reasons["huge"]
        assert "valid number" in reasons["true"]


@pytest.mark.timeout(180)
def test_symbols_outside_the_allowlist_are_refused_at_the_edge_but_a_held_one_stays_watched(
    redis_url, instance, tmp_path, monkeypatch
):
    client = redis.Redis.from_url(redis_url)
    components = ["exchange-sim", "exit-brain", "features"]
    with running_stack(policy(), redis_url, instance, tmp_path, monkeypatch, only=components) as stack:
        keys = stack.keys
        wait_for(lambda: client.exists(keys.heartbeat("exit-brain", "exit-brain-0"))
                 and client.exists(keys.heartbeat("features", "features-0")), 60, "components to start", stack)
        # ETHUSDT left the allowlist while a position on it was open; ZZZUSDT never was in it
        client.hset(keys.open_positions, "ETHUSDT", "500")
        held = PositionSnapshot(symbol="ETHUSDT", side=PositionSide.LONG, qty=1.0, entry_price=100.0,
                                mark_price=100.0, unrealized_pnl=0.0, stop_loss=90.0, take_profit=120.0, opened_at=T,
                                time=T, source="position-state", version=1)
        client.xadd(keys.stream("position.snapshot"), encode(held, id="snap-eth"))
        outsider = client.xadd(keys.stream("market.tick"), encode(tick("ZZZUSDT", 5.0, T), id="zzz")).decode()
        look_alike = encode(tick("BTCUSDT", 100.0, T), id="look-alike")
        look_alike["symbol"] = "BTCUSD\u0422"
        look_alike["data"] = look_alike["data"].replace('"BTCUSDT"', '"BTCUSD\\u0422"')
        cyrillic = client.xadd(keys.stream("market.tick"), look_alike).decode()
        client.xadd(keys.stream("market.tick"), encode(tick("ETHUSDT", 95.0, T + 1), id="eth"))
        client.xadd(keys.stream("market.tick"), encode(tick("BTCUSDT", 100.0, T + 2), id="btc"))
        wait_for(lambda: all(client.exists(keys.done(g, "btc")) for g in ("exit-brain", "features")), 60,
                 "the allowlisted tick", stack)
        assert all_running(stack)
        records = dlq(client, keys, "market.tick")
        refused = {(r["entry_id"], r["group"]): r["reason"] for r in records}
        for group in ("features", "exit-brain", "exchange-sim"):
            assert "not in the policy's allowlist" in refused[(outsider, group)] or "not traded" in refused[
                (outsider, group)]
            assert "upper-case ASCII" in refused[(cyrillic, group)]
        assert not client.exists(keys.component_state("features", "ZZZUSDT"))
        assert not client.exists(keys.component_state("exit-brain", "ZZZUSDT"))
        # the held symbol: exit-brain took its snapshot and its tick (the stop stays live); features did not
        assert client.exists(keys.done("exit-brain", "snap-eth")) and client.exists(keys.done("exit-brain", "eth"))
        assert client.exists(keys.component_state("exit-brain", "ETHUSDT"))
        assert "eth" not in {r.get("orig.id") for r in records if r["group"] == "exit-brain"}
        assert any(r.get("orig.id") == "eth" and r["group"] == "features" for r in records)
        assert not client.exists(keys.component_state("features", "ETHUSDT"))
