"""`qt run` never leaves components or its Redis running after it ends, however it ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

POLICY = {
    "symbols": ["BTCUSDT"],
    "marketData": {"source": "synthetic", "syntheticBars": 100000, "speed": 60},
}


def children_of_run(state_dir: Path) -> list[int]:
    """PIDs whose environment names this run's state directory (components and nothing else)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"QT_CONFIG={state_dir}".encode() in environ:
            found.append(int(entry.name))
    return found


def start_run(tmp_path: Path, redis_url: str) -> tuple[subprocess.Popen, Path]:
    state = tmp_path / "state"
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps(POLICY))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env["QT_STATE_DIR"] = str(state)
    process = subprocess.Popen(
        # an outside Redis: it stays up, so only the parent-death signal can stop the components
        [sys.executable, "-m", "quantum_trader.cli", "run", "-f", str(policy), "--no-table", "--redis-url", redis_url],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(children_of_run(state)) < 12:
        assert process.poll() is None, "qt run exited early"
        assert time.monotonic() < deadline, "the components did not start"
        time.sleep(0.2)
    return process, state


def gone(state: Path, process: subprocess.Popen, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not children_of_run(state) and process.poll() is not None:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux only")
@pytest.mark.timeout(120)
def test_a_killed_qt_run_takes_its_components_with_it(tmp_path, redis_url):
    process, state = start_run(tmp_path, redis_url)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert gone(state, process), f"orphans left: {children_of_run(state)}"


@pytest.mark.timeout(120)
def test_a_closed_terminal_stops_the_stack_in_order(tmp_path, redis_url):
    process, state = start_run(tmp_path, redis_url)
    process.send_signal(signal.SIGHUP)
    assert gone(state, process)
    assert process.returncode == 0
