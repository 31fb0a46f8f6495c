"""THE acceptance test of invariant 3: limits hold exactly with several governor processes racing
several producers (real processes, real Redis, the real service in the real StreamConsumer)."""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter

import redis

from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import PolicySpec
from tests.integration._governor_support import (
    SYMBOLS,
    T0,
    approvals,
    as_json,
    decisions,
    dumps,
    entry,
    governor_worker,
    policy,
    position_state_worker,
    producer_worker,
    rejecting_apply_layer_worker,
    release,
    reservation_total,
)

MP = multiprocessing.get_context("fork")
GOVERNORS = 3
PRODUCERS = 4


def _wait(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Cluster:
    """3 governor processes (gov-0..2) and optional position-state + apply-layer stand-in processes."""

    def __init__(self, redis_url: str, instance: str, spec: PolicySpec, *, settle: bool = False) -> None:
        self.redis_url = redis_url
        self.instance = instance
        self.keys = Keys(instance)
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.stop = MP.Event()
        release(self.client, self.keys)
        self.client.xgroup_create(self.keys.stream("apply.plan"), "governor", id="0", mkstream=True)
        spec_json = dumps(spec)
        self.processes = [
            MP.Process(target=governor_worker, args=(redis_url, instance, spec_json, f"gov-{i}", self.stop))
            for i in range(GOVERNORS)
        ]
        if settle:
            self.processes += [
                MP.Process(target=position_state_worker, args=(redis_url, instance, spec_json, "ps-0", self.stop)),
                MP.Process(target=rejecting_apply_layer_worker, args=(redis_url, instance, self.stop)),
            ]

    def __enter__(self) -> Cluster:
        for p in self.processes:
            p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.processes:
            p.join(20)
            if p.is_alive():
                p.kill()
                p.join()
        self.client.close()

    def race(self, plans: list) -> None:
        """4 producer processes XADD ``plans`` at once; returns when every plan has its decision."""
        before = self.client.xlen(self.keys.stream("governor.decision"))
        start = MP.Event()
        producers = [
            MP.Process(
                target=producer_worker, args=(self.redis_url, self.instance, as_json(plans[i::PRODUCERS]), start)
            )
            for i in range(PRODUCERS)
        ]
        for p in producers:
            p.start()
        start.set()
        for p in producers:
            p.join(60)
            assert p.exitcode == 0
        expected = before + len(plans)
        _wait(lambda: self.client.xlen(self.keys.stream("governor.decision")) >= expected, what="every decision")
        assert self.client.xlen(self.keys.stream("governor.decision")) == expected

    def consumers_that_worked(self) -> set[str]:
        info = self.client.xinfo_consumers(self.keys.stream("apply.plan"), "governor")
        return {c["name"] for c in info}


def _check_one_decision_per_plan(client: redis.Redis, keys: Keys, plans: list) -> Counter:
    found = decisions(client, keys)
    assert sorted(d.plan_id for d in found) == sorted(p.plan_id for p in plans)
    assert client.xpending(keys.stream("apply.plan"), "governor")["pending"] == 0
    return Counter(d.reasons[0] if d.reasons else "approved" for d in found)


def test_max_open_positions_holds_exactly_under_concurrency(redis_url: str, instance: str) -> None:
    spec = policy(SYMBOLS, maxOpenPositions=10, maxNotionalPerTrade=10.0, maxTotalNotional=10_000.0)
    plans = [entry(SYMBOLS[i % len(SYMBOLS)], f"mo-{i}", time=T0 + i, notional=5.0 + (i % 5)) for i in range(500)]
    with Cluster(redis_url, instance, spec) as cluster:
        cluster.race(plans)
        client, keys = cluster.client, cluster.keys
        counts = _check_one_decision_per_plan(client, keys, plans)
        assert counts["approved"] == 10, counts
        assert set(counts) <= {"approved", "max_open_positions", "entry_pending"}, counts
        approved = approvals(client, keys)
        assert len(approved) == 10
        assert client.hlen(keys.reservations) == 10
        assert client.hlen(keys.entry_locks) == 10
        assert len({a.plan.symbol for a in approved}) == 10  # one entry in flight per symbol
        assert set(client.hkeys(keys.reservations)) == {a.plan.plan_id for a in approved}
        assert cluster.consumers_that_worked() == {"gov-0", "gov-1", "gov-2"}


def test_max_total_notional_holds_exactly_under_concurrency(redis_url: str, instance: str) -> None:
    spec = policy(SYMBOLS, maxOpenPositions=1000, maxNotionalPerTrade=100.0, maxTotalNotional=750.0)
    plans = [entry(SYMBOLS[i % len(SYMBOLS)], f"tn-{i}", time=T0 + i, notional=100.0) for i in range(500)]
    with Cluster(redis_url, instance, spec) as cluster:
        cluster.race(plans)
        client, keys = cluster.client, cluster.keys
        counts = _check_one_decision_per_plan(client, keys, plans)
        assert counts["approved"] == 7, counts
        assert set(counts) <= {"approved", "max_total_notional", "entry_pending"}, counts
        assert len(approvals(client, keys)) == 7
        assert client.hlen(keys.reservations) == 7
        assert reservation_total(client, keys) == 700.0


def test_per_symbol_rate_limit_holds_exactly_under_concurrency(redis_url: str, instance: str) -> None:
    """One symbol, distinct plan times all within 5 minutes, at most 2 per 5 minutes.

    Each entry holds the symbol's lock until its result, so position-state and an apply-layer
    stand-in (every approval -> REJECTED) run too, releasing locks while plans keep coming. Three
    waves, each started once the lock is free again, guarantee the rate limit — not the lock — is
    what stops the third approval.
    """
    spec = policy(
        ["BTCUSDT"], maxEntriesPerFiveMinutes=2, maxEntriesPerHour=100, maxOpenPositions=100, maxNotionalPerTrade=10.0
    )
    waves = [
        [entry("BTCUSDT", f"rt-{w}-{i}", time=T0 + (w * 100 + i) * 900, notional=10.0) for i in range(100)]
        for w in range(3)
    ]
    with Cluster(redis_url, instance, spec, settle=True) as cluster:
        client, keys = cluster.client, cluster.keys
        for wave in waves:
            cluster.race(wave)
            _wait(lambda: client.hlen(keys.entry_locks) == 0 and client.hlen(keys.reservations) == 0, what="release")
        plans = [p for wave in waves for p in wave]
        counts = _check_one_decision_per_plan(client, keys, plans)
        assert counts["approved"] == 2, counts
        assert set(counts) <= {"approved", "rate_5m", "entry_pending"}, counts
        last_wave = {p.plan_id for p in waves[-1]}
        assert {d.reasons for d in decisions(client, keys) if d.plan_id in last_wave} == {("rate_5m",)}
        assert client.zcard(keys.rate("BTCUSDT")) == 2
        # every approval was settled: a REJECTED result each, locks and reservations released
        _wait(lambda: client.xlen(keys.stream("apply.result")) == 2, what="results")
