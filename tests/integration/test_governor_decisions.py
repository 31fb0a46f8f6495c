"""The governor against a real Redis: fail-closed control, kill-switch scopes, every reason code,
the approval's shape, exactly-once decisions on redelivery, and Lua/Python agreement."""

from __future__ import annotations

import random

import pytest
import redis

from quantum_trader.bus.control import Scope, raise_halt, write_control
from quantum_trader.contracts.envelope import Envelope, decode, encode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import Approval, GovernorDecision, Plan, PlanKind, PositionSide, Side
from quantum_trader.risk.limits import FIVE_MINUTES_MS, HOUR_MS, GovernorState, Limits, Reason, decide
from quantum_trader.services import governor
from quantum_trader.services.governor import GovernorScript
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
    read_stream,
    release,
    text_hash,
)


@pytest.fixture
def gov(redis_url: str, instance: str):
    """A factory: (policy) -> (ctx, consumer) of one governor replica."""

    def make(spec=None):
        ctx = context(redis_url, instance, spec or policy(), "governor")
        service = governor.build(ctx)
        return ctx, consumer(ctx, service)

    return make


def test_no_control_key_rejects_every_plan_control_missing(gov, r: redis.Redis) -> None:
    ctx, c = gov()
    keys = ctx.keys
    r.hset(keys.open_positions, "ETHUSDT", "100.0")  # so the exit would otherwise pass
    publish_plan(r, keys, entry("BTCUSDT"))
    publish_plan(r, keys, exit_plan("ETHUSDT"))
    drain(c)
    found = decisions(r, keys)
    assert [(d.plan_id, d.approved, d.reasons) for d in found] == [
        ("e-BTCUSDT-1700000000000", False, ("control_missing",)),
        ("x-ETHUSDT-1700000000000", False, ("control_missing",)),
    ]
    assert r.xlen(keys.stream("apply.approved")) == 0
    assert r.hlen(keys.reservations) == 0 and r.hlen(keys.entry_locks) == 0 and r.hlen(keys.exit_locks) == 0


@pytest.mark.parametrize(
    "control",
    [
        {"state": "released"},  # no generation
        {"state": "weird", "generation": "3"},
        {"state": "released", "generation": "x"},
        {"state": "engaged", "generation": "2", "scope": "sideways"},
    ],
)
def test_unreadable_control_fails_closed(gov, r: redis.Redis, control: dict[str, str]) -> None:
    ctx, c = gov()
    r.hset(ctx.keys.control, mapping=control)
    publish_plan(r, ctx.keys, entry())
    drain(c)
    assert [d.reasons for d in decisions(r, ctx.keys)] == [("control_missing",)]
    assert r.xlen(ctx.keys.stream("apply.approved")) == 0


@pytest.mark.parametrize(
    ("scope", "flatten", "halt", "entry_reason", "exit_reason"),
    [
        (Scope.ENTRIES, False, False, "killswitch_entries", None),
        (Scope.ALL, False, False, "killswitch_all", "killswitch_all"),
        (Scope.EXITS, False, False, None, None),
        (Scope.EXITS, True, False, "killswitch_entries", None),  # flatten: close everything, open nothing
        (None, False, True, "killswitch_entries", None),  # released, but the reconciler halted entries
    ],
)
def test_kill_switch_scopes(gov, r: redis.Redis, scope, flatten, halt, entry_reason, exit_reason) -> None:
    ctx, c = gov()
    keys = ctx.keys
    if scope is None:
        release(r, keys)
    else:
        write_control(r, keys, engaged=True, scope=scope, flatten=flatten, reason="test")
    if halt:
        raise_halt(r, keys, "reconciler", "drift")
    r.hset(keys.open_positions, "ETHUSDT", "100.0")
    publish_plan(r, keys, entry("BTCUSDT"))
    publish_plan(r, keys, exit_plan("ETHUSDT"))
    drain(c)
    by_kind = {d.kind: d for d in decisions(r, keys)}
    for kind, expected in ((PlanKind.ENTRY, entry_reason), (PlanKind.EXIT, exit_reason)):
        decision = by_kind[kind]
        assert decision.approved is (expected is None), decision
        assert decision.reasons == (() if expected is None else (expected,))
    approved_kinds = sorted(a.plan.kind.value for a in approvals(r, keys))
    assert approved_kinds == sorted(
        k.value for k, e in ((PlanKind.ENTRY, entry_reason), (PlanKind.EXIT, exit_reason)) if e is None
    )


