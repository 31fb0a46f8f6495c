"""`qt run` as a person runs it in a terminal: it trades, then a signal to the whole process group (what
Ctrl-C, `kill -TERM -<pgid>` or a closed terminal do) stops it in order, and the closing summary tells
the truth about the run. Real processes, the embedded Redis, the real `qt` command.

Acceptance 1, 2 and 4 of issue 10.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.registry import COMPONENTS
from quantum_trader.local.supervisor import stop_stages

QT = str(Path(sys.executable).with_name("qt"))
TAKER_FEE = 0.0004
POLICY = {
    "symbols": ["BTCUSDT"],
    "marketData": {"source": "synthetic", "syntheticBars": 200000, "speed": 0},
    "risk": {"cooldownSeconds": 0, "maxEntriesPerHour": 10, "maxEntriesPerFiveMinutes": 10},
    "strategy": {"fast": 8, "slow": 24, "notional": 500},
    "exits": {"mode": "LIVE", "rolloutPercent": 100},
    "simulator": {"takerFee": TAKER_FEE},
}


class Run:
    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.state = tmp_path / "state"
        self.workdir = self.state / "run"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "BINANCE_"))}
        env["QT_STATE_DIR"] = str(self.state)
        self.stdout_path = tmp_path / "stdout.txt"
        self.stderr_path = tmp_path / "stderr.txt"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            # its own process group, as a shell gives a foreground job: the signal goes to the whole group
            self.process = subprocess.Popen(
                [QT, "run", "--no-table", *args], env=env, stdout=out, stderr=err, process_group=0
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def info(self) -> dict:
        run_file = self.state / "run.json"
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, f"qt run exited early:\n{self.stderr}"
            try:
                info = json.loads(run_file.read_text())
                if "processes" in info:
                    return info
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline, "qt run wrote no run file"
            time.sleep(0.2)

    def redis(self) -> tuple[redis.Redis, Keys]:
        info = self.info()
        return redis.Redis.from_url(info["redis_url"], decode_responses=True), Keys(info["instance"])

    def wait_for_trades(self, closed: int) -> None:
        client, keys = self.redis()
        deadline = time.monotonic() + 120
        while int(client.hget(keys.ledger_equity, "trades") or 0) < closed:
            assert self.process.poll() is None, f"qt run exited early:\n{self.stderr}"
            assert time.monotonic() < deadline, f"no {closed} closed trades:\n{self.stderr}"
            time.sleep(0.2)
        client.close()

    def signal_group(self, number: int) -> None:
        os.killpg(self.process.pid, number)

    def wait(self, timeout: float = 90) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)

    def logs(self) -> dict[str, str]:
        return {path.stem: path.read_text() for path in sorted(self.workdir.glob("*.log"))}


def summary_of(stdout: str) -> dict[str, str]:
    _, _, tail = stdout.partition("qt: run summary")
    assert tail, f"no closing summary:\n{stdout}"
    rows = {}
    for line in tail.splitlines()[1:]:
        name, _, value = line.strip().partition("  ")
        rows[name] = value.strip()
    return rows


def exchange_orders(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "exchange-orders.jsonl").read_text().splitlines()]


def assert_stopped_in_order(run: Run) -> None:
    stderr = run.stderr
    assert "Traceback" not in stderr + run.stdout
    stopped = re.search(r"qt: stopped 12 components \((.*)\): all exited 0", stderr)
    assert stopped, stderr
    # reverse dependency order: the producers first, the exchange last; Redis after all of them
    order = [pod.removesuffix("-0") for pod in stopped.group(1).split(", ")]
    assert order == [name for stage in stop_stages(list(COMPONENTS)) for name in stage]
    assert order[0] == "market-data" and order[-1] == "exchange-sim" and sorted(order) == sorted(COMPONENTS)
    assert stderr.index("qt: stopped 12 components") < stderr.index("qt: stopped redis")
    for pod, text in run.logs().items():
        assert "Traceback" not in text and "ConnectionError" not in text, f"{pod}:\n{text[-3000:]}"
        last = json.loads(text.strip().splitlines()[-1])
        assert last["msg"] == "stopped" and isinstance(last["counts"], dict), f"{pod}: {last}"
        assert text.count('"msg": "stopped"') == 1, pod  # a killed process writes none, its restart one


def assert_summary_equals_ledger(run: Run) -> dict:
    rows = summary_of(run.stdout)
    ledger = json.loads((run.workdir / "ledger.json").read_text())
    orders = exchange_orders(run.workdir)
    fills = [o for o in orders if o["outcome"] == "accepted"]
    sent, filled = map(int, re.fullmatch(r"([\d,]+) sent, ([\d,]+) filled", rows["orders"]).groups())
    # the summary, the ledger file and the exchange's own order log agree
    assert (sent, filled) == (ledger["summary"]["orders"], ledger["summary"]["fills"])
    assert filled == len(fills) > 0
    assert sent == len(orders)
    # the closing table is read after the stop, from each component's last heartbeat: its counts are final too
    simulator = re.search(r"^exchange-sim\s+stopped\s+([\d,]+)\s", run.stdout, re.MULTILINE)
    assert simulator and int(simulator.group(1).replace(",", "")) == len(orders), run.stdout
    realized = float(ledger["ledger"]["realized_pnl"])
    fees = float(ledger["ledger"]["fees"])
    assert fees == pytest.approx(sum(float(o["executedQty"]) * float(o["avgPrice"]) for o in fills) * TAKER_FEE)
    assert rows["PnL"].startswith(f"{realized - fees:+,.2f} USDT after {fees:,.2f} fees (realized {realized:+,.2f})")
    assert int(ledger["ledger"]["trades"]) >= 1
    assert rows["ledger"] == str(run.workdir / "ledger.json")
    assert rows["logs"].startswith(str(run.workdir))
    return rows


@pytest.mark.timeout(240)
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_a_signal_to_the_group_stops_in_order_with_a_true_summary(tmp_path, number):
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps(POLICY))
    run = Run(tmp_path, "-f", str(policy))
    run.wait_for_trades(1)
    client, _ = run.redis()
    redis_pid = int(client.info("server")["process_id"])
    client.close()
    run.signal_group(number)
    assert run.wait() == 0, run.stderr
    assert_stopped_in_order(run)
    rows = assert_summary_equals_ledger(run)
    assert "crashes" not in rows
    assert summary_of(run.stdout) and "(stopped in order)" in run.stdout
    assert not Path(f"/proc/{redis_pid}").exists(), "the embedded Redis outlived qt run"


@pytest.mark.timeout(240)
def test_a_killed_component_shows_crashed_and_is_named_in_the_summary(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps(POLICY))
    run = Run(tmp_path, "-f", str(policy))
    run.wait_for_trades(1)
    os.kill(find_pid(run, "features"), signal.SIGKILL)
    seen = wait_for_crashed(run, "features")
    assert seen.startswith("crashed (SIGKILL)"), seen
    # its restart is up (it applied the kill switch state, which it does once its signal handlers are in)
    deadline = time.monotonic() + 60
    while run.logs()["features-0"].count('"msg": "kill switch applied"') < 2:
        assert time.monotonic() < deadline, "features was not restarted"
        time.sleep(0.2)
    run.signal_group(signal.SIGTERM)  # as `kill -TERM -<pgid>` does
    assert run.wait() == 0, run.stderr
    rows = assert_summary_equals_ledger(run)
    assert re.search(r"features-0 crashed \(SIGKILL\) at \d+m \d\ds", rows["crashes"]), rows
    assert_stopped_in_order(run)


def find_pid(run: Run, component: str) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"QT_CONFIG={run.workdir}".encode() in environ and f"QT_POD={component}-0\0".encode() in environ:
            return int(entry.name)
    pytest.fail(f"no {component} process")


def wait_for_crashed(run: Run, component: str) -> str:
    """The state (or detail, once restarted) `qt status` shows for the component after the kill."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_")}
    env["QT_STATE_DIR"] = str(run.state)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = subprocess.run([QT, "status", "--json"], env=env, capture_output=True, text=True, timeout=30)
        assert answer.returncode == 0, answer.stderr
        row = next(r for r in json.loads(answer.stdout)["rows"] if r["component"] == component)
        if "crashed" in row["state"]:
            return row["state"]
        if "crashed" in row["detail"]:
            return row["detail"].removeprefix("restarted after ")
        time.sleep(0.1)
    pytest.fail("the status never showed the component crashed")


