"""The running totals of ``positions:open`` and ``governor:reservations`` against a real Redis.

The governor reads notional in use from these totals instead of summing every entry per plan; they are
moved by the same scripts that reserve (governor), commit, release and close (position-state) and correct
(the reconciler's tallied writes). Here the real governor and position-state run a long random sequence of
entries and exits, filled, partly filled and rejected, and after every round the totals must equal the
sums of the hashes they keep.
"""

from __future__ import annotations

import random

import pytest
import redis

from quantum_trader.bus.step import Step, StepRunner
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import Approval, PlanKind, ResultStatus
from quantum_trader.services import governor, position_state
from tests.integration._governor_support import (
    T0,
    approvals,
    consumer,
    context,
    decisions,
    drain,
    entry,
    exit_plan,
    policy,
    publish_plan,
    publish_result,
    release,
    result_for,
    text_hash,
)

SYMBOLS = [f"T{i:03d}USDT" for i in range(130)]
TALLIED = ("open_positions", "reservations")


def assert_totals_are_the_sums(r: redis.Redis, keys: Keys) -> None:
    for name in TALLIED:
        values = [float(v) for v in r.hvals(getattr(keys, name))]
        kept = text_hash(r, getattr(keys, f"{name}_totals"))
        assert int(kept.get("count", 0)) == len(values), (name, kept, len(values))
        assert float(kept.get("sum", 0)) == pytest.approx(sum(values), rel=1e-12, abs=1e-9), (name, kept)


class Desk:
    def __init__(self, redis_url: str, instance: str, r: redis.Redis, **risk: object) -> None:
        self.r = r
        limits = {
            "maxOpenPositions": 10_000,
            "maxNotionalPerTrade": 1_000,
            "maxTotalNotional": 100_000_000,
            "maxEntriesPerHour": 100_000,
            "maxEntriesPerFiveMinutes": 100_000,
            "maxLeverage": 5,
        }
        spec = policy(SYMBOLS, **{**limits, **risk})
        gctx = context(redis_url, instance, spec, "governor")
        self.gov = consumer(gctx, governor.build(gctx))
        pctx = context(redis_url, instance, spec, "position-state")
        self.ps = consumer(pctx, position_state.build(pctx))
        self.keys = gctx.keys
        release(r, self.keys)

    def decide(self, plans: list) -> dict[str, Approval]:
        """Publish ``plans``, let the governor decide them all; the approvals by plan id."""
        for plan in plans:
            publish_plan(self.r, self.keys, plan)
        drain(self.gov)
        wanted = {p.plan_id for p in plans}
        return {a.plan.plan_id: a for a in approvals(self.r, self.keys) if a.plan.plan_id in wanted}

    def settle(self, results: list) -> None:
        for result in results:
            publish_result(self.r, self.keys, result)
        drain(self.ps)

    def qty(self, symbol: str) -> float:
        return float(self.r.hget(self.keys.position(symbol), "qty") or 0)


def test_totals_equal_the_sums_after_a_long_random_sequence(redis_url: str, instance: str, r: redis.Redis) -> None:
    d = Desk(redis_url, instance, r)
    rng = random.Random(11)
    pending: dict[str, Approval] = {}  # symbol -> the approval apply-layer has not answered yet
    t = T0
    seen = set()
    largest = {name: 0 for name in TALLIED}
    for _ in range(20):
        plans, results = [], []
        for symbol in rng.sample(SYMBOLS, 100):
            t += 1
            approval = pending.get(symbol)
            if approval is not None:
                if rng.random() < 0.25:
                    continue  # still in flight: its reservation or exit lock stays
                plan = approval.plan
                outcome = rng.choice(["filled", "filled", "partial", "rejected"])
                seen.add((plan.kind, outcome))
                if outcome == "rejected":
                    results.append(result_for(approval, ResultStatus.REJECTED, time=t))
                else:
                    qty = plan.qty if plan.kind is PlanKind.EXIT else plan.reference_notional / plan.price
                    if outcome == "partial":
                        qty = round(qty * rng.choice([0.3, 0.5, 0.77]), 6)
                    price = plan.price * rng.uniform(0.97, 1.03)
                    results.append(result_for(approval, filled_qty=qty, avg_price=price, fee=0.01, time=t))
                del pending[symbol]
            elif r.hexists(d.keys.open_positions, symbol):
                plans.append(exit_plan(symbol, f"x{t}", time=t, qty=d.qty(symbol), price=rng.uniform(90, 110)))
            else:
                notional = round(rng.uniform(5, 900), rng.choice([0, 2, 7]))
                plans.append(entry(symbol, f"e{t}", time=t, notional=notional, price=rng.uniform(10, 500)))
        d.settle(results)
        assert_totals_are_the_sums(r, d.keys)
        approved = d.decide(plans)
        assert len(approved) == len(plans), [x.reasons for x in decisions(r, d.keys) if not x.approved][:3]
        pending.update({a.plan.symbol: a for a in approved.values()})
        assert_totals_are_the_sums(r, d.keys)
        for name in TALLIED:
            largest[name] = max(largest[name], r.hlen(getattr(d.keys, name)))
    # both hashes outgrew what the governor re-sums anyway, so the totals themselves were what it read
    assert min(largest.values()) > 64, largest
    assert {kind for kind, _ in seen} == {PlanKind.ENTRY, PlanKind.EXIT}
    assert {outcome for _, outcome in seen} == {"filled", "partial", "rejected"}

    # close everything: nothing in use is exactly nothing, with no float residue
    while pending or r.hlen(d.keys.open_positions):
        t += 1
        d.settle([result_for(a, ResultStatus.REJECTED, time=t) for a in pending.values()])
        pending.clear()
        symbols = sorted(r.hkeys(d.keys.open_positions))
        approved = d.decide([exit_plan(s, f"close{t}-{s}", time=t, qty=d.qty(s)) for s in symbols])
        d.settle([result_for(a, time=t) for a in approved.values()])
    assert_totals_are_the_sums(r, d.keys)
    for name in TALLIED:
        assert text_hash(r, getattr(d.keys, f"{name}_totals")) == {"sum": "0", "count": "0"}


