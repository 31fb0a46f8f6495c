"""Markdown tables from ``bench/results/*.json``, for docs/BENCHMARKS.md.

``python -m bench.report [NAME ...]`` prints each results file's tables; ``python -m bench.report compare
BEFORE AFTER`` prints the goal table of two ``bench.order_path`` results files side by side (``compare NAME``:
the two sides of one ``--same-run-before`` file).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from bench._util import RESULTS

STAGES = ("intent-bridge", "governor", "apply-layer + exchange-sim", "position-state")


def md(headers: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> str:
    """A markdown table; the first ``left`` columns are text (left-aligned), the rest numbers."""
    rule = "|" + "|".join("---:" if i >= left else "---" for i in range(len(headers))) + "|"
    lines = ["| " + " | ".join(headers) + " |", rule]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def fmt(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.{digits}f}"


def redis_tables(baseline: dict, pipeline: dict | None) -> str:
    results = baseline["results"]
    best = 0.0
    if pipeline:
        best = max(p["throughput"]["end_to_end"]["per_s"] for p in pipeline["phases"])
    rows = []
    for name, r in results.items():
        lat = r.get("latency_us") or {}
        ratio = f"{100 * best / r['ops_per_s']:.2f} %" if best else "-"
        rows.append([name, r["what"], fmt(r["ops_per_s"]), fmt(lat.get("p50")), fmt(lat.get("p99")), ratio])
    return md(["bench", "what", "ops/s", "p50 µs", "p99 µs", "best pipeline orders/s as a share"], rows, left=2)


def pipeline_tables(data: dict, baseline: dict | None) -> str:
    out = []
    phases = data["phases"]
    rows = []
    for p in phases:
        e2e, ex = p["latency"]["end_to_end_ms"], p["latency"]["plan_to_snapshot_ms"]
        rows.append([p["phase"], p["intents"], fmt(p["throughput"]["end_to_end"]["per_s"]), fmt(e2e["p50"]),
                     fmt(e2e["p90"]), fmt(e2e["p99"]), fmt(e2e["max"]), fmt(ex["p50"]), fmt(ex["p99"]),
                     "pass" if p["correctness"]["ok"] else "FAIL"])
    out.append(md(["phase", "orders", "orders/s (first intent -> last snapshot)", "e2e p50 ms", "p90", "p99", "max",
                   "plan->snapshot p50 ms", "p99", "checks"], rows))  # checks: see "correctness" in the JSON
    rows = []
    passthrough = (baseline or {}).get("results", {}).get("consumer_passthrough", {}).get("ops_per_s")
    for p in phases:
        t = p["throughput"]
        cells = [p["phase"], fmt(t["injection"]["per_s"])]
        for stage in STAGES:
            rate = t[stage]["per_s"]
            share = f" ({100 * rate / passthrough:.0f} %)" if passthrough and rate else ""
            cells.append(fmt(rate) + share)
        cells += [fmt(p["cpu"]["cores_busy"], 2), fmt(p["cpu"]["cpu_ms_per_order_total"]),
                  fmt(p["cpu"]["other_processes_cores"], 2)]
        rows.append(cells)
    out.append(md(["phase", "injected/s", *(f"{s} /s" for s in STAGES), "cores busy (of 2)", "CPU ms per order",
                   "other programs' cores"], rows))
    rows = []
    for p in phases:
        cpu = p["cpu"]["cpu_ms_per_order"]
        rows.append([p["phase"], *(fmt(cpu.get(k), 2) for k in ("position-state", "apply-layer", "redis-server",
                                                               "exchange-sim", "governor", "intent-bridge",
                                                               "bench (injector)"))])
    out.append(md(["phase (CPU ms per order)", "position-state", "apply-layer", "redis-server", "exchange-sim",
                   "governor", "intent-bridge", "bench"], rows))
    rows = []
    for p in phases:
        s = p["latency"]["stages_ms"]
        rows.append([p["phase"], *(f"{fmt(s[k]['p50'])} / {fmt(s[k]['p99'])}" for k in STAGES)])
    out.append(md(["phase (stage latency p50 / p99 ms)", *STAGES], rows))
    rows = []
    for p in phases:
        for b in p["by_open_positions"]:
            rows.append([p["phase"], b["open_positions"], fmt(b["snapshots_per_s"]), fmt(b["position_state_ms_p50"]),
                         fmt(b["end_to_end_ms_p50"]), fmt(b["end_to_end_ms_p99"])])
    out.append(md(["phase", "open positions", "snapshots/s", "position-state p50 ms", "e2e p50 ms", "e2e p99 ms"],
                  rows, left=2))
    if data.get("read_state_cost"):
        rows = [[r["open_positions"], fmt(r["read_state_wall_ms"], 2), fmt(r["read_state_cpu_ms"], 2),
                 fmt(r["settle_cpu_ms"], 2), fmt(r["max_results_per_s"])] for r in data["read_state_cost"]]
        out.append(md(["open positions", "read_state wall ms", "read_state CPU ms", "settle CPU ms",
                       "results/s at most"], rows))
    return "\n\n".join(out)


def profile_tables(data: dict, top: int = 8) -> str:
    out = []
    for phase in data["phases"]:
        for pod, prof in phase.get("profile", {}).items():
            rows = [[name, f"{pct} %"] for name, pct in prof.get("inclusive_pct", [])[:top]]
            title = f"**{pod}** ({prof.get('samples', 0)} samples holding the GIL)"
            out.append(title + "\n\n" + md(["function", "inclusive"], rows))
    return "\n\n".join(out)


GOAL_NAMES = {
    "throughput": "Throughput, 1,000-order burst, 1 replica each: >= 35 % of passthrough and >= 1,000/s",
    "cpu_per_order": "CPU per order, all processes: <= 1.0 ms (reference) or <= 25 % of before",
    "latency_paced_200": "Latency paced at 200/s: e2e p99 < 20 ms",
    "latency_half_saturating": "Latency at half the saturating rate: e2e p99 < 10 ms",
    "redis_commands_per_order": "Redis commands per order <= 30",
    "round_trips_per_order": "Round trips per order <= 5",
    "governor_flat_cost": "Governor script time at 2,000 open + 2,000 reserved <= 1.2 x none",
}


GOAL_COMMANDS = {
    "throughput": "`python -m bench.order_path` (`goals.throughput`)",
    "cpu_per_order": "`python -m bench.order_path` (`goals.cpu_per_order`)",
    "latency_paced_200": "`python -m bench.order_path` (`goals.latency_paced_200`)",
    "latency_half_saturating": "`python -m bench.order_path` (`goals.latency_half_saturating`)",
    "redis_commands_per_order": "`python -m bench.order_path` (`goals.redis_commands_per_order`)",
    "round_trips_per_order": "`python -m bench.order_path` (`goals.round_trips_per_order`)",
    "governor_flat_cost": "`python -m bench.governor_flat_cost` (in `bench.order_path` too)",
}


def goal_cell(name: str, goal: dict, passthrough: float) -> str:
    """One goal's figure with its machine-independent form."""
    figure = goal["figure"]
    if name == "throughput":
        return f"{fmt(figure)} orders/s = {100 * goal['ratio_to_passthrough']:.1f} % of {fmt(passthrough)}"
    if name == "cpu_per_order":
        return f"{fmt(figure, 2)} ms = {fmt(goal['in_passthrough_periods'])} periods"
    if name.startswith("latency"):
        rate = goal.get("rate_per_s") or goal.get("achieved_rate_per_s")
        return (
            f"p50 {fmt(goal['p50'])} / p99 {fmt(figure)} ms = {fmt(goal['in_passthrough_periods'])} periods"
            f" (at {fmt(rate)}/s)"
        )
    if name == "redis_commands_per_order":
        return f"{fmt(figure)} (paced 200/s: {fmt(goal['paced_200'])})"
    if name == "round_trips_per_order":
        return (
            f"{fmt(figure, 2)} burst, {fmt(goal['paced_200'], 2)} paced 200/s"
            f" (server reads {fmt(goal['server_reads_burst'])} / {fmt(goal['server_reads_paced_200'])})"
        )
    return f"{fmt(figure, 2)} x"


