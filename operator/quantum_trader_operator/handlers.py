"""The kopf handlers: when the operator reconciles what (DESIGN §5). Each one is gather → decide → act.

``gather.py`` reads (children, pods, the instance's Redis), ``decide.py``/``decide_switches.py`` turn that into
a plan without a server, ``act.py`` carries the plan out. What is here is kopf registration, the per-policy
memory and lock, and turning failures into status: handlers never raise for a bad spec or an unreachable
Redis — they say so in status and return, and the timers (the level-based backstop) try again. Status is
patched field by field (``patch.status[...]``); handler return values are always None, so nothing leaks into
the status schema as ``status.<handler>``.

Every handler is synchronous: kopf runs it in its thread pool, and the kubernetes client and redis-py are
synchronous.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import kopf
import redis

from quantum_trader_operator import act, decide, decide_switches, gather, validation
from quantum_trader_operator import kube_view as kv
from quantum_trader_operator import naming as n
from quantum_trader_operator.desired import OperatorSettings
from quantum_trader_operator.metrics import RECONCILE_SECONDS, metrics_port, start_metrics_server
from quantum_trader_operator.models import (
    EXIT_ROLLOUT,
    KILL_SWITCH,
    TRADING_POLICY,
    exit_rollout_spec,
    kill_switch_spec,
)
from quantum_trader_operator.redis_io import RedisPool
from quantum_trader_operator.runtime_io import Kube, KubeError, load_kube_config

log = logging.getLogger("quantum_trader_operator")


def _env_seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


# Intervals are read once, when kopf registers the handlers; tests shorten them through the environment.
POLICY_TIMER_SECONDS = _env_seconds("QT_OPERATOR_TIMER_SECONDS", 15)
KILL_SWITCH_TIMER_SECONDS = _env_seconds("QT_OPERATOR_KILLSWITCH_TIMER_SECONDS", 5)
EXIT_ROLLOUT_TIMER_SECONDS = _env_seconds("QT_OPERATOR_EXITROLLOUT_TIMER_SECONDS", 30)
DRAIN_SECONDS = _env_seconds("QT_OPERATOR_DRAIN_SECONDS", 15)
"""how long a rollout waits for the executor path's in-flight messages before updating it anyway"""
TIMINGS = decide.Timings(
    drift_settle_seconds=_env_seconds("QT_OPERATOR_DRIFT_SETTLE_SECONDS", 10),
    reapply_min_seconds=_env_seconds("QT_OPERATOR_REAPPLY_SECONDS", 5),
)
DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"

TP = (n.GROUP, n.VERSION, TRADING_POLICY.plural)
XR = (n.GROUP, n.VERSION, EXIT_ROLLOUT.plural)
KS = (n.GROUP, n.VERSION, KILL_SWITCH.plural)
OURS = gather.OURS
PRUNED_KINDS = gather.CHILD_KINDS


# ------------------------------------------------------------------ process-wide resources


