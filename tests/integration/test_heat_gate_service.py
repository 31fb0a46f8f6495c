"""heat-gate against a real redis-server: fail closed (no heat -> nothing sent, proposal acked), pass when fresh."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import redis

from quantum_trader.bus.consumer import StreamConsumer
from quantum_trader.bus.control import Scope, write_control
from quantum_trader.bus.publish import publish
from quantum_trader.bus.step import Output
from quantum_trader.contracts.envelope import decode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import HarvestAction, HarvestProposal, OrderType, Plan, PlanKind, Side
from quantum_trader.contracts.policy import PolicySpec, StreamRetention
from quantum_trader.exits.heat import GateSettings, HeatClock
from quantum_trader.runtime.runner import connect
from quantum_trader.runtime.service import ComponentContext
from quantum_trader.runtime.settings import load_settings
from quantum_trader.services.exit_brain import build as build_exit_brain
from quantum_trader.services.heat_gate import HeatGate, build

OPENED = 1_700_000_000_000
SYMBOL = "SOLUSDT"


class Harness:
    """heat-gate on its own, on the wall clock (as live): no exit-brain verdict to wait for, unless ``built``
    from the policy (a replay: market clock, and exit-brain runs, so proposals wait for its verdict)."""

    def __init__(
        self,
        redis_url: str,
        instance: str,
        pod: str = "heat-gate-0",
        *,
        built: bool = False,
        policy: PolicySpec | None = None,
    ):
        settings = load_settings(
            env={"QT_COMPONENT": "heat-gate", "QT_INSTANCE": instance, "QT_REDIS_URL": redis_url, "QT_POD": pod}
        )
        self.ctx = ComponentContext(
            settings=settings, policy=policy or PolicySpec(), client=connect(redis_url), keys=Keys(instance)
        )
        if built:
            service = build(self.ctx)
            assert isinstance(service, HeatGate)
            self.service = service
        else:
            self.service = HeatGate(
                self.ctx,
                settings=GateSettings(max_portfolio_heat=self.ctx.policy.risk.max_portfolio_heat),
                defers_to_exit_brain=False,
            )
        self.consumer = StreamConsumer(
            self.ctx.client, self.ctx.keys, "heat-gate", pod, self.service.handlers(), self.ctx.policy.streams
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


@pytest.fixture
def gate(redis_url, instance, r, keys):
    write_control(r, keys, engaged=False)
    harness = Harness(redis_url, instance)
    yield harness
    harness.close()


def proposal(action: HarvestAction = HarvestAction.PARTIAL_CLOSE, rule: str = "partial_2r") -> HarvestProposal:
    return HarvestProposal(
        symbol=SYMBOL,
        proposal_id=f"harvest:{SYMBOL}:{OPENED}:{rule}",
        time=OPENED + 600_000,
        action=action,
        fraction=0.5 if action is HarvestAction.PARTIAL_CLOSE else 1.0,
        r_multiple=2.1,
        kill_score=0.1,
        price=150.0,
        reasons=(rule,),
    )


def send(r, keys: Keys, prop: HarvestProposal) -> None:
    publish(r, keys, Output("harvest.proposal", prop, id=prop.proposal_id), 10_000)


def write_heat(r, keys: Keys, heat: float, age_ms: int = 0) -> None:
    now = int(time.time() * 1000)  # position-state stamps heat with the wall clock
    equity = 10_000.0
    r.hset(
        keys.portfolio_heat,
        mapping={
            "heat": repr(heat),
            "open_risk": repr(heat * equity),
            "equity": repr(equity),
            "positions": "2",
            "time": str(now - age_ms),
        },
    )


def write_position(r, keys: Keys, side: str = "SHORT", qty: str = "8.0") -> None:
    r.hset(
        keys.position(SYMBOL),
        mapping={
            "side": side,
            "qty": qty,
            "entry_price": "160.0",
            "stop_loss": "165.0",
            "take_profit": "140.0",
            "opened_at": str(OPENED),
            "version": "3",
        },
    )


def plans(r, keys: Keys) -> list[Plan]:
    return [decode(fields, Plan).message for _, fields in r.xrange(keys.stream("apply.plan"))]


def assert_acked(r, keys: Keys, prop: HarvestProposal) -> None:
    assert r.xpending(keys.stream("harvest.proposal"), "heat-gate")["pending"] == 0
    assert r.exists(keys.done("heat-gate", prop.proposal_id))


def test_no_heat_key_emits_nothing_and_the_proposal_is_acked(r, keys, gate):
    write_position(r, keys)
    send(r, keys, proposal(HarvestAction.CLOSE, "kill"))
    gate.drain()
    assert plans(r, keys) == []
    assert_acked(r, keys, proposal(HarvestAction.CLOSE, "kill"))
    assert gate.service.counters["hold_heat_missing"] == 1
    assert gate.service.counters["passed"] == 0
    assert gate.consumer.stats.processed == 1 and gate.consumer.stats.dead_lettered == 0


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda r, k: (write_heat(r, k, 0.05, age_ms=120_000), write_position(r, k)), "hold_heat_stale"),
        (
            lambda r, k: (r.hset(k.portfolio_heat, mapping={"heat": "warm", "time": "1"}), write_position(r, k)),
            "hold_heat_unreadable",
        ),
        (lambda r, k: write_heat(r, k, 0.05), "hold_position_missing"),
        (lambda r, k: (write_heat(r, k, 0.05), write_position(r, k, side="FLAT", qty="0")), "hold_position_flat"),
        (lambda r, k: (write_heat(r, k, 0.01), write_position(r, k)), "hold_heat_below_partial"),
    ],
)
def test_every_hold_is_counted_and_acked(r, keys, gate, setup, reason):
    setup(r, keys)
    prop = proposal()
    send(r, keys, prop)
    gate.drain()
    assert plans(r, keys) == []
    assert_acked(r, keys, prop)
    assert gate.service.counters[reason] == 1
    assert sum(v for k, v in gate.service.counters.items() if k.startswith("hold_")) == 1


def test_kill_switch_exits_holds_harvests(r, keys, gate):
    write_control(r, keys, engaged=True, scope=Scope.EXITS, reason="test")
    write_heat(r, keys, 0.05)
    write_position(r, keys)
    send(r, keys, proposal(HarvestAction.CLOSE, "kill"))
    gate.drain()
    assert plans(r, keys) == []
    assert gate.service.counters["hold_kill_switch"] == 1


def test_fresh_heat_and_position_make_a_reduce_only_exit_plan(r, keys, gate):
    write_heat(r, keys, 0.05)
    write_position(r, keys, side="SHORT", qty="8.0")
    prop = proposal()
    send(r, keys, prop)
    send(r, keys, prop)  # a duplicate proposal: one plan only
    gate.drain()
    made = plans(r, keys)
    assert len(made) == 1
    plan = made[0]
    assert plan.kind is PlanKind.EXIT and plan.side is Side.BUY and plan.qty == 4.0
    assert plan.reduce_only is True and plan.order_type is OrderType.MARKET
    assert plan.source == "heat-gate" and plan.plan_id == f"heat:{prop.proposal_id}"
    assert plan.reason_codes == ("harvest_partial", "partial_2r")
    assert gate.service.counters["passed"] == 1
    assert_acked(r, keys, prop)


def test_harvest_to_heat_gate_end_to_end(redis_url, instance, r, keys, gate):
    """A real proposal from harvest, through the stream, becomes the gate's plan."""
    from quantum_trader.contracts.messages import PositionSide, PositionSnapshot, Tick
    from quantum_trader.services.harvest import build as build_harvest

    settings = load_settings(
        env={"QT_COMPONENT": "harvest", "QT_INSTANCE": instance, "QT_REDIS_URL": redis_url, "QT_POD": "h"}
    )
    ctx = ComponentContext(settings=settings, policy=PolicySpec(), client=connect(redis_url), keys=keys)
    harvest = build_harvest(ctx)
    consumer = StreamConsumer(ctx.client, keys, "harvest", "h", harvest.handlers(), ctx.policy.streams)
    consumer.ensure_groups()
    snap = PositionSnapshot(
        symbol=SYMBOL,
        side=PositionSide.SHORT,
        qty=8.0,
        entry_price=160.0,
        mark_price=160.0,
        unrealized_pnl=0.0,
        stop_loss=165.0,
        take_profit=140.0,
        opened_at=OPENED,
        time=OPENED,
        source="position-state",
        version=3,
    )
    publish(r, keys, Output("position.snapshot", snap, id="snap:1"), 10_000)
    for _ in range(3):  # the snapshot first: one read takes both streams, ticks before snapshots
        consumer.poll_once(block_ms=20)
    for i, price in enumerate([158.0, 151.0, 149.0]):
        t = OPENED + 60_000 * (i + 1)
        tick = Tick(symbol=SYMBOL, price=price, bid=price, ask=price, volume=1.0, event_time=t, source="test")
        publish(r, keys, Output("market.tick", tick, id=f"tick:{t}"), 10_000)
    for _ in range(4):
        consumer.poll_once(block_ms=20)
    write_heat(r, keys, 0.05)
    write_position(r, keys, side="SHORT", qty="8.0")
    gate.drain()
    made = plans(r, keys)
    assert len(made) == 1
    assert made[0].plan_id == f"heat:harvest:{SYMBOL}:{OPENED}:partial_2r"
    assert made[0].side is Side.BUY and made[0].qty == 4.0 and made[0].price == 149.0  # 2.2 R: (160 - 149) / 5
    ctx.client.close()


