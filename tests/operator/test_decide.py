"""decide.py and decide_switches.py: observations in, plans out — no API server, no Redis, no operator process.

Each test builds what gather.py would have read (plain dicts and dataclasses) and checks the plan: what is
applied and in which order, which halts are raised or cleared, what is repaired or pruned, the Events, and
the status the plan leaves behind.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from quantum_trader.contracts.heartbeat import HeartbeatRecord
from quantum_trader.contracts.policy import PolicySpec
from quantum_trader_operator import decide, decide_switches, validation
from quantum_trader_operator import naming as n
from quantum_trader_operator.desired import EXECUTORS, OperatorSettings, rollout_order
from quantum_trader_operator.observation import (
    Children,
    ControlView,
    InstanceReadings,
    PolicyObservation,
    RedisView,
    ReferencedPolicy,
    SwitchObservation,
)
from quantum_trader_operator.rollout import RolloutState
from tests.conftest import REPO

T0 = 1_800_000_000_000
UID = "7f3c-policy"
TIMINGS = decide.Timings(drift_settle_seconds=10, reapply_min_seconds=5)
RELEASED = {"state": "released", "scope": "", "flatten": "0", "generation": "3", "engaged_by": ""}


def body(**spec: Any) -> dict[str, Any]:
    manifest = yaml.safe_load((REPO / "examples" / "policy.yaml").read_text())
    manifest["metadata"].update(namespace="trading", uid=UID, generation=2)
    manifest["spec"].update(spec)
    return manifest


def rendered(**spec: Any) -> decide.RenderedPolicy:
    policy = body(**spec)
    check = validation.check_policy(policy)
    assert check.spec is not None and check.problems == [], check.problems
    return decide.render(policy, check.spec, OperatorSettings(redis_storage=None))


def applied(policy: decide.RenderedPolicy) -> Children:
    """The children as the API server returns them once the desired objects were applied and rolled out."""
    found = Children()
    for manifest in copy.deepcopy(policy.desired):
        manifest["metadata"]["generation"] = 1
        manifest["metadata"]["managedFields"] = [{"manager": n.MANAGED_BY, "operation": "Apply", "fieldsV1": {}}]
        if manifest["kind"] == "Deployment":
            replicas = manifest["spec"]["replicas"]
            manifest["status"] = {
                "observedGeneration": 1,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
            }
            found.deployments.append(manifest)
        else:
            found.others.append(manifest)
    return found


def beats(policy: decide.RenderedPolicy, *, digest: str | None = None, started: int = T0 + 1_000) -> list:
    found = []
    for component in policy.enabled:
        for index in range(policy.spec.components[component].replicas if component in policy.spec.components else 1):
            found.append(
                HeartbeatRecord(
                    component,
                    f"{component}-{index}",
                    T0 + 50_000,
                    started,
                    "running",
                    "v1",
                    digest or policy.digest,
                    "",
                    3,
                    {},
                    {},
                )
            )
    return found


def readings(heartbeats: list, *, control: dict | None = None, halts: dict | None = None) -> InstanceReadings:
    matched = {"matched": "1", "time": str(T0 + 40_000), "runs": "4", "findings": "0"}
    return InstanceReadings(
        heartbeats, [], {}, {}, 0, matched, dict(RELEASED if control is None else control), dict(halts or {}), {}
    )


def observe(
    children: Children,
    redis: RedisView | None = None,
    *,
    policy: decide.RenderedPolicy | None = None,
    now: int = T0 + 60_000,
) -> PolicyObservation:
    return PolicyObservation(
        (policy or rendered()).body, children, redis or RedisView("redis://r:6379/0", readings([])), True, now
    )


def conditions(plan: decide.PolicyPlan) -> dict[str, dict[str, Any]]:
    assert plan.status is not None
    return {c["type"]: c for c in plan.status["conditions"]}


# ------------------------------------------------------------------ rollouts


def test_a_first_creation_halts_entries_before_anything_and_applies_the_executor_path_last() -> None:
    policy = rendered()
    redis = RedisView("redis://r:6379/0", readings([], control={}))
    plan = decide.policy(policy, observe(Children(), redis, policy=policy), decide.PolicyMemory(), TIMINGS, apply=True)
    assert plan.initialize_control, "control is missing: components would fail closed forever"
    assert plan.start_rollout is not None and plan.start_rollout.to_digest == policy.digest
    assert plan.start_rollout.from_digests == frozenset()
    assert n.ROLLOUT_HALT in plan.raise_halts
    assert [o["metadata"]["name"] for o in plan.apply] == [o["metadata"]["name"] for o in rollout_order(policy.desired)]
    components = [o["metadata"]["labels"].get(n.LABEL_COMPONENT) for o in plan.apply if o["kind"] == "Deployment"]
    assert components[-len(EXECUTORS) :] == list(reversed(EXECUTORS))
    assert not plan.drain_executors  # nothing in flight: no executor runs yet
    assert plan.create_paper_secret is False  # observed present
    assert [e.reason for e in plan.events] == ["RolloutStarted"]
    # README: Progressing, with the rollout's own condition; no KillSwitch exists, so none is engaged.
    assert plan.status is not None and plan.status["health"] == "Progressing"
    assert conditions(plan)["RolloutInProgress"]["status"] == "True"
    assert conditions(plan)["KillSwitchEngaged"]["status"] == "False"


def test_without_redis_a_rollout_holds_deployments_back_and_says_why() -> None:
    policy = rendered()
    redis = RedisView("redis://r:6379/0", error="Connection refused")
    plan = decide.policy(policy, observe(Children(), redis, policy=policy), decide.PolicyMemory(), TIMINGS, apply=True)
    assert plan.apply and not any(o["kind"] == "Deployment" for o in plan.apply)
    assert {o["kind"] for o in plan.apply} == {"ConfigMap", "Service", "StatefulSet"}
    assert plan.raise_halts == {} and plan.start_rollout is None and plan.memory.held_back
    assert plan.status is not None and plan.status["health"] == "Halted"
    assert "rollout waits for Redis at redis://r:6379/0" in plan.status["message"]
    assert conditions(plan)["KillSwitchEngaged"]["reason"] == "ControlUnavailable"


def test_a_new_digest_rolls_out_from_the_running_one_and_drains_the_executors() -> None:
    old = rendered()
    new = rendered(image=old.spec.image.split("@")[0] + "@sha256:" + "e" * 64)  # type: ignore[union-attr]
    children = applied(old)
    observed = observe(children, RedisView("r", readings(beats(old))), policy=new)
    plan = decide.policy(new, observed, decide.PolicyMemory(), TIMINGS, apply=True)
    assert plan.start_rollout is not None and plan.start_rollout.from_digests == {old.digest}
    assert plan.drain_executors
    # The old template differs from the new one because this plan applies it: that is the change, not drift.
    assert plan.status is not None and plan.status["drift"] == "none"
    assert n.DRIFT_HALT not in plan.raise_halts


def test_a_complete_rollout_releases_the_halt_and_the_policy_is_healthy() -> None:
    policy = rendered()
    state = RolloutState(policy.digest, policy.config_hash, frozenset(), T0)
    redis = RedisView("r", readings(beats(policy), halts={n.ROLLOUT_HALT: "rolling out"}), state)
    plan = decide.policy(
        policy, observe(applied(policy), redis, policy=policy), decide.PolicyMemory(), TIMINGS, apply=False
    )
    assert plan.apply == [] and plan.clear_halts == [n.ROLLOUT_HALT] and plan.clear_rollout
    assert [e.reason for e in plan.events] == ["RolloutComplete"]
    assert plan.status is not None and plan.status["health"] == "Healthy", plan.status["message"]
    assert conditions(plan)["RolloutInProgress"]["status"] == "False"


def test_an_unfinished_rollout_waits_and_reports_what_for() -> None:
    policy = rendered()
    state = RolloutState(policy.digest, policy.config_hash, frozenset({"sha256:" + "a" * 64}), T0)
    old_pods = beats(policy, started=T0 - 5_000)  # processes from before the rollout began
    redis = RedisView("r", readings(old_pods, halts={n.ROLLOUT_HALT: "rolling out"}), state)
    plan = decide.policy(
        policy, observe(applied(policy), redis, policy=policy), decide.PolicyMemory(), TIMINGS, apply=False
    )
    assert plan.clear_halts == [] and not plan.clear_rollout
    assert plan.status is not None and plan.status["health"] == "Progressing"
    assert "previous version" in plan.status["message"]


# ------------------------------------------------------------------ drift


def with_foreign_env(children: Children, name: str) -> Children:
    children = copy.deepcopy(children)
    deployment = next(d for d in children.deployments if d["metadata"]["name"] == name)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "EXTRA", "value": "1"})
    entry = {
        "manager": "kubectl-set",
        "operation": "Update",
        "time": "2026-12-03T10:00:00Z",
        "fieldsV1": {
            "f:spec": {
                "f:template": {
                    "f:spec": {
                        "f:containers": {
                            f'k:{{"name":"{container["name"]}"}}': {"f:env": {'k:{"name":"EXTRA"}': {".": {}}}}
                        }
                    }
                }
            }
        },
    }
    deployment["metadata"]["managedFields"].append(entry)
    return children


def test_a_foreign_field_halts_entries_and_plans_the_reapply_and_the_repair_of_that_child() -> None:
    policy = rendered()
    governor = n.deployment_name(policy.name, "governor")
    children = with_foreign_env(applied(policy), governor)
    plan = decide.policy(
        policy,
        observe(children, RedisView("r", readings(beats(policy))), policy=policy),
        decide.PolicyMemory(),
        TIMINGS,
        apply=False,
    )
    assert n.DRIFT_HALT in plan.raise_halts
    assert plan.apply and [o["metadata"]["name"] for o in plan.repair] == [governor]
    assert [e.reason for e in plan.events] == ["DriftDetected"]
    assert (
        "env[name=EXTRA]" in plan.events[0].message
        and "kubectl-set (Update at 2026-12-03T10:00:00Z)" in plan.events[0].message
    )
    assert plan.status is not None and plan.status["drift"] == "fieldManager:governor"
    assert conditions(plan)["ImageConsistent"]["status"] == "False"
    assert plan.status["health"] == "Halted"  # the drift halt is a halt: its own reason, not the rollout's
    assert conditions(plan)["KillSwitchEngaged"]["reason"] == "AutomaticHalt"

    # The same drift again within QT_OPERATOR_REAPPLY_SECONDS: no second apply, no second Event.
    later = observe(children, RedisView("r", readings(beats(policy))), policy=policy, now=T0 + 62_000)
    again = decide.policy(policy, later, plan.memory, TIMINGS, apply=False)
    assert again.apply == [] and again.events == []


def test_the_drift_halt_is_released_only_after_the_settle_time() -> None:
    policy = rendered()
    halted = RedisView("r", readings(beats(policy), halts={n.DRIFT_HALT: "drift"}))
    memory = decide.PolicyMemory(drift_messages="x", last_drift_ms=T0 + 55_000)
    soon = decide.policy(policy, observe(applied(policy), halted, policy=policy), memory, TIMINGS, apply=False)
    assert soon.clear_halts == [] and soon.events == []
    later = decide.policy(
        policy, observe(applied(policy), halted, policy=policy, now=T0 + 66_000), memory, TIMINGS, apply=False
    )
    assert later.clear_halts == [n.DRIFT_HALT] and [e.reason for e in later.events] == ["DriftResolved"]
    assert later.status is not None and later.status["health"] == "Healthy"


def test_a_child_no_longer_rendered_is_deleted_and_is_not_drift() -> None:
    policy = rendered(components={"heat-gate": {"enabled": False}})
    children = applied(rendered())
    plan = decide.policy(
        policy,
        observe(children, RedisView("r", readings(beats(policy))), policy=policy),
        decide.PolicyMemory(),
        TIMINGS,
        apply=False,
    )
    assert ("apps/v1", "Deployment", n.deployment_name(policy.name, "heat-gate")) in plan.delete
    assert plan.status is not None and plan.status["drift"] == "none"


def test_an_invalid_spec_is_announced_once_and_touches_nothing() -> None:
    policy = body(image=None)
    check = validation.check_policy(policy)
    assert check.problems == ["spec.image is required: <repository>@sha256:<64 hex>"]
    first = decide.invalid_policy(policy, check, decide.PolicyMemory(), announce=True, now_ms=T0)
    assert [e.reason for e in first.events] == ["InvalidSpec"]
    assert first.status is not None and first.status["health"] == "Invalid"
    assert [c["type"] for c in first.status["conditions"]] == ["Ready", "WiringValid"]
    again = decide.invalid_policy(policy, check, first.memory, announce=True, now_ms=T0)
    assert again.events == [] and again.apply == []


def test_a_spec_that_does_not_parse_is_invalid_without_a_wiring_verdict() -> None:
    check = validation.check_policy(body(mode="sideways"))
    assert check.spec is None and check.problems
    plan = decide.invalid_policy(body(), check, decide.PolicyMemory(), announce=False, now_ms=T0)
    assert plan.status is not None and [c["type"] for c in plan.status["conditions"]] == ["Ready"]


def test_a_check_parses_and_validates_the_spec_once(monkeypatch) -> None:
    """Validation, rendering (manifests, ConfigMap data, hash) and the plan share one parsed spec: the pydantic
    validation of a policy is the costliest step of a check, and the timers run it for every policy."""
    parses: list[str] = []
    original = PolicySpec.model_validate_json.__func__

    def counted(cls, *args: Any, **kwargs: Any) -> PolicySpec:
        parses.append("spec")
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(PolicySpec, "model_validate_json", classmethod(counted))
    policy = rendered()
    decide.policy(policy, observe(applied(policy), policy=policy), decide.PolicyMemory(), TIMINGS, apply=True)
    assert parses == ["spec"]


# ------------------------------------------------------------------ KillSwitch and ExitRollout


def switch_body(name: str = "halt", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "trading",
            "generation": 1,
            "creationTimestamp": "2026-12-01T00:00:00Z",
        },
        "spec": {"policyRef": {"name": "paper-demo"}, "scope": "entries", "reason": "maintenance", **spec},
    }


def switch_observed(
    body_: dict, control: dict, *, others: list | None = None, acks: dict | None = None
) -> SwitchObservation:
    policy = rendered()
    heartbeats = [HeartbeatRecord("governor", "g-0", T0, T0, "running", "v1", policy.digest, "", 0, {}, {})]
    return SwitchObservation(
        body_,
        ReferencedPolicy(policy.spec.model_copy(update={"components": {}}), policy.keys, "redis://r"),
        ControlView(control, {}, heartbeats, acks or {}),
        "",
        T0 + 1_000,
        others or [],
    )


def test_an_engaged_kill_switch_writes_control_and_waits_for_acks() -> None:
    observed = switch_observed(switch_body(), dict(RELEASED))
    plan = decide_switches.kill_switch(observed)
    assert plan.write == decide_switches.ControlWrite(
        True, "maintenance", decide_switches.Scope.ENTRIES, False, "person:trading/halt"
    )
    status = decide_switches.kill_switch_status(observed, plan, 4)
    assert (status["generation"], status["state"], status["acked"]) == (4, "Pending", "0/1")
    assert status["message"] == "waiting for acks of governor/g-0"
    acked = switch_observed(
        switch_body(), {**RELEASED, **plan_fields(plan), "generation": "4"}, acks={"governor/g-0": 4}
    )
    steady = decide_switches.kill_switch(acked)
    assert steady.write is None  # control already says what the switch says
    done = decide_switches.kill_switch_status(acked, steady, None)
    assert (done["state"], done["acked"]) == ("Engaged", "1/1")


def plan_fields(plan: decide_switches.KillSwitchPlan) -> dict[str, str]:
    assert plan.write is not None
    return {
        "state": "engaged",
        "scope": plan.write.scope.value,
        "flatten": "1" if plan.write.flatten else "0",
        "reason": plan.write.reason,
        "engaged_by": plan.write.engaged_by,
        "updated_at": str(T0),
    }


def test_the_strongest_scope_is_in_force_and_a_persons_qt_killswitch_is_never_released() -> None:
    stronger = switch_body("all-stop", scope="all")
    observed = switch_observed(switch_body(), dict(RELEASED), others=[stronger])
    plan = decide_switches.kill_switch(observed)
    assert plan.write is not None and plan.write.scope is decide_switches.Scope.ALL and plan.in_force == "all-stop"
    persons = {**RELEASED, "state": "engaged", "scope": "all", "engaged_by": "person", "reason": "qt killswitch"}
    released_switch = decide_switches.kill_switch(switch_observed(switch_body(engaged=False), persons))
    assert released_switch.write is None
    ours = {**persons, "engaged_by": "person:trading/halt"}
    release = decide_switches.kill_switch(switch_observed(switch_body(engaged=False), ours))
    assert release.write is not None and not release.write.engaged


def test_an_exit_rollout_is_forced_to_shadow_by_a_kill_switch_of_scope_exits() -> None:
    rollout = {
        "metadata": {"name": "exits", "namespace": "trading", "generation": 3},
        "spec": {"policyRef": {"name": "paper-demo"}, "mode": "LIVE", "percent": 100},
    }
    engaged = {**RELEASED, "state": "engaged", "scope": "exits", "engaged_by": "person", "reason": "r"}
    plan = decide_switches.exit_rollout(switch_observed(rollout, engaged))
    assert plan.status["effectiveMode"] == "SHADOW" and plan.status["liveSymbols"] == []
    assert plan.status["message"].startswith("forced SHADOW: kill switch engaged scope=exits")
    assert plan.rollout_hash is not None  # the hash still says what the rollout wants once released
    entries = decide_switches.exit_rollout(switch_observed(rollout, {**engaged, "scope": "entries"}))
    assert entries.status["effectiveMode"] == "LIVE" and entries.status["message"] == ""


# ------------------------------------------------------------------ child events


def test_a_child_event_names_the_policy_of_an_object_that_is_its_child_and_nothing_else() -> None:
    policy = rendered()
    (governor,) = [o for o in policy.desired if o["kind"] == "Deployment" and "governor" in o["metadata"]["name"]]
    assert decide.policy_of_child(governor) == ("trading", policy.name)
    pod = {"kind": "Pod", "metadata": {"namespace": "trading", "labels": governor["metadata"]["labels"]}}
    assert decide.policy_of_child(pod) == ("trading", policy.name)  # a Pod's owner is a ReplicaSet
    someone_elses = copy.deepcopy(governor)
    someone_elses["metadata"]["ownerReferences"] = [{"kind": "Application", "name": "argo", "uid": "x"}]
    assert decide.policy_of_child(someone_elses) is None
    unmanaged = copy.deepcopy(governor)
    del unmanaged["metadata"]["labels"][n.LABEL_MANAGED_BY]
    assert decide.policy_of_child(unmanaged) is None
    assert decide.policy_of_child({"kind": "Pod", "metadata": {"namespace": "trading"}}) is None
