"""The governor's pure pieces: the reference rules (risk/limits.py) and the script's arguments."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from quantum_trader.contracts.control import parse_control
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.messages import GovernorDecision, Plan, PlanKind, Side
from quantum_trader.contracts.policy import PolicySpec, StreamRetention
from quantum_trader.risk.limits import (
    FIVE_MINUTES_MS,
    HOUR_MS,
    NOTIONAL_TOLERANCE,
    GovernorState,
    Limits,
    Reason,
    control_reason,
    decide,
    exceeds,
    rate_window_count,
)
from quantum_trader.services.governor import (
    approval_for,
    decision_for,
    reservation_for,
    script_payload,
    split_rejection,
)

T0 = 1_700_000_000_000
RELEASED = {"state": "released", "generation": "3", "scope": "", "flatten": "0"}
LIMITS = Limits(
    allowlist=frozenset({"BTCUSDT", "ETHUSDT"}),
    max_leverage=5,
    max_notional_per_trade=500.0,
    max_total_notional=1_000.0,
    max_open_positions=3,
    max_entries_per_hour=3,
    max_entries_per_five_minutes=2,
    cooldown_ms=300_000,
    approval_ttl_ms=30_000,
)


def entry(symbol: str = "BTCUSDT", *, time: int = T0, notional: float = 100.0, leverage: int = 1) -> Plan:
    return Plan(
        symbol=symbol,
        plan_id=f"e-{symbol}-{time}",
        kind=PlanKind.ENTRY,
        side=Side.BUY,
        notional=notional,
        source="intent-bridge",
        time=time,
        price=10.0,
        leverage=leverage,
    )


def exit_plan(symbol: str = "BTCUSDT") -> Plan:
    return Plan(
        symbol=symbol,
        plan_id=f"x-{symbol}",
        kind=PlanKind.EXIT,
        side=Side.SELL,
        qty=1.0,
        reduce_only=True,
        source="exit-brain",
        time=T0,
        price=10.0,
    )


def state(**kw) -> GovernorState:
    return GovernorState(control=kw.pop("control", RELEASED), **kw)


# --- control ----------------------------------------------------------------------------------------
_CONTROL_FIELDS = {
    "state": [None, "engaged", "released", "bogus"],
    "generation": [None, "0", "12", "x", " 7 "],
    "scope": [None, "", "entries", "exits", "all", "weird"],
    "flatten": [None, "0", "1"],
}


def _controls():
    names = list(_CONTROL_FIELDS)
    for values in itertools.product(*_CONTROL_FIELDS.values()):
        yield {n: v for n, v in zip(names, values, strict=True) if v is not None}


@pytest.mark.parametrize("halted", [False, True])
def test_control_verdicts_match_parse_control_for_every_combination(halted: bool) -> None:
    """The governor blocks exactly what the shared ControlState says is blocked (and missing or
    unreadable is always ``control_missing``)."""
    halts = {"reconciler": "drift"} if halted else {}
    for raw in _controls():
        parsed = parse_control(raw, halts)
        entry_reason = control_reason(raw, halted, PlanKind.ENTRY)
        exit_reason = control_reason(raw, halted, PlanKind.EXIT)
        assert (entry_reason is not None) == parsed.blocks_entries, raw
        assert (exit_reason is not None) == parsed.blocks_exits, raw
        if parsed.engaged_by == "fail-closed":
            assert entry_reason is exit_reason is Reason.CONTROL_MISSING, raw


@pytest.mark.parametrize(
    ("control", "halted", "entry", "exit_"),
    [
        (None, False, Reason.CONTROL_MISSING, Reason.CONTROL_MISSING),
        ({}, False, Reason.CONTROL_MISSING, Reason.CONTROL_MISSING),
        (RELEASED, False, None, None),
        (RELEASED, True, Reason.KILLSWITCH_ENTRIES, None),
        ({**RELEASED, "state": "engaged", "scope": "entries"}, False, Reason.KILLSWITCH_ENTRIES, None),
        ({**RELEASED, "state": "engaged", "scope": "exits"}, False, None, None),
        ({**RELEASED, "state": "engaged", "scope": "exits", "flatten": "1"}, False, Reason.KILLSWITCH_ENTRIES, None),
        ({**RELEASED, "state": "engaged", "scope": "all"}, False, Reason.KILLSWITCH_ALL, Reason.KILLSWITCH_ALL),
        ({**RELEASED, "state": "engaged", "scope": ""}, False, Reason.KILLSWITCH_ALL, Reason.KILLSWITCH_ALL),
    ],
)
def test_control_table(control, halted, entry, exit_) -> None:
    assert control_reason(control, halted, PlanKind.ENTRY) == entry
    assert control_reason(control, halted, PlanKind.EXIT) == exit_


# --- the checks and their order -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("plan", "st", "reason"),
    [
        (entry(), state(), None),
        (entry("DOGEUSDT", leverage=9, notional=900.0), state(), Reason.NOT_ALLOWLISTED),  # first failing wins
        (entry(leverage=6, notional=900.0), state(), Reason.LEVERAGE),
        (entry(leverage=5), state(), None),
        (entry(notional=500.01), state(), Reason.NOTIONAL_PER_TRADE),
        (entry(notional=500.0), state(), None),
        (entry(), state(open_positions={"BTCUSDT": 10.0}, entry_locks={"BTCUSDT": "p"}), Reason.POSITION_OPEN),
        (entry(), state(entry_locks={"BTCUSDT": "p"}), Reason.ENTRY_PENDING),
        (entry(), state(cooldowns={"BTCUSDT": T0 - 299_999}), Reason.COOLDOWN),
        (entry(), state(cooldowns={"BTCUSDT": T0 + 10}), Reason.POSITION_OPEN),  # signalled while it was open
        (entry(), state(cooldowns={"BTCUSDT": T0}), Reason.POSITION_OPEN),  # the bar whose exit closed it
        (entry(), state(cooldowns={"BTCUSDT": T0}, entry_locks={"BTCUSDT": "p"}), Reason.POSITION_OPEN),
        (entry(), state(cooldowns={"BTCUSDT": T0 - 300_000}), None),
        (entry(), state(cooldowns={"ETHUSDT": T0}), None),
        (entry(), state(rate={"BTCUSDT": [T0 - 10 * 60_000, T0 - 20 * 60_000, T0 - 59 * 60_000]}), Reason.RATE_HOUR),
        (entry(), state(rate={"BTCUSDT": [T0 - 10 * 60_000, T0 - 20 * 60_000, T0 - HOUR_MS]}), None),
        (entry(), state(rate={"BTCUSDT": [T0 - 60_000, T0 - 120_000]}), Reason.RATE_5M),
        (entry(), state(rate={"BTCUSDT": [T0 - 60_000, T0 - FIVE_MINUTES_MS]}), None),
        (entry(), state(rate={"BTCUSDT": [T0 + 60_000, T0 + 120_000]}), Reason.RATE_5M),  # later plans count too
        (entry(), state(rate={"ETHUSDT": [T0, T0, T0]}), None),
        (entry(), state(open_positions={"A": 1.0, "B": 1.0}, reservations={"r": 1.0}), Reason.MAX_OPEN_POSITIONS),
        (entry(), state(open_positions={"A": 1.0}, reservations={"r": 1.0}), None),
        (
            entry(notional=301.0),
            state(open_positions={"A": 400.0}, reservations={"r": 300.0}),
            Reason.MAX_TOTAL_NOTIONAL,
        ),
        (entry(notional=300.0), state(open_positions={"A": 400.0}, reservations={"r": 300.0}), None),
        (exit_plan(), state(), Reason.NO_OPEN_POSITION),
        (exit_plan(), state(open_positions={"BTCUSDT": 1.0}), None),
        (exit_plan(), state(open_positions={"BTCUSDT": 1.0}, exit_locks={"BTCUSDT": "x"}), Reason.EXIT_IN_FLIGHT),
        (exit_plan("DOGEUSDT"), state(open_positions={"DOGEUSDT": 1.0}), None),  # exits need no allowlist
        (
            exit_plan(),
            state(open_positions={"BTCUSDT": 1.0}, cooldowns={"BTCUSDT": T0}, entry_locks={"BTCUSDT": "e"}),
            None,
        ),
        (exit_plan(), state(control=None, open_positions={"BTCUSDT": 1.0}), Reason.CONTROL_MISSING),
    ],
)
def test_decide_table(plan: Plan, st: GovernorState, reason: Reason | None) -> None:
    assert decide(plan, st, LIMITS) == reason


def test_cooldown_zero_never_blocks_but_a_close_at_or_after_the_signal_still_does() -> None:
    limits = Limits(**{**{f: getattr(LIMITS, f) for f in LIMITS.__slots__}, "cooldown_ms": 0})
    assert decide(entry(), state(cooldowns={"BTCUSDT": T0 - 1}), limits) is None
    assert decide(entry(), state(cooldowns={"BTCUSDT": T0}), limits) is Reason.POSITION_OPEN
    assert decide(entry(), state(cooldowns={"BTCUSDT": T0 + 10}), limits) is Reason.POSITION_OPEN


def test_exceeds_has_relative_slack_for_rounding_only() -> None:
    assert not exceeds(0.1 + 0.2, 0.3)
    assert not exceeds(750.0, 750.0)
    assert exceeds(750.001, 750.0)


def test_symmetric_rate_window_never_overfills_any_window_in_any_arrival_order() -> None:
    """Approving in random (market-time) order with the two-sided count: no window of the
    length holds more than the limit — the property the Lua script relies on."""
    rng = random.Random(7)
    for _ in range(200):
        limit = rng.randint(1, 4)
        times = [rng.randint(0, 3 * FIVE_MINUTES_MS) for _ in range(40)]
        approved: list[int] = []
        for t in times:  # arrival order is random
            if rate_window_count(approved, t, FIVE_MINUTES_MS) < limit:
                approved.append(t)
        approved.sort()
        for start in approved:
            inside = [t for t in approved if start <= t < start + FIVE_MINUTES_MS]
            assert len(inside) <= limit
        assert approved  # and it does approve


def test_limits_from_policy() -> None:
    spec = PolicySpec.model_validate(
        {"symbols": ["BTCUSDT"], "risk": {"cooldownSeconds": 60, "approvalTtlSeconds": 2.5, "maxLeverage": 3}}
    )
    limits = Limits.from_policy(spec)
    assert limits.allowlist == {"BTCUSDT"}
    assert (limits.cooldown_ms, limits.approval_ttl_ms, limits.max_leverage) == (60_000, 2_500, 3)


# --- what the script is given ------------------------------------------------------------------------
def test_reservations_and_approval() -> None:
    assert reservation_for(entry(notional=250.0)).model_dump() == {"slot": True, "notional": 250.0, "exit_lock": False}
    assert reservation_for(exit_plan()).model_dump() == {"slot": False, "notional": 0.0, "exit_lock": True}
    approval = approval_for(entry(), 1_000, LIMITS)
    assert (approval.approval_id, approval.approved_at, approval.expires_at) == (
        "apr:e-BTCUSDT-1700000000000",
        1_000,
        31_000,
    )


def test_split_rejection_is_safe_against_a_plan_id_holding_the_slot_text() -> None:
    plan = entry().model_copy(update={"plan_id": 'evil"reasons":["@reason@"]'})
    data = decision_for(plan, 5, approved=False, reasons=("@reason@",)).model_dump_json()
    before, after = split_rejection(data)
    decision = GovernorDecision.model_validate_json(before + "rate_5m" + after)
    assert decision.reasons == ("rate_5m",) and decision.plan_id == plan.plan_id and not decision.approved
    with pytest.raises(ValueError):
        split_rejection('{"reasons":[]}')


def pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def test_script_payload_is_all_strings_and_carries_both_outcomes() -> None:
    plan = entry(notional=123.4, leverage=2)
    payload = json.loads(
        script_payload(
            Envelope(id="m1", corr="c1", message=plan),
            LIMITS,
            StreamRetention(),
            group="governor",
            entry_id="1-0",
            now_ms=42,
        )
    )
    lists = {"approval", "decision"}
    assert all(isinstance(v, str) for k, v in payload.items() if k not in lists)
    assert (payload["notional"], payload["leverage"], payload["allowlisted"], payload["time"]) == (
        "123.4",
        "2",
        "1",
        str(T0),
    )
    approval = pairs(payload["approval"])
    assert (approval["type"], approval["id"], approval["corr"]) == ("Approval", "apr:" + plan.plan_id, "c1")
    decision = pairs(payload["decision"])  # one envelope for both outcomes: a rejection replaces its data
    assert (decision["type"], decision["id"], decision["corr"]) == ("GovernorDecision", "dec:" + plan.plan_id, "c1")
    assert json.loads(decision["data"])["approved"] is True
    assert (payload["ttl"], payload["max_open"], payload["tolerance"]) == (
        str(StreamRetention().done_ttl_seconds),
        str(LIMITS.max_open_positions),
        repr(NOTIONAL_TOLERANCE),
    )
    made = GovernorDecision.model_validate_json(payload["reject_before"] + "leverage" + payload["reject_after"])
    assert (made.approved, made.reasons, made.time) == (False, ("leverage",), 42)