# --- in a replay: market clock, and exit-brain's verdict on the bar first ---------------------------
class ExitBrainHarness(Harness):
    """The real exit-brain service on the same instance, stepped by hand."""

    def __init__(self, redis_url: str, instance: str):
        settings = load_settings(
            env={"QT_COMPONENT": "exit-brain", "QT_INSTANCE": instance, "QT_REDIS_URL": redis_url, "QT_POD": "eb"}
        )
        self.ctx = ComponentContext(
            settings=settings, policy=PolicySpec(), client=connect(redis_url), keys=Keys(instance)
        )
        self.service = build_exit_brain(self.ctx)
        self.consumer = StreamConsumer(
            self.ctx.client, self.ctx.keys, "exit-brain", "eb", self.service.handlers(), self.ctx.policy.streams
        )
        self.consumer.ensure_groups()


def replay_inputs(r, keys: Keys) -> None:
    """Heat stamped with an ancient wall time (irrelevant in a replay) and the market time of the fill."""
    write_heat(r, keys, 0.05)
    r.hset(keys.portfolio_heat, mapping={"time": "1", "market_time": str(OPENED)})
    write_position(r, keys)
    r.hset(keys.position(SYMBOL), "updated_at", str(OPENED))


def feed_exit_brain(r, keys: Keys, exit_brain: ExitBrainHarness, take_profit: float, at: int) -> None:
    """The trade's snapshot, then (once exit-brain watches it) the tick of the proposal's bar."""
    from quantum_trader.contracts.messages import PositionSide, PositionSnapshot, Tick

    snap = PositionSnapshot(
        symbol=SYMBOL, side=PositionSide.SHORT, qty=8.0, entry_price=160.0, mark_price=160.0, unrealized_pnl=0.0,
        stop_loss=165.0, take_profit=take_profit, opened_at=OPENED, time=OPENED, source="position-state", version=3,
    )  # fmt: skip
    publish(r, keys, Output("position.snapshot", snap, id="snap:3"), 10_000)
    exit_brain.drain()
    tick = Tick(symbol=SYMBOL, price=150.0, bid=150.0, ask=150.0, volume=1.0, event_time=at, source="test")
    publish(r, keys, Output("market.tick", tick, id=f"tick:{at}"), 10_000)
    exit_brain.drain()


