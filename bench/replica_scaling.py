"""Orders/s of 1,000-order bursts against the number of replicas: apply-layer at 1, 2 and 4, then every stage at 2.

``python -m bench.replica_scaling [--quick] [--intents N] [--output NAME]``

Each run is one ``bench.pipeline`` burst (fresh Redis, new processes, every correctness check). The
configurations: apply-layer x1, x2, x4, and intent-bridge, governor, apply-layer and position-state at 2
each (the simulator stays one process: it is the exchange). They run forwards, then backwards
(``--rounds 2``, the default), so a drift of the machine's load falls on all of them alike, and each
figure is the median of a configuration's runs. ``consumer_passthrough`` (``bench.order_path``) is
measured at the start and at the end.

For every configuration the report has:

- orders/s end to end, and as a ratio to ``consumer_passthrough``;
- speed-up over x1, and scaling efficiency (speed-up / apply-layer replicas);
- cores busy (CPU seconds of our processes / wall seconds, of 2) and CPU per order;
- the **core-bound ceiling**: 2 cores / CPU per order. When orders/s is near it, the cores are used
  up and more replicas cannot help; when it is far below, a serial stage (one order in flight per
  apply-layer process, one batch at a time per consumer) is what limits, and replicas of that stage
  can help until the ceiling. On a shared machine the cores other programs used during the run are
  not ours: ``left_cores_ceiling`` is (2 - others' cores) / CPU per order, run by run;
- each stage's own orders/s (n - 1 over the span of its outputs), which shows which stage is slowest.

Results: a table on stdout and ``bench/results/NAME.json`` (default ``replica_scaling``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from collections.abc import Callable

from bench import pipeline
from bench._util import result_header, start_redis, table, uptime, write_results
from bench.order_path import passthrough

CONFIGURATIONS: tuple[tuple[str, dict[str, int]], ...] = (
    ("apply-layer x1", {}),
    ("apply-layer x2", {"apply-layer": 2}),
    ("apply-layer x4", {"apply-layer": 4}),
    ("every stage x2", {"intent-bridge": 2, "governor": 2, "apply-layer": 2, "position-state": 2}),
)


def order_of_runs(rounds: int) -> list[tuple[str, dict[str, int]]]:
    """The configurations forwards, then backwards, and so on: a drift of the machine's load during the
    run falls on every configuration alike (x1 first and last)."""
    out: list[tuple[str, dict[str, int]]] = []
    for i in range(rounds):
        out += CONFIGURATIONS if i % 2 == 0 else CONFIGURATIONS[::-1]
    return out


def median_of(runs: list[dict], pick: Callable[[dict], float]) -> float:
    return round(statistics.median(pick(run) for run in runs), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replica_scaling", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 intents per burst")
    parser.add_argument("--intents", type=int, default=None, metavar="N", help="intents per burst (default 1,000)")
    parser.add_argument("--rounds", type=int, default=2, metavar="N", help="passes over the configurations")
    parser.add_argument("--output", default="replica_scaling", metavar="NAME", help="bench/results/NAME.json")
    args = parser.parse_args(argv)
    count = args.intents or (200 if args.quick else pipeline.BURST)
    started = time.monotonic()
    uptime_before = uptime()
    cores = os.cpu_count() or 1
    base_before = passthrough(10 * count)
    workdir = pipeline.bench_environment()
    server = start_redis()
    runs = []
    try:
        for name, replicas in order_of_runs(args.rounds):
            result = pipeline.burst_phase(server.url, workdir, count, replicas)
            result.pop("by_open_positions", None)
            result["configuration"] = name
            runs.append(result)
            print(
                f"[{time.monotonic() - started:5.1f}s] {name}: {result['throughput']['end_to_end']['per_s']} orders/s,"
                f" {result['cpu']['cores_busy']} cores busy, others {result['cpu']['other_processes_cores']}",
                flush=True,
            )
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    base_after = passthrough(10 * count)
    rates = [b["consumer_passthrough"]["ops_per_s"] for b in (base_before, base_after)]
    base = sum(rates) / len(rates)
    by_name = {name: [run for run in runs if run["configuration"] == name] for name, _ in CONFIGURATIONS}
    first = median_of(by_name[CONFIGURATIONS[0][0]], lambda run: run["throughput"]["end_to_end"]["per_s"])
    scaling = []
    rows = []
    for name, replicas in CONFIGURATIONS:
        group = by_name[name]
        rate = median_of(group, lambda run: run["throughput"]["end_to_end"]["per_s"])
        cpu_ms = median_of(group, lambda run: run["cpu"]["cpu_ms_per_order_total"])
        apply_replicas = replicas.get("apply-layer", 1)
        ceiling = round(cores * 1000 / cpu_ms, 1)
        s = {
            "configuration": name,
            "replicas": replicas,
            "runs": len(group),
            "orders_per_s": rate,
            "orders_per_s_runs": [run["throughput"]["end_to_end"]["per_s"] for run in group],
            "ratio_to_passthrough": round(rate / base, 4),
            "speedup_over_x1": round(rate / first, 2),
            "efficiency_per_apply_layer_replica": round(rate / first / apply_replicas, 2),
            "cores_busy": median_of(group, lambda run: run["cpu"]["cores_busy"]),
            "cpu_ms_per_order": cpu_ms,
            "core_bound_ceiling_orders_per_s": ceiling,
            "share_of_ceiling": round(rate / ceiling, 2),
            "left_cores_ceiling_orders_per_s": median_of(
                group,
                lambda run: (
                    max(0.0, cores - run["cpu"]["other_processes_cores"]) * 1000 / run["cpu"]["cpu_ms_per_order_total"]
                ),
            ),
            "stage_orders_per_s": {
                stage: median_of(group, lambda run, stage=stage: run["throughput"][stage]["per_s"] or 0.0)
                for stage in pipeline.STAGES
            },
            "other_processes_cores": [run["cpu"]["other_processes_cores"] for run in group],
        }
        scaling.append(s)
        rows.append(
            [
                name,
                rate,
                s["ratio_to_passthrough"],
                s["speedup_over_x1"],
                s["efficiency_per_apply_layer_replica"],
                s["cores_busy"],
                cpu_ms,
                ceiling,
                s["share_of_ceiling"],
                s["stage_orders_per_s"]["apply-layer + exchange-sim"],
                " ".join(str(c) for c in s["other_processes_cores"]),
            ]
        )
    print()
    print(f"consumer_passthrough {rates} msg/s")
    print(
        table(
            [
                "configuration",
                "orders/s",
                "x passthrough",
                "speed-up",
                "efficiency",
                "cores busy",
                "CPU ms/order",
                "ceiling /s",
                "of ceiling",
                "apply stage /s",
                "others' cores",
            ],
            rows,
        )
    )
    ok = all(run["correctness"]["ok"] for run in runs)
    path = write_results(
        args.output,
        {
            **result_header("replica_scaling", started, uptime_before, __doc__),
            "intents_per_burst": count,
            "passthrough_msg_per_s": rates,
            "passthrough": {"before": base_before, "after": base_after},
            "all_checks_ok": ok,
            "scaling": scaling,
            "runs": runs,
        },
    )
    print(f"\n{time.monotonic() - started:.0f}s; all checks {'ok' if ok else 'FAILED'}; wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
