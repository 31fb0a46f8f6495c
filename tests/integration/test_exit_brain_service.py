"""exit-brain against a real redis-server: one exit per stop hit, restarts keep watching, kill switch, rollout."""

from __future__ import annotations

import json

import pytest
import redis

from quantum_trader.bus.consumer import StreamConsumer
from quantum_trader.bus.control import Scope, read_control, write_control
from quantum_trader.bus.publish import publish
from quantum_trader.bus.step import Output
from quantum_trader.contracts.envelope import decode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import (
    ExitShadow,
    OrderType,
    Plan,
    PlanKind,
    PositionSide,
    PositionSnapshot,
    Side,
    Tick,
)
from quantum_trader.contracts.policy import ExitSpec, PolicySpec
from quantum_trader.exits.rollout import RolloutConfig
from quantum_trader.runtime.runner import connect
from quantum_trader.runtime.service import ComponentContext
from quantum_trader.runtime.settings import load_settings
from quantum_trader.services.exit_brain import ExitBrain, build

OPENED = 1_700_000_000_000
SYMBOL = "BTCUSDT"


class Harness:
    """One exit-brain process: its context, service and consumer (a new Harness is a restart)."""

    def __init__(self, redis_url: str, instance: str, pod: str = "exit-brain-0", policy: PolicySpec | None = None):
        settings = load_settings(
            env={"QT_COMPONENT": "exit-brain", "QT_INSTANCE": instance, "QT_REDIS_URL": redis_url, "QT_POD": pod}
        )
        self.ctx = ComponentContext(
            settings=settings, policy=policy or PolicySpec(), client=connect(redis_url), keys=Keys(instance)
        )
        self.service = build(self.ctx)
        assert isinstance(self.service, ExitBrain)
        self.consumer = StreamConsumer(
            self.ctx.client, self.ctx.keys, "exit-brain", pod, self.service.handlers(), self.ctx.policy.streams
        )
        self.consumer.ensure_groups()

    def drain(self) -> None:
        idle = 0
        while idle < 2:
            idle = 0 if self.consumer.poll_once(block_ms=20) else idle + 1

    def close(self) -> None:
        self.ctx.client.close()


def snapshot(side: str = "LONG", qty: float = 2.0, version: int = 1, opened_at: int = OPENED) -> PositionSnapshot:
    flat = side == "FLAT"
    return PositionSnapshot(
        symbol=SYMBOL,
        side=PositionSide(side),
        qty=0.0 if flat else qty,
        entry_price=0.0 if flat else 100.0,
        mark_price=100.0,
        unrealized_pnl=0.0,
        stop_loss=None if flat else (95.0 if side == "LONG" else 105.0),
        take_profit=None if flat else (110.0 if side == "LONG" else 90.0),
        opened_at=0 if flat else opened_at,
        time=opened_at,
        source="position-state",
        version=version,
    )


def tick(price: float, t: int) -> Tick:
    return Tick(symbol=SYMBOL, price=price, bid=price, ask=price, volume=1.0, event_time=t, source="synthetic:test")


def send(r: redis.Redis, keys: Keys, stream: str, message, id: str) -> None:
    publish(r, keys, Output(stream, message, id=id), 10_000)


def send_snapshot(r, keys, snap: PositionSnapshot) -> None:
    send(r, keys, "position.snapshot", snap, f"snap:{snap.symbol}:{snap.version}:{snap.opened_at}")


def send_tick(r, keys, t: Tick) -> None:
    send(r, keys, "market.tick", t, f"tick:{t.symbol}:{t.event_time}")


def plans(r: redis.Redis, keys: Keys) -> list[Plan]:
    return [decode(fields, Plan).message for _, fields in r.xrange(keys.stream("apply.plan"))]


def shadows(r: redis.Redis, keys: Keys) -> list[ExitShadow]:
    return [decode(fields, ExitShadow).message for _, fields in r.xrange(keys.stream("exit.shadow"))]


@pytest.fixture
def keys(instance: str) -> Keys:
    return Keys(instance)


@pytest.fixture
def released(r, keys) -> None:
    write_control(r, keys, engaged=False)


