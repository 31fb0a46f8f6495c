"""act: carry out a plan decide.py made — server-side apply, JSON patches, deletions, Events, Redis writes.

The order is the safety argument, so it is fixed here: ``control`` initialised and the rollout's halt raised
before anything is applied; the executor path's in-flight messages drained before its first manifest; foreign
fields stripped after the forced apply that takes back the operator's own; halts released last. Nothing here
decides; the one wait (the drain) is bounded.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import kopf
import redis

from quantum_trader.bus.control import write_control
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.registry import COMPONENTS
from quantum_trader_operator import kube_view as kv
from quantum_trader_operator import naming as n
from quantum_trader_operator import redis_io
from quantum_trader_operator.decide import Event, PolicyPlan, RenderedPolicy
from quantum_trader_operator.decide_switches import ExitRolloutPlan, KillSwitchPlan
from quantum_trader_operator.desired import EXECUTORS, paper_credentials_secret
from quantum_trader_operator.gather import Sources
from quantum_trader_operator.metrics import DRIFT_DETECTIONS, KILL_SWITCH_ACK_LATENCY
from quantum_trader_operator.models import policy_spec
from quantum_trader_operator.ownership import foreign_fields, removal_patch
from quantum_trader_operator.runtime_io import KubeError

log = logging.getLogger("quantum_trader_operator")


def post_event(body: Mapping[str, Any], event: Event) -> None:
    """A Kubernetes Event on the object; a failure to post one never fails the reconcile."""
    try:
        kopf.event(dict(body), type=event.type, reason=event.reason, message=event.message[:1000])
    except Exception as error:  # events are best effort: the status carries the same facts
        log.warning("event %s not posted: %s", event.reason, error)


def policy(
    sources: Sources,
    client: redis.Redis | None,
    rendered: RenderedPolicy,
    plan: PolicyPlan,
    *,
    drain_seconds: float,
) -> None:
    """Everything the plan says, in the safe order. ``client`` is the one gather.py read the instance's Redis
    with (its password Secret read once per check); decide plans Redis writes only when that read worked.
    Raises ``KubeError`` or ``redis.RedisError`` when a step that must not be skipped fails (the handler
    reports it; the timer is the retry)."""
    where = f"{rendered.namespace}/{rendered.name}"
    keys = rendered.keys
    for line in plan.warnings:
        log.warning("%s", line)
    if client is not None and plan.initialize_control:
        redis_io.ensure_control(client, keys)
    if client is not None and plan.start_rollout is not None:
        # Halt before the first Deployment changes; the state next to it lets a restarted operator finish.
        redis_io.raise_operator_halt(client, keys, n.ROLLOUT_HALT, plan.raise_halts[n.ROLLOUT_HALT])
        redis_io.write_rollout(client, keys, plan.start_rollout)
    if client is not None and n.DRIFT_HALT in plan.raise_halts:
        try:
            redis_io.raise_operator_halt(client, keys, n.DRIFT_HALT, plan.raise_halts[n.DRIFT_HALT])
        except redis.RedisError as error:
            log.warning("%s: drift halt not raised: %s", where, error)
    if plan.create_paper_secret:
        _create_paper_secret(sources, rendered)
    drained = False
    applied: dict[tuple[str, str], Mapping[str, Any]] = {}
    for manifest in plan.apply:
        if plan.drain_executors and not drained and kv.component(manifest) in EXECUTORS and client is not None:
            drained = True
            _drain_executors(client, keys, where, drain_seconds)
        applied[kv.key(manifest)] = sources.kube.apply(manifest)
    for manifest in plan.repair:
        # The apply's answer is the child as it is now, managedFields included: no GET (which the chart's RBAC
        # does not grant for Deployments and ConfigMaps, and which would cost a request per child).
        live = applied.get(kv.key(manifest)) or sources.kube.apply(manifest)
        removed = strip_foreign_fields(sources, manifest, live)
        if removed:
            log.warning("%s: removed fields of other managers: %s", where, "; ".join(removed))
    for api_version, kind, name in plan.delete:
        log.info("%s: deleting %s/%s (no longer desired)", where, kind, name)
        sources.kube.delete(api_version, kind, rendered.namespace, name)
    if client is not None:
        try:
            if plan.clear_rollout:
                redis_io.finish_rollout(client, keys)
            for source in plan.clear_halts:
                if not (plan.clear_rollout and source == n.ROLLOUT_HALT):
                    redis_io.clear_operator_halt(client, keys, source)
            done = redis_io.destroy_groups(client, keys, plan.destroy_groups)
            if done:
                log.info("%s: removed consumer groups of disabled components: %s", where, done)
        except redis.RedisError as error:
            log.warning("%s: halts not released: %s", where, error)
    if plan.drift_detected:
        DRIFT_DETECTIONS.labels(rendered.namespace, rendered.name).inc()
    for event in plan.events:
        post_event(rendered.body, event)


def invalid_policy(body: Mapping[str, Any], plan: PolicyPlan) -> None:
    for line in plan.warnings:
        log.warning("%s", line)
    for event in plan.events:
        post_event(body, event)


REPAIR_ATTEMPTS = 3
"""patches of one child per check: a controller's status write between the apply and the patch changes the
resourceVersion the patch tests (a Deployment's, at every step of the rollout a repair itself may start)"""


def strip_foreign_fields(sources: Sources, manifest: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """Remove from the child (``live``: as the API server last returned it) the fields other field managers own
    that its manifest lacks (ownership.py): a JSON patch guarded by ``live``'s resourceVersion. A child changed
    since (409/422) is read again through the same forced apply, which changes nothing that is already the
    operator's, and patched again, up to :data:`REPAIR_ATTEMPTS` times; after that the next check goes on."""
    api_version, kind = str(manifest["apiVersion"]), str(manifest["kind"])
    namespace, name = kv.namespace(manifest), kv.name(manifest)
    for _ in range(REPAIR_ATTEMPTS):
        found = foreign_fields(live, manifest, n.MANAGED_BY)
        patch = removal_patch(live, found)
        if not patch:
            return []
        try:
            sources.kube.json_patch(api_version, kind, namespace, name, patch)
        except KubeError as error:
            if error.status not in (409, 422):
                raise
            live = sources.kube.apply(manifest)
            continue
        return [f"{kind}/{name} {f.path} (by {f.manager})" for f in found if not f.desired]
    return []


def _create_paper_secret(sources: Sources, rendered: RenderedPolicy) -> None:
    """The paper key pair, created once with random values (never re-rendered: that would rotate it)."""
    secret = paper_credentials_secret(rendered.body, api_key=secrets.token_hex(32), api_secret=secrets.token_hex(32))
    try:
        sources.kube.create(secret)
    except KubeError as error:
        if error.status != 409:  # created meanwhile by another path: fine
            raise


def _drain_executors(client: redis.Redis, keys: Keys, where: str, drain_seconds: float) -> None:
    """Wait (bounded) until the executor path's inputs are consumed and acknowledged, so no plan is in flight
    when governor, apply-layer and position-state are replaced (DESIGN §5 "in-flight plans drained")."""
    pairs = [(stream, component) for component in EXECUTORS for stream in COMPONENTS[component].inputs]
    deadline = time.monotonic() + drain_seconds
    while True:
        try:
            remaining = redis_io.group_drain(client, keys, pairs)
        except redis.RedisError as error:
            log.warning("%s: drain check failed (%s); updating the executor path", where, error)
            return
        if remaining == 0:
            return
        if time.monotonic() >= deadline:
            log.warning(
                "%s: %d messages still in flight on the executor path after %gs; updating it anyway",
                where,
                remaining,
                drain_seconds,
            )
            return
        time.sleep(0.5)


def forget_policy(sources: Sources, body: Mapping[str, Any]) -> None:
    """A deleted policy's ``control``, halts and rollout state leave its Redis (an external Redis outlives the
    policy; a policy created again with the same name starts released). Best effort: a Redis that cannot be
    reached must not keep the policy from being deleted."""
    where = f"{kv.namespace(body)}/{kv.name(body)}"
    try:
        spec = policy_spec(body)
        client = sources.client(body, spec)
        deleted = redis_io.forget_instance(client, Keys(n.instance_id(kv.namespace(body), kv.name(body))))
        log.info("%s: deleted; %d control keys removed from its Redis", where, deleted)
    except (ValueError, KubeError, redis.RedisError) as error:
        log.warning("%s: deleted; its control keys could not be removed: %s", where, error)


# ------------------------------------------------------------------ KillSwitch and ExitRollout


def kill_switch(
    client: redis.Redis | None, keys: Keys | None, body: Mapping[str, Any], plan: KillSwitchPlan
) -> int | None:
    """Initialise and write ``control`` as planned; the generation written (None: nothing written)."""
    for line in plan.warnings:
        log.warning("%s", line)
    generation = None
    if client is not None and keys is not None:
        if plan.initialize_control:
            redis_io.ensure_control(client, keys)
        if plan.write is not None:
            w = plan.write
            generation = write_control(
                client,
                keys,
                engaged=w.engaged,
                scope=w.scope,
                flatten=w.flatten,
                reason=w.reason,
                engaged_by=w.engaged_by or "person",
            )
    for event in plan.events:
        suffix = f", generation {generation}" if generation is not None else ""
        post_event(body, Event(event.type, event.reason, event.message + suffix))
    return generation


def observe_ack_latency(old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    latency = new.get("ackLatencySeconds")
    if latency is not None and (old.get("generation") != new.get("generation") or old.get("ackLatencySeconds") is None):
        KILL_SWITCH_ACK_LATENCY.observe(latency)


def exit_rollout(client: redis.Redis | None, keys: Keys | None, where: str, plan: ExitRolloutPlan) -> None:
    written = client is not None and keys is not None and plan.rollout_hash is not None
    if written and redis_io.write_rollout_hash(client, keys, plan.rollout_hash):
        log.info("%s: rollout hash written: %s", where, plan.rollout_hash)
