"""An exit planned for a trade that is already closed never reaches the exchange (invariants 1, 6, 7).

The mechanism seen in ``qt run`` (7-17 "exchange: ReduceOnly Order is rejected." per short run):
exit-brain plans an exit and, when no newer ``position.snapshot`` has reached it after
``RETRY_AFTER_TICKS`` ticks, plans again for the position it still watches. exit-brain reads
``market.tick`` directly while the exit's fill travels governor -> apply-layer -> position-state ->
snapshot, so under load the retry is made for a trade that has closed meanwhile — and a new trade
may be open on the symbol by the time the retry reaches the governor, which only asks whether the
symbol has *a* position. Before the fix apply-layer then sent the old trade's closing side,
reduce-only: against a new position on the other side the exchange refused it (-2022), against a
new position on the same side it closed that position for a reason that was never about it.

Here the stale retry is the exact plan exit-brain makes (``brain.exit_plan`` of the old trade's
view, with exit-brain's plan id), sent after the first trade closed and the second opened, on real
processes (exchange-sim, governor, apply-layer, position-state) and a real redis-server, in a fixed
order: deterministic.
"""

from __future__ import annotations

import json

import pytest

from quantum_trader.bus.consumer import StreamConsumer
from quantum_trader.contracts.envelope import decode
from quantum_trader.contracts.messages import Plan, PositionSide, Side
from quantum_trader.exchange.order_ids import client_order_id
from quantum_trader.exits import brain
from quantum_trader.exits.position import PositionView
from quantum_trader.exits.rules import ExitDecision
from tests.factories import entry, send, tick
from tests.integration.test_exit_brain_service import Harness as ExitBrainHarness
from tests.integration.test_stack_execution import EXECUTOR, policy, prices, results, wait_for_price
from tests.stack import running_stack, sim_orders, stream, wait_for

SYMBOL = "S09USDT"


def watched_view(r, keys) -> PositionView:
    """The position as exit-brain watches it (what a snapshot of it carries)."""
    fields = r.hgetall(keys.position(SYMBOL))
    return PositionView(
        symbol=SYMBOL,
        side=PositionSide(fields["side"]),
        qty=float(fields["qty"]),
        entry_price=float(fields["entry_price"]),
        stop_loss=float(fields["stop_loss"]) if fields.get("stop_loss") else None,
        take_profit=float(fields["take_profit"]) if fields.get("take_profit") else None,
        opened_at=int(fields["opened_at"]),
        version=int(fields["version"]),
    )


def exit_brain_plan(view: PositionView, t: int):
    """The plan exit-brain emits for ``view`` on the tick of market time ``t``."""
    plan_id = brain.exit_plan_id(view.symbol, view.opened_at, t)
    return brain.exit_plan(view, ExitDecision("stop_loss", advanced=False), plan_id, 100.0, t)


def side_of(r, keys) -> str:
    return r.hget(keys.position(SYMBOL), "side") or ""


def result_of(r, stack, plan_id: str) -> dict | None:
    return next((x for x in results(r, stack) if x["plan_id"] == plan_id), None)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("second_side", [Side.SELL, Side.BUY], ids=["reopened-short", "reopened-long"])
