"""The Dockerfile, checked by parsing it (no Docker engine and no hadolint where the tests run).

The rules of the issue: multi-stage from a slim Python 3.11 base, CPU-only torch, no build tools in the final
stage, a numeric non-root USER, the code version baked in as QT_CODE_VERSION, OCI labels, ENTRYPOINT ["qt"],
the models baked in, no `latest` tags and no secrets in ENV/ARG. `make image` builds it where Docker exists.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
UID = 10001  # the same user the chart and desired.py run pods as


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined and comments dropped."""
    logical: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        logical.append((start, buffer + stripped))
        buffer = ""
    assert not buffer, "the Dockerfile ends inside a line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else ""
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert keyword == "ARG", f"line {number}: only ARG may come before the first FROM, not {keyword}"
            key, _, default = args.partition("=")
            global_args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append(Instruction(keyword, args.strip(), number))
    return global_args, stages


def resolve(image: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def test_multi_stage_from_a_pinned_slim_python_311(dockerfile) -> None:
    args, stages = dockerfile
    assert len(stages) >= 2, "a build stage and a runtime stage"
    for stage in stages:
        image = resolve(stage.image, args)
        assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), image
    build, final = stages[0], stages[-1]
    assert build.name and final.name and build.name != final.name
    copies = final.all("COPY")
    assert any(f"--from={build.name}" in c.args for c in copies), "the runtime stage copies the build's result"


def test_no_latest_and_no_untagged_images(dockerfile) -> None:
    args, stages = dockerfile
    for stage in stages:
        image = resolve(stage.image, args)
        name = image.split("@")[0]
        assert ":" in name.rsplit("/", 1)[-1], f"{image}: an untagged image is `latest`"
        assert not name.endswith(":latest"), image
    assert ":latest" not in DOCKERFILE.read_text()


def test_cpu_only_torch_pinned_like_pyproject(dockerfile) -> None:
    _, stages = dockerfile
    runs = " ".join(i.args for s in stages for i in s.all("RUN"))
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch,) = [p for p in pins if re.match(r"torch\b", p)]
    assert re.search(
        rf"pip install [^&;]*{re.escape(torch)}[^&;]*--index-url https://download\.pytorch\.org/whl/cpu", runs
    ), f"{torch} from the CPU index"
    assert "nvidia" not in runs.lower() and "cuda" not in runs.lower()


def test_final_stage_has_no_build_tools(dockerfile) -> None:
    _, stages = dockerfile
    final = stages[-1]
    build_tools = r"\b(apt-get|apt|apk|yum|dnf|pip|gcc|g\+\+|make|cmake|build-essential|cargo|rustc|git|curl|wget)\b"
    for run in final.all("RUN"):
        assert not re.search(build_tools, run.args), f"line {run.line}: {run.args}"
    for add in final.all("ADD"):
        pytest.fail(f"line {add.line}: ADD in the final stage (use COPY)")
    # the build stage needs no compiler either: every dependency comes as a binary wheel
    for run in stages[0].all("RUN"):
        if re.search(r"pip install (?!--no-deps \.)", run.args):
            assert "--only-binary=:all:" in run.args, f"line {run.line}: {run.args}"


def test_runs_as_numeric_non_root_user(dockerfile) -> None:
    _, stages = dockerfile
    final = stages[-1]
    users = final.all("USER")
    assert users, "the final stage sets USER"
    user = users[-1].args
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user}: numeric, so runAsNonRoot can verify it"
    uid = int(user.split(":")[0])
    assert uid == UID and uid != 0
    last_user = max(u.line for u in users)
    assert not [i for i in final.instructions if i.keyword == "RUN" and i.line > last_user], "no RUN after USER"


def test_entrypoint_is_qt(dockerfile) -> None:
    _, stages = dockerfile
    (entrypoint,) = stages[-1].all("ENTRYPOINT")
    assert json.loads(entrypoint.args) == ["qt"], "exec form, so signals reach qt (SIGTERM: finish and ack)"
    # desired.py runs components as args [component, <name>] on this entrypoint
    import yaml

    from quantum_trader_operator.desired import desired_objects

    policy = yaml.safe_load((REPO / "examples" / "policy.yaml").read_text())
    policy["metadata"]["uid"] = "00000000-0000-4000-8000-000000000001"
    deployment = next(o for o in desired_objects(policy) if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container and container["args"][0] == "component"
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == UID


def test_code_version_and_oci_labels(dockerfile) -> None:
    _, stages = dockerfile
    final = stages[-1]
    final_args = {a.args.split("=")[0] for a in final.all("ARG")}
    assert "QT_CODE_VERSION" in final_args
    env = " ".join(e.args for e in final.all("ENV"))
    assert re.search(r"QT_CODE_VERSION=\$\{?QT_CODE_VERSION\}?", env)
    labels = dict(item.split("=", 1) for label in final.all("LABEL") for item in shlex.split(label.args))
    for key in ("title", "description", "source", "licenses", "version", "revision", "created"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert "QT_CODE_VERSION" in labels["org.opencontainers.image.revision"]
    assert (
        labels["org.opencontainers.image.licenses"]
        == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    )


def test_no_secrets_in_env_or_args(dockerfile) -> None:
    _, stages = dockerfile
    text = DOCKERFILE.read_text()
    for stage in stages:
        for instruction in stage.all("ENV") + stage.all("ARG"):
            for name in re.findall(r"(\w+)=", instruction.args) or [instruction.args.split()[0]]:
                assert not re.search(r"KEY|SECRET|PASSWORD|TOKEN|CREDENTIAL", name, re.I), (
                    f"line {instruction.line}: {name} (credentials come from a Secret at run time, invariant 10)"
                )
    assert "BINANCE_API" not in text


def test_models_are_baked_in(dockerfile) -> None:
    _, stages = dockerfile
    assert (REPO / "models").is_dir() and (REPO / "models" / "README.md").is_file()
    assert any(c.args.split()[0] == "models/" for c in stages[-1].all("COPY"))


def test_healthcheck_if_any_is_exec_form(dockerfile) -> None:
    _, stages = dockerfile
    for check in stages[-1].all("HEALTHCHECK"):
        assert check.args == "NONE" or "CMD [" in check.args


def test_dockerignore_keeps_the_context_small_and_complete(dockerfile) -> None:
    lines = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "everything is excluded first, then what the Dockerfile copies is let back in"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    _, stages = dockerfile
    for stage in stages:
        for copy in stage.all("COPY"):
            if "--from=" in copy.args:
                continue
            sources = copy.args.split()[:-1]
            for source in sources:
                assert source.rstrip("/") in included, f"COPY {source} is excluded by .dockerignore"
                assert (REPO / source).exists(), source
    for secret_like in ("**/.env", "**/*.pem", "**/*.key"):
        assert secret_like in lines


def test_settings_report_the_baked_code_version() -> None:
    """Heartbeats carry Settings.code_version, which is QT_CODE_VERSION when the image sets it."""
    from quantum_trader.runtime.settings import load_settings

    settings = load_settings(
        {
            "QT_COMPONENT": "governor",
            "QT_INSTANCE": "local",
            "QT_REDIS_URL": "redis://127.0.0.1:6379/0",
            "QT_CODE_VERSION": "0123abc",
        }
    )
    assert settings.code_version == "0123abc"


def test_qt_version_prints_the_baked_code_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quantum_trader.cli", "version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"QT_CODE_VERSION": "0123abc", "PATH": "/usr/bin:/bin"},
    )
    assert result.stdout.strip() == "0123abc"