@dataclass
class PolicyState:
    """One policy's memory and lock in this process. Deployment and Pod events run in other handlers than the
    policy's own, so this lives in a registry keyed by policy."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    check_requested: bool = False
    memory: decide.PolicyMemory = field(default_factory=decide.PolicyMemory)


class Runtime:
    def __init__(self) -> None:
        self.sources = gather.Sources(Kube(), RedisPool(), os.environ)
        self.settings = OperatorSettings.from_env(os.environ)
        self._states: dict[tuple[str, str], PolicyState] = {}
        self._states_lock = threading.Lock()

    def state(self, namespace: str, name: str) -> PolicyState:
        with self._states_lock:
            return self._states.setdefault((namespace, name), PolicyState())

    def forget(self, namespace: str, name: str) -> None:
        with self._states_lock:
            self._states.pop((namespace, name), None)

    @property
    def policies(self) -> int:
        return len(self._states)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            load_kube_config()
            _runtime = Runtime()
        return _runtime


@contextmanager
def _timed(kind: str, handler: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        RECONCILE_SECONDS.labels(kind, handler).observe(time.perf_counter() - started)


def _guarded(kind: str, body: Mapping[str, Any], fn: Callable[[], dict[str, Any] | None], **failed: Any) -> dict:
    """``fn()``'s status, or the failure as status: raising would make kopf retry the handler (a storm for a
    permanent problem such as a 422); the timers are the retry. ``failed``: extra status fields on failure."""
    where = f"{kind} {kv.namespace(body)}/{kv.name(body)}"
    try:
        return fn() or {}
    except KubeError as error:
        log.error("%s: API request failed: %s", where, error)
        return {**failed, "message": f"API request failed: {error}"}
    except redis.RedisError as error:
        log.error("%s: Redis failed: %s", where, error)
        return {**failed, "message": f"redis unreachable: {error}"}
    except Exception as error:
        log.exception("%s: failed", where)
        return {**failed, "message": f"operator error: {type(error).__name__}: {error}"}


# ------------------------------------------------------------------ startup


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Watches end server-side after a minute and are re-established: a silently dead connection (a load
    # balancer dropping it) costs at most that long; the client timeout is the backstop if the server hangs.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    # Only our explicit events (drift, kill switch, invalid spec) reach Kubernetes; kopf's own log lines don't.
    settings.posting.level = logging.WARNING
    # One replica with strategy Recreate (DESIGN §5): peering is not leader election, so do without it.
    settings.peering.standalone = True
    # kopf's bookkeeping in annotations only: status stays the documented schema.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.quantumtrader.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.quantumtrader.io")
    settings.persistence.finalizer = "trading.quantumtrader.io/operator"
    settings.execution.max_workers = 16
    # A deletion that meets a timer mid-run (a KillSwitch's every few seconds) waits for it to stop before the
    # delete handler and the finalizer. kopf's default gives a timer ten event-loop cycles and then polls every
    # 60 s; our timers are synchronous (a thread finishing its Redis and API calls), so wait for that instead.
    settings.background.instant_exit_timeout = 10.0
    settings.background.cancellation_polling = 5.0
    runtime()
    port = metrics_port(os.environ)
    try:
        if start_metrics_server(port):
            log.info("metrics on :%d/metrics", port)
    except OSError as error:  # a port in use costs the metrics, not the operator
        log.error("metrics endpoint not started on :%d: %s", port, error)


@kopf.on.probe(id="policies")
def probe_policies(**_: Any) -> int:
    """Liveness detail: how many policies this process tracks."""
    return runtime().policies


# ------------------------------------------------------------------ TradingPolicy


def check_policy(body: Mapping[str, Any], *, apply: bool, announce: bool) -> dict[str, Any] | None:
    """gather → decide → act for one TradingPolicy; returns the status to write (None: write nothing).

    ``apply``: apply every desired object (create/update/resume); otherwise only what is missing or mid-rollout
    (timers and child events). ``announce``: post an Event for an invalid spec (the spec changed)."""
    if kv.terminating(body):
        return None
    rt = runtime()
    state = rt.state(kv.namespace(body), kv.name(body))
    check = validation.check_policy(body)  # the one parse and validation of the spec in this check
    if check.problems or check.spec is None:
        plan = decide.invalid_policy(body, check, state.memory, announce=announce, now_ms=gather.now_ms())
        act.invalid_policy(body, plan)
    else:
        rendered = decide.render(body, check.spec, rt.settings)
        observed, client = gather.policy(rt.sources, body, rendered.spec, rendered.keys)
        plan = decide.policy(rendered, observed, state.memory, TIMINGS, apply=apply)
        act.policy(rt.sources, client, rendered, plan, drain_seconds=DRAIN_SECONDS)
    state.memory = plan.memory
    return plan.status


def _guarded_check(body: Mapping[str, Any], *, apply: bool) -> dict[str, Any] | None:
    return (
        _guarded("TradingPolicy", body, lambda: check_policy(body, apply=apply, announce=apply), health="Degraded")
        or None
    )


def _run_check(body: Mapping[str, Any], patch: kopf.Patch, *, apply: bool, handler: str) -> None:
    rt = runtime()
    namespace, name = kv.namespace(body), kv.name(body)
    state = rt.state(namespace, name)
    with _timed("TradingPolicy", handler), state.lock:
        state.check_requested = False
        status = _guarded_check(body, apply=apply)
    for key, value in (status or {}).items():
        patch.status[key] = value
    if state.check_requested:
        _coalesced_check(rt, namespace, name)  # child events that arrived while this check held the lock


@kopf.on.resume(*TP)
@kopf.on.create(*TP)
@kopf.on.update(*TP)
def reconcile_policy(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Validate, render and apply (safe rollout), then write status."""
    _run_check(body, patch, apply=True, handler="reconcile")


