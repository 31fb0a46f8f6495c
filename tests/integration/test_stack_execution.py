"""The executor path as processes (exchange-sim, governor, apply-layer, position-state) on a real Redis.

Acceptance items 2-5 and 7 of the execution-spine issue: every component is a real `qt component`
process, python-binance talks signed HTTP to the simulator, and the simulator's order log is the
witness of what reached the exchange.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import urllib.request

import pytest
import redis

from quantum_trader.bus.control import Scope, write_control
from quantum_trader.bus.heartbeat import read_heartbeats
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import OrderType
from quantum_trader.exchange.order_ids import client_order_id
from tests.factories import entry, exit_plan, send, tick
from tests.stack import running_stack, sim_orders, stream, wait_for

EXECUTOR = ["exchange-sim", "governor", "apply-layer", "position-state"]
SYMBOLS = [f"S{i:02d}USDT" for i in range(50)]


def policy(**overrides) -> dict:
    base = {
        "symbols": SYMBOLS,
        "risk": {
            "maxOpenPositions": 10,
            "maxNotionalPerTrade": 1000,
            "maxTotalNotional": 100000,
            "maxEntriesPerHour": 100,
            "maxEntriesPerFiveMinutes": 100,
            "cooldownSeconds": 0,
        },
        "streams": {"claimIdleMs": 500},
        "exchange": {"requestTimeoutSeconds": 3},
        "reconciler": {"intervalSeconds": 1},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def prices(r, keys, symbols, price=100.0, t=500):
    for symbol in symbols:
        send(r, keys, "market.tick", tick(symbol, price, t), id=f"{symbol}:{t}")


def sim_admin(stack, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        stack.exchange_url + path,
        data=data,
        method="POST" if data else "GET",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def results(r, stack):
    return stream(r, stack, "apply.result")


def wait_for_price(stack, symbols):
    def priced():
        state = sim_admin(stack, "/sim/state")
        known = json.dumps(state)
        return all(s in known for s in symbols)

    wait_for(priced, 20, "the simulator to see prices", stack)


def _fire(redis_url: str, instance: str, plans: list[tuple[str, str]]) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = Keys(instance)
    for symbol, plan_id in plans:
        send(client, keys, "apply.plan", entry(symbol, plan_id), id=plan_id)


def fire_concurrently(redis_url, instance, plans, processes=4):
    chunks = [plans[i::processes] for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_fire, args=(redis_url, instance, chunk)) for chunk in chunks]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0


@pytest.mark.timeout(240)
def test_500_concurrent_entries_through_3_governors_open_exactly_10_positions(
    redis_url, r, instance, tmp_path, monkeypatch
):
    spec = policy(components={"governor": {"replicas": 3}})
    with running_stack(spec, redis_url, instance, tmp_path, monkeypatch, only=EXECUTOR) as stack:
        assert len(stack.pods("governor")) == 3
        keys = stack.keys
        prices(r, keys, SYMBOLS)
        wait_for_price(stack, SYMBOLS)
        plans = [(SYMBOLS[i % 50], f"burst-{i:03d}") for i in range(500)]
        fire_concurrently(redis_url, instance, plans)
        wait_for(lambda: len(stream(r, stack, "governor.decision")) == 500, 120, "500 decisions", stack)
        wait_for(lambda: len(results(r, stack)) == 10 and r.hlen(keys.reservations) == 0, 60, "10 results", stack)
        decisions = stream(r, stack, "governor.decision")
        approved = [d for d in decisions if d["approved"]]
        assert len(approved) == 10
        assert all(pod.state == "running" for pod in stack.pods("governor"))
        orders = [o for o in sim_orders(stack) if o["outcome"] == "accepted"]
        assert len(orders) == 10
        assert r.hlen(keys.open_positions) == 10
        assert {o["clientOrderId"] for o in orders} == {client_order_id(d["plan_id"]) for d in approved}

        def apply_layer_processed() -> int:
            beats = read_heartbeats(r, keys)
            return sum(int(b.counters.get("processed", 0)) for b in beats if b.component == "apply-layer")

        # its worker consumers' approvals count too: the status table and health read this heartbeat
        wait_for(lambda: apply_layer_processed() == 10, 30, "apply-layer's heartbeat to count 10 approvals", stack)


@pytest.mark.timeout(240)
def test_total_notional_and_per_symbol_rate_limits_hold_under_concurrency(
    redis_url, r, instance, tmp_path, monkeypatch
):
    spec = policy(
        components={"governor": {"replicas": 3}},
        risk={"maxOpenPositions": 100, "maxTotalNotional": 750, "maxNotionalPerTrade": 100},
    )
    with running_stack(spec, redis_url, instance, tmp_path, monkeypatch, only=EXECUTOR) as stack:
        prices(r, stack.keys, SYMBOLS)
        wait_for_price(stack, SYMBOLS)
        fire_concurrently(redis_url, instance, [(SYMBOLS[i % 50], f"n-{i:03d}") for i in range(200)])
        wait_for(lambda: len(stream(r, stack, "governor.decision")) == 200, 120, "200 decisions", stack)
        wait_for(lambda: r.hlen(stack.keys.reservations) == 0 and len(results(r, stack)) >= 7, 60, "results", stack)
        filled = [x for x in results(r, stack) if x["status"] == "FILLED"]
        assert len(filled) == 7  # 7 x ~100 <= 750 < 8 x ~100
        assert sum(x["filled_qty"] * x["avg_price"] for x in filled) <= 750 * 1.01


@pytest.mark.timeout(180)
def test_apply_layer_killed_after_the_fill_and_restarted_sends_one_order_and_one_result(
    redis_url, r, instance, tmp_path, monkeypatch
):
    spec = policy(exchange={"requestTimeoutSeconds": 30})
    with running_stack(spec, redis_url, instance, tmp_path, monkeypatch, only=EXECUTOR) as stack:
        keys = stack.keys
        prices(r, keys, ["S01USDT"])
        wait_for_price(stack, ["S01USDT"])
        sim_admin(stack, "/sim/faults", {"timeoutRate": 1.0, "timeoutSeconds": 60})
        send(r, keys, "apply.plan", entry("S01USDT", "kill-me"), id="kill-me")
        coid = client_order_id("kill-me")
        wait_for(lambda: [o for o in sim_orders(stack) if o["clientOrderId"] == coid], 30, "the fill", stack)
        apply_pod = stack.pods("apply-layer")[0]
        os.kill(apply_pod.popen.pid, signal.SIGKILL)  # filled at the exchange, result never written
        sim_admin(stack, "/sim/faults", {"timeoutRate": 0.0})
        wait_for(lambda: apply_pod.restarts >= 1 and apply_pod.state == "running", 30, "the restart", stack)
        wait_for(lambda: r.hget(keys.position("S01USDT"), "qty"), 60, "position-state to apply the fill", stack)
        assert [o["clientOrderId"] for o in sim_orders(stack)].count(coid) == 1
        assert [x["plan_id"] for x in results(r, stack)] == ["kill-me"]
        assert results(r, stack)[0]["status"] == "FILLED"
        assert float(r.hget(keys.position("S01USDT"), "qty")) > 0
        assert r.hlen(keys.reservations) == 0


@pytest.mark.timeout(120)
def test_accept_then_timeout_is_resolved_by_looking_the_order_up(redis_url, r, instance, tmp_path, monkeypatch):
    spec = policy(exchange={"requestTimeoutSeconds": 2})
    with running_stack(spec, redis_url, instance, tmp_path, monkeypatch, only=EXECUTOR) as stack:
        prices(r, stack.keys, ["S02USDT"])
        wait_for_price(stack, ["S02USDT"])
        sim_admin(stack, "/sim/faults", {"timeoutRate": 1.0, "timeoutSeconds": 10})
        send(r, stack.keys, "apply.plan", entry("S02USDT", "slow-answer"), id="slow-answer")
        wait_for(lambda: results(r, stack), 60, "the result", stack)
        assert results(r, stack)[0]["status"] == "FILLED"
        coid = client_order_id("slow-answer")
        assert [o["clientOrderId"] for o in sim_orders(stack)].count(coid) == 1
        wait_for(lambda: r.hget(stack.keys.position("S02USDT"), "qty"), 30, "the position", stack)


@pytest.mark.timeout(120)
def test_fail_closed_scopes_and_expiry(redis_url, r, instance, tmp_path, monkeypatch):
    with running_stack(policy(), redis_url, instance, tmp_path, monkeypatch, only=EXECUTOR) as stack:
        keys = stack.keys
        prices(r, keys, ["S03USDT", "S04USDT"])
        wait_for_price(stack, ["S03USDT", "S04USDT"])
        # no control key at all: nothing is approved, nothing reaches the exchange
        r.delete(keys.control)
        send(r, keys, "apply.plan", entry("S03USDT", "no-control"), id="no-control")
        wait_for(lambda: stream(r, stack, "governor.decision"), 30, "the decision", stack)
        decision = stream(r, stack, "governor.decision")[0]
        assert not decision["approved"] and "control_missing" in decision["reasons"]
        # open a position, then engage entries: exits still execute, entries do not
        write_control(r, keys, engaged=False)
        send(r, keys, "apply.plan", entry("S03USDT", "open-it"), id="open-it")
        wait_for(lambda: r.hget(keys.position("S03USDT"), "qty"), 30, "the position", stack)
        qty = float(r.hget(keys.position("S03USDT"), "qty"))
        write_control(r, keys, engaged=True, scope=Scope.ENTRIES, reason="test")
        send(r, keys, "apply.plan", entry("S04USDT", "blocked-entry"), id="blocked-entry")
        send(r, keys, "apply.plan", exit_plan("S03USDT", "allowed-exit", qty), id="allowed-exit")
        wait_for(lambda: any(x["plan_id"] == "allowed-exit" for x in results(r, stack)), 30, "the exit", stack)
        exit_result = next(x for x in results(r, stack) if x["plan_id"] == "allowed-exit")
        assert exit_result["status"] == "FILLED"
        blocked = next(d for d in stream(r, stack, "governor.decision") if d["plan_id"] == "blocked-entry")
        assert not blocked["approved"] and "killswitch_entries" in blocked["reasons"]
        assert client_order_id("blocked-entry") not in {o["clientOrderId"] for o in sim_orders(stack)}


@pytest.mark.timeout(120)
def test_an_expired_approval_is_rejected_and_its_reservation_released(redis_url, r, instance, tmp_path, monkeypatch):
    # a tiny TTL: the approval is older than expires_at by the time apply-layer reads it
    with running_stack(
        policy(risk={"approvalTtlSeconds": 0.001}), redis_url, instance, tmp_path, monkeypatch, only=EXECUTOR
    ) as stack:
        keys = stack.keys
        prices(r, keys, ["S05USDT"])
        wait_for_price(stack, ["S05USDT"])
        send(r, keys, "apply.plan", entry("S05USDT", "too-late"), id="too-late")
        wait_for(lambda: results(r, stack), 30, "the result", stack)
        result = results(r, stack)[0]
        assert result["status"] == "REJECTED" and result["reason"].startswith("approval_expired")
        wait_for(
            lambda: r.hlen(keys.reservations) == 0 and not r.hget(keys.entry_locks, "S05USDT"),
            30,
            "the reservation to be released",
            stack,
        )
        assert sim_orders(stack) == []


@pytest.mark.timeout(120)
def test_conditional_orders_never_reach_the_exchange_and_exits_are_capped_reduce_only(
    redis_url, r, instance, tmp_path, monkeypatch
):
    with running_stack(policy(), redis_url, instance, tmp_path, monkeypatch, only=EXECUTOR) as stack:
        keys = stack.keys
        prices(r, keys, ["S06USDT"])
        wait_for_price(stack, ["S06USDT"])
        for i, kind in enumerate([OrderType.STOP_MARKET, OrderType.TAKE_PROFIT, OrderType.TRAILING_STOP_MARKET]):
            send(r, keys, "apply.plan", entry("S06USDT", f"cond-{i}", order_type=kind, t=1000 + i), id=f"cond-{i}")
            wait_for(lambda i=i: len(results(r, stack)) == i + 1, 30, "the refusal", stack)
        assert all(x["status"] == "REJECTED" and "conditional_order_refused" in x["reason"] for x in results(r, stack))
        assert sim_orders(stack) == []  # not one HTTP order request
        send(r, keys, "apply.plan", entry("S06USDT", "real"), id="real")
        wait_for(lambda: r.hget(keys.position("S06USDT"), "qty"), 30, "the position", stack)
        qty = float(r.hget(keys.position("S06USDT"), "qty"))
        send(r, keys, "apply.plan", exit_plan("S06USDT", "exit-1", qty * 10), id="exit-1")
        send(r, keys, "apply.plan", exit_plan("S06USDT", "exit-2", qty), id="exit-2")
        wait_for(lambda: any(x["plan_id"] == "exit-1" for x in results(r, stack)), 30, "the exit", stack)
        decisions = {d["plan_id"]: d for d in stream(r, stack, "governor.decision")}
        wait_for(lambda: "exit-2" in {d["plan_id"] for d in stream(r, stack, "governor.decision")}, 30, "2nd", stack)
        decisions = {d["plan_id"]: d for d in stream(r, stack, "governor.decision")}
        assert decisions["exit-1"]["approved"]
        # the second exit was planned while the first was in flight, or after it closed the position
        assert not decisions["exit-2"]["approved"]
        assert set(decisions["exit-2"]["reasons"]) & {"exit_in_flight", "no_open_position"}
        exits = [o for o in sim_orders(stack) if o["clientOrderId"] == client_order_id("exit-1")]
        assert len(exits) == 1 and exits[0]["reduceOnly"] in (True, "true")
        assert float(exits[0]["quantity"]) == pytest.approx(qty)
        wait_for(
            lambda: not r.hget(keys.position("S06USDT"), "qty") or float(r.hget(keys.position("S06USDT"), "qty")) == 0,
            30,
            "the close",
            stack,
        )


@pytest.mark.timeout(120)
def test_a_position_changed_behind_our_back_is_found_corrected_and_halts_entries(
    redis_url, r, instance, tmp_path, monkeypatch
):
    only = [*EXECUTOR, "reconciler"]
    with running_stack(policy(), redis_url, instance, tmp_path, monkeypatch, only=only) as stack:
        keys = stack.keys
        prices(r, keys, ["S07USDT", "S08USDT"])
        wait_for_price(stack, ["S07USDT", "S08USDT"])
        send(r, keys, "apply.plan", entry("S07USDT", "before-drift"), id="before-drift")
        wait_for(lambda: r.hget(keys.position("S07USDT"), "qty"), 30, "the position", stack)
        qty = float(r.hget(keys.position("S07USDT"), "qty"))
        sim_admin(stack, "/sim/adjust-position", {"symbol": "S07USDT", "qty": str(qty * 3), "entryPrice": "100"})
        # explained events (an order in flight at that moment) may come first; the drift is the unexplained one
        events = wait_for(
            lambda: [e for e in stream(r, stack, "reconcile.events") if not e["explained"]],
            15,
            "an unexplained reconcile event",
            stack,
        )
        assert events[0]["symbol"] == "S07USDT" and events[0]["kind"] == "QTY_MISMATCH"
        wait_for(
            lambda: float(r.hget(keys.position("S07USDT"), "qty")) == pytest.approx(qty * 3),
            10,
            "the correction",
            stack,
        )
        assert "reconciler" in r.hgetall(keys.halts)
        send(r, keys, "apply.plan", entry("S08USDT", "after-drift", t=5000), id="after-drift")
        wait_for(
            lambda: any(d["plan_id"] == "after-drift" for d in stream(r, stack, "governor.decision")),
            30,
            "the decision",
            stack,
        )
        decision = next(d for d in stream(r, stack, "governor.decision") if d["plan_id"] == "after-drift")
        assert not decision["approved"] and "killswitch_entries" in decision["reasons"]