def test_a_tick_through_the_stop_makes_exactly_one_exit_plan(redis_url, instance, r, keys, released):
    brain = Harness(redis_url, instance)
    send_snapshot(r, keys, snapshot())
    brain.drain()
    for i, price in enumerate([100.0, 97.0, 94.0, 93.0, 92.0]):
        send_tick(r, keys, tick(price, OPENED + 60_000 * (i + 1)))
    brain.drain()
    made = plans(r, keys)
    assert len(made) == 1
    plan = made[0]
    assert plan.kind is PlanKind.EXIT and plan.side is Side.SELL and plan.qty == 2.0
    assert plan.reduce_only is True and plan.order_type is OrderType.MARKET
    assert plan.reason_codes == ("stop_loss",) and plan.source == "exit-brain"
    assert plan.time == OPENED + 180_000 and plan.price == 94.0
    assert plan.plan_id == f"exit:{SYMBOL}:{OPENED}:{OPENED + 180_000}"
    raw = r.xrange(keys.stream("apply.plan"))[0][1]
    assert raw["id"] == plan.plan_id and raw["corr"] == f"tick:{SYMBOL}:{OPENED + 180_000}"
    for stream in ("market.tick", "position.snapshot"):
        assert r.xpending(keys.stream(stream), "exit-brain")["pending"] == 0
    assert brain.service.counters["exits_stop_loss"] == 1
    assert brain.service.counters["exits_waiting"] == 2
    state = json.loads(r.hget(keys.component_state("exit-brain", SYMBOL), "data"))
    assert state["pending_plan"] == plan.plan_id and state["position"]["qty"] == 2.0
    brain.close()


def test_a_redelivered_tick_does_not_plan_twice(redis_url, instance, r, keys, released):
    brain = Harness(redis_url, instance)
    send_snapshot(r, keys, snapshot())
    brain.drain()
    for _ in range(2):
        send_tick(r, keys, tick(94.0, OPENED + 1000))
    brain.drain()
    assert len(plans(r, keys)) == 1
    brain.close()


def test_a_restart_keeps_the_position_and_exits(redis_url, instance, r, keys, released):
    first = Harness(redis_url, instance, pod="exit-brain-a")
    send_snapshot(r, keys, snapshot(side="SHORT", qty=0.5))
    first.drain()
    send_tick(r, keys, tick(101.0, OPENED + 1000))
    first.drain()
    first.close()  # the process dies; its state is in Redis

    second = Harness(redis_url, instance, pod="exit-brain-b")
    send_tick(r, keys, tick(105.5, OPENED + 2000))
    second.drain()
    made = plans(r, keys)
    assert len(made) == 1
    assert made[0].side is Side.BUY and made[0].qty == 0.5 and made[0].reason_codes == ("stop_loss",)
    second.close()

    third = Harness(redis_url, instance, pod="exit-brain-c")  # and again: the pending exit is remembered too
    send_tick(r, keys, tick(106.0, OPENED + 3000))
    third.drain()
    assert len(plans(r, keys)) == 1
    third.close()


def test_a_new_snapshot_allows_the_next_exit_and_a_flat_one_stops_watching(redis_url, instance, r, keys, released):
    brain = Harness(redis_url, instance)
    send_snapshot(r, keys, snapshot())
    brain.drain()
    send_tick(r, keys, tick(94.0, OPENED + 1000))
    brain.drain()
    send_snapshot(r, keys, snapshot(qty=1.2, version=2))  # partial fill of the exit
    brain.drain()
    send_tick(r, keys, tick(93.5, OPENED + 2000))
    brain.drain()
    made = plans(r, keys)
    assert [p.qty for p in made] == [2.0, 1.2]
    send_snapshot(r, keys, snapshot(side="FLAT", version=3))
    brain.drain()
    send_tick(r, keys, tick(80.0, OPENED + 3000))
    brain.drain()
    assert len(plans(r, keys)) == 2
    assert not r.sismember(keys.component_state("exit-brain", "index"), SYMBOL)
    brain.close()


def test_kill_switch_all_sends_nothing_but_records_then_release_exits(redis_url, instance, r, keys):
    write_control(r, keys, engaged=True, scope=Scope.ALL, reason="test")
    brain = Harness(redis_url, instance)
    send_snapshot(r, keys, snapshot())
    brain.drain()
    send_tick(r, keys, tick(94.0, OPENED + 1000))
    send_tick(r, keys, tick(93.0, OPENED + 2000))
    brain.drain()
    assert plans(r, keys) == []
    records = shadows(r, keys)
    assert [(s.action, s.reason) for s in records] == [("EXIT/kill_switch_all", "stop_loss")]  # once, not per tick
    write_control(r, keys, engaged=False)
    send_tick(r, keys, tick(92.0, OPENED + 3000))
    brain.drain()
    assert [p.reason_codes for p in plans(r, keys)] == [("stop_loss",)]
    brain.close()