def send_replay_proposal(r, keys: Keys, gate: Harness, verdict_wait_seconds: float) -> HarvestProposal:
    """The replay's inputs written and a proposal sent, to a gate that waits that long for a verdict."""
    replay_inputs(r, keys)
    gate.service.verdict_wait_seconds = verdict_wait_seconds
    prop = proposal()
    send(r, keys, prop)
    return prop


@pytest.fixture
def replay_gate(redis_url, instance, r, keys):
    write_control(r, keys, engaged=False)
    harness = Harness(redis_url, instance, built=True)
    yield harness
    harness.close()


def test_a_replay_gate_is_on_the_market_clock_and_defers_to_a_running_exit_brain(replay_gate):
    assert replay_gate.service.settings.clock is HeatClock.MARKET
    assert replay_gate.service.defers_to_exit_brain


def verdict_after_a_wait(redis_url, instance, r, keys, gate: Harness, meanwhile=None) -> HarvestProposal:
    """A replay proposal that waits (no verdict yet; ``meanwhile`` runs then), until exit-brain judges its
    bar with no exit (150 is above the 140 target): the proposal, once the gate is done with it."""
    prop = send_replay_proposal(r, keys, gate, 30.0)
    waiting = threading.Thread(target=gate.drain)
    waiting.start()
    time.sleep(0.5)
    assert waiting.is_alive() and plans(r, keys) == [], "no verdict yet: the proposal waits"
    assert r.xpending(keys.stream("harvest.proposal"), "heat-gate")["pending"] == 1
    if meanwhile is not None:
        meanwhile()
    exit_brain = ExitBrainHarness(redis_url, instance)
    feed_exit_brain(r, keys, exit_brain, take_profit=140.0, at=prop.time)
    waiting.join(30)
    exit_brain.close()
    assert not waiting.is_alive()
    return prop


