"""What raw Redis does on this machine, through the same client the services use (redis-py with hiredis).

``python -m bench.redis_baseline [--quick]`` starts its own redis-server on a free loopback port (no
RDB, no AOF) and measures, from one Python process:

- PING round trip, sequential (latency percentiles);
- XADD of a real envelope (an encoded ``Plan``, ``MAXLEN ~`` as the services add), one at a time
  and in pipelined batches of 100;
- XREADGROUP COUNT 100 + one XACK per batch (the cheapest way to drain a stream);
- EVALSHA of a one-line Lua script, sequential (the round trip every stage step pays);
- the bus's own stage step (``bus/stage.lua``: done key + one XADD + XACK) per message, and the
  bus's ``StreamConsumer`` passing each message through unchanged (decode, validate, encode, step):
  the ceiling of one single-threaded stage process before any business logic — once as a stage
  steps one message at a time, once with the steps of a batch pipelined (``independent_steps``).

Results: a table on stdout and ``bench/results/redis_baseline.json``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import psutil
import redis

from bench._util import machine, machine_busy_seconds, start_redis, summary, table, wait_for_quiet, write_results
from quantum_trader.bus.consumer import Delivery, StreamConsumer, independent_steps, no_done_precheck
from quantum_trader.bus.step import Step, StepRunner
from quantum_trader.contracts.envelope import Envelope, encode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import Plan, PlanKind, Side
from quantum_trader.contracts.policy import StreamRetention

MAXLEN = 100_000
BATCH = 100
SMALL_SCRIPT = "return redis.call('INCR', KEYS[1])"


def plan(i: int) -> Plan:
    return Plan(symbol=f"B{i:05d}USDT", plan_id=f"ent:{i:024x}", kind=PlanKind.ENTRY, side=Side.BUY, qty=0.2,
                notional=20.0, reason_codes=("bench",), source="intent-bridge", time=1_700_000_000_000 + i,
                price=100.0, stop_loss=90.0, take_profit=120.0, leverage=2)


def envelope_fields(i: int) -> dict[str, str]:
    return encode(plan(i), id=f"ent:{i:024x}")


def timed_each(n: int, call: Callable[[int], object]) -> tuple[list[float], float]:
    """Per-call latencies (µs) of ``n`` sequential calls and the total seconds."""
    lat: list[float] = []
    clock = time.perf_counter_ns
    start = clock()
    for i in range(n):
        t0 = clock()
        call(i)
        lat.append((clock() - t0) / 1000)
    return lat, (clock() - start) / 1e9


def bench_ping(r: redis.Redis, n: int) -> dict:
    r.ping()
    lat, seconds = timed_each(n, lambda _: r.ping())
    return {"what": "PING, sequential", "ops": n, "ops_per_s": round(n / seconds), "latency_us": summary(lat, 1)}


def bench_xadd_single(r: redis.Redis, n: int, key: str) -> dict:
    fields = [envelope_fields(i) for i in range(n)]
    lat, seconds = timed_each(n, lambda i: r.xadd(key, fields[i], maxlen=MAXLEN, approximate=True))
    size = sum(len(k) + len(v) for k, v in fields[0].items())
    return {"what": f"XADD {size}-byte envelope, sequential", "ops": n, "ops_per_s": round(n / seconds),
            "latency_us": summary(lat, 1), "entry_bytes": size}


def bench_xadd_pipelined(r: redis.Redis, n: int, key: str) -> dict:
    fields = [envelope_fields(i) for i in range(n)]
    lat: list[float] = []
    start = time.perf_counter_ns()
    for first in range(0, n, BATCH):
        t0 = time.perf_counter_ns()
        with r.pipeline(transaction=False) as pipe:
            for f in fields[first:first + BATCH]:
                pipe.xadd(key, f, maxlen=MAXLEN, approximate=True)
            pipe.execute()
        lat.append((time.perf_counter_ns() - t0) / 1000)
    seconds = (time.perf_counter_ns() - start) / 1e9
    return {"what": f"XADD, pipelined batches of {BATCH}", "ops": n, "ops_per_s": round(n / seconds),
            "batch_latency_us": summary(lat, 1)}


def bench_xreadgroup(r: redis.Redis, key: str) -> dict:
    r.xgroup_create(key, "bench", id="0")
    total = 0
    lat: list[float] = []
    start = time.perf_counter_ns()
    while True:
        t0 = time.perf_counter_ns()
        reply = r.xreadgroup("bench", "c1", {key: ">"}, count=BATCH)
        if not reply or not reply[0][1]:
            break
        ids = [entry_id for entry_id, _ in reply[0][1]]
        r.xack(key, "bench", *ids)
        lat.append((time.perf_counter_ns() - t0) / 1000)
        total += len(ids)
    seconds = (time.perf_counter_ns() - start) / 1e9
    return {"what": f"XREADGROUP COUNT {BATCH} + one XACK per batch", "ops": total,
            "ops_per_s": round(total / seconds), "batch_latency_us": summary(lat, 1)}


def bench_evalsha(r: redis.Redis, n: int) -> dict:
    script = r.register_script(SMALL_SCRIPT)
    script(keys=["bench:counter"])  # loads it: every later call is an EVALSHA
    lat, seconds = timed_each(n, lambda _: script(keys=["bench:counter"]))
    return {"what": "EVALSHA one-line Lua (INCR), sequential", "ops": n, "ops_per_s": round(n / seconds),
            "latency_us": summary(lat, 1)}


def bench_stage_step(r: redis.Redis, keys: Keys, n: int) -> dict:
    """bus/stage.lua per message over XREADGROUP COUNT 100: done key, one output XADD, XACK."""
    source = keys.stream("apply.plan")
    for first in range(0, n, BATCH):
        with r.pipeline(transaction=False) as pipe:
            for i in range(first, min(n, first + BATCH)):
                pipe.xadd(source, envelope_fields(i), maxlen=MAXLEN, approximate=True)
            pipe.execute()
    r.xgroup_create(source, "stage", id="0")
    runner = StepRunner(r, keys, "stage", MAXLEN, 3600)
    outputs = [Step().emit("apply.approved", plan(i), id=f"out:{i}") for i in range(n)]
    payloads = [runner.payload(step, "stage", "") for step in outputs]  # pre-encoded: Redis cost only
    script = runner._script
    done = 0
    lat: list[float] = []
    start = time.perf_counter_ns()
    while True:
        reply = r.xreadgroup("stage", "c1", {source: ">"}, count=BATCH)
        if not reply or not reply[0][1]:
            break
        for entry_id, _ in reply[0][1]:
            payload = payloads[done].replace('"entry_id": ""', f'"entry_id": "{entry_id.decode()}"', 1)
            t0 = time.perf_counter_ns()
            script(keys=[keys.done("stage", f"m{done}"), source], args=[payload])
            lat.append((time.perf_counter_ns() - t0) / 1000)
            done += 1
    seconds = (time.perf_counter_ns() - start) / 1e9
    pending = r.xpending(source, "stage")["pending"]
    return {"what": "bus/stage.lua step per message (done key + XADD + XACK), pre-encoded", "ops": done,
            "ops_per_s": round(done / seconds), "latency_us": summary(lat, 1), "left_pending": pending}


def bench_consumer_passthrough(r: redis.Redis, keys: Keys, n: int, batched: bool = False) -> dict:
    """The bus's StreamConsumer with a handler that re-emits each Plan: decode + validate + encode + step.

    ``batched``: the handler is marked ``independent_steps`` and ``no_done_precheck``, so a batch's
    steps go to Redis in pipelined round trips and no done key is checked before the handler.
    """
    source = keys.stream("apply.plan")
    for first in range(0, n, BATCH):
        with r.pipeline(transaction=False) as pipe:
            for i in range(first, min(n, first + BATCH)):
                pipe.xadd(source, envelope_fields(i), maxlen=MAXLEN, approximate=True)
            pipe.execute()

    def passthrough(envelope: Envelope, delivery: Delivery) -> Step:
        return Step().emit("apply.approved", envelope.message, id="out:" + envelope.id, corr=envelope.corr)

    if batched:
        passthrough = no_done_precheck(independent_steps(passthrough))

    consumer = StreamConsumer(r, keys, "passthrough", "c1", {"apply.plan": passthrough},
                              StreamRetention(max_len=MAXLEN, claim_idle_ms=600_000))
    consumer.ensure_groups()
    start = time.perf_counter_ns()
    while consumer.stats.processed < n:
        if not consumer.poll_once(block_ms=100):
            break
    seconds = (time.perf_counter_ns() - start) / 1e9
    processed = consumer.stats.processed
    what = "StreamConsumer passthrough (decode+validate+encode+stage step)"
    if batched:
        what = "the same, steps of a batch pipelined, no done pre-check"
    return {"what": what, "ops": processed,
            "ops_per_s": round(processed / seconds), "errors": consumer.stats.errors}


def parser_name() -> str:
    from redis.utils import HIREDIS_AVAILABLE

    return "hiredis parser" if HIREDIS_AVAILABLE else "pure-Python parser, no hiredis"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_baseline", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations (a few seconds)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="first wait up to S seconds for the machine to be under 15%% busy")
    parser.add_argument("--output", default="redis_baseline", metavar="NAME",
                        help="results file bench/results/NAME.json")
    args = parser.parse_args(argv)
    quiet = wait_for_quiet(args.wait_quiet)
    n = 5_000 if args.quick else 20_000
    n_pipe = 20_000 if args.quick else 100_000
    server = start_redis()
    try:
        r = redis.Redis.from_url(server.url)
        ours = [psutil.Process(), psutil.Process(int(r.info("server")["process_id"]))]
        ours_before = sum(sum(p.cpu_times()[:2]) for p in ours)
        machine_before, wall_before = machine_busy_seconds(), time.perf_counter()
        keys = Keys("bench")
        results = {
            "ping": bench_ping(r, n),
            "xadd_single": bench_xadd_single(r, n, "bench:xadd:single"),
            "xadd_pipelined": bench_xadd_pipelined(r, n_pipe, "bench:xadd:pipe"),
            "xreadgroup_xack": bench_xreadgroup(r, "bench:xadd:pipe"),
            "evalsha_small": bench_evalsha(r, n),
            "stage_step": bench_stage_step(r, keys, n),
        }
        r.flushall()
        results["consumer_passthrough"] = bench_consumer_passthrough(r, keys, n // 2)
        r.flushall()
        results["consumer_passthrough_batched"] = bench_consumer_passthrough(r, keys, n // 2, batched=True)
        ours_cpu = sum(sum(p.cpu_times()[:2]) for p in ours) - ours_before
        wall = time.perf_counter() - wall_before
        others = max(0.0, machine_busy_seconds() - machine_before - ours_cpu) / wall
        r.close()
    finally:
        server.stop()
    rows = []
    for name, result in results.items():
        lat = result.get("latency_us") or {}
        rows.append([name, result["what"], result["ops"], f"{result['ops_per_s']:,}",
                     lat.get("p50", "-"), lat.get("p99", "-")])
    print(table(["bench", "what", "ops", "ops/s", "p50 µs", "p99 µs"], rows))
    path = write_results(args.output, {
        "benchmark": "redis_baseline",
        "quick": args.quick,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "client": f"redis-py {redis.__version__} ({parser_name()}), one connection, one process",
        "machine_before": quiet,
        "other_processes_cores": round(others, 2),
        "results": results,
    })
    print(f"\nother processes used {others:.2f} cores meanwhile; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
