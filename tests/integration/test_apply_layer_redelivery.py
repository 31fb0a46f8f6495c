"""apply-layer on real processes and a real Redis: a fill is never lost to a redelivery, and an
exchange unreachable at start is waited for (issue 8, defects 1 and 4).

Defect 4 also covers an exchange lost midway: apply-layer stays up, not ready, reads nothing, and the
approval in hand is sent once when the exchange is back.

Defect 1: apply-layer is SIGKILLed after the exchange filled its order and before it wrote the result
(the simulator withholds the order's answer), and is restarted only after the approval's expires_at,
or after the kill switch was engaged. The restarted apply-layer must look the order up first and
report it FILLED: position-state records the position, the reservation is committed, and a new entry
on the same symbol is refused by the governor, so the exchange position never doubles.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest

from quantum_trader.bus.control import Scope, write_control
from quantum_trader.contracts.policy import parse_policy
from quantum_trader.exchange.order_ids import client_order_id
from quantum_trader.exchange.simulator.order_log import read_order_log
from quantum_trader.local.supervisor import Supervisor
from tests.factories import entry, send, tick
from tests.stack import running_stack, sim_orders, stream, wait_for

EXECUTOR = ["exchange-sim", "governor", "apply-layer", "position-state"]
SYMBOL = "S01USDT"


def policy(**risk) -> dict:
    return {
        "symbols": [SYMBOL, "S02USDT"],
        "risk": {"maxOpenPositions": 10, "maxNotionalPerTrade": 1000, "maxTotalNotional": 100000,
                 "maxEntriesPerHour": 100, "maxEntriesPerFiveMinutes": 100, "cooldownSeconds": 0, **risk},
        "streams": {"claimIdleMs": 500},
        "exchange": {"requestTimeoutSeconds": 30},
    }


def sim_admin(stack, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(stack.exchange_url + path, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def exchange_qty(stack, symbol: str) -> float:
    positions = sim_admin(stack, "/sim/state")["positions"]
    return sum(abs(float(p["positionAmt"])) for p in positions if p["symbol"] == symbol)


def accepted(stack, coid: str) -> list[dict]:
    return [o for o in sim_orders(stack) if o["clientOrderId"] == coid and o["outcome"] == "accepted"]


def kill_after_the_fill(r, stack, plan_id: str):
    """Send an entry, let the exchange fill it while withholding the answer, SIGKILL apply-layer."""
    send(r, stack.keys, "market.tick", tick(SYMBOL, 100.0, 500), id=f"{SYMBOL}:500")
    wait_for(lambda: SYMBOL in sim_admin(stack, "/sim/state")["prices"], 20, "the simulator's price", stack)
    wait_for(lambda: r.hexists(stack.keys.exchange_filters, SYMBOL), 30, "apply-layer's exchange rules", stack)
    sim_admin(stack, "/sim/faults", {"timeoutRate": 1.0, "timeoutSeconds": 60})
    send(r, stack.keys, "apply.plan", entry(SYMBOL, plan_id), id=plan_id)
    wait_for(lambda: accepted(stack, client_order_id(plan_id)), 30, "the fill at the exchange", stack)
    pod = stack.pods("apply-layer")[0]
    os.kill(pod.popen.pid, signal.SIGKILL)
    pod.popen.wait(10)
    sim_admin(stack, "/sim/faults", {"timeoutRate": 0.0})
    assert stream(r, stack, "apply.result") == []  # the kill came between the fill and the result
    return pod


def assert_recorded_and_limits_hold(r, stack, plan_id: str) -> None:
    keys = stack.keys
    wait_for(lambda: stream(r, stack, "apply.result"), 60, "the result after the restart", stack)
    (result,) = stream(r, stack, "apply.result")
    filled = accepted(stack, client_order_id(plan_id))
    assert len(filled) == 1, "one order at the exchange, never a second"
    assert result["status"] == "FILLED", result
    assert result["filled_qty"] == pytest.approx(float(filled[0]["executedQty"]))
    assert result["avg_price"] == pytest.approx(float(filled[0]["avgPrice"]))
    assert result["fee"] > 0
    wait_for(lambda: r.hget(keys.position(SYMBOL), "qty"), 30, "position-state to record the position", stack)
    held = exchange_qty(stack, SYMBOL)
    assert float(r.hget(keys.position(SYMBOL), "qty")) == pytest.approx(held) and held > 0
    wait_for(lambda: r.hlen(keys.reservations) == 0 and not r.hget(keys.entry_locks, SYMBOL), 30,
             "the reservation committed", stack)
    assert r.hexists(keys.open_positions, SYMBOL)
    # the limits hold: a new entry on the same symbol is not approved, the exchange position does not double
    send(r, keys, "apply.plan", entry(SYMBOL, "second-entry", t=9_000), id="second-entry")
    decision = wait_for(
        lambda: next((d for d in stream(r, stack, "governor.decision") if d["plan_id"] == "second-entry"), None),
        30, "the second entry's decision", stack)
    assert not decision["approved"] and "position_open" in decision["reasons"], decision
    assert exchange_qty(stack, SYMBOL) == pytest.approx(held)
    assert not accepted(stack, client_order_id("second-entry"))


@pytest.mark.timeout(180)
def test_a_fill_redelivered_after_its_approval_expired_is_recorded(redis_url, r, instance, tmp_path, monkeypatch):
    with running_stack(policy(approvalTtlSeconds=2), redis_url, instance, tmp_path, monkeypatch,
                       only=EXECUTOR) as stack:
        kill_after_the_fill(r, stack, "expires-while-down")
        (approval,) = stream(r, stack, "apply.approved")
        # not supervised meanwhile: apply-layer stays down until its approval has expired
        wait_for(lambda: time.time() * 1000 > approval["expires_at"] + 200, 30, "the approval to expire")
        assert_recorded_and_limits_hold(r, stack, "expires-while-down")
        assert stack.pods("apply-layer")[0].restarts == 1


@pytest.mark.timeout(180)
def test_a_fill_redelivered_after_the_kill_switch_was_engaged_is_recorded(
    redis_url, r, instance, tmp_path, monkeypatch
):
    with running_stack(policy(), redis_url, instance, tmp_path, monkeypatch, only=EXECUTOR) as stack:
        kill_after_the_fill(r, stack, "killswitch-while-down")
        write_control(r, stack.keys, engaged=True, scope=Scope.ALL, reason="crash drill")
        wait_for(lambda: stream(r, stack, "apply.result"), 60, "the result under the kill switch", stack)
        assert stream(r, stack, "apply.result")[0]["status"] == "FILLED"
        write_control(r, stack.keys, engaged=False, reason="drill over")
        assert_recorded_and_limits_hold(r, stack, "killswitch-while-down")


def readyz(process) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{process.env['QT_HEALTH_PORT']}/readyz", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, OSError) as error:
        return 0, str(error)


@pytest.mark.timeout(180)
def test_apply_layer_waits_for_an_unreachable_exchange_and_sends_nothing_until_it_appears(
    redis_url, r, instance, tmp_path, monkeypatch
):
    monkeypatch.setenv("QT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("QT_SIM_ORDER_LOG", str(tmp_path / "orders.jsonl"))

    stack = Supervisor(parse_policy(policy()), redis_url, instance=instance, workdir=tmp_path / "run", only=EXECUTOR)
    stack.prepare()
    try:
        # everything but the exchange: apply-layer finds nothing at QT_EXCHANGE_URL
        for pod, process in stack.processes.items():
            if pod != "exchange-sim-0":
                process.start()
        apply_layer = stack.pods("apply-layer")[0]
        # not supervised until the exchange is wanted: the supervisor would start it
        wait_for(lambda: readyz(apply_layer)[0] == 503, 30, "apply-layer to report not ready")
        assert "exchange unreachable" in readyz(apply_layer)[1]
        send(r, stack.keys, "market.tick", tick(SYMBOL, 100.0, 500), id=f"{SYMBOL}:500")  # read once it runs
        send(r, stack.keys, "apply.plan", entry(SYMBOL, "while-unreachable"), id="while-unreachable")
        wait_for(lambda: stream(r, stack, "apply.approved"), 30, "the approval")
        # it keeps trying (backoff) without exiting and without reading the approval
        log_path = apply_layer.log_path
        wait_for(lambda: log_path.read_text().count("exchange unreachable") >= 3, 30, "three tries")
        assert apply_layer.popen.poll() is None and apply_layer.restarts == 0
        group = next(g for g in r.xinfo_groups(stack.keys.stream("apply.approved")) if g["name"] == "apply-layer")
        assert group["pending"] == 0 and group["lag"] == 1, group
        assert r.xlen(stack.keys.stream("apply.result")) == 0
        # the exchange appears: apply-layer proceeds and the waiting approval is executed once
        stack.processes["exchange-sim-0"].start()
        stack._wait_for_exchange()
        wait_for(lambda: readyz(apply_layer)[0] == 200, 90, "apply-layer to become ready", stack)
        wait_for(lambda: stream(r, stack, "apply.result"), 60, "the result", stack)
        assert apply_layer.restarts == 0
        assert [x["status"] for x in stream(r, stack, "apply.result")] == ["FILLED"]
        orders = [o for o in sim_orders(stack) if o["clientOrderId"] == client_order_id("while-unreachable")]
        assert len(orders) == 1
    finally:
        stack.stop()


@pytest.mark.timeout(180)
def test_the_reconciler_records_exchange_positions_it_does_not_know_and_halts_entries(
    redis_url, r, instance, tmp_path, monkeypatch
):
    spec = {**policy(approvalTtlSeconds=2), "reconciler": {"intervalSeconds": 1},
            "exchange": {"requestTimeoutSeconds": 3}}
    with running_stack(spec, redis_url, instance, tmp_path, monkeypatch, only=[*EXECUTOR, "reconciler"]) as stack:
        keys = stack.keys
        for symbol in (SYMBOL, "S02USDT"):
            send(r, keys, "market.tick", tick(symbol, 100.0, 500), id=f"{symbol}:500")
        wait_for(lambda: len(sim_admin(stack, "/sim/state")["prices"]) == 2, 20, "the simulator's prices", stack)
        # a lost result: the entry's lock is left behind (its approval dead-lettered), the fill is at the exchange
        r.hset(keys.entry_locks, SYMBOL, "lost-result")
        sim_admin(stack, "/sim/adjust-position", {"symbol": SYMBOL, "qty": "2", "entryPrice": "100"})
        # and a position nobody here ever ordered, with nothing in flight
        sim_admin(stack, "/sim/adjust-position", {"symbol": "S02USDT", "qty": "-3", "entryPrice": "100"})

        def unexplained(symbol):
            return [e for e in stream(r, stack, "reconcile.events") if e["symbol"] == symbol and not e["explained"]]

        (plain,) = wait_for(lambda: unexplained("S02USDT")[:1], 30, "the unknown position found", stack)
        assert plain["kind"] == "UNKNOWN_TO_INTERNAL" and plain["exchange_side"] == "SHORT"
        wait_for(lambda: r.hget(keys.position("S02USDT"), "side") == "SHORT", 10, "it recorded", stack)
        assert float(r.hget(keys.position("S02USDT"), "qty")) == pytest.approx(3)
        assert r.hexists(keys.open_positions, "S02USDT") and "reconciler" in r.hgetall(keys.halts)
        # the order in flight explains the other one for a while, never for good
        assert any(e["explained"] for e in stream(r, stack, "reconcile.events") if e["symbol"] == SYMBOL)
        (stuck,) = wait_for(lambda: unexplained(SYMBOL)[:1], 60, "the stuck in-flight position found", stack)
        assert stuck["kind"] == "UNKNOWN_TO_INTERNAL"
        wait_for(lambda: r.hget(keys.position(SYMBOL), "qty"), 10, "it recorded", stack)
        assert float(r.hget(keys.position(SYMBOL), "qty")) == pytest.approx(2)
        send(r, keys, "apply.plan", entry("S02USDT", "after-unknown", t=9_000), id="after-unknown")
        decision = wait_for(
            lambda: next((d for d in stream(r, stack, "governor.decision") if d["plan_id"] == "after-unknown"), None),
            30, "the decision", stack)
        assert not decision["approved"] and "killswitch_entries" in decision["reasons"]


@pytest.mark.timeout(180)
def test_apply_layer_outlives_an_exchange_lost_midway_and_sends_the_waiting_order_once(
    redis_url, r, instance, tmp_path, monkeypatch
):
    with running_stack(policy(), redis_url, instance, tmp_path, monkeypatch, only=EXECUTOR) as stack:
        keys = stack.keys
        for symbol in (SYMBOL, "S02USDT"):
            send(r, keys, "market.tick", tick(symbol, 100.0, 500), id=f"{symbol}:500")
        wait_for(lambda: len(sim_admin(stack, "/sim/state")["prices"]) == 2, 20, "the simulator's prices", stack)
        wait_for(lambda: r.hlen(keys.exchange_filters) == 2, 30, "apply-layer's exchange rules", stack)
        send(r, keys, "apply.plan", entry(SYMBOL, "before-outage"), id="before-outage")
        wait_for(lambda: stream(r, stack, "apply.result"), 30, "the first fill", stack)
        exchange = stack.processes["exchange-sim-0"]
        os.kill(exchange.popen.pid, signal.SIGKILL)
        exchange.popen.wait(10)
        apply_layer = stack.pods("apply-layer")[0]
        # not supervised during the outage: the supervisor would bring the exchange back
        send(r, keys, "apply.plan", entry("S02USDT", "during-outage", t=2_000), id="during-outage")
        wait_for(lambda: readyz(apply_layer)[0] == 503, 30, "apply-layer to report not ready")
        assert "exchange unreachable" in readyz(apply_layer)[1]
        wait_for(lambda: apply_layer.log_path.read_text().count("exchange unreachable") >= 3, 30, "retries")
        assert apply_layer.popen.poll() is None
        assert [x["plan_id"] for x in stream(r, stack, "apply.result")] == ["before-outage"]
        assert r.xlen(keys.dlq("apply.approved")) == 0
        # the exchange is back (a fresh simulator: it learns its price from the next tick)
        send(r, keys, "market.tick", tick("S02USDT", 100.0, 2_500), id="S02USDT:2500")
        wait_for(lambda: readyz(apply_layer)[0] == 200, 90, "apply-layer ready again", stack)
        wait_for(lambda: len(stream(r, stack, "apply.result")) == 2, 60, "the waiting approval's result", stack)
        assert stream(r, stack, "apply.result")[1]["status"] == "FILLED"
        assert apply_layer.restarts == 0
        log = read_order_log(tmp_path / "orders.jsonl")  # both simulator processes' order requests
        sent = [o for o in log if o["clientOrderId"] == client_order_id("during-outage") and o["outcome"] == "accepted"]
        assert len(sent) == 1
