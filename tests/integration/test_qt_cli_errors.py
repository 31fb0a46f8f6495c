"""Every user mistake on the real `qt` command: one `qt: error:` line naming the flag and the reason, exit 2,
never a traceback. Each case runs the installed `qt` entry point as a user would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

QT = str(Path(sys.executable).with_name("qt"))


def qt(*args: str, cwd: Path | None = None, state_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "KUBECONFIG"))}
    if state_dir is not None:
        env["QT_STATE_DIR"] = str(state_dir)
    # a kubeconfig that does not exist: `qt operator` must never find a real cluster from a test
    env["KUBECONFIG"] = "/nonexistent/kubeconfig"
    return subprocess.run([QT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("qt: error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def nested_yaml(depth: int) -> str:
    return "".join(" " * i + "a:\n" for i in range(depth)) + " " * depth + "b: 1\n"


POLICY_FILES = {
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00", "is not a text file"),
    "nested-flow": (b"[" * 20000, "nested too deeply"),
    "nested-block": (nested_yaml(1000).encode(), "nested too deeply"),  # 0.5 MB: within MAX_POLICY_BYTES
    # deeper than the policy's JSON validation goes, not as deep as YAML's own limit
    "nested-mid": (b"symbols: " + b"{a: " * 250 + b"1" + b"}" * 250 + b"\n", "nested too deeply"),
    "empty": (b"", "is empty; to run with the default policy, leave out -f"),
    "too-large": (b"symbols: [BTCUSDT]\n" + b"#" * (1024 * 1024), "larger than 1024 KiB"),
    "blank": (b"  \n\n\t\n", "is empty; to run with the default policy, leave out -f"),
    "only-comments": (b"# nothing here\n", "leave out -f"),
    "not-yaml": (b"symbols: [BTCUSDT\nmode: paper\n", "is not valid YAML"),
    "not-a-mapping": (b"- BTCUSDT\n", "must be a mapping"),
    "unknown-field": (b"symbolz: [BTCUSDT]\n", "symbolz"),
}


@pytest.mark.parametrize("command", ["run", "wiring"])
@pytest.mark.parametrize("case", sorted(POLICY_FILES))
def test_a_bad_policy_file_is_one_line(tmp_path, command, case):
    content, reason = POLICY_FILES[case]
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(content)
    result = qt(command, "-f", str(policy), state_dir=tmp_path / "state")
    assert_one_line_error(result, reason)
    assert not (tmp_path / "state" / "run.json").exists(), "nothing may start on a bad policy"


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_policy_without_end_is_one_line_and_read_no_further(tmp_path, device):
    result = qt("run", "-f", device, state_dir=tmp_path / "state")
    assert_one_line_error(result, device, "larger than 1024 KiB")


def kline_file(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("1704067200000,1,1,1,1,1,1704070799999,0,0,0,0,0\n")
    return path


def running_stack_file(state: Path, redis_url: str) -> None:
    """A run file as `qt run` leaves it, pointing at a Redis that does not answer."""
    state.mkdir(parents=True, exist_ok=True)
    info = {"pid": 1, "redis_url": redis_url, "instance": "local", "components": None, "starting_equity": 1}
    (state / "run.json").write_text(json.dumps(info))


KLINES = "{tmp}/klines"
GOOD = f"{KLINES}/BTCUSDT-1h-2024-01.csv"
EMPTY = f"{KLINES}/ETHUSDT-1h-2024-01.csv"
NOT_KLINES = f"{KLINES}/LTCUSDT-1h-2024-01.csv"
BINARY = f"{KLINES}/XRPUSDT-1h-2024-01.csv"
DOWN = "redis://127.0.0.1:1/0"
DOWNLOAD = ["data", "download", "BTCUSDT"]
BACKTEST = ["backtest", "--report", "{tmp}/out", "--data"]
TRAIN = ["train", "--out", "{tmp}/model", "--data"]

# (command line, fragments the one error line must hold); {tmp} is the test's folder
FLAG_CASES: list[tuple[str, list[str], tuple[str, ...]]] = [
    # qt run
    ("run -f missing", ["run", "-f", "{tmp}/missing.yaml"], ("cannot read policy", "missing.yaml")),
    ("run -f directory", ["run", "-f", "{tmp}"], ("'-f' / '--file'", "is a directory")),
    ("run -f with a bad file", ["run", "-f", "{tmp}/empty-replay.yaml"], ("marketData.files", "holds no bars")),
    ("run -f with another model digest", ["run", "-f", "{tmp}/other-digest.yaml"], ("the policy pins sha256:00",)),
    ("run -f with a missing model", ["run", "-f", "{tmp}/missing-model.yaml"], ("model no-such-model:",)),
    ("run --redis-url word", ["run", "--redis-url", "notaurl"], ("'--redis-url'", "is not a Redis URL")),
    ("run --redis-url http", ["run", "--redis-url", "http://127.0.0.1:6379"], ("'--redis-url'", "not a Redis URL")),
    ("run --redis-url port", ["run", "--redis-url", "redis://127.0.0.1:99999/0"], ("'--redis-url'",)),
    ("run --redis-url down", ["run", "--redis-url", DOWN], ("--redis-url", "cannot reach Redis")),
    ("run --redis", ["run", "--redis", "memcached"], ("'--redis'", "memcached")),
    ("run --duration -5", ["run", "--duration", "-5"], ("'--duration'", "x>0")),
    ("run --duration 0", ["run", "--duration", "0"], ("'--duration'", "x>0")),
    ("run --duration word", ["run", "--duration", "soon"], ("'--duration'", "soon")),
    ("run --speed 0", ["run", "--speed", "0"], ("'--speed'", "positive")),
    ("run --speed -2", ["run", "--speed", "-2"], ("'--speed'", "positive")),
    ("run --speed inf", ["run", "--speed", "inf"], ("'--speed'", "positive")),
    ("run --speed nan", ["run", "--speed", "nan"], ("'--speed'", "positive")),
    ("run --speed word", ["run", "--speed", "fast"], ("'--speed'", "neither a number nor 'max'")),
    ("run --data missing", ["run", "--data", "{tmp}/nothing-*.csv"], ("--data", "no kline file matches")),
    ("run --data name", ["run", "--data", f"{KLINES}/prices.csv"], ("--data", "prices.csv")),
    ("run --data twice", ["run", "--data", f"{KLINES}/BTCUSDT-1*.csv"], ("--data", "two files for BTCUSDT")),
    ("run --data symbol", ["run", "--data", f"{KLINES}/btc-1h-2024-01.csv"], ("--data",)),
    (
        "run --data long symbol",
        ["run", "--data", f"{KLINES}/{'A' * 26}-1h-2024-01.csv"],
        ("--data", "symbol must be 2-20"),
    ),
    ("run --data empty", ["run", "--data", EMPTY], ("--data", "holds no bars")),
    ("run --data not klines", ["run", "--data", NOT_KLINES], ("--data", "LTCUSDT-1h-2024-01.csv:1", "12 comma")),
    ("run --data binary", ["run", "--data", BINARY], ("--data", "not a text kline file")),
    ("run unknown flag", ["run", "--fast"], ("No such option", "--fast")),
    # qt status
    ("status no stack", ["status"], ("no running stack found",)),
    ("status --redis-url", ["status", "--redis-url", "localhost:6379"], ("'--redis-url'", "not a Redis URL")),
    ("status --redis-url down", ["status", "--redis-url", DOWN], ("cannot reach Redis",)),
    ("status stack down", ["status"], ("cannot reach Redis",)),
    ("status --instance", ["status", "--redis-url", DOWN, "--instance", "Bad Name"], ("'--instance'", "instance id")),
    # qt killswitch
    ("killswitch engage --scope", ["killswitch", "engage", "--scope", "everything"], ("'--scope'", "everything")),
    ("killswitch engage --reason", ["killswitch", "engage", "--reason", " "], ("--reason", "must not be empty")),
    ("killswitch engage no stack", ["killswitch", "engage"], ("no running stack found",)),
    ("killswitch engage --redis-url", ["killswitch", "engage", "--redis-url", "x"], ("'--redis-url'",)),
    ("killswitch engage --instance", ["killswitch", "engage", "--instance", "A B"], ("'--instance'",)),
    ("killswitch release --redis-url", ["killswitch", "release", "--redis-url", "x"], ("'--redis-url'",)),
    ("killswitch release --instance", ["killswitch", "release", "--instance", "_"], ("'--instance'",)),
    ("killswitch release down", ["killswitch", "release", "--redis-url", DOWN], ("cannot reach Redis",)),
    ("killswitch status --redis-url", ["killswitch", "status", "--redis-url", "x"], ("'--redis-url'",)),
    ("killswitch status --instance", ["killswitch", "status", "--instance", "-x"], ("'--instance'",)),
    ("killswitch status down", ["killswitch", "status", "--redis-url", DOWN], ("cannot reach Redis",)),
    ("killswitch unknown", ["killswitch", "pause"], ("No such command", "pause")),
    # qt component (its settings' mistakes are one JSON log line: test_every_bad_component_setting_is_one_line)
    ("component unknown", ["component", "execution-result-reader"], ("'NAME'", "is not a component", "governor")),
    ("component missing", ["component"], ("Missing argument 'NAME'",)),
    ("component --exchange-url", ["component", "apply-layer", "--exchange-url", "x"], ("'--exchange-url'", "http(s)")),
    # qt data
    ("data sample --dir", ["data", "sample", "--dir", GOOD], ("'--dir'", "is a file")),
    ("data download symbol", ["data", "download", "btc-usdt", "--start", "2024-01"], ("'SYMBOL'", "btc-usdt")),
    ("data download --interval", [*DOWNLOAD, "--interval", "7m", "--start", "2024-01"], ("'--interval'", "7m")),
    ("data download --start", [*DOWNLOAD, "--start", "2024-13", "--end", "2024-02"], ("'--start'", "YYYY-MM")),
    ("data download --end", [*DOWNLOAD, "--start", "2024-01", "--end", "24-02"], ("'--end'", "YYYY-MM")),
    ("data download order", [*DOWNLOAD, "--start", "2024-05", "--end", "2024-02"], ("2024-05 is after --end 2024-02",)),
    ("data download missing", [*DOWNLOAD, "--end", "2024-02"], ("Missing option '--start'",)),
    (
        "data download --base-url",
        [*DOWNLOAD, "--start", "2024-01", "--end", "2024-02", "--base-url", "ftp://a"],
        ("'--base-url'", "http(s) URL"),
    ),
    (
        "data download --dir",
        [*DOWNLOAD, "--start", "2024-01", "--end", "2024-02", "--dir", GOOD],
        ("'--dir'", "a file"),
    ),
    # qt backtest
    ("backtest --data missing", [*BACKTEST, "{tmp}/nothing.csv"], ("no kline file matches",)),
    ("backtest --data empty", [*BACKTEST, EMPTY], ("nothing to replay",)),
    ("backtest --data not klines", [*BACKTEST, NOT_KLINES], ("LTCUSDT-1h-2024-01.csv:1", "12 comma-separated")),
    ("backtest no --data", ["backtest", "--report", "{tmp}/out"], ("Missing option '--data'",)),
    ("backtest no --report", ["backtest", "--data", GOOD], ("Missing option '--report'",)),
    ("backtest --report", ["backtest", "--data", GOOD, "--report", GOOD], ("'--report'", "is a file")),
    ("backtest -f missing", [*BACKTEST, GOOD, "-f", "{tmp}/missing.yaml"], ("cannot read policy",)),
    ("backtest --max-bars", [*BACKTEST, GOOD, "--max-bars", "-1"], ("'--max-bars'", "x>=0")),
    ("backtest --skip-bars", [*BACKTEST, GOOD, "--skip-bars", "-3"], ("'--skip-bars'", "x>=0")),
    ("backtest --redis-url", [*BACKTEST, GOOD, "--redis-url", "notaurl"], ("'--redis-url'", "is not a Redis URL")),
    ("backtest --redis-url down", [*BACKTEST, GOOD, "--redis-url", DOWN], ("--redis-url", "cannot reach Redis")),
    ("backtest --redis", [*BACKTEST, GOOD, "--redis", "memcached"], ("'--redis'", "memcached")),
    # qt train
    ("train --data missing", [*TRAIN, "{tmp}/nothing.csv"], ("no kline file matches",)),
    ("train --data not klines", [*TRAIN, NOT_KLINES], ("LTCUSDT-1h-2024-01.csv:1",)),
    ("train no --data", ["train", "--out", "{tmp}/model"], ("Missing option '--data'",)),
    ("train no --out", ["train", "--data", GOOD], ("Missing option '--out'",)),
    ("train --out", ["train", "--data", GOOD, "--out", GOOD], ("'--out'", "is a file")),
    ("train --seed", [*TRAIN, GOOD, "--seed", "seven"], ("'--seed'", "seven")),
    ("train --seed -1", [*TRAIN, GOOD, "--seed", "-1"], ("'--seed'", "0<=x<=4294967295")),
    ("train --seed huge", [*TRAIN, GOOD, "--seed", str(2**70)], ("'--seed'",)),
    ("train --horizon", [*TRAIN, GOOD, "--horizon", "0"], ("'--horizon'", "1<=x<=500")),
    ("train --band-atr", [*TRAIN, GOOD, "--band-atr", "-1"], ("'--band-atr'",)),
    ("train --band-atr nan", [*TRAIN, GOOD, "--band-atr", "nan"], ("band", "nan")),
    ("train --folds", [*TRAIN, GOOD, "--folds", "0"], ("'--folds'",)),
    ("train --embargo", [*TRAIN, GOOD, "--embargo", "-1"], ("'--embargo'",)),
    ("train --max-bars", [*TRAIN, GOOD, "--max-bars", "-1"], ("'--max-bars'",)),
    ("train --xgb-rounds", [*TRAIN, GOOD, "--xgb-rounds", "0"], ("'--xgb-rounds'",)),
    ("train --epochs", [*TRAIN, GOOD, "--epochs", "0"], ("'--epochs'",)),
    ("train --threads", [*TRAIN, GOOD, "--threads", "0"], ("'--threads'",)),
    ("train --threshold", [*TRAIN, GOOD, "--threshold", "inf"], ("'--threshold'",)),
    # qt operator, crds, wiring, version, digest
    ("operator -n -A", ["operator", "-n", "trading", "-A"], ("--namespace and --all-namespaces",)),
    ("operator --liveness", ["operator", "--liveness", "healthz"], ("'--liveness'", "http(s) URL")),
    ("operator no cluster", ["operator", "-A"], ("no cluster to run against",)),
    ("crds --out", ["crds", "--out", GOOD], ("'--out'", "is a file")),
    ("wiring -f missing", ["wiring", "-f", "{tmp}/missing.yaml"], ("cannot read policy",)),
    ("version extra", ["version", "--digest"], ("No such option", "--digest")),
    ("digest image", ["digest", "quantum-trader:no-such-tag"], ("image",)),
    ("unknown command", ["trade"], ("No such command 'trade'",)),
]


@pytest.mark.parametrize(("args", "fragments"), [c[1:] for c in FLAG_CASES], ids=[c[0] for c in FLAG_CASES])
def test_every_bad_flag_is_one_line_naming_it(tmp_path, args, fragments):
    klines = tmp_path / "klines"
    kline_file(klines, "BTCUSDT-1h-2024-01.csv")
    kline_file(klines, "BTCUSDT-1m-2024-01.csv")
    kline_file(klines, "prices.csv")
    kline_file(klines, "btc-1h-2024-01.csv")
    kline_file(klines, f"{'A' * 26}-1h-2024-01.csv")
    (klines / "ETHUSDT-1h-2024-01.csv").write_bytes(b"")
    (klines / "LTCUSDT-1h-2024-01.csv").write_text("open,close\n")
    (klines / "XRPUSDT-1h-2024-01.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    for name, model in (("other-digest", "ensemble-1h-v1"), ("missing-model", "no-such-model")):
        (tmp_path / f"{name}.yaml").write_text(
            f"marketData: {{source: synthetic}}\nmodel: {{name: {model}, digest: 'sha256:{'0' * 64}'}}\n"
        )
    (tmp_path / "empty-replay.yaml").write_text(
        f"symbols: [ETHUSDT]\nmarketData: {{source: replay, files: ['{klines / 'ETHUSDT-1h-2024-01.csv'}']}}\n"
    )
    state = tmp_path / "state"
    if args[0] in ("status", "killswitch") and "--redis-url" not in args and "no running stack found" not in fragments:
        running_stack_file(state, "redis://127.0.0.1:1/0")
    result = qt(*(a.replace("{tmp}", str(tmp_path)) for a in args), state_dir=state)
    assert_one_line_error(result, *fragments)


# `qt component` is what a pod runs: a bad setting, as a flag or its QT_* variable, is one JSON log line
COMPONENT_CASES: list[tuple[str, list[str], str]] = [
    ("--redis-url", ["--redis-url", "notaurl"], "QT_REDIS_URL must be a redis:// URL"),
    ("--instance", ["--instance", "Bad Name"], "QT_INSTANCE: instance 'Bad Name'"),
    ("--config missing", ["--config", "{tmp}/missing.yaml"], "QT_CONFIG={tmp}/missing.yaml does not exist"),
    ("--config not a policy", ["--config", "{tmp}/klines/LTCUSDT-1h-2024-01.csv"], "QT_CONFIG:"),
    ("--health-port", ["--health-port", "-1"], "QT_HEALTH_PORT=-1 is outside 0..65535"),
    ("--metrics-port", ["--metrics-port", "abc"], "QT_METRICS_PORT='abc' is not a port number"),
    ("Redis down", [], "cannot reach Redis at redis://127.0.0.1:1/0"),
]


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in COMPONENT_CASES], ids=[c[0] for c in COMPONENT_CASES])
def test_every_bad_component_setting_is_one_line(tmp_path, args, message):
    klines = tmp_path / "klines"
    klines.mkdir()
    (klines / "LTCUSDT-1h-2024-01.csv").write_text("open,close\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text("symbols: [BTCUSDT]\n")
    defaults = {"--instance": "local", "--redis-url": "redis://127.0.0.1:1/0", "--config": str(policy)}
    given = [a.replace("{tmp}", str(tmp_path)) for a in args]
    for flag, value in defaults.items():
        if flag not in given:
            given += [flag, value]
    result = qt("component", "features", *given)
    assert result.returncode == 2, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    record = json.loads(line)
    assert record["level"] == "error" and record["component"] == "features", record
    assert message.replace("{tmp}", str(tmp_path)) in record["msg"], record


def command_paths() -> list[tuple[str, ...]]:
    """Every command and subcommand of `qt`, wherever it is defined (`qt backtest` and `qt train` too)."""
    import click

    from quantum_trader.cli import main

    found: list[tuple[str, ...]] = [()]

    def walk(group: click.Group, path: tuple[str, ...]) -> None:
        for name, command in group.commands.items():
            found.append((*path, name))
            if isinstance(command, click.Group):
                walk(command, (*path, name))

    walk(main, ())
    return found


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: "qt " + " ".join(p))
def test_every_command_has_a_one_line_help_and_an_example(path):
    from quantum_trader.cli import main

    command = main
    for name in path:
        command = command.commands[name]
    assert command.get_short_help_str(limit=200).strip(), path
    result = qt(*path, "--help")
    assert result.returncode == 0, result.stderr
    assert "Example" in result.stdout, result.stdout
    example = result.stdout.split("Example", 1)[1]
    assert f"qt {' '.join(path)}".strip() in example, example


def test_component_help_lists_every_component():
    from quantum_trader.contracts.registry import COMPONENTS

    result = qt("component", "--help")
    assert result.returncode == 0
    listed = result.stdout.split("Components:", 1)[1]
    for name, spec in COMPONENTS.items():
        assert re.search(rf"^\s+{re.escape(name)}\s+{re.escape(spec.description)}$", listed, re.MULTILINE), name


def test_digest_of_the_checkout_is_one_sha256_line():
    result = qt("digest")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", result.stdout), result.stdout
    assert "checkout " in result.stderr and "qt digest IMAGE" in result.stderr
    assert qt("digest").stdout == result.stdout  # nothing changed in between: the same digest


def test_a_replay_that_could_trade_nothing_is_one_line(tmp_path):
    """Every tick of a symbol off the allowlist is dead-lettered at the edge: a run that could only do that
    is refused before anything starts, not left to show a stack that never trades."""
    data = tmp_path / "BTCUSD-1h-2024-01.csv"
    data.write_text("1704067200000,1,1,1,1,1,1704070799999,0,0,0,0,0\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"symbols: [BTCUSDT, ETHUSDT]\nmarketData: {{source: replay, files: ['{data}']}}\n")
    result = qt("run", "-f", str(policy), "--duration", "5", state_dir=tmp_path / "state")
    assert_one_line_error(result, "BTCUSD", "nothing would trade")
