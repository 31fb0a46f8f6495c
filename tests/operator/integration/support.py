"""Helpers shared by the operator's integration tests (emulator) and e2e tests (a real cluster): polling, and
writing heartbeats and the reconciler's status into Redis the way components do. The operator process, the
cluster client and the example manifests are ``harness.operator_process`` (bench/ runs them too).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import redis

from harness.operator_process import OPERATOR_ENV, Cluster, Operator, example, paper_policy, start_operator
from quantum_trader.bus.heartbeat import write_heartbeat
from quantum_trader.contracts.heartbeat import HeartbeatRecord
from quantum_trader.contracts.keys import Keys
from quantum_trader_operator import naming as n
from quantum_trader_operator.runtime_io import KubeError

__all__ = [
    # the harness, here too for the tests that import it from this module (tests/e2e)
    "OPERATOR_ENV",
    "Cluster",
    "Operator",
    "condition",
    "example",
    "heartbeat_all",
    "keys_for",
    "paper_policy",
    "reconciled",
    "start_operator",
    "wait_for",
    "wait_handled",
]

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float = 20.0, interval: float = 0.1, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with the last value (or error) after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (KubeError, AssertionError, KeyError) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def keys_for(namespace: str, policy: str) -> Keys:
    return Keys(n.instance_id(namespace, policy))


def heartbeat_all(
    client: redis.Redis, keys: Keys, components: list[str], digest: str, *, replicas: dict[str, int] | None = None
) -> list[str]:
    """Write a heartbeat per component pod the way ComponentRunner does; returns the ``<component>/<pod>`` names."""
    now = int(time.time() * 1000)
    members = []
    for component in components:
        for index in range((replicas or {}).get(component, 1)):
            pod = f"{component}-{index}"
            write_heartbeat(
                client,
                keys,
                HeartbeatRecord(
                    component=component,
                    pod=pod,
                    time_ms=now,
                    started_ms=now,
                    state="running",
                    code_version="test",
                    image_digest=digest,
                    model_digest="",
                    control_generation=0,
                    counters={"processed": 0},
                    groups={},
                ),
                ttl_seconds=120,
            )
            members.append(f"{component}/{pod}")
    return members


def reconciled(client: redis.Redis, keys: Keys) -> None:
    """The reconciler's status hash after a run that matched the exchange."""
    now = int(time.time() * 1000)
    client.hset(
        keys.component_state("reconciler", "status"), mapping={"matched": "1", "time": now, "runs": 1, "findings": 0}
    )


HANDLED_ANNOTATION = "kopf.quantumtrader.io/last-handled-configuration"


def wait_handled(cluster: Cluster, kind: str, name: str) -> dict[str, Any]:
    """Until the operator's create/update handler finished with the object's current spec (kopf records it)."""
    return wait_for(
        lambda: (
            (obj := cluster.get(kind, name))
            and HANDLED_ANNOTATION in (obj["metadata"].get("annotations") or {})
            and obj
        ),
        what=f"{kind} {name} to be handled",
    )


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})
