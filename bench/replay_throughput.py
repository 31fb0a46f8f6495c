"""Replay throughput in bars/s: market-data -> features -> ai-engine, and the whole pipeline.

``python -m bench.replay_throughput [--quick] [--md-only] [--data FILE] [--output NAME]``

Rows (each on a fresh instance of a redis-server of our own, components as ``qt component``
processes started by the local Supervisor, exactly as ``qt run`` and ``qt backtest`` start them):

- ``in-process``: the same per-bar code with no Redis and no processes — ``replay_ticks`` ->
  ``FeatureState.update`` -> ``baseline.decide`` in one loop. The ceiling the Python logic allows.
- ``md->features->ai (<model>)``: market-data at full speed (``speed: 0``, batches of ticks per
  MULTI), features and ai-engine as processes, each step exactly-once (Lua); once with
  ``baseline-trend`` (core-v1 features, the EMA rule) and once with the shipped ensemble
  ``ensemble-1h-v1`` (market-v1 features, xgboost + torch per bar). features and ai-engine are
  started first and the clock starts with the first tick's stream entry (their imports and the
  model's loading are not timed); it stops when features has read and acked every tick and
  ai-engine every vector; bars/s = bars / that time. ``cpu_us_per_bar``: CPU time (user + system)
  each process and redis-server used in that window, per bar; ``others_cores``: what the rest of
  the machine used meanwhile, in cores.
- ``whole, free-running``: every component of a paper stack, market-data at full speed (what
  ``qt run`` does with ``speed: 0``). Not deterministic: how many bars pass before an order is
  filled depends on timing. Timed from the first tick to every stream drained.
- ``whole, lockstep (qt backtest)``: ``Backtest.run`` — each bar published once everything the
  previous one caused is done. Its ``replay_seconds``: from the first bar published to the last
  bar's effects drained, polled every 0.1 s (start-up, stop and the report excluded; the total is
  recorded too).

Data: a real kline file (default ``BTCUSDT-1m-2025-05-05_2025-06-23.csv`` from ../shared/data/klines).
Results: a table on stdout and ``bench/results/replay_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import redis

from bench._util import machine, machine_busy_seconds, start_redis, table, wait_for_quiet, write_results
from quantum_trader.backtest.run import Backtest, backtest_policy
from quantum_trader.bus.drain import all_drained
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import PolicySpec, StrategySpec, parse_policy
from quantum_trader.data.replay import replay_ticks
from quantum_trader.local.supervisor import Supervisor
from quantum_trader.ml.baseline import StrategyState, decide
from quantum_trader.ml.features import FeatureState
from quantum_trader.research.artifact import models_dir, observed_digest

KLINES = Path(os.environ.get("QT_SHARED_KLINES", Path(__file__).resolve().parent.parent.parent / "shared/data/klines"))
DEFAULT_FILE = "BTCUSDT-1m-2025-05-05_2025-06-23.csv"
STRATEGY = {"fast": 12, "slow": 48}
SHIPPED_MODEL = "ensemble-1h-v1"


def in_process(file: Path, bars: int) -> dict:
    spec = StrategySpec(**STRATEGY)
    ticks = list(replay_ticks([file], max_bars=bars))
    features = FeatureState.from_spec(ticks[0].symbol, spec)
    strategy = StrategyState()
    intents = 0
    started = time.perf_counter()
    for tick in ticks:
        vector = features.update(tick)
        if vector is not None and decide(vector, strategy, spec) is not None:
            intents += 1
    elapsed = time.perf_counter() - started
    return {"row": "in-process", "bars": len(ticks), "seconds": round(elapsed, 3), "intents": intents}


def stream_first_ms(client: redis.Redis, key: str) -> int:
    first = client.xrange(key, count=1)
    return int(first[0][0].split("-")[0]) if first else 0


def _group(client: redis.Redis, key: str, name: str) -> dict | None:
    try:
        groups = client.xinfo_groups(key)
    except redis.ResponseError:
        return None
    return next((g for g in groups if g["name"] == name), None)


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far (0 for one that is gone)."""
    used = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
            used[name] = times.user + times.system
        except psutil.Error:
            used[name] = 0.0
    return used