def test_a_retried_exit_of_a_closed_trade_is_refused_before_any_request(
    redis_url, r, instance, tmp_path, monkeypatch, second_side
):
    with running_stack(policy(), redis_url, instance, tmp_path, monkeypatch, only=EXECUTOR) as stack:
        keys = stack.keys
        prices(r, keys, [SYMBOL])
        wait_for_price(stack, [SYMBOL])
        send(r, keys, "apply.plan", entry(SYMBOL, "first-long", t=1_000), id="first-long")
        wait_for(lambda: side_of(r, keys) == "LONG", 30, "the first trade", stack)
        first = watched_view(r, keys)

        close = exit_brain_plan(first, 2_000)
        send(r, keys, "apply.plan", close, id=close.plan_id)
        wait_for(lambda: side_of(r, keys) == "FLAT", 30, "the first trade's close", stack)

        send(r, keys, "apply.plan", entry(SYMBOL, "second", t=3_000, side=second_side), id="second")
        expected = "SHORT" if second_side is Side.SELL else "LONG"
        wait_for(lambda: side_of(r, keys) == expected, 30, "the second trade", stack)
        second = watched_view(r, keys)
        assert second.opened_at != first.opened_at

        # exit-brain's retry for the first trade: same view, a later tick
        stale = exit_brain_plan(first, 4_000)
        send(r, keys, "apply.plan", stale, id=stale.plan_id)

        def decisions() -> list[dict]:
            return [d for d in stream(r, stack, "governor.decision") if d["plan_id"] == stale.plan_id]

        # the governor refuses it (apply-layer's own check before any order is the second line)
        wait_for(decisions, 30, "the stale exit's decision", stack)
        [decision] = decisions()
        assert not decision["approved"] and decision["reasons"] == ["no_open_position"], decision
        assert result_of(r, stack, stale.plan_id) is None
        assert client_order_id(stale.plan_id) not in {o["clientOrderId"] for o in sim_orders(stack)}
        # the second trade is untouched, and its own exit still works (the stale one held no lock)
        assert not r.hget(keys.exit_locks, SYMBOL)
        now = watched_view(r, keys)
        assert (now.side, now.qty, now.opened_at) == (second.side, second.qty, second.opened_at)
        own = exit_brain_plan(second, 5_000)
        send(r, keys, "apply.plan", own, id=own.plan_id)
        wait_for(lambda: side_of(r, keys) == "FLAT", 30, "the second trade's close", stack)
        assert result_of(r, stack, own.plan_id)["status"] == "FILLED"
        exchange_rejections = [x for x in results(r, stack) if x["status"] == "REJECTED"]
        assert exchange_rejections == []


@pytest.mark.timeout(180)
@pytest.mark.parametrize("next_trade", [None, Side.SELL], ids=["closed", "next-trade-open"])
def test_exit_brain_plans_no_retry_for_a_trade_position_state_has_closed(
    redis_url, r, instance, tmp_path, monkeypatch, next_trade
):
    """The retry itself: exit-brain's wait for the fill's snapshot ends while the snapshot is still
    unread (here: the snapshot stream is not consumed during the ticks, as when exit-brain runs ahead
    of the executor path). The real ExitBrain service and consumer run in this process so the test
    decides which of its two input streams is read when."""
    with running_stack(policy(), redis_url, instance, tmp_path, monkeypatch, only=EXECUTOR) as stack:
        keys = stack.keys
        prices(r, keys, [SYMBOL])
        wait_for_price(stack, [SYMBOL])
        watcher = ExitBrainHarness(redis_url, instance, policy=stack.policy)
        send(r, keys, "apply.plan", entry(SYMBOL, "first-long", t=1_000), id="first-long")
        wait_for(lambda: side_of(r, keys) == "LONG", 30, "the first trade", stack)
        watcher.drain()  # exit-brain watches the trade (stop at 90)
        ticks_only = StreamConsumer(watcher.ctx.client, keys, "exit-brain", "exit-brain-0",
                                    {"market.tick": watcher.service.on_tick}, watcher.ctx.policy.streams)
        send(r, keys, "market.tick", tick(SYMBOL, 85.0, 2_000), id="stop-hit")
        while ticks_only.poll_once(block_ms=20):
            pass
        first = exit_plans(r, keys)
        assert len(first) == 1
        wait_for(lambda: side_of(r, keys) == "FLAT", 30, "the stop's fill", stack)
        if next_trade is not None:
            send(r, keys, "apply.plan", entry(SYMBOL, "second", t=3_000, side=next_trade), id="second")
            wait_for(lambda: side_of(r, keys) == "SHORT", 30, "the next trade", stack)

        for i in range(1, brain.RETRY_AFTER_TICKS + 5):
            send(r, keys, "market.tick", tick(SYMBOL, 85.0, 3_000 + i), id=f"after-{i}")
        while ticks_only.poll_once(block_ms=20):
            pass
        assert exit_plans(r, keys) == first  # before the fix: a retry for the closed trade
        assert watcher.service.counters["exits_for_closed_trade"] >= 1

        watcher.drain()  # the snapshots arrive: the closed trade is no longer watched
        watched = json.loads(r.hget(keys.component_state("exit-brain", SYMBOL), "data"))["position"]
        assert (watched or {}).get("opened_at") != first[0].position_opened_at
        assert exit_plans(r, keys) == first
        watcher.close()


def exit_plans(r, keys) -> list[Plan]:
    found = [decode(fields, Plan).message for _, fields in r.xrange(keys.stream("apply.plan"))]
    return [p for p in found if p.source == "exit-brain"]
