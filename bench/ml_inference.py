"""Per-bar inference of the shipped ensemble, and the cost of training it.

``python -m bench.ml_inference [--model NAME] [--bars N] [--skip-training] [--quick]``

Inference: the artifact ``models/<NAME>`` (verified by its digest like ai-engine does), driven one bar at a
time with real hourly klines it was not trained on (AAVEUSDT 2024-2025), on one core (CPU affinity 0, torch on
one thread). Each bar is timed (wall clock) in parts along ai-engine's per-bar path (``RowPredictor``):
``market-v1`` features (``MarketFeatureState.update``), the xgboost margin (the booster's trees walked by
``CompiledTrees.row_margins`` on the preallocated float32 row) with its softmax, the torch MLP (three ``addmm``
into preallocated tensors) with its softmax, and the ensemble rule (``combine`` + ``decide``). ``total`` is all of
them for one bar; ``total_cpu`` is the CPU time the thread spent on it (on a machine shared with other work, wall
time also counts the waits for the core, CPU time does not). ``reference_total`` is the same bar through the
reference path (``Ensemble.probabilities`` of a one-row array, i.e. ``CompiledTrees.margins`` and the torch
module's forward), run in the same loop, alternately before and after the fast one: the ratio of the two is
what the per-bar path saves, measured under the same load. Both give the same probabilities bit for bit (a
test; the bench also checks they make the same number of intents). This is the work ai-engine and features do
per bar, without Redis.

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
from quantum_trader.contracts.messages import FeatureVector
from quantum_trader.contracts.policy import ModelRef, StrategySpec
from quantum_trader.data.klines import read_klines
from quantum_trader.data.replay import kline_to_tick
from quantum_trader.ml.ensemble import EnsembleState, combine, decide
from quantum_trader.ml.market_features import MarketFeatureState
from quantum_trader.ml.models import Ensemble, RowPredictor, softmax
from quantum_trader.research.artifact import load_artifact, models_dir, observed_digest

REPO = Path(__file__).resolve().parent.parent
KLINES = REPO.parent / "shared" / "data" / "klines"
HELD_OUT = "AAVEUSDT-1h-2024-01-01_2025-12-31.csv"
PARTS = ("features", "xgboost", "torch", "rule", "total", "total_cpu", "reference_total", "reference_total_cpu")
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
    predictor = RowPredictor(model)
    spec, strategy = ModelRef(name=name, digest=digest, threshold=0.42), StrategySpec()
    ticks = [kline_to_tick(k) for k in read_klines(KLINES / HELD_OUT)][:bars]
    state = MarketFeatureState(ticks[0].symbol)
    decision, reference_decision = EnsembleState(), EnsembleState()
    parts: dict[str, list[float]] = {key: [] for key in PARTS}
    intents = reference_intents = 0
    clock = time.perf_counter_ns
    for n, tick in enumerate(ticks):
        c0 = time.thread_time_ns()
        t0 = clock()
        vector = state.update(tick)
        t1 = clock()
        if vector is None:
            continue
        features_cpu = time.thread_time_ns() - c0

        rule = (spec, strategy, digest)
        if n % 2:  # alternate which path runs first, so neither always finds the caches warm
            xgb_ns, torch_ns, rule_ns, fast_cpu, intent = _per_bar_path(predictor, vector, decision, *rule)
            ref_ns, ref_cpu, reference_intent = _reference_path(model, vector, reference_decision, *rule)
        else:
            ref_ns, ref_cpu, reference_intent = _reference_path(model, vector, reference_decision, *rule)
            xgb_ns, torch_ns, rule_ns, fast_cpu, intent = _per_bar_path(predictor, vector, decision, *rule)
        intents += intent
        reference_intents += reference_intent
        features_ns = t1 - t0
        for key, ns in (
            ("features", features_ns),
            ("xgboost", xgb_ns),
            ("torch", torch_ns),
            ("rule", rule_ns),
            ("total", features_ns + xgb_ns + torch_ns + rule_ns),
            ("total_cpu", features_cpu + fast_cpu),
            ("reference_total", features_ns + ref_ns),
            ("reference_total_cpu", features_cpu + ref_cpu),
        ):
            parts[key].append(ns / 1000)
    if intents != reference_intents:
        raise SystemExit(f"the per-bar path made {intents} intents, the reference {reference_intents}")
    us = {key: summary(values, 1) for key, values in parts.items()}
    return {
        "model": name,
        "digest": digest,
        "data": HELD_OUT,
        "bars": len(parts["total"]),
        "intents": intents,
        "microseconds": us,
        "reference_over_fast": {q: round(us["reference_total"][q] / us["total"][q], 2) for q in ("p50", "p90", "p99")},
    }


def _per_bar_path(
    predictor: RowPredictor,
    vector: FeatureVector,
    state: EnsembleState,
    spec: ModelRef,
    strategy: StrategySpec,
    digest: str,
) -> tuple[int, int, int, int, bool]:
    """``RowPredictor.probabilities`` and the rule, timed in parts: (xgboost, torch, rule, CPU) ns, an intent."""
    clock = time.perf_counter_ns
    c0, t0 = time.thread_time_ns(), clock()
    predictor.row[:] = vector.values
    p_xgb = softmax(predictor.trees.row_margins(predictor.row), predictor.xgb_temperature)
    t1 = clock()
    p_torch = softmax(predictor.logits(), predictor.mlp_temperature)
    t2 = clock()
    intent = decide(vector, combine(p_xgb[0], p_torch[0], spec), state, spec, strategy, model_digest=digest)
    t3 = clock()
    return t1 - t0, t2 - t1, t3 - t2, time.thread_time_ns() - c0, intent is not None


def _reference_path(
    model: Ensemble,
    vector: FeatureVector,
    state: EnsembleState,
    spec: ModelRef,
    strategy: StrategySpec,
    digest: str,
) -> tuple[int, int, bool]:
    """``Ensemble.probabilities`` of a one-row array and the rule: wall ns, CPU ns, an intent."""
    c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
    p_xgb, p_torch = model.probabilities(np.asarray(vector.values, dtype=np.float64)[None, :])
    intent = decide(vector, combine(p_xgb[0], p_torch[0], spec), state, spec, strategy, model_digest=digest)
    return time.perf_counter_ns() - t0, time.thread_time_ns() - c0, intent is not None


def training(quick: bool) -> dict[str, object]:
    files = TRAIN_FILES[:2] if quick else TRAIN_FILES
    with tempfile.TemporaryDirectory(prefix="qt-bench-train-") as tmp:
        command = [
            sys.executable,
            "-m",
            "quantum_trader.cli",
            "train",
            "--quiet",
            "--threshold",
            "0.42",
            *[arg for f in files for arg in ("--data", str(KLINES / f))],
            "--out",
            f"{tmp}/ensemble-1h-v1",
        ]
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
    parser.add_argument("--output", default="", help="results file name (default ml_inference[-quick])")
    args = parser.parse_args()
    quiet = wait_for_quiet(60)
    results: dict[str, object] = {"machine": {**machine(), **quiet}}
    results["inference"] = inference(args.model, args.bars)
    us = results["inference"]["microseconds"]  # type: ignore[index]
    print(
        table(
            ["part (µs per bar)", "p50", "p90", "p99", "max"],
            [[k, v["p50"], v["p90"], v["p99"], v["max"]] for k, v in us.items()],
        )
    )
    print(f"reference / per-bar path: {results['inference']['reference_over_fast']}")  # type: ignore[index]
    if not args.skip_training:
        results["training"] = training(args.quick)
        t = results["training"]
        print(
            f"training: {t['wall_seconds']} s wall, {t['cpu_seconds']} s CPU, peak RSS {t['peak_rss_mb']} MB, "  # type: ignore[index]
            f"digest {t['digest']}"
        )  # type: ignore[index]
    print(write_results(args.output or ("ml_inference-quick" if args.quick else "ml_inference"), results))


if __name__ == "__main__":
    main()