def test_approval_shape_reservation_and_ids(gov, r: redis.Redis) -> None:
    ctx, c = gov(policy(approvalTtlSeconds=12.5))
    keys = ctx.keys
    release(r, keys)
    plan = entry("BTCUSDT", "plan-1", notional=250.0)
    publish_plan(r, keys, plan)
    drain(c)
    [approved] = read_stream(r, keys, "apply.approved", Approval)
    [decided] = read_stream(r, keys, "governor.decision", GovernorDecision)
    assert isinstance(approved, Envelope)
    assert approved.id == "apr:plan-1" and approved.corr == "corr-plan-1"
    assert decided.id == "dec:plan-1" and decided.corr == "corr-plan-1"
    a = approved.message
    assert a.approval_id == "apr:plan-1" and a.plan == plan
    assert (a.reservation.slot, a.reservation.notional, a.reservation.exit_lock) == (True, 250.0, False)
    assert a.expires_at - a.approved_at == 12_500
    d = decided.message
    assert (d.approved, d.approval_id, d.reasons, d.kind, d.source) == (
        True,
        "apr:plan-1",
        (),
        PlanKind.ENTRY,
        "intent-bridge",
    )
    assert text_hash(r, keys.reservations) == {"plan-1": "250.0"}
    assert text_hash(r, keys.entry_locks) == {"BTCUSDT": "plan-1"}
    assert r.zrange(keys.rate("BTCUSDT"), 0, -1, withscores=True) == [("plan-1", float(T0))]
    assert r.exists(keys.done("governor", "plan-1")) == 1
    assert r.ttl(keys.done("governor", "plan-1")) > 0

    exit_ = exit_plan("ETHUSDT", "plan-2")
    r.hset(keys.open_positions, "ETHUSDT", "80.0")
    publish_plan(r, keys, exit_)
    drain(c)
    a2 = approvals(r, keys)[-1]
    assert (a2.reservation.slot, a2.reservation.notional, a2.reservation.exit_lock) == (False, 0.0, True)
    assert text_hash(r, keys.exit_locks) == {"ETHUSDT": "plan-2"}
    assert text_hash(r, keys.reservations) == {"plan-1": "250.0"}  # exits reserve no notional
    assert ctx.client.xpending(keys.stream("apply.plan"), "governor")["pending"] == 0


def _reasons_in_order(r: redis.Redis, c, keys: Keys, plans) -> list[str]:
    before = len(decisions(r, keys))
    for p in plans:
        publish_plan(r, keys, p)
    drain(c)
    return [d.reasons[0] if d.reasons else "approved" for d in decisions(r, keys)[before:]]


def test_every_entry_reason_code(gov, r: redis.Redis) -> None:
    spec = policy(
        ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"],
        maxLeverage=3,
        maxNotionalPerTrade=300.0,
        maxTotalNotional=500.0,
        maxOpenPositions=3,
        maxEntriesPerHour=3,
        maxEntriesPerFiveMinutes=2,
        cooldownSeconds=600,
    )
    ctx, c = gov(spec)
    keys = ctx.keys
    release(r, keys)
    assert _reasons_in_order(
        r,
        c,
        keys,
        [
            entry("DOGEUSDT", "p1"),
            entry("BTCUSDT", "p2", leverage=4),
            entry("BTCUSDT", "p3", notional=300.01),
            entry("BTCUSDT", "p4", notional=300.0),  # exactly the per-trade limit: approved
            entry("BTCUSDT", "p5"),
        ],
    ) == ["not_allowlisted", "leverage", "notional_per_trade", "approved", "entry_pending"]

    # an open position, then a cooldown after its close
    r.hset(keys.open_positions, "ETHUSDT", "100.0")
    assert _reasons_in_order(r, c, keys, [entry("ETHUSDT", "p6")]) == ["position_open"]
    r.hdel(keys.open_positions, "ETHUSDT")
    r.hset(keys.cooldowns, "ETHUSDT", str(T0))
    assert _reasons_in_order(
        r,
        c,
        keys,
        [
            entry("ETHUSDT", "p6a", time=T0 - 3_600_000),  # signalled while the trade was open, arriving late
            entry("ETHUSDT", "p6b", time=T0),  # on the bar whose exit closed it
            entry("ETHUSDT", "p7", time=T0 + 599_999),
            entry("ETHUSDT", "p8", time=T0 + 600_000),
        ],
    ) == ["position_open", "position_open", "cooldown", "approved"]

    # rates on SOLUSDT: entries released between plans (as position-state would on REJECTED)
    def after_release(plan):
        r.hdel(keys.entry_locks, plan.symbol)
        r.delete(keys.reservations)
        return [plan]

    outcomes = []
    for i, t in enumerate([T0, T0 + 60_000, T0 + 120_000, T0 + 600_000, T0 + 1_200_000, T0 + 1_800_000]):
        outcomes += _reasons_in_order(r, c, keys, after_release(entry("SOLUSDT", f"s{i}", time=t, notional=10.0)))
    # two in 5 min, the third in the same 5 min refused; then the hour's third; then the hour is full
    assert outcomes == ["approved", "approved", "rate_5m", "approved", "rate_hour", "rate_hour"]

    # open positions + reservations against the max, then total notional
    r.delete(keys.reservations, keys.entry_locks)
    r.hset(keys.open_positions, mapping={"A1USDT": "100.0", "A2USDT": "100.0"})
    r.hset(keys.reservations, "r1", "250.0")
    assert _reasons_in_order(r, c, keys, [entry("XRPUSDT", "p9", notional=10.0)]) == ["max_open_positions"]
    r.hdel(keys.open_positions, "A2USDT")
    assert _reasons_in_order(
        r,
        c,
        keys,
        [
            entry("XRPUSDT", "p10", notional=150.01),
            entry("XRPUSDT", "p11", notional=150.0),  # 100 + 250 + 150 = 500: exactly the total
        ],
    ) == ["max_total_notional", "approved"]


