"""decide, for KillSwitches and ExitRollouts (pure): which switch is in force, what ``control`` must say, the
``rollout`` hash exit-brain reads, and both statuses.

What a scope stops and which of two switches is stronger is ``contracts.control`` (``Scope.rank``,
``Scope.shadows_advanced_exits``): the one kill-switch model the governor and the components use too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from quantum_trader.contracts.control import ControlState, Scope, parse_control
from quantum_trader.contracts.heartbeat import HeartbeatRecord
from quantum_trader_operator import kube_view as kv
from quantum_trader_operator.config import exit_rollout_status, rollout_config
from quantum_trader_operator.decide import RELEASED_CONTROL, Event
from quantum_trader_operator.models import KillSwitchSpec, ResourceError, exit_rollout_spec, kill_switch_spec
from quantum_trader_operator.observation import SwitchObservation
from quantum_trader_operator.rollout import LIVE_HEARTBEAT_SECONDS

PERSON_PREFIX = "person:"


def switch_owner(namespace: str, name: str) -> str:
    """``engaged_by`` of a ``control`` a KillSwitch wrote: only those are the operator's to release."""
    return f"{PERSON_PREFIX}{namespace}/{name}"


def expired(spec: KillSwitchSpec, now: datetime) -> bool:
    if spec.expires_at is None:
        return False
    expires = spec.expires_at if spec.expires_at.tzinfo else spec.expires_at.replace(tzinfo=UTC)
    return expires <= now


def effective_switch(
    switches: Sequence[Mapping[str, Any]], policy: str, now: datetime
) -> tuple[str, KillSwitchSpec] | None:
    """The KillSwitch in force for a policy among several: engaged, not expired, not being deleted; the
    strongest scope wins (``Scope.rank``: all > entries > exits), then flatten, then the newest. None: all
    are released."""
    candidates = []
    for body in switches:
        if kv.terminating(body):
            continue
        try:
            spec = kill_switch_spec(body)
        except ResourceError:
            continue
        if spec.policy_ref.name != policy or not spec.engaged or expired(spec, now):
            continue
        rank = (spec.scope.rank, spec.flatten, str(kv.meta(body).get("creationTimestamp") or ""), kv.name(body))
        candidates.append((rank, kv.name(body), spec))
    if not candidates:
        return None
    _, name, spec = max(candidates, key=lambda c: c[0])
    return name, spec


@dataclass(frozen=True, slots=True)
class ControlWrite:
    """A new ``control`` generation (``bus.control.write_control``)."""

    engaged: bool
    reason: str
    scope: Scope = Scope.ENTRIES
    flatten: bool = False
    engaged_by: str = ""


@dataclass
class KillSwitchPlan:
    status: dict[str, Any] | None = None
    """None: decided after act.py wrote ``control`` (:func:`kill_switch_status`)"""
    initialize_control: bool = False
    write: ControlWrite | None = None
    events: list[Event] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    in_force: str = ""
    """the KillSwitch in force, when it is another one"""
    retry: str = ""
    """a deletion that must be retried (its release could not be written)"""


def _matches(control: ControlState, spec: KillSwitchSpec, owner: str) -> bool:
    return (
        control.engaged
        and control.scope is spec.scope
        and control.flatten == spec.flatten
        and control.reason == spec.reason
        and control.engaged_by == owner
    )


def kill_switch(observed: SwitchObservation, *, deleting: bool = False) -> KillSwitchPlan:
    """Write ``control`` for the switch in force (when it says something else), or release what a KillSwitch
    engaged when none is in force — never a ``qt killswitch`` by a person, a fail-closed state, or a halt."""
    body = observed.body
    namespace, name = kv.namespace(body), kv.name(body)
    status: dict[str, Any] = {"observedGeneration": kv.generation(body)}
    try:
        spec = kill_switch_spec(body)
    except ResourceError as error:
        return KillSwitchPlan({**status, "state": "Pending", "message": f"invalid: {error}"})
    if observed.policy.problem:
        return KillSwitchPlan({**status, "state": "Pending", "message": observed.policy.problem})
    if observed.control is None:
        pending = {**status, "state": "Pending", "message": observed.redis_error}
        return KillSwitchPlan(pending, retry=observed.redis_error if deleting else "")
    plan = KillSwitchPlan()
    raw = observed.control.raw
    if not raw:
        plan.initialize_control = True
        raw = dict(RELEASED_CONTROL)
    control = parse_control(raw)
    now = datetime.fromtimestamp(observed.now_ms / 1000, tz=UTC)
    policy = spec.policy_ref.name
    in_force = effective_switch([*observed.others, *([] if deleting else [body])], policy, now)
    if in_force is not None:
        owner_name, owner_spec = in_force
        owner = switch_owner(namespace, owner_name)
        if owner_name != name:
            plan.in_force = owner_name
        if not _matches(control, owner_spec, owner):
            plan.write = ControlWrite(True, owner_spec.reason, owner_spec.scope, owner_spec.flatten, owner)
            plan.warnings.append(f"{namespace}/{policy}: kill switch {owner_name} engaged ({owner_spec.scope.value})")
            plan.events.append(
                Event(
                    "Warning",
                    "KillSwitchEngaged",
                    f"{policy}: scope {owner_spec.scope.value}, reason {owner_spec.reason!r}",
                )
            )
    elif kv.terminating(body) and not deleting:
        pass  # being deleted: the release is the delete handler's, written once (a timer must not race it)
    elif control.engaged and control.engaged_by.startswith(switch_owner(namespace, "")):
        # Only what a KillSwitch engaged is released here: `qt killswitch engage` (engaged_by "person") and a
        # fail-closed state are not ours to release, and the automatic halts are another key altogether.
        why = "expired" if expired(spec, now) and spec.engaged else "deleted" if deleting else "released"
        plan.write = ControlWrite(False, f"kill switch {name} {why}")
        plan.warnings.append(f"{namespace}/{policy}: kill switch {name} {why}")
        plan.events.append(Event("Normal", "KillSwitchReleased", f"{policy}: {why}"))
    return plan


