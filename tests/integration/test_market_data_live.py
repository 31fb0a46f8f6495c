"""market-data live (issue 7, acceptance 4): real processes on a real redis-server, python-binance's
websocket client against a local server that speaks Binance's stream format — never the internet.

The connection drops mid-run while bars keep closing: market-data goes stale and halts entries
(the governor process rejects an ENTRY), reconnects, backfills the missed bars over REST, drops the
bar the server repeats on reconnect, and releases entries once fresh and drained. A stalled feed
goes stale by the clock; a SIGKILLed market-data resumes after the last bar it published.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from quantum_trader.contracts.policy import parse_policy
from quantum_trader.local.supervisor import Supervisor
from tests.binance_stream import BinanceMarketServer
from tests.factories import entry, send
from tests.stack import wait_for

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
WARMUP = 200  # services.market_data.WARMUP_BARS
CLOSED = 250  # bars closed when market-data first connects
FIRST = CLOSED - 1 - WARMUP  # the server repeats the last closed bar on connect; the warm-up is before it


def bars_through(closed: int) -> str:
    """How many ticks market-data has published once ``closed`` bars of each symbol have closed."""
    return str(len(SYMBOLS) * (closed - FIRST))


RUNS = ("market-data", "features", "governor")


def live_policy() -> dict:
    off = {"enabled": False}
    return {
        "symbols": SYMBOLS,
        "marketData": {"source": "live", "barIntervalMs": 60_000},
        "components": {c: off for c in ("ai-engine", "intent-bridge", "apply-layer", "position-state", "reconciler",
                                        "exit-brain", "harvest", "heat-gate", "exchange-sim")},
    }  # fmt: skip


def ticks(r, keys) -> list[tuple[str, dict]]:
    return [(fields["id"], json.loads(fields["data"])) for _, fields in r.xrange(keys.stream("market.tick"))]


def decision(r, keys, plan_id: str) -> dict | None:
    for _, fields in r.xrange(keys.stream("governor.decision")):
        data = json.loads(fields["data"])
        if data["plan_id"] == plan_id:
            return data
    return None


def counters(r, keys) -> dict:
    heartbeat = r.hgetall(keys.heartbeat("market-data", "market-data-0"))
    return json.loads(heartbeat.get("counters") or "{}")


@pytest.fixture
def market():
    server = BinanceMarketServer(SYMBOLS, bars=400, closed=CLOSED).start()
    yield server
    server.stop()


@pytest.mark.timeout(240)
def test_a_dropped_websocket_reconnects_backfills_without_duplicates_and_holds_entries_while_stale(
    market, redis_url, r, instance, tmp_path, monkeypatch
):
    # Set as a person sets them for `qt run` (README "Market data"): the supervisor passes them through.
    monkeypatch.setenv("QT_MARKET_STREAM_URL", market.ws_url)
    monkeypatch.setenv("QT_MARKET_REST_URL", market.url)
    monkeypatch.setenv("QT_MARKET_STALE_SECONDS", "3")
    policy = parse_policy(live_policy())
    supervisor = Supervisor(policy, redis_url, instance=instance, workdir=tmp_path, only=list(RUNS))
    supervisor.prepare()
    keys = supervisor.keys
    published = keys.component_state("market-data", "progress")
    try:
        supervisor.start()
        # first start: 200 bars of history per symbol over REST, then fresh: the halt goes
        wait_for(lambda: r.hget(published, "published") == bars_through(CLOSED), 60, "the warm-up", supervisor)
        wait_for(lambda: not r.hexists(keys.halts, "market-data"), 30, "fresh data to release entries", supervisor)
        market.advance(2)
        wait_for(lambda: r.hget(published, "published") == bars_through(CLOSED + 2), 30, "two live bars", supervisor)
        send(r, keys, "apply.plan", entry("BTCUSDT", "fresh-entry", t=1), id="fresh-entry")
        wait_for(lambda: decision(r, keys, "fresh-entry"), 30, "the governor's decision", supervisor)
        assert decision(r, keys, "fresh-entry")["approved"], "fresh data: entries pass"

        market.drop()
        wait_for(lambda: r.hget(keys.halts, "market-data"), 30, "the stale alarm", supervisor)
        assert "disconnected" in r.hget(keys.halts, "market-data")
        market.advance(3)  # closed while nobody listens
        send(r, keys, "apply.plan", entry("ETHUSDT", "stale-entry", t=2), id="stale-entry")
        wait_for(lambda: decision(r, keys, "stale-entry"), 30, "the governor's decision", supervisor)
        held = decision(r, keys, "stale-entry")
        assert not held["approved"] and held["reasons"] == ["killswitch_entries"], held
        assert r.hget(published, "published") == bars_through(CLOSED + 2), "nothing published while disconnected"

        market.restore()
        wait_for(lambda: r.hget(published, "published") == bars_through(CLOSED + 5), 60, "the backfill", supervisor)
        wait_for(lambda: not r.hexists(keys.halts, "market-data"), 30, "entries released", supervisor)
        send(r, keys, "apply.plan", entry("ETHUSDT", "after-entry", t=3), id="after-entry")
        wait_for(lambda: decision(r, keys, "after-entry"), 30, "the governor's decision", supervisor)
        assert decision(r, keys, "after-entry")["approved"]
        assert market.connects >= 2, "python-binance reconnected"

        # a drop with no bar missed: on reconnect the server repeats the last closed bar, which is dropped
        connects = market.connects
        market.drop()
        wait_for(lambda: r.hexists(keys.halts, "market-data"), 30, "the stale alarm", supervisor)
        market.restore()
        wait_for(lambda: market.connects > connects, 60, "the reconnect", supervisor)
        wait_for(lambda: not r.hexists(keys.halts, "market-data"), 30, "entries released", supervisor)
        assert r.hget(published, "published") == bars_through(CLOSED + 5), "no bar twice"

        wait_for(lambda: counters(r, keys).get("duplicates") == 2, 30, "the repeated bars counted", supervisor)
        assert counters(r, keys)["gaps"] == 2, "one hole per symbol, after the first drop"

        # a stalled feed (connected, nothing arrives) goes stale by the clock, and fresh again when data resumes
        market.silent = True
        wait_for(lambda: "no data for" in (r.hget(keys.halts, "market-data") or ""), 30, "the stall", supervisor)
        market.silent = False
        wait_for(lambda: not r.hexists(keys.halts, "market-data"), 30, "entries released", supervisor)

        # market-data SIGKILLed while bars close: the restarted process resumes after the last bar it published
        os.kill(supervisor.pods("market-data")[0].popen.pid, signal.SIGKILL)
        market.advance(2)
        wait_for(lambda: r.hget(published, "published") == bars_through(CLOSED + 7), 60, "the resume", supervisor)
        wait_for(lambda: not r.hexists(keys.halts, "market-data"), 30, "entries released", supervisor)
        assert supervisor.pods("market-data")[0].restarts == 1
    finally:
        supervisor.stop()

    published_ticks = ticks(r, keys)
    ids = [i for i, _ in published_ticks]
    assert len(ids) == len(set(ids)) == int(bars_through(CLOSED + 7)), "every bar once"
    for symbol in SYMBOLS:
        mine = [t for _, t in published_ticks if t["symbol"] == symbol]
        bars = market.bars[symbol][FIRST : CLOSED + 7]
        assert [t["event_time"] for t in mine] == [b.close_time for b in bars], f"{symbol}: in order, none missing"
        assert [t["price"] for t in mine] == [b.close for b in bars]
        sources = [t["source"] for t in mine]
        assert sources[:WARMUP] == ["live:backfill"] * WARMUP, "the warm-up came over REST"
        assert sources[WARMUP : WARMUP + 3] == ["live"] * 3, "bars closed while connected came over the websocket"
        # of bars closed while disconnected (or dead), the last is repeated on reconnect; the others are a hole
        assert sources[WARMUP + 3 :] == ["live:backfill", "live:backfill", "live", "live:backfill", "live"]
    after_restart = counters(r, keys)
    assert after_restart["gaps"] == 2 and after_restart["duplicates"] == 0, after_restart


def test_a_bar_length_binance_has_no_stream_for_is_one_error_line_and_exit_2(redis_url, instance, tmp_path):
    import subprocess
    import sys

    config = tmp_path / "policy.yaml"
    config.write_text(json.dumps({"marketData": {"source": "live", "barIntervalMs": 61_000}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env.update(QT_INSTANCE=instance, QT_REDIS_URL=redis_url, QT_CONFIG=str(config))
    done = subprocess.run([sys.executable, "-m", "quantum_trader.cli", "component", "market-data"],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    line = json.loads(done.stdout.strip())
    assert line["msg"] == "bad setting: no Binance kline interval is 61000 ms long (marketData.barIntervalMs)"
