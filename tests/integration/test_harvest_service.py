"""harvest against a real redis-server: one partial at 2 R per position, across restarts; kill -> CLOSE."""

from __future__ import annotations

import pytest

from quantum_trader.bus.consumer import StreamConsumer
from quantum_trader.bus.publish import publish
from quantum_trader.bus.step import Output
from quantum_trader.contracts.envelope import decode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import HarvestAction, HarvestProposal, PositionSide, PositionSnapshot, Tick
from quantum_trader.contracts.policy import PolicySpec
from quantum_trader.runtime.runner import connect
from quantum_trader.runtime.service import ComponentContext
from quantum_trader.runtime.settings import load_settings
from quantum_trader.services.harvest import Harvest, build

OPENED = 1_700_000_000_000
SYMBOL = "ETHUSDT"


class Harness:
    def __init__(self, redis_url: str, instance: str, pod: str = "harvest-0"):
        settings = load_settings(
            env={"QT_COMPONENT": "harvest", "QT_INSTANCE": instance, "QT_REDIS_URL": redis_url, "QT_POD": pod}
        )
        self.ctx = ComponentContext(
            settings=settings, policy=PolicySpec(), client=connect(redis_url), keys=Keys(instance)
        )
        self.service = build(self.ctx)
        assert isinstance(self.service, Harvest)
        self.consumer = StreamConsumer(
            self.ctx.client, self.ctx.keys, "harvest", pod, self.service.handlers(), self.ctx.policy.streams
        )
        self.consumer.ensure_groups()

    def drain(self) -> None:
        idle = 0
        while idle < 2:
            idle = 0 if self.consumer.poll_once(block_ms=20) else idle + 1

    def close(self) -> None:
        self.ctx.client.close()


@pytest.fixture
def keys(instance: str) -> Keys:
    return Keys(instance)


def snapshot(version: int = 1, opened_at: int = OPENED, qty: float = 4.0) -> PositionSnapshot:
    return PositionSnapshot(
        symbol=SYMBOL,
        side=PositionSide.LONG,
        qty=qty,
        entry_price=2000.0,
        mark_price=2000.0,
        unrealized_pnl=0.0,
        stop_loss=1900.0,  # R = 100
        take_profit=2500.0,
        opened_at=opened_at,
        time=opened_at,
        source="position-state",
        version=version,
    )


def send_ticks(r, keys: Keys, prices: list[float], start: int) -> None:
    for i, price in enumerate(prices):
        t = start + 60_000 * i
        tick = Tick(symbol=SYMBOL, price=price, bid=price, ask=price, volume=1.0, event_time=t, source="synthetic:test")
        publish(r, keys, Output("market.tick", tick, id=f"tick:{SYMBOL}:{t}"), 10_000)


def send_snapshot(r, keys: Keys, snap: PositionSnapshot) -> None:
    publish(r, keys, Output("position.snapshot", snap, id=f"snap:{SYMBOL}:{snap.version}"), 10_000)


def proposals(r, keys: Keys) -> list[HarvestProposal]:
    return [decode(fields, HarvestProposal).message for _, fields in r.xrange(keys.stream("harvest.proposal"))]


def test_partial_at_2r_once_even_across_a_restart_then_kill_closes(redis_url, instance, r, keys):
    first = Harness(redis_url, instance, pod="harvest-a")
    send_snapshot(r, keys, snapshot())
    first.drain()
    send_ticks(r, keys, [2050.0, 2150.0, 2210.0], OPENED + 60_000)
    first.drain()
    made = proposals(r, keys)
    assert len(made) == 1
    partial = made[0]
    assert partial.action is HarvestAction.PARTIAL_CLOSE and partial.fraction == 0.5
    assert partial.r_multiple == pytest.approx(2.1)
    assert partial.proposal_id == f"harvest:{SYMBOL}:{OPENED}:partial_2r"
    assert partial.time == OPENED + 180_000 and partial.price == 2210.0
    first.close()

    second = Harness(redis_url, instance, pod="harvest-b")
    send_snapshot(r, keys, snapshot(version=2, qty=2.0))  # the partial filled: same trade, smaller
    second.drain()
    send_ticks(r, keys, [2300.0, 2250.0, 2100.0, 2000.0, 1990.0], OPENED + 240_000)
    second.drain()
    made = proposals(r, keys)
    assert [p.action for p in made] == [HarvestAction.PARTIAL_CLOSE, HarvestAction.CLOSE]
    kill = made[1]
    assert kill.proposal_id == f"harvest:{SYMBOL}:{OPENED}:kill" and kill.kill_score >= 0.6
    assert kill.fraction == 1.0 and kill.reasons[0] == "kill_score"
    assert second.service.counters == {"proposals_kill": 1}
    second.close()


def test_nothing_is_proposed_without_a_position(redis_url, instance, r, keys):
    harvest = Harness(redis_url, instance)
    send_ticks(r, keys, [2000.0, 5000.0, 100.0], OPENED)
    harvest.drain()
    assert proposals(r, keys) == []
    assert r.xpending(keys.stream("market.tick"), "harvest")["pending"] == 0
    harvest.close()