def compare_tables(before: dict, after: dict) -> str:
    """The goal table of two ``bench.order_path`` runs, and their CPU per order per process."""
    rows = []
    base_b, base_a = before["passthrough_msg_per_s"]["median"], after["passthrough_msg_per_s"]["median"]
    for name, title in GOAL_NAMES.items():
        b, a = before["goals"][name], after["goals"][name]
        met = "yes" if a["met"] else "no"
        if name == "cpu_per_order":
            share = a["figure"] / b["figure"]
            met = f"{'yes' if a['met'] or share <= 0.25 else 'no'} (after / before = {100 * share:.0f} %)"
        rows.append([title, goal_cell(name, b, base_b), goal_cell(name, a, base_a), met, GOAL_COMMANDS[name]])
    out = [md(["goal", "before", "after", "met", "command (one side)"], rows, left=5)]
    names = list(
        dict.fromkeys(
            [*before["goals"]["cpu_per_order"]["per_process_ms"], *after["goals"]["cpu_per_order"]["per_process_ms"]]
        )
    )
    rows = []
    for process in names:
        b = before["goals"]["cpu_per_order"]["per_process_ms"].get(process)
        a = after["goals"]["cpu_per_order"]["per_process_ms"].get(process)
        rows.append([process, fmt(b, 3), fmt(a, 3), f"{100 * a / b:.0f} %" if a is not None and b else "-"])
    out.append(md(["process (burst, CPU ms per order)", "before", "after", "after / before"], rows))
    return "\n\n".join(out)