def _wait_for_groups(client: redis.Redis, keys: Keys, groups: dict[str, str], supervisor: Supervisor) -> None:
    """Until each stream has its reader's group: the readers are started (imports, model loaded) and reading."""
    deadline = time.monotonic() + 300
    while not all(_group(client, keys.stream(stream), name) for stream, name in groups.items()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the readers {sorted(groups.values())} did not start within 5 minutes")
        supervisor.supervise_once()
        time.sleep(0.05)


def md_features_ai(file: Path, bars: int, workdir: Path, model: str) -> dict:
    """market-data -> features -> ai-engine as processes; timed once features and ai-engine are reading.

    features and ai-engine start first and the clock starts with the first tick market-data publishes, so
    their start-up (imports, loading the model) is not in the figure. CPU seconds of each process and of
    redis-server are sampled at the first tick and at the end: that is where the time of a bar goes.
    """
    server = start_redis()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    policy = replay_policy(file, bars, model)
    readers = Supervisor(policy, server.url, instance="bench", workdir=workdir / "readers",
                         only=["features", "ai-engine"])  # fmt: skip
    source = Supervisor(policy, server.url, instance="bench", workdir=workdir / "source", only=["market-data"])
    keys = readers.keys
    progress = keys.component_state("market-data", "progress")
    tick_stream = keys.stream("market.tick")
    try:
        readers.prepare()
        readers.start()
        _wait_for_groups(client, keys, {"market.tick": "features", "features": "ai-engine"}, readers)
        source.prepare()
        source.start()
        pids = {p.component: p.popen.pid for s in (readers, source) for p in s.processes.values() if p.popen}
        pids["redis-server"] = server.pid or 0
        deadline = time.monotonic() + 1800
        while not client.xlen(tick_stream):
            if time.monotonic() > deadline:
                raise RuntimeError("market-data published nothing within 30 minutes")
            source.supervise_once()
            time.sleep(0.001)
        cpu_before, machine_before = _cpu_seconds(pids), machine_busy_seconds()
        while time.monotonic() < deadline:
            readers.supervise_once()
            source.supervise_once()
            if int(client.hget(progress, "published") or 0) >= bars:
                groups = [_group(client, tick_stream, "features"), _group(client, keys.stream("features"), "ai-engine")]
                if all(g and not int(g["pending"]) and int(g.get("lag") or 0) == 0 for g in groups):
                    break
            time.sleep(0.005)
        else:
            raise RuntimeError("the replay did not finish within 30 minutes")
        seconds_now, micros_now = client.time()
        cpu_after, machine_after = _cpu_seconds(pids), machine_busy_seconds()
        finished_ms = int(seconds_now * 1000 + micros_now / 1000)
        seconds = (finished_ms - stream_first_ms(client, tick_stream)) / 1000
        cpu = {name: cpu_after[name] - cpu_before[name] for name in pids}
        ours = sum(cpu.values())
        others = max(0.0, machine_after - machine_before - ours)
        return {
            "row": f"md->features->ai ({model})",
            "bars": bars,
            "seconds": round(seconds, 3),
            "intents": client.xlen(keys.stream("trade.intent")),
            "cpu_us_per_bar": {name: round(used * 1e6 / bars, 1) for name, used in cpu.items()},
            "cpu_us_per_bar_total": round(ours * 1e6 / bars, 1),
            "others_cores": round(others / seconds, 2) if seconds > 0 else None,
        }
    finally:
        source.stop()
        readers.stop()
        client.close()
        server.stop()


def replay_policy(file: Path, bars: int, model: str) -> PolicySpec:
    """The file's symbol replayed at full speed (``speed: 0``) with ``model`` (an artifact pinned to its digest)."""
    reference = {"name": model}
    if model != "baseline-trend":
        reference["digest"] = observed_digest(models_dir() / model, model)[0]
    return parse_policy(
        {
            "symbols": [file.name.split("-")[0]],
            "marketData": {"source": "replay", "files": [str(file)], "maxBars": bars, "speed": 0},
            "strategy": STRATEGY,
            "model": reference,
            "streams": {"maxLen": 4 * bars + 1000},
            "reconciler": {"intervalSeconds": 86400},
        }
    )


def whole_free_running(file: Path, bars: int, workdir: Path) -> dict:
    server = start_redis()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    supervisor = Supervisor(replay_policy(file, bars, "baseline-trend"), server.url, instance="bench", workdir=workdir)
    keys = supervisor.keys
    progress = keys.component_state("market-data", "progress")
    try:
        supervisor.prepare()
        supervisor.start()
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            supervisor.supervise_once()
            if int(client.hget(progress, "published") or 0) >= bars and all_drained(client, keys):
                break
            time.sleep(0.02)
        else:
            raise RuntimeError("the replay did not finish within 30 minutes")
        seconds_now, micros_now = client.time()
        finished_ms = int(seconds_now * 1000 + micros_now / 1000)
        seconds = (finished_ms - stream_first_ms(client, keys.stream("market.tick"))) / 1000
        filled = sum(
            1 for _, f in client.xrange(keys.stream("apply.result")) if json.loads(f["data"])["status"] == "FILLED"
        )
        return {
            "row": "whole, free-running",
            "bars": bars,
            "seconds": round(seconds, 3),
            "intents": client.xlen(keys.stream("trade.intent")),
            "orders_filled": filled,
        }
    finally:
        supervisor.stop()
        client.close()
        server.stop()


def lockstep(file: Path, bars: int, workdir: Path) -> dict:
    server = start_redis()
    try:
        policy = backtest_policy(parse_policy({"strategy": STRATEGY, "model": {"name": "baseline-trend"}}), [str(file)],
                                 max_bars=bars)  # fmt: skip
        started = time.monotonic()
        result = Backtest(policy, workdir, redis_url=server.url).run()
        total = time.monotonic() - started
        replay = result.run["replay_seconds"]
        return {
            "row": "whole, lockstep (qt backtest)",
            "bars": bars,
            "seconds": round(replay, 3),
            "intents": result.headline["approvals"] + sum(result.headline["rejections"].values()),
            "orders_filled": result.headline["orders_filled"],
            "run_with_startup_and_report_s": round(total, 1),
        }
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer bars (a smoke run)")
    parser.add_argument("--data", default=str(KLINES / DEFAULT_FILE), help="kline file")
    parser.add_argument("--md-only", action="store_true", help="only the in-process and md->features->ai rows")
    parser.add_argument("--output", default="", help="results file name (default replay_throughput[-quick])")
    args = parser.parse_args(argv)
    file = Path(args.data)
    if not file.is_file():
        print(f"bench: kline file {file} not found (the shared data folder is absent)")
        return 2
    sizes = {"in": 20_000, "md": 2_000, "whole": 2_000, "lockstep": 300} if args.quick else {
        "in": 70_000, "md": 20_000, "whole": 10_000, "lockstep": 2_000}  # fmt: skip
    quiet = wait_for_quiet(60)
    work = Path(tempfile.mkdtemp(prefix="qt-bench-replay-"))
    started = time.monotonic()
    rows = []
    try:
        rows.append(in_process(file, sizes["in"]))
        for model in ("baseline-trend", SHIPPED_MODEL):
            rows.append(md_features_ai(file, sizes["md"], work / f"md-{model}", model))
        if not args.md_only:
            rows.append(whole_free_running(file, sizes["whole"], work / "whole"))
            rows.append(lockstep(file, sizes["lockstep"], work / "lockstep"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in rows:
        row["bars_per_s"] = round(row["bars"] / row["seconds"]) if row["seconds"] > 0 else None
    print(table(["path", "bars", "seconds", "bars/s", "intents", "CPU µs/bar"],
                [[r["row"], r["bars"], r["seconds"], r["bars_per_s"], r["intents"], r.get("cpu_us_per_bar", "")]
                 for r in rows]))  # fmt: skip
    path = write_results(
        args.output or ("replay_throughput-quick" if args.quick else "replay_throughput"),
        {
            "benchmark": "replay_throughput",
            "file": file.name,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "runtime_s": round(time.monotonic() - started, 1),
            "machine": {**machine(), **quiet},
            "method": __doc__,
            "rows": rows,
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
