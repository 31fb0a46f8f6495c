"""The governor script's cost per plan against the number of open positions and reservations.

``python -m bench.governor_flat_cost [--quick]`` starts its own redis-server (no RDB, no AOF), fills
``positions:open`` and ``governor:reservations`` with N entries each, the way position-state and the
governor write them (through their running totals), and then decides approved ENTRY plans with the real
``GovernorScript``. For each N it reports the script's own time inside Redis (``INFO commandstats``:
``usec`` / ``calls`` of EVALSHA over each round's calls), which other load on the machine affects less
than wall time, and the client's round trip per plan (wall, p50/p99). The levels are measured in
interleaved rounds of ``PLANS`` plans (``ROUNDS`` of them) and the median round is reported, so a busy
moment of the shared machine falls on every level alike.

Every measured plan is approved, so it adds a reservation: a level of N ends with N + ROUNDS x PLANS
reservations. The goal of issue 11 is a script time at N = 2,000 of at most 1.2 times the time at N = 0.

Results: a table on stdout and ``bench/results/governor_flat_cost.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, field

import redis

from bench._util import machine, start_redis, summary, table, write_results
from quantum_trader.bus.step import Step, StepRunner
from quantum_trader.contracts.envelope import decode, encode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import Plan, PlanKind, Side
from quantum_trader.contracts.policy import PolicySpec
from quantum_trader.risk.limits import Limits
from quantum_trader.services.governor import GovernorScript

T0 = 1_700_000_000_000
PLANS = 100
ROUNDS = 5
LEVELS = (0, 100, 500, 2_000)


def policy() -> PolicySpec:
    return PolicySpec.model_validate(
        {
            "symbols": [f"P{i:05d}USDT" for i in range(ROUNDS * PLANS + 1)],
            "risk": {
                "maxOpenPositions": 100_000,
                "maxNotionalPerTrade": 1_000,
                "maxTotalNotional": 1_000_000_000,
                "maxEntriesPerHour": 100_000,
                "maxEntriesPerFiveMinutes": 100_000,
                "cooldownSeconds": 0,
                "maxLeverage": 5,
            },
        }
    )


def plan(i: int) -> Plan:
    return Plan(
        symbol=f"P{i:05d}USDT",
        plan_id=f"plan-{i:05d}",
        kind=PlanKind.ENTRY,
        side=Side.BUY,
        notional=20.0,
        source="intent-bridge",
        time=T0 + i,
        price=100.0,
        leverage=2,
        stop_loss=90.0,
        take_profit=120.0,
        reason_codes=("bench",),
    )


def fill(client: redis.Redis, keys: Keys, n: int) -> None:
    """N open positions and N reservations, written with their totals as the real writers do."""
    runner = StepRunner(client, keys, "bench-fill", max_len=1_000, done_ttl_seconds=60)
    for first in range(0, n, 500):
        steps = []
        for i in range(first, min(n, first + 500)):
            step = Step()
            step.tally("HSET", keys.open_positions, f"O{i:05d}USDT", 20.0 + i % 7, totals=keys.open_positions_totals)
            step.tally("HSET", keys.reservations, f"r-{i:05d}", 20.0, totals=keys.reservations_totals)
            steps.append((step, f"fill-{i}", "", "", ""))
        runner.run_many(steps)


def evalsha_stats(client: redis.Redis) -> tuple[int, int]:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


@dataclass
class Level:
    n: int
    script: GovernorScript
    script_usec: list[float] = field(default_factory=list)
    round_trips_us: list[float] = field(default_factory=list)


def prepare(client: redis.Redis, n: int) -> Level:
    keys = Keys(f"flat{n}")
    fill(client, keys, n)
    client.hset(keys.control, mapping={"state": "released", "generation": "1", "scope": "all", "flatten": "0"})
    spec = policy()
    level = Level(n, GovernorScript(client, keys, Limits.from_policy(spec), spec.streams))
    level.script.decide(decode(encode(plan(ROUNDS * PLANS), id="warm"), Plan), group="g", entry_id="", now_ms=1)
    return level


def measure(client: redis.Redis, level: Level, first: int, count: int) -> None:
    """``count`` approved plans; the round's script time per plan from commandstats, the round trips."""
    envelopes = [decode(encode(plan(i), id=f"plan-{i:05d}"), Plan) for i in range(first, first + count)]
    calls0, usec0 = evalsha_stats(client)
    for envelope in envelopes:
        t0 = time.perf_counter_ns()
        verdict = level.script.decide(envelope, group="governor", entry_id="", now_ms=1)
        level.round_trips_us.append((time.perf_counter_ns() - t0) / 1000)
        if not verdict.approved:
            raise RuntimeError(f"plan refused: {verdict.reason}")
    calls1, usec1 = evalsha_stats(client)
    level.script_usec.append((usec1 - usec0) / max(1, calls1 - calls0))


def run(rounds: int = ROUNDS) -> list[dict]:
    """Every level measured in ``rounds`` interleaved rounds, on a redis-server of its own; one row per level."""
    server = start_redis()
    try:
        client = redis.Redis.from_url(server.url)
        levels = [prepare(client, n) for n in LEVELS]
        for r in range(rounds):  # levels interleaved, so a busy moment of the machine hits all of them
            for level in levels:
                measure(client, level, r * PLANS, PLANS)
        client.close()
    finally:
        server.stop()
    rows = [
        {
            "open_and_reserved_each": level.n,
            "script_usec_per_plan_median": round(statistics.median(level.script_usec), 1),
            "script_usec_per_plan_rounds": [round(u, 1) for u in level.script_usec],
            "round_trip_us": summary(level.round_trips_us, 1),
        }
        for level in levels
    ]
    base = rows[0]["script_usec_per_plan_median"] or 1.0
    for row in rows:
        row["ratio_to_empty"] = round(row["script_usec_per_plan_median"] / base, 2)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.governor_flat_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 5")
    parser.add_argument("--output", default=None, metavar="NAME", help="results file bench/results/NAME.json")
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else ROUNDS
    rows = run(rounds)
    print(
        table(
            ["open + reserved (each)", "script µs/plan (median)", "x empty", "rounds", "round trip p50 µs", "p99"],
            [
                [
                    r["open_and_reserved_each"],
                    r["script_usec_per_plan_median"],
                    r["ratio_to_empty"],
                    " ".join(str(u) for u in r["script_usec_per_plan_rounds"]),
                    r["round_trip_us"]["p50"],
                    r["round_trip_us"]["p99"],
                ]
                for r in rows
            ],
        )
    )
    path = write_results(
        args.output or ("governor_flat_cost" + ("-quick" if args.quick else "")),
        {
            "benchmark": "governor_flat_cost",
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "plans_per_round": PLANS,
            "rounds": rounds,
            "levels": rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
