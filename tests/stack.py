"""A real stack for tests: the supervisor of ``qt run`` starting ``qt component`` processes on the test Redis."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from quantum_trader.contracts.policy import PolicySpec, parse_policy
from quantum_trader.local.supervisor import Supervisor


@contextmanager
def running_stack(
    policy: PolicySpec | dict,
    redis_url: str,
    instance: str,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    only: list[str] | None = None,
) -> Iterator[Supervisor]:
    spec = policy if isinstance(policy, PolicySpec) else parse_policy(policy)
    monkeypatch.setenv("QT_STATE_DIR", str(workdir / "state"))
    monkeypatch.setenv("QT_SIM_ORDER_LOG", str(workdir / "orders.jsonl"))
    supervisor = Supervisor(spec, redis_url, instance=instance, workdir=workdir / "run", only=only)
    supervisor.prepare()
    try:
        supervisor.start()
        yield supervisor
    finally:
        supervisor.stop()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, supervisor: Supervisor | None = None):
    """Poll ``predicate`` until truthy; on timeout fail with the components' log tails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if supervisor is not None:
            supervisor.supervise_once()
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    detail = ""
    if supervisor is not None:
        detail = "\n".join(log_tail(supervisor, pod) for pod in supervisor.processes)
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{detail}")


def log_tail(supervisor: Supervisor, pod: str, lines: int = 8) -> str:
    path = supervisor.processes[pod].log_path
    if not path.exists():
        return f"--- {pod}: no log"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {pod} ({supervisor.processes[pod].state}):\n" + "\n".join(text)


def sim_orders(supervisor: Supervisor) -> list[dict]:
    with urllib.request.urlopen(f"{supervisor.exchange_url}/sim/orders", timeout=10) as answer:
        body = json.loads(answer.read())
    return body["orders"] if isinstance(body, dict) else body


def stream(r: redis.Redis, supervisor: Supervisor, name: str) -> list[dict]:
    return [json.loads(fields["data"]) for _, fields in r.xrange(supervisor.keys.stream(name))]
