"""The governor refuses an exit for a trade that is not the one open (``no_open_position``), on a real Redis.

An exit names its trade (``position_opened_at``) and closes one side. One made for a trade that closed
meanwhile — exit-brain's retry reaching the governor after the next trade opened — used to be approved
and then refused by apply-layer; now the governor refuses it, so it holds no exit lock and takes no
slot in apply-layer's queue. A plan without ``position_opened_at``, or a position hash without the
field, is judged by the side alone (positions can always be closed).
"""

from __future__ import annotations

import pytest
import redis

from quantum_trader.contracts.envelope import decode, encode
from quantum_trader.contracts.messages import Plan, Side
from quantum_trader.risk.limits import Limits
from quantum_trader.runtime.service import ComponentContext
from quantum_trader.services.governor import GovernorScript
from tests.integration._governor_support import T0, approvals, context, decisions, exit_plan, policy, release

SYMBOL = "BTCUSDT"
OPENED = T0 - 60_000


def hold(r: redis.Redis, keys, side: str, opened_at: int | None) -> None:
    r.hset(keys.open_positions, SYMBOL, "100.0")
    fields = {"side": side, "qty": "1.0", "entry_price": "100.0", "version": "3"}
    if opened_at is not None:
        fields["opened_at"] = str(opened_at)
    r.hset(keys.position(SYMBOL), mapping=fields)


def decide(ctx: ComponentContext, plan: Plan) -> str:
    script = GovernorScript(ctx.client, ctx.keys, Limits.from_policy(ctx.policy), ctx.policy.streams)
    verdict = script.decide(decode(encode(plan, id=plan.plan_id), Plan), group="governor", entry_id="", now_ms=1)
    assert verdict.decided
    return verdict.reason


def for_trade(plan: Plan, opened_at: int | None) -> Plan:
    return plan.model_copy(update={"position_opened_at": opened_at})


@pytest.fixture
def ctx(redis_url: str, instance: str, r: redis.Redis) -> ComponentContext:
    """A governor's context, the kill switch released."""
    governor = context(redis_url, instance, policy(), "governor")
    release(r, governor.keys)
    return governor


def test_an_exit_for_another_trade_is_refused_as_no_open_position(ctx: ComponentContext, r: redis.Redis) -> None:
    keys = ctx.keys
    hold(r, keys, "LONG", OPENED)
    stale = for_trade(exit_plan(SYMBOL, "stale", time=T0), OPENED - 1)  # the trade before this one
    wrong_side = for_trade(exit_plan(SYMBOL, "wrong-side", time=T0 + 1, side=Side.BUY), OPENED)
    assert decide(ctx, stale) == "no_open_position"
    assert decide(ctx, wrong_side) == "no_open_position"
    assert r.hget(keys.exit_locks, SYMBOL) is None  # nothing held for them
    own = for_trade(exit_plan(SYMBOL, "own", time=T0 + 2), OPENED)
    assert decide(ctx, own) == "approved"
    assert [a.plan.plan_id for a in approvals(r, keys)] == ["own"]
    rejected = {d.plan_id: d.reasons for d in decisions(r, keys) if not d.approved}
    assert rejected == {"stale": ("no_open_position",), "wrong-side": ("no_open_position",)}


def test_an_exit_that_names_no_trade_or_meets_no_opened_at_is_judged_by_its_side(
    ctx: ComponentContext, r: redis.Redis
) -> None:
    keys = ctx.keys
    hold(r, keys, "SHORT", None)  # a position hash without opened_at (written before the field existed)
    assert decide(ctx, for_trade(exit_plan(SYMBOL, "named", time=T0, side=Side.BUY), OPENED)) == "approved"
    r.hdel(keys.exit_locks, SYMBOL)
    hold(r, keys, "SHORT", OPENED)
    assert decide(ctx, exit_plan(SYMBOL, "unnamed", time=T0 + 1, side=Side.BUY)) == "approved"
    r.hdel(keys.exit_locks, SYMBOL)
    assert decide(ctx, exit_plan(SYMBOL, "unnamed-wrong-side", time=T0 + 2, side=Side.SELL)) == "no_open_position"