def live_pods(heartbeats: Sequence[HeartbeatRecord], enabled: Sequence[str], now_ms: int) -> list[str]:
    """``<component>/<pod>`` of every live component process: who must ack a kill-switch generation."""
    wanted = set(enabled)
    return sorted(
        f"{b.component}/{b.pod}"
        for b in heartbeats
        if b.component in wanted and b.age_seconds(now_ms) <= LIVE_HEARTBEAT_SECONDS
    )


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kill_switch_status(
    observed: SwitchObservation, plan: KillSwitchPlan, written_generation: int | None
) -> dict[str, Any]:
    """The KillSwitch's status once ``plan`` is carried out: ``written_generation`` is what act.py's write
    returned (None: nothing written)."""
    if plan.status is not None:
        return plan.status
    body = observed.body
    spec = kill_switch_spec(body)
    assert observed.control is not None and observed.policy.spec is not None
    raw = dict(observed.control.raw or RELEASED_CONTROL)
    if plan.write is not None and written_generation is not None:
        raw.update(generation=str(written_generation), updated_at=str(observed.now_ms))
        raw["state"] = "engaged" if plan.write.engaged else "released"
    elif not observed.control.raw:
        raw["updated_at"] = str(observed.now_ms)
    control = parse_control(raw)
    now = datetime.fromtimestamp(observed.now_ms / 1000, tz=UTC)
    old = body.get("status") or {}
    status: dict[str, Any] = {"observedGeneration": kv.generation(body)}
    written_ms = int(raw.get("updated_at") or 0)
    pods = live_pods(observed.control.heartbeats, observed.policy.spec.enabled_components(), observed.now_ms)
    missing = [p for p in pods if observed.control.acks.get(p, 0) < control.generation]
    acked = len(pods) - len(missing)
    status.update(generation=control.generation, acked=f"{acked}/{len(pods)}")
    if written_ms:
        status["engagedAt"] = _rfc3339(written_ms)
    all_acked = bool(pods) and not missing
    if all_acked:
        if old.get("generation") == control.generation and old.get("ackLatencySeconds") is not None:
            status["ackLatencySeconds"] = old["ackLatencySeconds"]
        elif written_ms:
            # First time every live pod acked this generation: the latency is up to now (timer resolution).
            status["ackLatencySeconds"] = round(max(0.0, (observed.now_ms - written_ms) / 1000), 3)
    else:
        status["ackLatencySeconds"] = None
    if spec.engaged and expired(spec, now):
        state, message = "Expired", f"expired at {spec.expires_at}"
    elif not spec.engaged:
        state, message = "Released", ""
    elif plan.in_force:
        state = "Engaged" if all_acked else "Pending"
        message = f"in force through KillSwitch {plan.in_force} (stronger)"
    else:
        state = "Engaged" if all_acked else "Pending"
        waiting = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        message = (
            "" if all_acked else ("no live component to ack yet" if not pods else f"waiting for acks of {waiting}")
        )
    return {**status, "state": state, "message": message}


# ------------------------------------------------------------------ ExitRollout


@dataclass
class ExitRolloutPlan:
    status: dict[str, Any]
    rollout_hash: dict[str, str] | None = None
    """the ``rollout`` hash to write (None: nothing to write)"""


def exit_rollout(observed: SwitchObservation, *, deleting: bool = False) -> ExitRolloutPlan:
    """The ``rollout`` hash (the policy's own ``exits`` once the ExitRollout is deleted) and the status, with
    SHADOW forced while ``control`` shadows advanced exits (KILL > MODE > ROLLOUT)."""
    body = observed.body
    status: dict[str, Any] = {"observedGeneration": kv.generation(body)}
    try:
        spec = exit_rollout_spec(body)
    except ResourceError as error:
        return ExitRolloutPlan({**status, "message": f"invalid: {error}"})
    policy = observed.policy
    if policy.problem or policy.spec is None:
        return ExitRolloutPlan({**status, "message": policy.problem})
    if observed.control is None:
        return ExitRolloutPlan({**status, "message": observed.redis_error})
    fields = rollout_config(policy.spec, None if deleting else spec).to_hash()
    control = parse_control(observed.control.raw or None, observed.control.halts)
    computed = exit_rollout_status(spec, policy.spec.symbols, control=control)
    forced = computed["effectiveMode"] != spec.mode
    message = f"forced SHADOW: kill switch {control.describe()}" if forced else ""
    return ExitRolloutPlan({**status, **computed, "message": message}, fields)