def test_exit_reason_codes(gov, r: redis.Redis) -> None:
    ctx, c = gov()
    keys = ctx.keys
    release(r, keys)
    r.hset(keys.open_positions, "ETHUSDT", "100.0")
    assert _reasons_in_order(
        r,
        c,
        keys,
        [
            exit_plan("BTCUSDT", "x1"),
            exit_plan("ETHUSDT", "x2"),
            exit_plan("ETHUSDT", "x3"),  # a second exit waits for the first one's result
        ],
    ) == ["no_open_position", "approved", "exit_in_flight"]
    # an exit for a symbol no longer allowlisted is still possible: positions can always be closed
    r.hset(keys.open_positions, "DOGEUSDT", "10.0")
    assert _reasons_in_order(r, c, keys, [exit_plan("DOGEUSDT", "x4")]) == ["approved"]


def test_redelivered_plan_is_decided_once(gov, r: redis.Redis) -> None:
    ctx, c = gov()
    keys = ctx.keys
    release(r, keys)
    plan = entry("BTCUSDT", "once")
    publish_plan(r, keys, plan)
    publish_plan(r, keys, plan)  # the producer sent it twice: same envelope id
    drain(c)
    stream = keys.stream("apply.plan")
    first_id, fields = r.xrange(stream)[0]
    c.handle_entry("apply.plan", first_id, fields, deliveries=2)  # redelivered after a crash
    # a second replica that had it pending when the first one finished
    other = consumer(ctx, governor.build(ctx), "gov-other")
    other.handle_entry("apply.plan", first_id, fields, deliveries=3)
    assert len(decisions(r, keys)) == 1
    assert len(approvals(r, keys)) == 1
    assert r.hlen(keys.reservations) == 1
    assert r.xpending(stream, "governor")["pending"] == 0


def test_script_crash_window_is_atomic(redis_url: str, instance: str, r: redis.Redis) -> None:
    """The script alone (no consumer step after it) already decided, emitted, marked done and acked:
    a process dying right after the script leaves nothing half done, and the redelivery only acks."""
    ctx = context(redis_url, instance, policy(), "governor")
    keys = ctx.keys
    release(r, keys)
    stream = keys.stream("apply.plan")
    r.xgroup_create(stream, "governor", id="0", mkstream=True)
    publish_plan(r, keys, entry("BTCUSDT", "crash"))
    [(_, [(entry_id, fields)])] = r.xreadgroup("governor", "gov-0", {stream: ">"})
    envelope = decode(fields, Plan)
    script = GovernorScript(ctx.client, keys, Limits.from_policy(ctx.policy), ctx.policy.streams)
    first = script.decide(envelope, group="governor", entry_id=entry_id, now_ms=1)
    assert first.decided and first.approved
    assert r.xpending(stream, "governor")["pending"] == 0
    again = script.decide(envelope, group="governor", entry_id=entry_id, now_ms=2)
    assert not again.decided and again.reason == "duplicate"
    assert len(decisions(r, keys)) == 1 and r.hlen(keys.reservations) == 1


# --- Lua == Python ---------------------------------------------------------------------------------
_CONTROLS = [
    None,
    {"state": "released", "generation": "1", "scope": "", "flatten": "0"},
    {"state": "released", "generation": "4"},
    {"state": "engaged", "generation": "2", "scope": "entries", "flatten": "0"},
    {"state": "engaged", "generation": "2", "scope": "exits", "flatten": "0"},
    {"state": "engaged", "generation": "2", "scope": "exits", "flatten": "1"},
    {"state": "engaged", "generation": "2", "scope": "all", "flatten": "0"},
    {"state": "engaged", "generation": "2", "flatten": "0"},
    {"state": "bogus", "generation": "2"},
    {"state": "released", "generation": "two"},
]


