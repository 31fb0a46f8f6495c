"""Every user mistake on the real `qt` command: one `qt: error:` line naming the flag and the reason, exit 2,
never a traceback. Each case runs the installed `qt` entry point as a user would."""

from __future__ import annotations

import os
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
    "nested-block": (nested_yaml(3000).encode(), "nested too deeply"),
    "empty": (b"", "is empty; to run with the default policy, leave out -f"),
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
