"""bench/redis_sends counts one round trip per request or pipeline a process sends to Redis.

The benchmarks' "round trips per order" (docs/BENCHMARKS.md, issue 11) rest on this count, so it is
checked against a real redis-server from a real child process, as the components are started.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from bench.pipeline import SEND_COUNTER_DIR, SendMeter

CHILD = """
import asyncio, os, sys, redis, redis.asyncio

def sent():
    with open(os.path.join(os.environ["BENCH_REDIS_SEND_DIR"], str(os.getpid())), "rb") as f:
        return int.from_bytes(f.read(8), "little")

async def main():
    client = redis.Redis.from_url(sys.argv[1])
    aclient = redis.asyncio.Redis.from_url(sys.argv[1])
    client.ping()
    await aclient.ping()                   # both connections made: their handshakes are counted before
    before = sent()
    client.set("k", "1")                   # 1
    client.get("k")                        # 2
    with client.pipeline(transaction=False) as pipe:
        for i in range(50):
            pipe.incr("n")
        pipe.execute()                     # 3: fifty commands, one round trip
    with client.pipeline() as pipe:
        pipe.incr("n").incr("n")
        pipe.execute()                     # 4: MULTI ... EXEC, one round trip
    await aclient.get("k")                 # 5
    print(sent() - before, int(client.get("n")))
    await aclient.aclose()

asyncio.run(main())
"""


def run_child(redis_url: str, send_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SEND_COUNTER_DIR), BENCH_REDIS_SEND_DIR=str(send_dir))
    return subprocess.run(
        [sys.executable, "-c", CHILD, redis_url], env=env, capture_output=True, text=True, timeout=60, check=True
    )


def test_each_request_and_each_pipeline_is_one_round_trip(redis_url: str, tmp_path: Path) -> None:
    redis.Redis.from_url(redis_url).delete("n")
    child = run_child(redis_url, tmp_path)
    assert child.stdout.split() == ["5", "52"]


def test_without_the_variable_nothing_is_counted(redis_url: str, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(SEND_COUNTER_DIR))
    env.pop("BENCH_REDIS_SEND_DIR", None)
    code = (
        "import redis, sys; redis.Redis.from_url(sys.argv[1]).ping();"
        " print(redis.connection.AbstractConnection.send_packed_command.__qualname__)"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, redis_url], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert child.stdout.strip() == "AbstractConnection.send_packed_command"  # redis-py's own, not wrapped
    assert list(tmp_path.iterdir()) == []


def test_a_process_without_a_counter_is_reported_missing_not_zero(tmp_path: Path) -> None:
    (tmp_path / "101").write_bytes((7).to_bytes(8, "little"))
    meter = SendMeter(tmp_path, {"governor-0": 101, "apply-layer-0": 102, "redis-server": 103})
    meter.idle_per_s, meter.before, meter.t0 = {}, meter._read(), 0.0
    (tmp_path / "101").write_bytes((19).to_bytes(8, "little"))
    report = meter.stop(orders=4)
    assert report["missing_counters"] == ["apply-layer-0"]
    assert report["round_trips_per_order"] is None
    assert report["per_component"] == {"governor": 3.0}