def test_a_replay_proposal_waits_for_exit_brains_verdict_on_its_bar_then_passes(
    redis_url, instance, r, keys, replay_gate
):
    prop = verdict_after_a_wait(redis_url, instance, r, keys, replay_gate)
    made = plans(r, keys)
    assert [p.plan_id for p in made] == [f"heat:{prop.proposal_id}"]
    assert replay_gate.service.counters["passed"] == 1
    assert_acked(r, keys, prop)


def test_a_replay_proposal_for_a_trade_exit_brain_exits_on_the_bar_is_dropped(
    redis_url, instance, r, keys, replay_gate
):
    replay_inputs(r, keys)
    prop = proposal()
    exit_brain = ExitBrainHarness(redis_url, instance)
    feed_exit_brain(r, keys, exit_brain, take_profit=155.0, at=prop.time)  # 150 reaches the target: take-profit
    exit_brain.close()
    send(r, keys, prop)
    replay_gate.drain()
    made = plans(r, keys)
    assert [p.source for p in made] == ["exit-brain"] and made[0].reason_codes == ("take_profit",)
    assert replay_gate.service.counters["hold_exit_brain_exiting"] == 1
    assert replay_gate.service.counters["passed"] == 0
    assert_acked(r, keys, prop)


def test_without_a_verdict_a_replay_proposal_never_passes(r, keys, replay_gate):
    prop = send_replay_proposal(r, keys, replay_gate, 0.1)
    replay_gate.drain()
    assert plans(r, keys) == []
    assert r.xpending(keys.stream("harvest.proposal"), "heat-gate")["pending"] == 1, "left pending, to retry"
    assert not r.exists(keys.done("heat-gate", prop.proposal_id))
    assert replay_gate.service.counters["verdict_waits"] >= 1 and replay_gate.consumer.stats.errors >= 1


