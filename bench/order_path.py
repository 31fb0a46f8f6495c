"""Every goal of issue 11 (order-path speed) in one run, each as a figure and as a ratio to this run's Redis.

``python -m bench.order_path [--quick] [--repeat N] [--output NAME] [--same-run-before A [--same-run-after B]]``

Absolute rates differ 2-3x between the machines this runs on, and on one shared machine from one
minute to the next, so every figure is also divided by what the bus does alone on the same machine
in the same run: ``consumer_passthrough`` of ``bench.redis_baseline`` (one ``StreamConsumer`` that
decodes, validates, re-encodes and steps each message, one at a time, on a redis-server of its own),
measured before and after the pipeline phases of every repetition.

One repetition, in this order:

1. ``consumer_passthrough`` (and its batched variant), with its CPU per message: the median of 3 trials;
2. a burst: 1,000 intents at once through intent-bridge -> governor -> apply-layer -> exchange-sim ->
   position-state, one replica each (``bench.pipeline``'s burst phase, every check included). Its
   end-to-end orders/s is the **saturating rate**;
3. paced at 200 intents/s (1,000 intents, 5 s);
4. paced at half the saturating rate just measured (1,000 intents, at most 20 s);
5. ``consumer_passthrough`` again.

Then the governor's flat cost once (``bench.governor_flat_cost``: script time per plan with 2,000
open positions and 2,000 reservations against none).

How each goal is expressed as a ratio:

- throughput: orders/s / passthrough messages/s (goal >= 0.35), and orders/s (goal >= 1,000/s);
- CPU per order (user + system of every process, redis-server included) and latency: in units of
  this run's passthrough period (1 / passthrough messages/s). The issue's reference machine has a
  passthrough of 5.6k/s, so the goals there (1.0 ms of CPU, p99 < 20 ms and < 10 ms) are 5.6, 112 and
  56 such periods;
- Redis commands per order (``INFO commandstats``, script commands included), round trips per order
  (each component process counts its own requests to Redis, ``bench/redis_sends``; the server's
  ``total_reads_processed`` is kept beside it as a cross-check) and the flat-cost ratio are counts
  and ratios already, so they do not depend on the machine's speed.

``--same-run-before CHECKOUT [--same-run-after CHECKOUT2]`` measures before and after in one run:
repetitions alternate (before, after, after, before, ...) between the components of CHECKOUT (a clone
at the before commit) and CHECKOUT2's (default: this checkout's), each repetition a process of its
own, and both sides are divided by the before code's passthrough of that run. That is what "<= 25 %
of before in the same run" needs on a shared machine.

Results: a goal table on stdout and ``bench/results/NAME.json`` (default ``order_path``), with every
phase's full ``bench.pipeline`` report inside. ``python -m bench.report compare BEFORE AFTER`` sets two
such files side by side; ``python -m bench.report compare NAME`` the two sides of a same-run file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import redis

from bench import governor_flat_cost, pipeline
from bench._util import (
    RESULTS,
    add_wait_quiet_option,
    machine_busy_seconds,
    result_header,
    start_redis,
    table,
    uptime,
    wait_for_quiet,
    write_results,
)
from bench.redis_baseline import bench_consumer_passthrough
from quantum_trader.contracts.keys import Keys

REFERENCE_PASSTHROUGH = 5_600.0
"""consumer_passthrough msg/s on the machine the issue's absolute goals were set on"""
INTENTS = 1_000
PACED_RATE = 200.0
MAX_PACED_SECONDS = 20.0