def _random_case(rng: random.Random) -> tuple[GovernorState, object]:
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT"]
    released = {"state": "released", "generation": "1"}
    control = rng.choice(_CONTROLS) if rng.random() < 0.3 else released
    open_positions = {s: rng.choice([50.0, 120.5, 300.0]) for s in rng.sample(symbols, rng.randint(0, 3))}
    reservations = {f"r{i}": rng.choice([10.0, 99.9, 200.0]) for i in range(rng.randint(0, 3))}
    entry_locks = {s: "rx" for s in rng.sample(symbols, rng.randint(0, 2))}
    exit_locks = {s: "xx" for s in rng.sample(symbols, rng.randint(0, 3))}
    rate = {s: [T0 + rng.randint(-2 * HOUR_MS, HOUR_MS) for _ in range(rng.randint(0, 4))] for s in symbols}
    # closes before, at and after the plan times: a close at or after a signal makes it position_open
    cooldowns = {s: T0 + rng.randint(-900_000, HOUR_MS) for s in rng.sample(symbols, rng.randint(0, 2))}
    halts = {"reconciler": "drift"} if rng.random() < 0.1 else {}
    # position hashes: the trade an exit closes, another trade (other side or other opening time), or no hash
    held = {
        s: (
            rng.choice([PositionSide.LONG, PositionSide.SHORT, PositionSide.FLAT, None]),
            rng.choice([T0, T0 - 1, None]),
        )
        for s in rng.sample(symbols, rng.randint(0, 4))
    }
    state = GovernorState(control, halts, open_positions, reservations, entry_locks, exit_locks, rate, cooldowns, held)
    symbol = rng.choice(symbols)
    time = T0 + rng.choice([0, 1, FIVE_MINUTES_MS, HOUR_MS, -FIVE_MINUTES_MS])
    if rng.random() < 0.7:
        plan = entry(
            symbol, "p", time=time, notional=rng.choice([5.0, 100.0, 250.0, 400.0]), leverage=rng.choice([1, 3, 5, 6])
        )
    else:
        plan = exit_plan(symbol, "p", time=time, side=rng.choice([Side.SELL, Side.BUY]))
        plan = plan.model_copy(update={"position_opened_at": rng.choice([T0, T0 - 1, None])})
    return state, plan


def _load(r: redis.Redis, keys: Keys, state: GovernorState) -> None:
    if state.control:
        r.hset(keys.control, mapping=dict(state.control))
    if state.halts:
        r.hset(keys.halts, mapping=dict(state.halts))
    for key, values in (
        (keys.open_positions, {k: repr(v) for k, v in state.open_positions.items()}),
        (keys.reservations, {k: repr(v) for k, v in state.reservations.items()}),
        (keys.entry_locks, state.entry_locks),
        (keys.exit_locks, state.exit_locks),
        (keys.cooldowns, {k: str(v) for k, v in state.cooldowns.items()}),
    ):
        if values:
            r.hset(key, mapping=values)
    for symbol, (side, opened_at) in state.held.items():
        fields = {"side": side.value} if side else {}
        if opened_at is not None:
            fields["opened_at"] = str(opened_at)
        if fields:
            r.hset(keys.position(symbol), mapping=fields)
    for symbol, times in state.rate.items():
        for i, t in enumerate(times):
            r.zadd(keys.rate(symbol), {f"old{i}": t})


def test_lua_agrees_with_the_python_reference(redis_url: str, instance: str, r: redis.Redis) -> None:
    spec = policy(
        ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"],
        maxLeverage=5,
        maxNotionalPerTrade=300.0,
        maxTotalNotional=600.0,
        maxOpenPositions=4,
        maxEntriesPerHour=3,
        maxEntriesPerFiveMinutes=1,
        cooldownSeconds=300,
    )
    limits = Limits.from_policy(spec)
    client = redis.Redis.from_url(redis_url)
    rng = random.Random(20240601)
    seen = set()
    for case in range(400):
        keys = Keys(f"{instance}-{case}")
        state, plan = _random_case(rng)
        _load(r, keys, state)
        script = GovernorScript(client, keys, limits, spec.streams)
        fields = encode(plan, id=f"m{case}")
        verdict = script.decide(decode(fields, Plan), group="governor", entry_id="", now_ms=1)
        expected = decide(plan, state, limits)
        assert verdict.reason == (expected.value if expected else "approved"), (case, state, plan)
        seen.add(verdict.reason)
        if verdict.approved and plan.kind is PlanKind.ENTRY:
            assert r.hget(keys.reservations, plan.plan_id) == repr(plan.reference_notional)
            assert r.hget(keys.entry_locks, plan.symbol) == plan.plan_id
            assert r.zscore(keys.rate(plan.symbol), plan.plan_id) == plan.time
        elif verdict.approved:
            assert r.hget(keys.exit_locks, plan.symbol) == plan.plan_id
        else:
            assert r.hget(keys.reservations, plan.plan_id) is None
    # the random cases reached every rule
    assert seen >= {reason.value for reason in Reason} | {"approved"}, sorted(seen)