def keys_read(redis_url: str, watched: dict[str, str], during) -> Counter:
    """How many commands named each of ``watched``'s keys (by label) while ``during()`` ran (MONITOR)."""
    seen: Counter = Counter()
    done = f"monitor-done-{time.monotonic_ns()}"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    started = threading.Event()

    def follow() -> None:
        with client.monitor() as monitor:
            started.set()
            while True:
                command = monitor.next_command()["command"]
                if done in command:
                    return
                words = command.split()
                for label, key in watched.items():
                    seen[label] += key in words

    follower = threading.Thread(target=follow)
    follower.start()
    started.wait(5)
    time.sleep(0.05)  # MONITOR is in effect once the server has answered it
    try:
        during()
    finally:
        client.echo(done)
        follower.join(10)
        client.close()
    return seen


def test_a_wait_for_exit_brains_verdict_polls_its_state_alone(redis_url, r, keys, replay_gate):
    send_replay_proposal(r, keys, replay_gate, 0.3)
    watched = {
        "heat": keys.portfolio_heat,
        "position": keys.position(SYMBOL),
        "control": keys.control,
        "exit-brain": keys.component_state("exit-brain", SYMBOL),
    }
    reads = keys_read(redis_url, watched, replay_gate.drain)
    assert replay_gate.service.counters["verdict_waits"] >= 1 and plans(r, keys) == []
    assert reads["heat"] == reads["position"] == reads["control"] == 1, reads
    assert reads["exit-brain"] > 10, reads


def test_a_kill_switch_engaged_while_a_proposal_waits_holds_it_once_the_verdict_comes(
    redis_url, instance, r, keys, replay_gate
):
    def engage() -> None:
        write_control(r, keys, engaged=True, scope=Scope.EXITS, reason="test")

    prop = verdict_after_a_wait(redis_url, instance, r, keys, replay_gate, meanwhile=engage)
    assert plans(r, keys) == []
    assert replay_gate.service.counters["hold_kill_switch"] == 1
    assert_acked(r, keys, prop)


def test_an_orderly_stop_ends_the_wait_and_leaves_the_proposal_pending(r, keys, replay_gate):
    prop = send_replay_proposal(r, keys, replay_gate, 30.0)
    waiting = threading.Thread(target=replay_gate.consumer.poll_once, kwargs={"block_ms": 20})
    waiting.start()
    time.sleep(0.3)
    assert waiting.is_alive(), "no verdict: the proposal waits"
    replay_gate.ctx.stop.set()
    waiting.join(2)
    assert not waiting.is_alive(), "the stop ended the wait, long before verdict_wait_seconds"
    assert plans(r, keys) == []
    assert r.xpending(keys.stream("harvest.proposal"), "heat-gate")["pending"] == 1, "left pending, to retry"
    assert not r.exists(keys.done("heat-gate", prop.proposal_id))


def test_a_proposal_never_given_a_verdict_goes_to_the_dlq_after_max_deliveries(redis_url, instance, r, keys):
    write_control(r, keys, engaged=False)
    policy = PolicySpec(streams=StreamRetention(max_deliveries=2, claim_idle_ms=100))
    harness = Harness(redis_url, instance, built=True, policy=policy)
    try:
        prop = send_replay_proposal(r, keys, harness, 0.05)
        deadline = time.monotonic() + 20
        while not r.xlen(keys.dlq("harvest.proposal")) and time.monotonic() < deadline:
            harness.consumer.poll_once(block_ms=20)
            time.sleep(0.15)  # past claim_idle_ms: the next poll reclaims it, one more delivery
        dead = r.xrange(keys.dlq("harvest.proposal"))
        assert len(dead) == 1 and dead[0][1]["orig.id"] == prop.proposal_id
        assert "delivered 3 times (max 2)" in dead[0][1]["reason"]
        assert plans(r, keys) == []
        assert r.xpending(keys.stream("harvest.proposal"), "heat-gate")["pending"] == 0
        assert harness.service.counters["passed"] == 0 and harness.service.counters["verdict_waits"] == 2
    finally:
        harness.close()
