"""apply-layer releases what the governor holds for an approval that went to the DLQ, when it can tell
the plan and that no order can exist for it (the rule: execution/dead_letters.py; the I/O:
services/apply_layer/dlq_release.py).

Real apply-layer and simulator processes on the test Redis. The governor's state is written as the
governor leaves it after approving (a tallied reservation and the symbol's entry lock); the approvals
that go to the DLQ are entries no governor would write, put on ``apply.approved`` by hand.
"""

from __future__ import annotations

import json

import pytest

from quantum_trader.bus.codec import text, text_dict
from tests.stack import running_stack, stream, wait_for

SYMBOLS = ["S01USDT", "S02USDT", "S03USDT"]


def policy() -> dict:
    return {"symbols": SYMBOLS, "streams": {"claimIdleMs": 500, "maxDeliveries": 3}}


def counters(r, stack) -> dict:
    pod = stack.pods("apply-layer")[0].env["QT_POD"]
    raw = r.hget(stack.keys.heartbeat("apply-layer", pod), "counters")
    return json.loads(raw) if raw else {}


def reserve(r, keys, plan_id: str, symbol: str, notional: float) -> None:
    """The governor's writes for an approved entry: the reservation with its running totals, the entry lock."""
    r.hset(keys.reservations, plan_id, notional)
    r.hincrby(keys.reservations_totals, "count", 1)
    r.hincrbyfloat(keys.reservations_totals, "sum", notional)
    r.hset(keys.entry_locks, symbol, plan_id)


@pytest.mark.timeout(120)
def test_a_dead_lettered_approval_releases_its_reservation_only_when_no_order_can_exist(
    redis_url, r, instance, tmp_path, monkeypatch
):
    with running_stack(
        policy(), redis_url, instance, tmp_path, monkeypatch, only=["exchange-sim", "apply-layer"]
    ) as stack:
        keys = stack.keys
        reserve(r, keys, "plan-garbled", "S01USDT", 20.0)
        reserve(r, keys, "plan-maybe-sent", "S02USDT", 30.0)
        reserve(r, keys, "plan-live", "S03USDT", 40.0)
        r.set(keys.in_flight("plan-maybe-sent"), "1")  # an earlier attempt got as far as the request
        approved = keys.stream("apply.approved")
        bad = {"type": "Approval", "v": "1", "data": "{not json"}
        r.xadd(approved, {**bad, "id": "apr:plan-garbled", "symbol": "S01USDT"})
        r.xadd(approved, {**bad, "id": "apr:plan-maybe-sent", "symbol": "S02USDT"})
        r.xadd(approved, {**bad, "id": "no-plan-in-this-id", "symbol": "S03USDT"})
        wait_for(lambda: r.xlen(keys.dlq("apply.approved")) == 3, 30, "the three entries in the DLQ", stack)
        wait_for(lambda: not r.hexists(keys.reservations, "plan-garbled"), 30, "the garbled approval's release", stack)
        assert r.hget(keys.entry_locks, "S01USDT") is None, "its entry lock went with it"
        assert text_dict(r.hgetall(keys.reservations)) == {"plan-maybe-sent": "30.0", "plan-live": "40.0"}
        assert text_dict(r.hgetall(keys.entry_locks)) == {"S02USDT": "plan-maybe-sent", "S03USDT": "plan-live"}
        totals = text_dict(r.hgetall(keys.reservations_totals))
        assert (int(totals["count"]), float(totals["sum"])) == (2, pytest.approx(70.0)), "the totals moved with it"
        wait_for(lambda: counters(r, stack).get("dead_letter_unidentified") == 1, 30, "the counted outcomes", stack)
        assert {k: v for k, v in counters(r, stack).items() if k.startswith("dead_letter_")} == {
            "dead_letter_released": 1,
            "dead_letter_reservation_kept": 1,
            "dead_letter_unidentified": 1,
        }
        release = next(
            g for g in r.xinfo_groups(keys.dlq("apply.approved")) if text(g["name"]) == "apply-layer.release"
        )
        assert release["pending"] == 0, "each DLQ entry looked at and acked once"
        assert text_dict(r.hgetall(keys.reservations)) == {"plan-maybe-sent": "30.0", "plan-live": "40.0"}
        assert stream(r, stack, "apply.result") == [], "a dead-lettered approval gets no result"
