"""Per-bar inference of the shipped ensemble, and the cost of training it.

``python -m bench.ml_inference [--model NAME] [--bars N] [--skip-training] [--quick]``

Inference: the artifact ``models/<NAME>`` (verified by its digest like ai-engine does), driven one bar at a
time with real hourly klines it was not trained on (AAVEUSDT 2024-2025), on one core (CPU affinity 0, torch on
one thread). Each bar is timed (wall clock) in parts: ``market-v1`` features (``MarketFeatureState.update``), the
xgboost margin (its trees walked by ``CompiledTrees``, as ai-engine does for one row), the torch MLP forward,
and the ensemble rule (``combine`` + ``decide``). ``total`` is all of them
for one bar; ``total_cpu`` is the CPU time the thread spent on it (on a machine shared with other work, wall time
also counts the waits for the core, CPU time does not). This is the work ai-engine and features do per bar,
without Redis.

Training: ``qt train`` as a child process with the command the README gives for the shipped model (or, with
``--quick``, a 2-file 3000-bar slice), its wall time, CPU time and peak RSS (``ru_maxrss`` of the child).

Results: a table on stdout and ``bench/results/ml_inference.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._util import machine, summary, table, wait_for_quiet, write_results
from quantum_trader.contracts.policy import ModelRef, StrategySpec
from quantum_trader.data.klines import read_klines
from quantum_trader.data.replay import kline_to_tick
from quantum_trader.ml.ensemble import EnsembleState, combine, decide
from quantum_trader.ml.market_features import MarketFeatureState
from quantum_trader.ml.models import mlp_logits, softmax
from quantum_trader.research.artifact import load_artifact, models_dir, observed_digest

REPO = Path(__file__).resolve().parent.parent
KLINES = REPO.parent / "shared" / "data" / "klines"
HELD_OUT = "AAVEUSDT-1h-2024-01-01_2025-12-31.csv"
TRAIN_FILES = (
    "BTCUSDT-1h-2023-01-01_2024-05-13.csv",
    "ETHUSDT-1h-2023-01-01_2024-05-13.csv",
    "LTCUSDT-1h-2024-01-01_2025-12-31.csv",
    "BCHUSDT-1h-2024-01-01_2025-12-31.csv",
    "ETCUSDT-1h-2024-01-01_2025-12-31.csv",
    "ATOMUSDT-1h-2024-01-01_2025-12-31.csv",
)


def inference(name: str, bars: int) -> dict[str, object]:
    import torch

    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    digest = observed_digest(models_dir() / name, name)[0]
    artifact = load_artifact(name, digest)
    model = artifact.ensemble
    trees = model.trees
    assert trees is not None
    spec, strategy = ModelRef(name=name, digest=digest, threshold=0.42), StrategySpec()
    ticks = [kline_to_tick(k) for k in read_klines(KLINES / HELD_OUT)][:bars]
    state, decision = MarketFeatureState(ticks[0].symbol), EnsembleState()
    parts: dict[str, list[float]] = {"features": [], "xgboost": [], "torch": [], "rule": [], "total": [],
                                     "total_cpu": []}
    intents = 0
    clock = time.perf_counter_ns
    for tick in ticks:
        c0 = time.thread_time_ns()
        t0 = clock()
        vector = state.update(tick)
        t1 = clock()
        if vector is None:
            continue
        x = np.asarray(vector.values, dtype=np.float64)[None, :]
        p_xgb = softmax(trees.margins(x), model.xgb_temperature)  # the single-row path of Ensemble.probabilities
        t2 = clock()
        p_torch = softmax(mlp_logits(model.mlp, x), model.mlp_temperature)
        t3 = clock()
        intent = decide(vector, combine(p_xgb[0], p_torch[0], spec), decision, spec, strategy, model_digest=digest)
        t4 = clock()
        parts["total_cpu"].append((time.thread_time_ns() - c0) / 1000)
        intents += intent is not None
        for key, ns in (("features", t1 - t0), ("xgboost", t2 - t1), ("torch", t3 - t2), ("rule", t4 - t3),
                        ("total", t4 - t0)):
            parts[key].append(ns / 1000)
    return {
        "model": name,
        "digest": digest,
        "data": HELD_OUT,
        "bars": len(parts["total"]),
        "intents": intents,
        "microseconds": {key: summary(values, 1) for key, values in parts.items()},
    }


def training(quick: bool) -> dict[str, object]:
    files = TRAIN_FILES[:2] if quick else TRAIN_FILES
    with tempfile.TemporaryDirectory(prefix="qt-bench-train-") as tmp:
        command = [sys.executable, "-m", "quantum_trader.cli", "train", "--quiet", "--threshold", "0.42",
                   *[arg for f in files for arg in ("--data", str(KLINES / f))], "--out", f"{tmp}/ensemble-1h-v1"]
        if quick:
            command += ["--max-bars", "3000"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"qt train failed: {result.stderr.strip() or result.stdout.strip()}")
    digest = next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("digest"))
    return {
        "files": list(files),
        "max_bars": 3000 if quick else 0,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        "peak_rss_mb": round(after.ru_maxrss / 1024, 1),
        "digest": digest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ensemble-1h-v1")
    parser.add_argument("--bars", type=int, default=5000)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a small training slice instead of the shipped command")
    args = parser.parse_args()
    quiet = wait_for_quiet(60)
    results: dict[str, object] = {"machine": {**machine(), **quiet}}
    results["inference"] = inference(args.model, args.bars)
    us = results["inference"]["microseconds"]  # type: ignore[index]
    print(table(["part (µs per bar)", "p50", "p90", "p99", "max"],
                [[k, v["p50"], v["p90"], v["p99"], v["max"]] for k, v in us.items()]))
    if not args.skip_training:
        results["training"] = training(args.quick)
        t = results["training"]
        print(f"training: {t['wall_seconds']} s wall, {t['cpu_seconds']} s CPU, peak RSS {t['peak_rss_mb']} MB, "  # type: ignore[index]
              f"digest {t['digest']}")  # type: ignore[index]
    print(write_results("ml_inference-quick" if args.quick else "ml_inference", results))


if __name__ == "__main__":
    main()
