"""Shared helpers of the benchmarks: a private redis-server, percentiles, machine facts, result files."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from quantum_trader.local.redis_server import EmbeddedRedis, RedisStartError

RESULTS = Path(__file__).resolve().parent / "results"


def start_redis() -> EmbeddedRedis:
    """A redis-server of our own on a free loopback port, no persistence (RDB and AOF off)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisStartError("redis-server is not installed (`make redis-server` installs it)")
    return EmbeddedRedis(binary=Path(binary)).start()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def summary(values: Sequence[float], digits: int = 3) -> dict[str, float | int]:
    """count, mean, p50, p90, p99, max of ``values`` (same unit as the values)."""
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "mean": round(sum(values) / len(values), digits),
        "p50": round(percentile(values, 50), digits),
        "p90": round(percentile(values, 90), digits),
        "p99": round(percentile(values, 99), digits),
        "max": round(max(values), digits),
    }


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        redis_version = subprocess.run(
            [shutil.which("redis-server") or "redis-server", "--version"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        redis_version = ""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return _git(repo, *args)

    return {
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "measured_code": measured_code(),
        "service_code_modified": bool(git("status", "--porcelain", "--", "components")),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "redis_server": redis_version,
    }


def measured_code() -> dict[str, object]:
    """Which components the component processes import: the bench's own checkout, or another one named
    first on ``PYTHONPATH`` (a "before" clone). The processes inherit this process's environment, so
    what this process imports is what they import."""
    import quantum_trader

    package = Path(quantum_trader.__file__).resolve().parent
    return {
        "components_path": str(package),
        "commit": _git(package, "rev-parse", "--short", "HEAD"),
        "components_modified": bool(_git(package, "status", "--porcelain", "--", ".")),
    }


def _git(cwd: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every process, every core) since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def wait_for_quiet(max_wait: float, threshold_pct: float = 15.0) -> dict[str, float]:
    """Wait up to ``max_wait`` s for a one-second sample with the machine under ``threshold_pct`` busy.

    Other work on the machine (a test suite, another stack) shares the two cores with the benchmark;
    the sample taken last is recorded with the results either way.
    """
    deadline = time.monotonic() + max_wait
    while True:
        busy = psutil.cpu_percent(interval=1.0)
        if busy < threshold_pct or time.monotonic() >= deadline:
            return {"machine_busy_pct_before": busy, "load_average_1m_before": round(os.getloadavg()[0], 2)}


def write_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width text table: numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def numeric(text: str) -> bool:
        return text.replace(",", "").replace(".", "", 1).lstrip("-").isdigit() or text in ("nan", "-", "None")

    lines = [
        "  ".join(c.rjust(w) if numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def uptime() -> str:
    """``uptime``'s figures: the machine's load average over 1, 5 and 15 minutes, and when."""
    one, five, fifteen = os.getloadavg()
    return f"{time.strftime('%H:%M:%S', time.gmtime())} UTC load average: {one:.2f}, {five:.2f}, {fifteen:.2f}"


def result_header(benchmark: str, started: float, uptime_before: str, method: str | None) -> dict[str, object]:
    """What every results file starts with: which bench, when, how long, the load before and after, where."""
    return {
        "benchmark": benchmark,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runtime_s": round(time.monotonic() - started, 1),
        "uptime_before": uptime_before,
        "uptime_after": uptime(),
        "machine": machine(),
        "method": method,
    }


def add_wait_quiet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each phase wait up to S seconds for the machine to be under 15%% busy",
    )
