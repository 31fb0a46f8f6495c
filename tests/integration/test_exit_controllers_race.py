"""exit-brain and heat-gate on one bar, as real processes: both arrival orders give the same exit.

exit-brain, harvest, heat-gate and the governor run as ``qt component`` processes on a real
redis-server. One trade is open; on one tick both exit controllers fire: exit-brain's take-profit
(or not, in the second scenario) and harvest's 2 R partial close. The order in which the two reach
the governor is forced by stopping one process (SIGSTOP) until the other has handled the bar:

- exit-brain first: harvest is stopped until exit-brain has evaluated the bar;
- harvest first: exit-brain is stopped until heat-gate has been waiting on the proposal for longer
  than its in-handler wait (so the proposal also goes through the raise / reclaim / retry path).

Both orders must end with the same decisions on ``governor.decision`` (exits/heat.py: heat-gate
defers to exit-brain's verdict on the bar).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import redis

from quantum_trader.bus.drain import all_drained
from quantum_trader.bus.publish import publish
from quantum_trader.bus.step import Output
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import PositionSide, PositionSnapshot, Tick
from quantum_trader.exits.brain import BrainState, exit_plan_id
from quantum_trader.local.supervisor import Supervisor
from quantum_trader.services.heat_gate import VERDICT_WAIT_SECONDS
from tests.stack import running_stack, stream, wait_for

SYMBOL = "ETHUSDT"
HOUR = 3_600_000
OPENED = 1_700_000_000_000 - 1_700_000_000_000 % HOUR - 1
PRICES = (158.0, 151.0, 149.0)
"""a SHORT from 160 with its stop at 165 (1 R = 5): the last tick is 2.2 R, harvest's partial close"""
BAR = OPENED + len(PRICES) * HOUR
COMPONENTS = ["exit-brain", "harvest", "heat-gate", "governor"]


def policy() -> dict:
    return {
        "symbols": [SYMBOL],
        "marketData": {"source": "replay"},
        "exits": {"mode": "LIVE", "rolloutPercent": 100},
        "streams": {"claimIdleMs": 300},
    }


def open_trade(r: redis.Redis, keys: Keys, take_profit: float) -> None:
    """The trade as position-state leaves it after the entry's fill, and its snapshot."""
    r.hset(
        keys.position(SYMBOL),
        mapping={"symbol": SYMBOL, "side": "SHORT", "qty": "8.0", "entry_price": "160.0", "entry_fees": "0.0",
                 "stop_loss": "165.0", "take_profit": repr(take_profit), "opened_at": str(OPENED),
                 "entry_plan_id": "entry", "mark_price": "160.0", "version": "1", "updated_at": str(OPENED),
                 "source": "position-state"},
    )  # fmt: skip
    r.hset(keys.open_positions, SYMBOL, "1280.0")
    r.hset(
        keys.portfolio_heat,
        mapping={"heat": "0.05", "open_risk": "500.0", "equity": "10000.0", "positions": "1",
                 "time": str(int(time.time() * 1000)), "market_time": str(OPENED)},
    )  # fmt: skip
    snapshot = PositionSnapshot(
        symbol=SYMBOL, side=PositionSide.SHORT, qty=8.0, entry_price=160.0, mark_price=160.0, unrealized_pnl=0.0,
        stop_loss=165.0, take_profit=take_profit, opened_at=OPENED, time=OPENED, source="position-state", version=1,
    )  # fmt: skip
    publish(r, keys, Output("position.snapshot", snapshot, id="snap:open"), 10_000)


def publish_ticks(r: redis.Redis, keys: Keys) -> None:
    for i, price in enumerate(PRICES, start=1):
        t = OPENED + i * HOUR
        tick = Tick(symbol=SYMBOL, price=price, bid=price, ask=price, volume=1.0, event_time=t, source="test")
        publish(r, keys, Output("market.tick", tick, id=f"tick:{t}"), 10_000)


def exit_brain_state(r: redis.Redis, keys: Keys) -> BrainState | None:
    data = r.hget(keys.component_state("exit-brain", SYMBOL), "data")
    return BrainState.from_json(json.loads(data)) if data else None


def watching(r: redis.Redis, keys: Keys, component: str) -> bool:
    data = r.hget(keys.component_state(component, SYMBOL), "data")
    return bool(data) and json.loads(data).get("position") is not None