@pytest.mark.parametrize("scope", [Scope.ENTRIES, Scope.EXITS])
def test_baseline_stop_stays_live_under_entries_and_exits_scopes(redis_url, instance, r, keys, scope):
    write_control(r, keys, engaged=True, scope=scope, reason="test")
    brain = Harness(redis_url, instance)
    send_snapshot(r, keys, snapshot())
    brain.drain()
    send_tick(r, keys, tick(111.0, OPENED + 1000))
    brain.drain()
    assert [p.reason_codes for p in plans(r, keys)] == [("take_profit",)]
    brain.close()


def test_missing_control_key_is_halted(redis_url, instance, r, keys):
    brain = Harness(redis_url, instance)
    send_snapshot(r, keys, snapshot())
    brain.drain()
    send_tick(r, keys, tick(90.0, OPENED + 1000))
    brain.drain()
    assert plans(r, keys) == []
    assert [s.action for s in shadows(r, keys)] == ["EXIT/kill_switch_all"]
    brain.close()


HOLD_POLICY = PolicySpec(exits=ExitSpec(max_hold_minutes=30))


def test_advanced_rule_is_shadow_by_default_and_live_when_rolled_out(redis_url, instance, r, keys, released):
    brain = Harness(redis_url, instance, policy=HOLD_POLICY)  # policy exits: SHADOW, 0 %
    send_snapshot(r, keys, snapshot())
    brain.drain()
    send_tick(r, keys, tick(101.0, OPENED + 31 * 60_000))
    brain.drain()
    assert plans(r, keys) == []
    assert [(s.action, s.reason) for s in shadows(r, keys)] == [("EXIT/rollout", "max_hold")]
    brain.close()

    r.hset(keys.rollout, mapping=RolloutConfig("LIVE", 0, pinned_live=(SYMBOL,)).to_hash())
    live = Harness(redis_url, instance, policy=HOLD_POLICY)
    send_tick(r, keys, tick(101.0, OPENED + 32 * 60_000))
    live.drain()
    assert [p.reason_codes for p in plans(r, keys)] == [("max_hold",)]
    live.close()


def test_kill_switch_exits_forces_a_live_rollout_to_shadow(redis_url, instance, r, keys):
    write_control(r, keys, engaged=True, scope=Scope.EXITS, reason="test")
    r.hset(keys.rollout, mapping=RolloutConfig("LIVE", 100).to_hash())
    brain = Harness(redis_url, instance, policy=HOLD_POLICY)
    send_snapshot(r, keys, snapshot())
    brain.drain()
    send_tick(r, keys, tick(101.0, OPENED + 31 * 60_000))
    brain.drain()
    assert plans(r, keys) == []
    assert [s.action for s in shadows(r, keys)] == ["EXIT/kill_switch_exits"]
    brain.close()


def test_an_unreadable_rollout_puts_advanced_exits_in_shadow(redis_url, instance, r, keys, released):
    r.hset(keys.rollout, mapping={"mode": "LIVE", "percent": "lots"})
    brain = Harness(
        redis_url, instance, policy=PolicySpec(exits=ExitSpec(mode="LIVE", rollout_percent=100, max_hold_minutes=30))
    )
    send_snapshot(r, keys, snapshot())
    brain.drain()
    send_tick(r, keys, tick(101.0, OPENED + 31 * 60_000))
    brain.drain()
    assert plans(r, keys) == []
    assert [s.action for s in shadows(r, keys)] == ["EXIT/rollout"]
    assert brain.service.counters["rollout_unreadable"] >= 1
    brain.close()


def test_flatten_plans_an_exit_without_waiting_for_a_tick(redis_url, instance, r, keys, released):
    brain = Harness(redis_url, instance)
    send_snapshot(r, keys, snapshot())
    brain.drain()
    send_tick(r, keys, tick(102.0, OPENED + 1000))
    brain.drain()
    write_control(r, keys, engaged=True, scope=Scope.ENTRIES, flatten=True, reason="flatten test")
    control = read_control(r, keys)
    brain.service.on_control(control)
    brain.service.idle()
    assert brain.service.flatten_all(control) == 0  # once per generation
    made = plans(r, keys)
    assert len(made) == 1
    assert made[0].reason_codes == ("flatten",) and made[0].side is Side.SELL and made[0].price == 102.0
    assert made[0].plan_id == f"exit:{SYMBOL}:{OPENED}:{OPENED + 1000}:flatten-g{control.generation}"
    brain.close()
