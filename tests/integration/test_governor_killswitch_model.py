"""governor.lua's copy of the kill-switch model agrees with the model (``contracts.control.plan_verdict``).

The Lua copy exists because the governor's decision must be one atomic script; this test is the condition
for keeping it: every scope (and an empty and an unknown one), both states and a malformed one, flatten
on and off, a good and a bad generation, halted or not, for an entry and an exit, run in the real
redis-server through the governor's own script wrapper, must give the verdict the Python model gives.
"""

from __future__ import annotations

import itertools

import redis

from quantum_trader.contracts.control import PlanVerdict, Scope, parse_control, parse_scope, plan_verdict
from quantum_trader.contracts.envelope import decode, encode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import Plan
from quantum_trader.risk.limits import Limits
from quantum_trader.services.governor import GovernorScript
from tests.integration._governor_support import entry, exit_plan, policy

SCOPES = [*(s.value for s in Scope), "", "sideways", None]
STATES = ["engaged", "released", "bogus", None]
GENERATIONS = ["3", " 7 ", "x", None]


def controls() -> list[dict[str, str] | None]:
    found: list[dict[str, str] | None] = [None]
    for state, scope, flatten, generation in itertools.product(STATES, SCOPES, ("0", "1"), GENERATIONS):
        raw = {"state": state, "scope": scope, "flatten": flatten, "generation": generation}
        found.append({k: v for k, v in raw.items() if v is not None})
    return found


def test_the_lua_kill_switch_verdict_equals_the_model_for_every_scope(
    redis_url: str, instance: str, r: redis.Redis
) -> None:
    spec = policy(["BTCUSDT"], cooldownSeconds=0)
    limits = Limits.from_policy(spec)
    client = redis.Redis.from_url(redis_url)
    seen: set[str] = set()
    cases = list(itertools.product(controls(), (False, True), (True, False)))
    for number, (control, halted, is_entry) in enumerate(cases):
        keys = Keys(f"{instance}-{number}")
        if control:
            r.hset(keys.control, mapping=control)
        if halted:
            r.hset(keys.halts, "reconciler", "unexplained drift")
        # Everything but the kill switch lets the plan through: an allowlisted entry, an exit with a position.
        if not is_entry:
            r.hset(keys.open_positions, "BTCUSDT", "100.0")
        plan = entry("BTCUSDT", "p") if is_entry else exit_plan("BTCUSDT", "p")
        script = GovernorScript(client, keys, limits, spec.streams)
        verdict = script.decide(decode(encode(plan, id=f"m{number}"), Plan), group="governor", entry_id="", now_ms=1)
        expected = plan_verdict(control, halted=halted, entry=is_entry)
        assert verdict.reason == (expected.value if expected else "approved"), (control, halted, is_entry)
        seen.add(verdict.reason)
    assert seen == {v.value for v in PlanVerdict} | {"approved"}


def test_the_scope_model_says_what_each_scope_stops_and_which_is_stronger() -> None:
    assert sorted(Scope, key=lambda s: s.rank) == [Scope.EXITS, Scope.ENTRIES, Scope.ALL]
    assert [s for s in Scope if s.stops_entries] == [Scope.ENTRIES, Scope.ALL]
    assert [s for s in Scope if s.stops_exits] == [Scope.ALL]
    assert [s for s in Scope if s.shadows_advanced_exits] == [Scope.EXITS, Scope.ALL]
    assert parse_scope("") is Scope.ALL and parse_scope(None) is Scope.ALL  # no scope: fail closed
    assert parse_scope("sideways") is None
    # The components' view agrees with the plan verdicts for every readable engaged scope.
    for scope in Scope:
        raw = {"state": "engaged", "scope": scope.value, "generation": "2", "flatten": "0"}
        state = parse_control(raw)
        assert state.blocks_entries == (plan_verdict(raw, halted=False, entry=True) is not None)
        assert state.blocks_exits == (plan_verdict(raw, halted=False, entry=False) is not None)
