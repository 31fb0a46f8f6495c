"""``qt backtest``: the whole pipeline as processes on a real redis-server, in lockstep (issue 7, acceptance 3).

Two runs give a byte-identical ledger; a run in which position-state is SIGKILLed midway and
restarted by the supervisor gives the same ledger again. The report's files are all there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from quantum_trader.backtest.run import Backtest, backtest_policy
from quantum_trader.contracts.policy import parse_policy

FILES = ("BTCUSDT-1h-2023-01-01_2024-05-13.csv", "ETHUSDT-1h-2023-01-01_2024-05-13.csv")
BARS = 240
POLICY = {
    # no cooldown at all, and every exit controller on (exit-brain, harvest through heat-gate): the two
    # same-bar races that once made two runs differ are decided by rules, not by arrival order —
    # an entry signalled on the bar whose exit closes the trade is position_open either way
    # (risk/limits.py open_at), and heat-gate waits for exit-brain's verdict on the bar (exits/heat.py)
    "risk": {"cooldownSeconds": 0, "maxEntriesPerHour": 10, "maxEntriesPerFiveMinutes": 10},
    "strategy": {"fast": 8, "slow": 24, "notional": 500},
    "exits": {"mode": "LIVE", "rolloutPercent": 100},
}


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("QT_")}


def _cli_backtest(klines: Path, policy: Path, out: Path) -> subprocess.CompletedProcess:
    data = [arg for name in FILES for arg in ("--data", str(klines / name))]
    return subprocess.run(
        [sys.executable, "-m", "quantum_trader.cli", "backtest", *data, "-f", str(policy), "--report", str(out),
         "--max-bars", str(BARS), "--redis", "redis-server"],
        capture_output=True, text=True, timeout=300, env={**_env(), "QT_STATE_DIR": str(out.parent / "state")},
    )  # fmt: skip


@pytest.fixture(scope="module")
def first_run(shared_klines, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("backtest")
    policy = work / "policy.yaml"
    policy.write_text(json.dumps(POLICY))
    done = _cli_backtest(shared_klines, policy, work / "a")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bars/s" in done.stderr, "the progress bar shows the rate"
    return work


@pytest.mark.timeout(400)
def test_two_backtests_write_the_same_ledger_bytes_and_a_full_report(first_run, shared_klines):
    done = _cli_backtest(shared_klines, first_run / "policy.yaml", first_run / "b")
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = first_run / "a", first_run / "b"
    ledger = json.loads((a / "ledger.json").read_text())
    assert len(ledger["fills"]) >= 4 and len(ledger["trades"]) >= 2, "the slice should trade"
    assert (a / "ledger.json").read_bytes() == (b / "ledger.json").read_bytes()

    summary = json.loads((a / "summary.json").read_text())
    other = json.loads((b / "summary.json").read_text())
    # the governor's verdicts too: a same-bar entry is refused for the same reason in both runs
    assert (summary["approvals"], summary["rejections"]) == (other["approvals"], other["rejections"])
    assert summary["bars"] == 2 * BARS and summary["symbols"] == ["BTCUSDT", "ETHUSDT"]
    assert summary["trades"] == len(ledger["trades"])
    # the equity curve is marked from the fills; with everything closed it must land on the ledger's net PnL
    if not summary["open_positions"]:
        net = float(ledger["totals"]["realized_pnl"]) - float(ledger["totals"]["fees"])
        assert summary["final_equity"] == pytest.approx(summary["starting_equity"] + net, abs=1e-6)
    page = (a / "report.html").read_text()
    for image in re.findall(r'<img src="([^"]+)"', page):
        assert (a / image).stat().st_size > 5_000, f"{image} is referenced and drawn"
    assert {"equity.png", "exposure.png"} <= set(re.findall(r'<img src="([^"]+)"', page))
    assert "Governor rejections by reason" in page and "Trades (" in page


@pytest.mark.timeout(400)
def test_a_component_sigkilled_midway_and_restarted_gives_the_same_ledger(first_run, shared_klines, redis_url):
    files = [str(shared_klines / name) for name in FILES]
    policy = backtest_policy(parse_policy(POLICY), files, max_bars=BARS)
    killed: list[int] = []

    def kill_position_state_midway(published: int, total: int, supervisor) -> None:
        if not killed and published >= total // 2:
            popen = supervisor.processes["position-state-0"].popen
            assert popen is not None
            os.kill(popen.pid, signal.SIGKILL)
            killed.append(published)

    out = first_run / "killed"
    result = Backtest(policy, out, redis_url=redis_url).run(progress=kill_position_state_midway)
    assert killed, "position-state was killed"
    assert result.run["restarts"].get("position-state", 0) >= 1, "and restarted by the supervisor"
    assert (out / "ledger.json").read_bytes() == (first_run / "a" / "ledger.json").read_bytes()


def test_a_backtest_outside_paper_mode_is_one_error_line(tmp_path, shared_klines):
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps({"mode": "testnet", "exchangeSecretRef": {"name": "binance"}}))
    done = subprocess.run(
        [sys.executable, "-m", "quantum_trader.cli", "backtest", "--data", str(shared_klines / FILES[0]),
         "-f", str(policy), "--report", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    assert done.returncode == 2
    expected = "qt: error: a backtest trades on the exchange simulator: mode must be paper, not testnet"
    assert done.stderr.strip() == expected


def test_a_backtest_of_a_missing_file_is_one_error_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "quantum_trader.cli", "backtest", "--data", str(tmp_path / "BTCUSDT-1h-2024-01.csv"),
         "--report", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().startswith("qt: error: no kline file matches") and "Traceback" not in done.stderr


def test_a_backtest_with_no_bar_left_is_one_error_line(tmp_path, shared_klines):
    done = subprocess.run(
        [sys.executable, "-m", "quantum_trader.cli", "backtest", "--data", str(shared_klines / FILES[0]),
         "--skip-bars", "1000000", "--report", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "qt: error: nothing to replay: the files hold no bar after --skip-bars"
    assert not (tmp_path / "out").exists(), "nothing started, nothing written"