@pytest.mark.timeout(240)
def test_replaying_a_shared_kline_file_at_max_speed_reports_bars_per_second(tmp_path, shared_klines):
    data = shared_klines / "ETHUSDT-1h-2023-01-01_2024-05-13.csv"
    if not data.exists():
        pytest.skip(f"{data.name} is not in the shared klines")
    run = Run(tmp_path, "--data", str(data), "--speed", "max", "--duration", "20")
    assert run.wait(120) == 0, run.stderr
    rows = summary_of(run.stdout)
    bars, rate = re.fullmatch(r"([\d,]+) \(([\d,.]+) bars/s\)", rows["bars"]).groups()
    bars_count = int(bars.replace(",", ""))
    assert bars_count > 0 and float(rate.replace(",", "")) > 0
    config = (run.workdir / "config.yaml").read_text()
    assert "ETHUSDT" in config and str(data) in config and "speed: 0.0" in config
    assert "(stopped in order)" in run.stdout
    assert_no_tracebacks(run)


def assert_no_tracebacks(run: Run) -> None:
    for pod, text in run.logs().items():
        assert "Traceback" not in text, pod



@pytest.mark.timeout(240)
def test_a_second_ctrl_c_forces_the_stop_and_says_so(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps(POLICY))
    run = Run(tmp_path, "-f", str(policy))
    run.wait_for_trades(1)
    client, _ = run.redis()
    redis_pid = int(client.info("server")["process_id"])
    client.close()
    run.signal_group(signal.SIGINT)
    deadline = time.monotonic() + 30
    while "stopping in order (press Ctrl-C again to force)" not in run.stderr:
        assert time.monotonic() < deadline, run.stderr
        time.sleep(0.05)
    run.signal_group(signal.SIGINT)
    assert run.wait() == 0, run.stderr
    assert "SIGINT again: forcing the stop" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert "qt: run summary (forced stop)" in run.stdout
    assert (run.workdir / "ledger.json").exists()
    assert not Path(f"/proc/{redis_pid}").exists(), "the embedded Redis outlived qt run"
