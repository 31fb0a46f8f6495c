"""The safe-rollout rule (DESIGN §5), pure: when a rollout starts, what may be applied meanwhile, when it is done.

A new image digest or config hash (or a missing Deployment, so a first creation too) is a rollout. It raises
the automatic entries halt ``operator:rollout`` before any Deployment changes, and records itself
(:class:`RolloutState`, in Redis next to the halt) so a restarted operator finishes it. The executor path
goes last (``desired.rollout_order``), after its in-flight messages drained. Without a reachable Redis the
halt cannot be raised, so Deployments are held back (:func:`held_back`). The halt is released when
:func:`progress` finds nothing left to wait for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quantum_trader.contracts.heartbeat import HeartbeatRecord
from quantum_trader_operator import kube_view as kv
from quantum_trader_operator import naming as n
from quantum_trader_operator.drift import digest_of
from quantum_trader_operator.health import HealthThresholds, parse_reconcile_status

LIVE_HEARTBEAT_SECONDS = HealthThresholds().heartbeat_stale_seconds
"""a heartbeat younger than this is a live process (the same bound health uses for stale)"""


@dataclass(frozen=True, slots=True)
class RolloutState:
    """A rollout in progress, kept in Redis next to its halt so an operator restart resumes it."""

    to_digest: str
    config_hash: str
    from_digests: frozenset[str]
    started_ms: int

    def to_hash(self) -> dict[str, str]:
        return {
            "to_digest": self.to_digest,
            "config_hash": self.config_hash,
            "from_digests": ",".join(sorted(self.from_digests)),
            "started_ms": str(self.started_ms),
        }

    @classmethod
    def from_hash(cls, raw: Mapping[str, str]) -> RolloutState | None:
        """None for a missing or unreadable hash (a rollout that cannot be resumed starts again)."""
        if not raw:
            return None
        try:
            return cls(
                to_digest=raw["to_digest"],
                config_hash=raw.get("config_hash", ""),
                from_digests=frozenset(d for d in raw.get("from_digests", "").split(",") if d),
                started_ms=int(raw["started_ms"]),
            )
        except (KeyError, ValueError):
            return None

    def targets(self, digest: str, config_hash: str) -> bool:
        return (self.to_digest, self.config_hash) == (digest, config_hash)


def sources(
    desired: Sequence[Mapping[str, Any]], deployments: Sequence[Mapping[str, Any]], digest: str, config_hash: str
) -> frozenset[str] | None:
    """None when every desired Deployment exists with the policy's digest and config hash; else the digests the
    existing ones run (the rollout is from them; empty for a first creation)."""
    existing = {kv.name(d): d for d in deployments}
    found: set[str] = set()
    rollout = False
    for obj in desired:
        if obj.get("kind") != "Deployment":
            continue
        current = existing.get(kv.name(obj))
        if current is None:
            rollout = True
            continue
        annotations = kv.template_annotations(current)
        running = annotations.get(n.IMAGE_DIGEST_ANNOTATION, "")
        if running != digest or annotations.get(n.CONFIG_HASH_ANNOTATION) != config_hash:
            rollout = True
            if running and running != digest:
                found.add(running)
    return frozenset(found) if rollout else None


def started(
    previous: RolloutState | None, sources_: frozenset[str], digest: str, config_hash: str, now_ms: int
) -> RolloutState:
    """The rollout to record: from what runs now and what an unfinished earlier rollout was from."""
    carried = previous.from_digests if previous is not None else frozenset()
    return RolloutState(digest, config_hash, (carried | sources_) - {digest}, now_ms)


def held_back(ordered: Sequence[Mapping[str, Any]], existing: set[tuple[str, str]]) -> list[Mapping[str, Any]]:
    """What may be applied while the rollout's halt cannot be raised: Services and the managed Redis (a managed
    Redis must exist before it can be reached) and a first ConfigMap — never a Deployment or a changed config."""
    return [
        o
        for o in ordered
        if o.get("kind") not in ("Deployment", "ConfigMap")
        or (o.get("kind") == "ConfigMap" and kv.key(o) not in existing)
    ]


def progress(
    rollout: RolloutState,
    *,
    enabled: Sequence[str],
    deployments: Sequence[Mapping[str, Any]],
    heartbeats: Sequence[HeartbeatRecord],
    reconcile: Mapping[str, str] | None,
    now_ms: int,
) -> str:
    """ "" when the rollout is complete, else what it waits for (DESIGN §5 "released only when every component
    reports the new digest and the reconciler has matched the exchange").

    Complete means: every enabled Deployment runs the new template and its controller reports every replica
    updated and available with no old one left; every live heartbeat of an enabled component comes from a
    process started after the rollout began with the new digest (a config-only rollout keeps the digest, so
    the start time tells old pods from new), as many as the replicas; and the reconciler matched after it began.
    """
    by_component = {kv.component(d): d for d in deployments}
    for component in enabled:
        deployment = by_component.get(component)
        if deployment is None:
            return f"{component}: Deployment not created yet"
        annotations = kv.template_annotations(deployment)
        if annotations.get(n.IMAGE_DIGEST_ANNOTATION) != rollout.to_digest or (
            rollout.config_hash and annotations.get(n.CONFIG_HASH_ANNOTATION) != rollout.config_hash
        ):
            return f"{component}: new template not applied yet"
        spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
        replicas = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
        if int(status.get("observedGeneration") or 0) < int(kv.generation(deployment) or 0):
            return f"{component}: Deployment controller has not seen the new template"
        if int(status.get("updatedReplicas") or 0) < replicas or int(status.get("availableReplicas") or 0) < replicas:
            return f"{component}: {status.get('availableReplicas') or 0}/{replicas} new replicas available"
        if int(status.get("replicas") or 0) > replicas:
            return f"{component}: old replicas still running"
        live = [b for b in heartbeats if b.component == component and b.age_seconds(now_ms) <= LIVE_HEARTBEAT_SECONDS]
        new = [b for b in live if digest_of(b.image_digest) == rollout.to_digest and b.started_ms >= rollout.started_ms]
        if len(new) < len(live):
            return f"{component}: {len(live) - len(new)} pods still report the previous version"
        if len(new) < replicas:
            return f"{component}: {len(new)}/{replicas} pods report {rollout.to_digest[:19]}"
    wanted = set(enabled)
    stray = sorted(
        {
            b.component
            for b in heartbeats
            if b.component not in wanted and b.age_seconds(now_ms) <= LIVE_HEARTBEAT_SECONDS
        }
    )
    if stray:
        # A disabled component's pod still running the previous version would be drift the moment this ends.
        return f"{', '.join(stray)}: disabled, but still heartbeating"
    if "reconciler" in enabled:
        status = parse_reconcile_status(reconcile)
        if status is None or status.time_ms < rollout.started_ms:
            return "reconciler: no reconciliation since the rollout began"
        if not status.matched:
            return f"reconciler: {status.findings} positions differ from the exchange"
    return ""