@kopf.timer(*TP, interval=POLICY_TIMER_SECONDS, initial_delay=min(POLICY_TIMER_SECONDS, 5.0))
def policy_timer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """The level-based backstop: missing children, drift, rollout completion, group clean-up, health."""
    _run_check(body, patch, apply=False, handler="timer")


@kopf.on.delete(*TP)
def delete_policy(body: kopf.Body, **_: Any) -> None:
    """Children go with the policy (ownerReferences); its control keys leave its Redis (best effort), and this
    process forgets it."""
    with _timed("TradingPolicy", "delete"):
        act.forget_policy(runtime().sources, body)
    runtime().forget(kv.namespace(body), kv.name(body))


# ------------------------------------------------------------------ Deployments and Pods: drift as it happens


def _on_child_event(event: Mapping[str, Any]) -> None:
    found = decide.policy_of_child(event.get("object") or {})
    if found is None:
        return
    namespace, policy_name = found
    rt = runtime()
    rt.state(namespace, policy_name).check_requested = True
    _coalesced_check(rt, namespace, policy_name)


def _coalesced_check(rt: Runtime, namespace: str, name: str) -> None:
    """Run the check unless one is running; the one running sees ``check_requested`` and runs again.
    A rollout is dozens of child events a second: one check after the burst sees all of them."""
    state = rt.state(namespace, name)
    while state.check_requested:
        if not state.lock.acquire(blocking=False):
            return
        try:
            state.check_requested = False
            with _timed("TradingPolicy", "child-event"):
                _check_from_event(rt, namespace, name)
        finally:
            state.lock.release()


def _check_from_event(rt: Runtime, namespace: str, name: str) -> None:
    try:
        body = rt.sources.kube.get(n.API_VERSION, "TradingPolicy", namespace, name)
        if body is None:
            return
        status = _guarded_check(body, apply=False)
        if status:
            rt.sources.kube.patch_status(n.API_VERSION, "TradingPolicy", namespace, name, status)
    except KubeError as error:
        log.warning("%s/%s: check after a child event failed: %s", namespace, name, error)


@kopf.on.event("apps", "v1", "deployments", labels=OURS)
def deployment_event(event: kopf.RawEvent, **_: Any) -> None:
    _on_child_event(event)


@kopf.on.event("", "v1", "pods", labels=OURS)
def pod_event(event: kopf.RawEvent, **_: Any) -> None:
    _on_child_event(event)


# ------------------------------------------------------------------ ExitRollout


def _policy_ref(body: Mapping[str, Any], spec_of: Callable[[Mapping[str, Any]], Any]) -> str | None:
    try:
        return str(spec_of(body).policy_ref.name)
    except ValueError:
        return None  # decide reports the invalid spec


def _exit_rollout(body: Mapping[str, Any], *, deleting: bool = False) -> dict[str, Any]:
    observed, client = gather.switch(runtime().sources, body, _policy_ref(body, exit_rollout_spec), kill_switch=False)
    plan = decide_switches.exit_rollout(observed, deleting=deleting)
    act.exit_rollout(client, observed.policy.keys, f"{kv.namespace(body)}/{kv.name(body)}", plan)
    return plan.status