def scaling_table(data: dict) -> str:
    rows = []
    for s in data["scaling"]:
        runs = " / ".join(fmt(rate) for rate in s["orders_per_s_runs"])
        share = f"{100 * s['ratio_to_passthrough']:.1f} %"
        rows.append(
            [
                s["configuration"],
                f"{fmt(s['orders_per_s'])} ({runs})",
                share,
                fmt(s["speedup_over_x1"], 2),
                fmt(s["efficiency_per_apply_layer_replica"], 2),
                fmt(s["cores_busy"], 2),
                fmt(s["cpu_ms_per_order"], 2),
                fmt(s["core_bound_ceiling_orders_per_s"]),
                f"{100 * s['share_of_ceiling']:.0f} %",
                fmt(s.get("left_cores_ceiling_orders_per_s")),
                fmt(s["stage_orders_per_s"]["apply-layer + exchange-sim"]),
                " / ".join(fmt(c, 2) for c in s["other_processes_cores"]),
            ]
        )
    return md(
        [
            "configuration",
            "orders/s, median (runs)",
            "of passthrough",
            "speed-up",
            "efficiency",
            "cores busy",
            "CPU ms/order",
            "2-core ceiling /s",
            "of ceiling",
            "ceiling on the cores left /s",
            "apply stage /s",
            "others' cores",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args[:1] == ["compare"] and len(args) in (2, 3):
        files = [load(name) for name in args[1:]]
        if any(f is None for f in files):
            print(f"no results file for one of {args[1:]}")
            return 2
        before, after = (files[0]["before"], files[0]["after"]) if len(files) == 1 else files
        print(compare_tables(before, after))
        return 0
    names = args or ["redis_baseline", "pipeline", "pipeline-profile"]
    baseline = load("redis_baseline")
    for name in names:
        data = load(name)
        if data is None:
            print(f"<!-- {name}: no results file -->\n")
            continue
        code = data["machine"].get("measured_code", {}).get("commit") or data["machine"].get("git_commit", "?")
        print(f"### {name} ({data['measured_at']}, code at commit {code})\n")
        if data["benchmark"] == "replica_scaling":
            print(scaling_table(data))
        elif data["benchmark"] == "redis_baseline":
            print(redis_tables(data, load("pipeline")))
        elif any("profile" in p for p in data["phases"]):
            print(profile_tables(data))
        else:
            print(pipeline_tables(data, baseline))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