def _open(d: Desk, count: int, notional: float) -> None:
    """``count`` open positions of ``notional`` each, through the governor and position-state."""
    approved = d.decide([entry(s, f"open-{s}", notional=notional) for s in SYMBOLS[:count]])
    d.settle([result_for(a) for a in approved.values()])
    assert d.r.hlen(d.keys.open_positions) == count and d.r.hlen(d.keys.reservations) == 0


def test_the_total_notional_limit_is_exact_when_read_from_the_totals(
    redis_url: str, instance: str, r: redis.Redis
) -> None:
    d = Desk(redis_url, instance, r, maxTotalNotional=8_000 + 150)
    _open(d, 80, 100.0)
    assert text_hash(r, d.keys.open_positions_totals) == {"sum": "8000", "count": "80"}
    over = d.decide([entry(SYMBOLS[90], "over", notional=150.01)])
    fits = d.decide([entry(SYMBOLS[91], "fits", notional=150.0)])  # 8,000 + 150: exactly the total
    assert (list(over), list(fits)) == ([], ["fits"])
    assert decisions(r, d.keys)[-2].reasons == ("max_total_notional",)


def test_a_write_that_bypassed_the_totals_is_repaired_and_an_unreadable_value_fails_closed(
    redis_url: str, instance: str, r: redis.Redis
) -> None:
    d = Desk(redis_url, instance, r, maxTotalNotional=8_000 + 500)
    _open(d, 80, 100.0)
    r.hset(d.keys.open_positions, "HANDUSDT", "400.0")  # by hand: the count no longer matches
    assert d.decide([entry(SYMBOLS[90], "over", notional=100.01)]) == {}
    assert text_hash(r, d.keys.open_positions_totals) == {"sum": "8400", "count": "81"}
    assert list(d.decide([entry(SYMBOLS[91], "fits", notional=100.0)])) == ["fits"]

    r.hset(d.keys.open_positions, "BADUSDT", "not a number")
    assert d.decide([entry(SYMBOLS[92], "small", notional=1.0)]) == {}
    assert decisions(r, d.keys)[-1].reasons == ("max_total_notional",)
    assert r.exists(d.keys.open_positions_totals) == 0  # nothing kept that could hide the bad value
    r.hdel(d.keys.open_positions, "BADUSDT")
    assert d.decide([entry(SYMBOLS[93], "later", notional=1.0)]) == {}  # 8,500 + 1 > 8,500
    assert text_hash(r, d.keys.open_positions_totals) == {"sum": "8400", "count": "81"}


def test_a_tallied_step_moves_the_totals_by_the_difference(redis_url: str, instance: str, r: redis.Redis) -> None:
    """The reconciler's corrections and position-state's settlements go through ``Step.tally``."""
    keys = Keys(instance)
    runner = StepRunner(r, keys, "test", max_len=100, done_ttl_seconds=60)
    totals = keys.open_positions_totals

    def apply(message_id: str, *writes: tuple) -> dict[str, str]:
        step = Step()
        for command, symbol, *value in writes:
            step.tally(command, keys.open_positions, symbol, *value, totals=totals)
        runner.run(step, message_id=message_id)
        return text_hash(r, totals)

    assert apply("a", ("HSET", "A", 10.5), ("HSET", "B", 0.25)) == {"sum": "10.75", "count": "2"}
    assert apply("b", ("HSET", "A", 3.0)) == {"sum": "3.25", "count": "2"}  # an overwrite counts once
    assert apply("c", ("HDEL", "C")) == {"sum": "3.25", "count": "2"}  # nothing to delete: nothing moves
    assert apply("a", ("HDEL", "A")) == {"sum": "3.25", "count": "2"}  # a duplicate step writes nothing
    assert apply("d", ("HDEL", "A"), ("HDEL", "B")) == {"sum": "0", "count": "0"}
    with pytest.raises(ValueError):
        Step().tally("HSET", keys.open_positions, "A", totals=totals)
    with pytest.raises(ValueError):
        Step().tally("HINCRBY", keys.open_positions, "A", 1.0, totals=totals)