def passthrough(messages: int, trials: int = 3) -> dict:
    """``consumer_passthrough`` and its batched variant on a fresh redis-server, with CPU per message.

    Each is measured ``trials`` times, one after the other, and the median trial (by messages/s) is
    reported with every trial's rate: one busy second of the shared machine moves a single trial by
    several times.
    """
    server = start_redis()
    try:
        client = redis.Redis.from_url(server.url)
        ours = [psutil.Process(), psutil.Process(int(client.info("server")["process_id"]))]
        keys = Keys("bench")
        out = {}
        for name, batched in (("consumer_passthrough", False), ("consumer_passthrough_batched", True)):
            results = []
            for _ in range(trials):
                client.flushall()
                cpu0 = sum(sum(p.cpu_times()[:2]) for p in ours)
                busy0, wall0 = machine_busy_seconds(), time.perf_counter()
                result = bench_consumer_passthrough(client, keys, messages, batched=batched)
                cpu = sum(sum(p.cpu_times()[:2]) for p in ours) - cpu0
                wall = time.perf_counter() - wall0
                result["cpu_us_per_message"] = round(1e6 * cpu / max(1, result["ops"]), 1)
                result["other_processes_cores"] = round(max(0.0, machine_busy_seconds() - busy0 - cpu) / wall, 2)
                results.append(result)
            results.sort(key=lambda result: result["ops_per_s"])
            out[name] = dict(results[len(results) // 2], trials_ops_per_s=[r["ops_per_s"] for r in results])
        client.close()
    finally:
        server.stop()
    return out


def repetition(redis_url: str, workdir: Path, count: int, wait_quiet: float, log: Callable[[str], None]) -> dict:
    def phase(run: Callable[[], dict]) -> dict:
        quiet = wait_for_quiet(wait_quiet)
        result = run()
        result["machine_before"] = quiet
        result.pop("by_open_positions", None)
        checks = "ok" if result["correctness"]["ok"] else "FAILED"
        log(
            f"{result['phase']}: {result['throughput']['end_to_end']['per_s']} orders/s, e2e p99"
            f" {result['latency']['end_to_end_ms']['p99']} ms, checks {checks},"
            f" others {result['cpu']['other_processes_cores']} cores"
        )
        return result

    before = passthrough(10 * count)
    log(f"passthrough {before['consumer_passthrough']['ops_per_s']} msg/s")
    burst = phase(lambda: pipeline.burst_phase(redis_url, workdir, count, {}))
    saturating = burst["throughput"]["end_to_end"]["per_s"]
    paced = phase(lambda: pipeline.paced_phase(redis_url, workdir, PACED_RATE, count / PACED_RATE))
    half = round(saturating / 2, 1)
    half_count = min(count, max(2, int(half * MAX_PACED_SECONDS)))
    paced_half = phase(lambda: pipeline.paced_phase(redis_url, workdir, half, half_count / half))
    paced_half["phase"] = f"paced {half:g}/s (half of the burst's {saturating:g}/s)"
    after = passthrough(10 * count)
    log(f"passthrough {after['consumer_passthrough']['ops_per_s']} msg/s")
    return {
        "passthrough_before": before,
        "passthrough_after": after,
        "saturating_rate_per_s": saturating,
        "phases": {"burst": burst, "paced_200": paced, "paced_half_saturating": paced_half},
    }


def passthrough_rates(reps: list[dict]) -> list[int]:
    sides = ("passthrough_before", "passthrough_after")
    return [r[side]["consumer_passthrough"]["ops_per_s"] for r in reps for side in sides]


def goals(reps: list[dict], flat_ratios: list[float], yardstick: list[int] | None = None) -> dict:
    """Each goal: the figure (median over the repetitions), its ratio to passthrough, the goal, met or not.

    ``yardstick``: the passthrough rates to divide by (default: those of ``reps`` themselves).
    """
    rates = yardstick or passthrough_rates(reps)
    base = statistics.median(rates)
    period_ms = 1000.0 / base

    def med(pick: Callable[[dict], float | None]) -> float | None:
        values = [v for v in (pick(r) for r in reps) if v is not None]
        return round(statistics.median(values), 3) if values else None

    def ph(name: str) -> Callable[[Callable[[dict], float | None]], float | None]:
        return lambda pick: med(lambda r: pick(r["phases"][name]))

    burst, paced, half = ph("burst"), ph("paced_200"), ph("paced_half_saturating")
    throughput = burst(lambda p: p["throughput"]["end_to_end"]["per_s"])
    cpu = burst(lambda p: p["cpu"]["cpu_ms_per_order_total"])
    per_process = {
        name: burst(lambda p, name=name: p["cpu"]["cpu_ms_per_order"].get(name))
        for name in reps[0]["phases"]["burst"]["cpu"]["cpu_ms_per_order"]
    }
    p99_200, p50_200 = (paced(lambda p, q=q: p["latency"]["end_to_end_ms"][q]) for q in ("p99", "p50"))
    p99_half, p50_half = (half(lambda p, q=q: p["latency"]["end_to_end_ms"][q]) for q in ("p99", "p50"))
    flat_ratio = round(statistics.median(flat_ratios), 2)

    def periods(ms: float | None) -> float | None:
        return None if ms is None else round(ms / period_ms, 2)

    def sends(p: dict) -> float | None:
        return p.get("redis_sends", {}).get("round_trips_per_order")

    rows = {
        "throughput": {
            "figure": throughput,
            "unit": "orders/s (1,000-order burst, 1 replica each)",
            "ratio_to_passthrough": round(throughput / base, 4),
            "goal": "ratio >= 0.35 and >= 1,000 orders/s",
            "met": throughput / base >= 0.35 and throughput >= 1_000,
        },
        "cpu_per_order": {
            "figure": cpu,
            "unit": "ms of CPU per order, all processes (burst)",
            "per_process_ms": per_process,
            "in_passthrough_periods": periods(cpu),
            "goal": "<= 1.0 ms on the reference machine (5.6 periods), or <= 25 % of before in the same run",
            "met": periods(cpu) <= 1.0 * REFERENCE_PASSTHROUGH / 1000,
        },
        "latency_paced_200": {
            "figure": p99_200,
            "p50": p50_200,
            "unit": "ms end-to-end p99 at 200 intents/s",
            "achieved_rate_per_s": paced(lambda p: p["achieved_rate_per_s"]),
            "in_passthrough_periods": periods(p99_200),
            "goal": "p99 < 20 ms (112 periods at the reference passthrough)",
            "met": p99_200 < 20,
        },
        "latency_half_saturating": {
            "figure": p99_half,
            "p50": p50_half,
            "unit": "ms end-to-end p99 at half the burst's rate",
            "rate_per_s": half(lambda p: p["rate_per_s"]),
            "in_passthrough_periods": periods(p99_half),
            "goal": "p99 < 10 ms (56 periods at the reference passthrough)",
            "met": p99_half < 10,
        },
        "redis_commands_per_order": {
            "figure": burst(lambda p: p["redis"]["commands_per_order"]),
            "paced_200": paced(lambda p: p["redis"]["commands_per_order"]),
            "unit": "commands per order, INFO commandstats, script commands included (burst)",
            "goal": "<= 30",
            "met": burst(lambda p: p["redis"]["commands_per_order"]) <= 30,
        },
        "round_trips_per_order": {
            "figure": burst(sends),
            "paced_200": paced(sends),
            "paced_half_saturating": half(sends),
            "server_reads_burst": burst(lambda p: p["redis"]["round_trips_per_order"]),
            "server_reads_paced_200": paced(lambda p: p["redis"]["round_trips_per_order"]),
            "unit": "requests to Redis per order, counted in each component process (burst)",
            "goal": "<= 5",
            "met": (burst(sends) or 99) <= 5 and (paced(sends) or 99) <= 5,
        },
        "governor_flat_cost": {
            "figure": flat_ratio,
            "unit": "script time per plan at 2,000 open + 2,000 reserved / at none (median over runs)",
            "runs": flat_ratios,
            "goal": "<= 1.2",
            "met": flat_ratio <= 1.2,
        },
    }
    return {
        "passthrough_msg_per_s": {"median": base, "all": rates, "this_code": passthrough_rates(reps)},
        "passthrough_period_ms": round(period_ms, 4),
        "all_checks_ok": all(p["correctness"]["ok"] for r in reps for p in r["phases"].values()),
        "goals": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.order_path", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 intents per phase, 2 flat-cost rounds")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="repetitions (medians reported)")
    add_wait_quiet_option(parser)
    parser.add_argument("--output", default="order_path", metavar="NAME", help="bench/results/NAME.json")
    parser.add_argument(
        "--same-run-before",
        type=Path,
        default=None,
        metavar="CHECKOUT",
        help="before and after in one run, alternating: CHECKOUT is a clone at the before commit",
    )
    parser.add_argument(
        "--same-run-after",
        type=Path,
        default=None,
        metavar="CHECKOUT",
        help="with --same-run-before: a clone at the after commit (default: this checkout's components)",
    )
    args = parser.parse_args(argv)
    if args.same_run_before:
        after = args.same_run_after.resolve() if args.same_run_after else None
        return same_run(args.same_run_before.resolve(), after, args)
    count = 200 if args.quick else INTENTS
    started = time.monotonic()
    uptime_before = uptime()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {text}", flush=True)

    workdir = pipeline.bench_environment()
    server = start_redis()
    try:
        reps = [repetition(server.url, workdir, count, args.wait_quiet, log) for _ in range(max(1, args.repeat))]
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    flat = governor_flat_cost.run(2 if args.quick else governor_flat_cost.ROUNDS)
    log("governor flat cost measured")
    summary = goals(reps, [flat_ratio_2000(flat)])
    print()
    print_goals(summary)
    path = write_results(
        args.output,
        {
            **result_header("order_path", started, uptime_before, __doc__),
            "quick": args.quick,
            **summary,
            "governor_flat_cost": flat,
            "repetitions": reps,
        },
    )
    print(
        f"\n{time.monotonic() - started:.0f}s; all checks {'ok' if summary['all_checks_ok'] else 'FAILED'};"
        f" wrote {path}"
    )
    return 0 if summary["all_checks_ok"] else 1


def flat_ratio_2000(flat: list[dict]) -> float:
    return next(row["ratio_to_empty"] for row in flat if row["open_and_reserved_each"] == 2_000)


def print_goals(summary: dict) -> None:
    rows = []
    for name, goal in summary["goals"].items():
        ratio = goal.get("ratio_to_passthrough", goal.get("in_passthrough_periods", "-"))
        rows.append([name, goal["figure"], ratio, goal["goal"], "yes" if goal["met"] else "no"])
    print(f"passthrough {summary['passthrough_msg_per_s']} msg/s; period {summary['passthrough_period_ms']} ms")
    print(table(["goal", "figure", "ratio / periods", "goal", "met"], rows))


def same_run(before_root: Path, after_root: Path | None, args: argparse.Namespace) -> int:
    """Before and after in one run: one repetition at a time as its own process, alternating ABBA.

    Each repetition is ``python -m bench.order_path --repeat 1`` in a process of its own, whose
    ``PYTHONPATH`` names ``before_root``'s components and operator (before), and ``after_root``'s (after;
    without it nothing, so that this checkout's installed components are imported). The bench's own
    code is this checkout's for both. Every figure of both sides is divided by the **before** code's
    passthrough of this run (fixed code, so it measures only the machine); each side's own passthrough
    is kept beside it.
    """
    repo = Path(__file__).resolve().parent.parent

    def code(root: Path | None) -> str:
        return os.pathsep.join(str(root / part) for part in ("components", "operator")) if root else ""

    paths = {"before": code(before_root), "after": code(after_root)}
    order = [side for i in range(args.repeat) for side in (("before", "after") if i % 2 == 0 else ("after", "before"))]
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for i, side in enumerate(order):
        env = dict(os.environ, PYTHONPATH=paths[side])
        name = f"{args.output}-{side}-{i}"
        command = [sys.executable, "-m", "bench.order_path", "--repeat", "1", "--output", name]
        command += ["--quick"] if args.quick else []
        command += ["--wait-quiet", str(args.wait_quiet)]
        print(f"--- {side} ({name}): {' '.join(command[1:])}", flush=True)
        subprocess.run(command, env=env, cwd=repo, check=False)
        runs[side].append(json.loads((RESULTS / f"{name}.json").read_text()))
    yardstick = [rate for run in runs["before"] for rate in passthrough_rates(run["repetitions"])]
    merged: dict[str, object] = {
        "benchmark": "order_path_same_run",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "order": order,
        "method": same_run.__doc__,
    }
    for side, side_runs in runs.items():
        reps = [rep for run in side_runs for rep in run["repetitions"]]
        summary = goals(reps, [run["goals"]["governor_flat_cost"]["figure"] for run in side_runs], yardstick)
        summary["all_checks_ok"] = all(run["all_checks_ok"] for run in side_runs)
        merged[side] = {
            "measured_code": side_runs[0]["machine"]["measured_code"],
            "runs": [f"{args.output}-{s}-{i}" for i, s in enumerate(order) if s == side],
            "uptime": [(run["uptime_before"], run["uptime_after"]) for run in side_runs],
            **summary,
        }
        print(f"\n{side}: {merged[side]['measured_code']}")
        print_goals(summary)
    path = write_results(args.output, merged)
    ok = all(merged[side]["all_checks_ok"] for side in runs)
    print(f"\nall checks {'ok' if ok else 'FAILED'}; wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
