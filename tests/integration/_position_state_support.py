"""Helpers of the position-state tests: one position-state in-process, and a race of replicas."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterable

import redis

from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import ExecutionResult
from quantum_trader.contracts.policy import PolicySpec
from quantum_trader.services import position_state
from tests.integration._governor_support import consumer, context, dumps, policy, position_state_worker, publish


def settle_with_replicas(
    redis_url: str,
    instance: str,
    spec: PolicySpec,
    results: Iterable[ExecutionResult],
    *,
    snapshots: int,
    replicas: int = 2,
    timeout: float = 60.0,
) -> None:
    """Publish ``results`` while ``replicas`` position-state processes settle them, until ``snapshots``
    position snapshots are out (the consumer group must exist already)."""
    client = redis.Redis.from_url(redis_url)
    keys = Keys(instance)
    mp = multiprocessing.get_context("fork")
    stop = mp.Event()
    workers = [
        mp.Process(target=position_state_worker, args=(redis_url, instance, dumps(spec), f"ps-{i}", stop))
        for i in range(replicas)
    ]
    for w in workers:
        w.start()
    try:
        for res in results:
            publish(client, keys, "apply.result", res, id=f"res:{res.plan_id}")
        deadline = time.monotonic() + timeout
        while client.xlen(keys.stream("position.snapshot")) < snapshots:
            assert time.monotonic() < deadline, "not every result was settled"
            time.sleep(0.05)
    finally:
        stop.set()
        for w in workers:
            w.join(20)
        client.close()


class OnePositionState:
    """One position-state in-process, with its consumer; the test plays governor and apply-layer."""

    def __init__(self, redis_url: str, instance: str, r: redis.Redis, symbols: list[str]) -> None:
        self.r = r
        self.ctx = context(redis_url, instance, policy(symbols), "position-state")
        self.keys = self.ctx.keys
        self.service = position_state.build(self.ctx)
        self.ps = consumer(self.ctx, self.service)
