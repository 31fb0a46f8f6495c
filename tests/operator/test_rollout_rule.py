"""Decisions over several sources at once — the rollout rule and the KillSwitch in force — as plain data
(no server, no Redis, no operator)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from quantum_trader.contracts.heartbeat import HeartbeatRecord
from quantum_trader_operator import naming as n
from quantum_trader_operator.decide_switches import effective_switch
from quantum_trader_operator.rollout import RolloutState
from quantum_trader_operator.rollout import progress as rollout_progress

NEW = "sha256:" + "b" * 64
OLD = "sha256:" + "a" * 64
HASH = "sha256:" + "c" * 64
T0 = 1_700_000_000_000


def deployment(component: str, digest: str = NEW, *, replicas: int = 1, **status: Any) -> dict[str, Any]:
    full = {
        "observedGeneration": 2,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "availableReplicas": replicas,
        **status,
    }
    return {
        "metadata": {"name": f"p-{component}", "generation": 2, "labels": {n.LABEL_COMPONENT: component}},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"annotations": {n.IMAGE_DIGEST_ANNOTATION: digest, n.CONFIG_HASH_ANNOTATION: HASH}}
            },
        },
        "status": full,
    }


def beat(component: str, pod: str, digest: str = NEW, started: int = T0 + 5_000) -> HeartbeatRecord:
    return HeartbeatRecord(component, pod, T0 + 10_000, started, "running", "v", digest, "", 0, {}, {})


ROLLOUT = RolloutState(to_digest=NEW, config_hash=HASH, from_digests=frozenset({OLD}), started_ms=T0)
MATCHED = {"matched": "1", "time": str(T0 + 8_000), "runs": "3", "findings": "0"}


def progress(deployments: list, beats: list, reconcile: dict | None = MATCHED, enabled: tuple = ("governor",)) -> str:
    return rollout_progress(
        ROLLOUT,
        enabled=list(enabled),
        deployments=deployments,
        heartbeats=beats,
        reconcile=reconcile,
        now_ms=T0 + 11_000,
    )


def test_rollout_complete_when_new_pods_report_and_reconciler_matched() -> None:
    assert progress([deployment("governor", replicas=2)], [beat("governor", "g1"), beat("governor", "g2")]) == ""


def test_rollout_waits_for_each_condition() -> None:
    beats = [beat("governor", "g1")]
    assert "not created" in progress([], beats)
    assert "not applied" in progress([deployment("governor", OLD)], beats)
    assert "controller" in progress([deployment("governor", observedGeneration=1)], beats)
    assert "available" in progress([deployment("governor", availableReplicas=0)], beats)
    surged = deployment("governor")
    surged["status"]["replicas"] = 2  # maxSurge: an old pod still runs next to the new one
    assert "old replicas" in progress([surged], beats)
    assert "previous version" in progress([deployment("governor")], [*beats, beat("governor", "old", OLD)])
    # Same digest but started before the rollout (a config-only rollout): still an old pod.
    assert "previous version" in progress([deployment("governor")], [*beats, beat("governor", "o", started=T0 - 1)])
    assert "1/2 pods" in progress([deployment("governor", replicas=2)], beats)
    assert "heat-gate: disabled" in progress([deployment("governor")], [*beats, beat("heat-gate", "h", OLD)])
    assert "reconciler" in progress(
        [deployment("governor"), deployment("reconciler")],
        [beat("governor", "g1"), beat("reconciler", "r1")],
        reconcile={**MATCHED, "time": str(T0 - 1)},
        enabled=("governor", "reconciler"),
    )
    assert "differ" in progress(
        [deployment("governor"), deployment("reconciler")],
        [beat("governor", "g1"), beat("reconciler", "r1")],
        reconcile={**MATCHED, "matched": "0", "findings": "2"},
        enabled=("governor", "reconciler"),
    )


def switch(name: str, scope: str = "entries", *, engaged: bool = True, created: str = "2026-01-01T00:00:00Z", **spec):
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"policyRef": {"name": "p"}, "engaged": engaged, "scope": scope, "reason": name, **spec},
    }


def test_effective_switch_is_the_strongest_engaged_unexpired_one() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    past = (now - timedelta(minutes=1)).isoformat()
    assert effective_switch([], "p", now) is None
    assert effective_switch([switch("a", engaged=False)], "p", now) is None
    assert effective_switch([switch("a", expiresAt=past)], "p", now) is None
    found = effective_switch([switch("a", "exits"), switch("b", "all"), switch("c", "entries")], "p", now)
    assert found is not None and found[0] == "b"
    newest = effective_switch([switch("a"), switch("b", created="2026-02-01T00:00:00Z")], "p", now)
    assert newest is not None and newest[0] == "b"
    other_policy = switch("x", "all")
    other_policy["spec"]["policyRef"]["name"] = "q"
    assert effective_switch([other_policy], "p", now) is None
    deleting = switch("d", "all")
    deleting["metadata"]["deletionTimestamp"] = "2026-06-01T00:00:00Z"
    assert effective_switch([deleting, switch("a")], "p", now)[0] == "a"  # type: ignore[index]
