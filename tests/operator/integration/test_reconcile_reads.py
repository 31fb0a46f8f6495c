"""What one check of a TradingPolicy reads: gather → decide → act in this process, against the API emulator and a
real redis-server that wants a password (the policy's ``passwordSecretRef``).

The password Secret is read once per check: gather.py reads the instance's Redis with it and act.py writes
(``control``, the rollout's halt) through the same client, so a check costs one Secret read, not one per step.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from harness.kube_emulator import EmulatedCluster
from quantum_trader_operator import act, decide, gather, validation
from quantum_trader_operator.desired import OperatorSettings
from quantum_trader_operator.redis_io import RedisPool
from tests.conftest import start_redis_server
from tests.operator.integration.support import paper_policy

SECRET = "policy-redis-auth"


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A redis-server of its own with ``requirepass``; yields (its URL, which holds no credentials, password)."""
    password = secrets.token_hex(16)
    process, url = start_redis_server(tmp_path, password=password)
    yield url, password
    process.terminate()
    process.wait(10)


def secret_reads(cluster: EmulatedCluster) -> int:
    """GETs of the password Secret the emulator has served."""
    assert cluster.emulator is not None
    return cluster.emulator.call(
        lambda emulator: sum(
            1
            for request in emulator._requests
            if request.method.value == "GET" and request.name == SECRET and request.resource.plural == "secrets"
        )
    )


def policy_with_password(cluster: EmulatedCluster, url: str, password: str) -> dict[str, Any]:
    cluster.create(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET}, "stringData": {"password": password}}
    )
    manifest = paper_policy()
    manifest["spec"]["redis"] = {"url": url, "passwordSecretRef": {"name": SECRET, "key": "password"}}
    return cluster.create(manifest)


def test_a_check_reads_the_redis_password_secret_once(cluster: EmulatedCluster, guarded_redis: tuple[str, str]) -> None:
    url, password = guarded_redis
    body = policy_with_password(cluster, url, password)
    check = validation.check_policy(body)
    assert check.spec is not None and check.problems == [], check.problems
    rendered = decide.render(body, check.spec, OperatorSettings())
    sources = gather.Sources(cluster.kube, RedisPool(), env={})

    observed, client = gather.policy(sources, body, rendered.spec, rendered.keys)
    assert observed.redis.error == "" and observed.redis.readings is not None, observed.redis.error
    plan = decide.policy(rendered, observed, decide.PolicyMemory(), decide.Timings(), apply=True)
    # the plan writes to the instance's Redis: control initialised, the rollout's halt raised
    assert plan.initialize_control and plan.start_rollout is not None
    act.policy(sources, client, rendered, plan, drain_seconds=1)

    direct = redis.Redis.from_url(url, password=password, decode_responses=True)
    try:
        assert direct.hget(rendered.keys.control, "state") == "released"
        assert direct.hexists(rendered.keys.halts, "operator:rollout")
    finally:
        direct.close()
    assert cluster.get("Deployment", f"{rendered.name}-governor", "apps/v1") is not None
    assert secret_reads(cluster) == 1, "gather and act share one read of the password Secret"


def test_a_redis_that_cannot_be_read_gets_no_write_planned(
    cluster: EmulatedCluster, guarded_redis: tuple[str, str]
) -> None:
    """The password Secret is missing, so Redis refuses the read: decide plans no Redis write at all, which is why
    act.py needs no client of its own (it never reads the Secret again) and the policy shows Halted."""
    url, _ = guarded_redis
    manifest = paper_policy()
    manifest["spec"]["redis"] = {"url": url, "passwordSecretRef": {"name": SECRET, "key": "password"}}
    body = cluster.create(manifest)
    check = validation.check_policy(body)
    assert check.spec is not None
    rendered = decide.render(body, check.spec, OperatorSettings())
    sources = gather.Sources(cluster.kube, RedisPool(), env={})

    observed, client = gather.policy(sources, body, rendered.spec, rendered.keys)
    assert observed.redis.readings is None and observed.redis.error
    plan = decide.policy(rendered, observed, decide.PolicyMemory(), decide.Timings(), apply=True)
    assert not (plan.initialize_control or plan.raise_halts or plan.clear_halts or plan.destroy_groups)
    assert plan.start_rollout is None
    act.policy(sources, client, rendered, plan, drain_seconds=1)
    assert plan.status is not None and plan.status["health"] == "Halted"