def _patch_status(patch: kopf.Patch, status: Mapping[str, Any]) -> None:
    for key, value in status.items():
        patch.status[key] = value


@kopf.on.resume(*XR)
@kopf.on.create(*XR)
@kopf.on.update(*XR)
def reconcile_exit_rollout(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    with _timed("ExitRollout", "reconcile"):
        _patch_status(patch, _guarded("ExitRollout", body, lambda: _exit_rollout(body)))


@kopf.timer(*XR, interval=EXIT_ROLLOUT_TIMER_SECONDS, initial_delay=min(EXIT_ROLLOUT_TIMER_SECONDS, 5.0))
def exit_rollout_timer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Re-asserts the hash (a Redis restarted empty) and follows the policy's symbols and the kill switch."""
    with _timed("ExitRollout", "timer"):
        _patch_status(patch, _guarded("ExitRollout", body, lambda: _exit_rollout(body)))


@kopf.on.delete(*XR)
def delete_exit_rollout(body: kopf.Body, **_: Any) -> None:
    """Deleting the rollout hands exit-brain back to the policy's own exits settings."""
    with _timed("ExitRollout", "delete"):
        _guarded("ExitRollout", body, lambda: _exit_rollout(body, deleting=True))


# ------------------------------------------------------------------ KillSwitch


def _kill_switch(body: Mapping[str, Any], *, deleting: bool = False) -> dict[str, Any]:
    observed, client = gather.switch(runtime().sources, body, _policy_ref(body, kill_switch_spec), kill_switch=True)
    plan = decide_switches.kill_switch(observed, deleting=deleting)
    if plan.retry:
        raise kopf.TemporaryError(plan.retry, delay=10)
    generation = act.kill_switch(client, observed.policy.keys, body, plan)
    if deleting:
        return {}
    status = decide_switches.kill_switch_status(observed, plan, generation)
    act.observe_ack_latency(body.get("status") or {}, status)
    return status


@kopf.on.resume(*KS)
@kopf.on.create(*KS)
@kopf.on.update(*KS)
def reconcile_kill_switch(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    with _timed("KillSwitch", "reconcile"):
        _patch_status(patch, _guarded("KillSwitch", body, lambda: _kill_switch(body), state="Pending"))


@kopf.timer(*KS, interval=KILL_SWITCH_TIMER_SECONDS, initial_delay=min(KILL_SWITCH_TIMER_SECONDS, 1.0))
def kill_switch_timer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Acks, ack latency, expiry, and re-asserting ``control`` (a Redis restarted empty is fail-closed, not this)."""
    with _timed("KillSwitch", "timer"):
        _patch_status(patch, _guarded("KillSwitch", body, lambda: _kill_switch(body), state="Pending"))


@kopf.on.delete(*KS, retries=30, backoff=10)
def delete_kill_switch(body: kopf.Body, **_: Any) -> None:
    """Deleting an engaged switch releases it (unless another one stays in force). Redis being unreachable
    retries (bounded): the object goes only once the release is written or retries are exhausted."""
    with _timed("KillSwitch", "delete"):
        try:
            _kill_switch(body, deleting=True)
        except redis.RedisError as error:
            raise kopf.TemporaryError(f"redis unreachable: {error}", delay=10) from error


# ------------------------------------------------------------------ running


def run(
    *,
    namespaces: Sequence[str] = (),
    clusterwide: bool = False,
    liveness: str | None = DEFAULT_LIVENESS,
    verbose: bool = False,
) -> None:
    """Run the operator in this process until SIGINT/SIGTERM: one replica, no peering (DESIGN §5)."""
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON)
    kopf.run(
        standalone=True,
        clusterwide=clusterwide and not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness or None,
    )