def proposal_waiting(r: redis.Redis, keys: Keys) -> bool:
    """heat-gate holds harvest's proposal unacknowledged (waiting for exit-brain's verdict)."""
    if not r.exists(keys.stream("harvest.proposal")):
        return False
    groups = {g["name"]: g for g in r.xinfo_groups(keys.stream("harvest.proposal"))}
    return "heat-gate" in groups and int(groups["heat-gate"]["pending"]) == 1


def pause(stack: Supervisor, component: str, paused: bool) -> None:
    (pod,) = stack.pods(component)
    assert pod.popen is not None and pod.popen.poll() is None, f"{component} is running"
    os.kill(pod.popen.pid, signal.SIGSTOP if paused else signal.SIGCONT)


def race(redis_url, tmp_path, monkeypatch, first: str, take_profit: float) -> tuple[list, dict[str, int]]:
    """One run with ``first`` ('exit-brain' or 'harvest') handling the bar first: the governor's decisions
    and heat-gate's verdict counters."""
    instance = f"race-{first}-{int(take_profit)}-{tmp_path.name[-6:].lower().replace('_', '-')}"
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(instance)
    with running_stack(policy(), redis_url, instance, tmp_path / instance, monkeypatch, only=COMPONENTS) as stack:
        started = lambda: all(r.exists(keys.heartbeat(c, f"{c}-0")) for c in COMPONENTS)  # noqa: E731
        wait_for(started, 60, "the components to start", stack)
        open_trade(r, keys, take_profit)
        wait_for(lambda: watching(r, keys, "exit-brain") and watching(r, keys, "harvest"), 30, "both to watch", stack)
        second = "harvest" if first == "exit-brain" else "exit-brain"
        pause(stack, second, True)
        try:
            publish_ticks(r, keys)
            if first == "exit-brain":
                wait_for(lambda: (s := exit_brain_state(r, keys)) is not None and s.evaluated_at == BAR, 30,
                         "exit-brain to evaluate the bar", stack)  # fmt: skip
            else:
                wait_for(lambda: proposal_waiting(r, keys), 30, "heat-gate to hold the proposal", stack)
                time.sleep(VERDICT_WAIT_SECONDS + 1.0)  # past the in-handler wait: raised, reclaimed, retried
                assert proposal_waiting(r, keys), "a pending verdict never lets the proposal pass"
                assert not stream(r, stack, "apply.plan"), "nothing was planned while exit-brain had not judged"
        finally:
            pause(stack, second, False)
        wait_for(lambda: r.exists(keys.stream("harvest.proposal")) and all_drained(r, keys), 60,
                 "every stream to drain", stack)  # fmt: skip
        decisions = [(d["plan_id"], d["approved"], tuple(d["reasons"])) for d in stream(r, stack, "governor.decision")]
        assert not r.xlen(keys.dlq("harvest.proposal")), "the proposal was decided, not dead-lettered"
        # and heat-gate counted the same verdict (its heartbeat carries the counters)
        wait_for(lambda: sum(heat_gate_verdicts(r, keys).values()) == 1, 30, "heat-gate's counters", stack)
        verdicts = heat_gate_verdicts(r, keys)
    r.close()
    return sorted(decisions), verdicts


def heat_gate_verdicts(r: redis.Redis, keys: Keys) -> dict[str, int]:
    """heat-gate's non-zero hold and pass counters, from its heartbeat."""
    raw = r.hget(keys.heartbeat("heat-gate", "heat-gate-0"), "counters")
    counters = json.loads(raw) if raw else {}
    return {k: v for k, v in counters.items() if v and (k.startswith("hold_") or k == "passed")}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("take_profit", "expected_plan", "expected_verdict"),
    [
        # 149 reaches the target: exit-brain exits, harvest's proposal is dropped
        (150.0, exit_plan_id(SYMBOL, OPENED, BAR), "hold_exit_brain_exiting"),
        # exit-brain holds: harvest's partial close passes
        (140.0, f"heat:harvest:{SYMBOL}:{OPENED}:partial_2r", "passed"),
    ],
)
def test_both_arrival_orders_of_the_two_exit_controllers_decide_the_same(
    redis_url, tmp_path, monkeypatch, take_profit, expected_plan, expected_verdict
):
    brain_first = race(redis_url, tmp_path, monkeypatch, "exit-brain", take_profit)
    harvest_first = race(redis_url, tmp_path, monkeypatch, "harvest", take_profit)
    assert brain_first == harvest_first, (brain_first, harvest_first)
    assert brain_first == ([(expected_plan, True, ())], {expected_verdict: 1}), brain_first
