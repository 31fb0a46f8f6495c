"""The operator, measured: the real ``qt operator -A`` process against the Kubernetes API emulator of the
integration tests, served over HTTP, and a redis-server of our own.

``python -m bench.operator [--quick] [--timers default|test] [--wait-quiet S] [--output NAME]``

What runs:

- the emulator (``harness/kube_emulator.py``: kmock's ``KubernetesEmulator`` subclassed as
  ``QtEmulator``) on a loopback port, in a thread of this process; the bench reads it in-process (its object
  store, under its lock) and writes to it over HTTP, as ``kubectl`` would;
- ``qt operator -A``, started by ``harness.operator_process.start_operator`` with a kubeconfig for the emulator and
  ``QT_OPERATOR_REDIS_URL_OVERRIDE`` at our redis-server. ``--timers default`` (the default) runs it with the
  operator's production intervals (the tests' short timers are blanked); ``--timers test`` keeps the tests'
  short ones;
- for the kill-switch phase, the 12 components of a paper policy (the 11 trading components and the exchange
  simulator) as real ``qt component`` processes started by the local Supervisor, with instance
  ``<namespace>.<policy>`` on the same Redis: they apply and ack each new ``control`` generation by themselves.

Phases, each policy in a namespace of its own (the emulator ignores label selectors, so policies sharing a
namespace would make every list the operator sends return every policy's objects — an emulator artefact):

1. ``create``: a TradingPolicy (``examples/policy.yaml``, paper mode) created, then the time until every child
   ``desired_objects`` renders for it (12 Deployments, the ConfigMap, 3 Services, the managed Redis
   StatefulSet) exists in the emulator, and until the policy has a status. One policy at a time.
2. ``drift``: the governor Deployment's container image edited to a tag (a merge patch, as ``kubectl set
   image`` does), then the time until the operator's forced re-apply has put the policy's image back, and
   until its ``operator:drift`` entries halt is in Redis. The governor is applied last in rollout order, so
   this is the worst case of a re-apply.
3. ``killswitch``: a KillSwitch toggled ``engaged: true``/``false`` by merge patch. Times from the patch to
   the new ``control`` generation in Redis, to every component's ack of it, and (engage only) to the
   KillSwitch status showing ``acked`` N/N. Redis is timed by keyspace notifications on the ``control`` and
   ``ack`` hashes (the bench's clock when each notification arrives); the status by polling the emulator
   every 10 ms. Before each engage the bench sleeps a random part of the KillSwitch timer interval, so the
   engage falls at a random phase of the timer.
4. ``memory``: the operator's RSS (psutil; its process and any children) at start, after each phase, and once
   ``--memory-policies`` TradingPolicies exist with their children applied and every policy timer has run
   once; then every second for ``--growth-window`` seconds more (two policy-timer rounds; ``--growth-window
   300`` makes it a soak), with the operator's CPU while its policies sit idle. The missing policies are
   created in one burst; how long their children took is reported too.

Timestamps are this process's wall clock (``time.time()``); the emulator is polled every 5 ms (phases 1 and
2), so those figures are up to about 5 ms high. The operator's own handler durations come from its
``qt_operator_reconcile_duration_seconds`` histogram. Before the operator starts, the emulator's own cost per
request (GET, LIST, server-side apply) is measured: every API call the operator makes pays it. kmock's request
log is trimmed while the bench runs (``RequestLogTrimmer``): untrimmed, the emulator slows down with every
request it has served and would be what the phases measure.

Results: tables on stdout and ``bench/results/operator.json`` (``operator-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import kmock
import psutil
import redis
from kubernetes import client as k8s_client
from prometheus_client.parser import text_string_to_metric_families

from bench._util import (
    add_wait_quiet_option,
    machine,
    machine_busy_seconds,
    start_redis,
    summary,
    table,
    wait_for_quiet,
    write_results,
)
from harness import operator_process as support
from harness.kube_emulator import EmulatorThread
from quantum_trader.bus.control import read_acks, read_control
from quantum_trader.bus.heartbeat import read_heartbeats
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import parse_policy
from quantum_trader.local.supervisor import Supervisor
from quantum_trader_operator import naming as n
from quantum_trader_operator.desired import desired_objects, rollout_order
from quantum_trader_operator.naming import DRIFT_HALT, instance_id
from quantum_trader_operator.runtime_io import Kube, object_path

TAGGED = "ghcr.io/quantum-trader/quantum-trader:latest"
POLICY = "paper-demo"
DRIFTED_COMPONENT = "governor"  # last in rollout order: a re-apply reaches it after every other object
KILL_SWITCH = "bench-halt"
TARGET_ACK_P99_MS = 500.0

DEFAULTS = {
    # The operator's own defaults (handlers.py), used when the variable is empty.
    "QT_OPERATOR_TIMER_SECONDS": 15.0,
    "QT_OPERATOR_KILLSWITCH_TIMER_SECONDS": 5.0,
    "QT_OPERATOR_EXITROLLOUT_TIMER_SECONDS": 30.0,
    "QT_OPERATOR_DRIFT_SETTLE_SECONDS": 10.0,
    "QT_OPERATOR_REAPPLY_SECONDS": 5.0,
    "QT_OPERATOR_DRAIN_SECONDS": 15.0,
}

RESOURCES = {
    "Deployment": ("apps", "v1", "deployments"),
    "StatefulSet": ("apps", "v1", "statefulsets"),
    "Service": ("", "v1", "services"),
    "ConfigMap": ("", "v1", "configmaps"),
    "TradingPolicy": (n.GROUP, n.VERSION, "tradingpolicies"),
    "KillSwitch": (n.GROUP, n.VERSION, "killswitches"),
}


class BenchError(RuntimeError):
    pass


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


_RESOURCE_KEYS = {kind: kmock.resource(*parts) for kind, parts in RESOURCES.items()}


def _key(kind: str, namespace: str, name: str) -> tuple[Any, str, str]:
    return (_RESOURCE_KEYS[kind], namespace, name)


def _stored(emulator: Any, key: tuple[Any, str, str]) -> dict[str, Any] | None:
    """The stored object (called on the emulator's loop, under its lock); None when absent or deleted."""
    if key not in emulator.objects:
        return None
    obj = emulator.objects[key]
    return None if obj.deleted else obj.raw


def _raw(emulator: Any, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    return _stored(emulator, _key(kind, namespace, name))


def poll(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}; last: {value!r}")
        time.sleep(interval)


# ------------------------------------------------------------------ the rig


@dataclass
class Rig:
    emulator: EmulatorThread
    kube: Kube
    r: redis.Redis
    redis_url: str
    operator: support.Operator
    env: dict[str, str]
    rss: RssSampler
    policies: list[PolicyTrack] = field(default_factory=list)

    def timer(self, name: str) -> float:
        return float(self.env.get(name) or DEFAULTS[name])

    def call(self, fn: Callable[[Any], Any]) -> Any:
        return self.emulator.call(fn)

    def merge_patch(self, api_version: str, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.kube.request(
            "PATCH",
            object_path(api_version, kind, namespace, name),
            body=body,
            content_type="application/merge-patch+json",
        )

    def check_operator(self) -> None:
        if self.operator.process.poll() is not None:
            code = self.operator.process.returncode
            raise BenchError(f"the operator exited with {code}:\n{self.operator.tail(3000)}")

    def reconcile_metrics(self) -> dict[tuple[str, str], tuple[float, float]]:
        """(kind, handler) -> (count, sum seconds) of the operator's reconcile histogram."""
        out: dict[tuple[str, str], list[float]] = {}
        for family in text_string_to_metric_families(self.operator.scrape()):
            if family.name != "qt_operator_reconcile_duration_seconds":
                continue
            for sample in family.samples:
                key = (sample.labels.get("kind", ""), sample.labels.get("handler", ""))
                if sample.name.endswith("_count"):
                    out.setdefault(key, [0.0, 0.0])[0] = sample.value
                elif sample.name.endswith("_sum"):
                    out.setdefault(key, [0.0, 0.0])[1] = sample.value
        return {k: (v[0], v[1]) for k, v in out.items()}


class RequestLogTrimmer:
    """Keeps kmock's request log short.

    kmock records every request it serves (for test assertions) and matches each new request against its
    reactions by iterating that whole record, so the emulator's cost per request grows with every request
    served: on this machine a GET takes 4.5 ms with nothing recorded and 70 ms after 1,000 requests. An
    operator managing 100 policies sends thousands of requests a minute, so unchecked the emulator, not the
    operator, would be measured. Every 50 ms this drops all but the newest ``KEEP`` requests (under the
    emulator's lock, on its loop). A request is matched right after it takes that lock, and fewer than ``KEEP``
    requests are ever in flight at once (the operator runs 16 handler threads), so no request is dropped
    before it is matched.
    """

    KEEP = 64

    def __init__(self, emulator: EmulatorThread) -> None:
        self.emulator = emulator
        self.trimmed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kmock-trim", daemon=True)

    def _trim(self, emulator: Any) -> int:
        dropped = max(0, len(emulator._requests) - self.KEEP)
        del emulator._requests[:dropped]
        for payload in emulator._payloads:
            recorded = getattr(payload, "_requests", None)
            if isinstance(recorded, list) and len(recorded) > self.KEEP:
                del recorded[: len(recorded) - self.KEEP]
        return dropped

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.trimmed += self.emulator.call(self._trim)
            except Exception:  # the emulator stopping
                return

    def start(self) -> RequestLogTrimmer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


class RssSampler:
    """The operator's RSS (its process and children) every 0.25 s, labelled with the phase."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def now(self) -> int:
        try:
            return sum(p.memory_info().rss for p in [self.process, *self.process.children(recursive=True)])
        except psutil.Error:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            rss = self.now()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


@dataclass
class CpuMeter:
    """CPU seconds of our processes and of the whole machine over a phase."""

    processes: dict[str, psutil.Process]
    started: float = 0.0
    cpu0: dict[str, float] = field(default_factory=dict)
    busy0: float = 0.0

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        try:
            t = process.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def begin(self) -> CpuMeter:
        self.started = time.monotonic()
        self.cpu0 = {name: self._cpu(p) for name, p in self.processes.items()}
        self.busy0 = machine_busy_seconds()
        return self

    def end(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self.started, 1e-9)
        ours = {name: round(self._cpu(p) - self.cpu0.get(name, 0.0), 2) for name, p in self.processes.items()}
        busy = machine_busy_seconds() - self.busy0
        return {
            "wall_s": round(wall, 1),
            "cpu_s": ours,
            "cores_busy_ours": round(sum(ours.values()) / wall, 2),
            "other_programs_cores": round(max(0.0, busy - sum(ours.values())) / wall, 2),
        }


def handler_stats(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Calls and mean duration per operator handler between two scrapes."""
    out = {}
    for key, (count, total) in sorted(after.items()):
        c0, s0 = before.get(key, (0.0, 0.0))
        calls = count - c0
        if calls > 0:
            out[f"{key[0]}/{key[1]}"] = {"calls": int(calls), "mean_ms": round((total - s0) / calls * 1000, 1)}
    return out


# ------------------------------------------------------------------ policies


@dataclass
class PolicyTrack:
    namespace: str
    manifest: dict[str, Any]
    children: list[tuple[Any, str, str]]
    """emulator keys of the desired objects, in the order the operator applies them (rollout_order)"""
    applied: int = 0
    """how many of ``children``, in order, the bench has seen so far"""
    sent: float = 0.0
    first_child: float | None = None
    all_children: float | None = None
    status: float | None = None
    last_edit: float = 0.0

    @property
    def keys(self) -> Keys:
        return Keys(instance_id(self.namespace, POLICY))

    def result(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "first_child_ms": _ms(self.first_child - self.sent) if self.first_child else None,
            "all_children_ms": _ms(self.all_children - self.sent) if self.all_children else None,
            "status_ms": _ms(self.status - self.sent) if self.status else None,
        }


def policy_track(namespace: str, mutate: Callable[[dict[str, Any]], None] | None = None) -> PolicyTrack:
    manifest = support.paper_policy()
    manifest["metadata"]["namespace"] = namespace
    if mutate is not None:
        mutate(manifest)
    rendered = copy.deepcopy(manifest)
    rendered["metadata"]["uid"] = "00000000-0000-0000-0000-000000000000"  # names do not depend on it
    ordered = rollout_order(desired_objects(rendered))
    children = [_key(o["kind"], namespace, o["metadata"]["name"]) for o in ordered]
    return PolicyTrack(namespace, manifest, children)


def _progress(tracks: list[PolicyTrack]) -> Callable[[Any], list[tuple[int, bool]]]:
    """How far each policy's children got, in apply order, and whether it has a status. Runs on the emulator's
    loop, which serves the operator meanwhile: it looks at one or two objects per policy, never all of them."""

    def read(emulator: Any) -> list[tuple[int, bool]]:
        out = []
        for track in tracks:
            applied = track.applied
            while applied < len(track.children) and _stored(emulator, track.children[applied]) is not None:
                applied += 1
            status = False
            if track.status is None:
                policy = _raw(emulator, "TradingPolicy", track.namespace, POLICY) or {}
                status = bool((policy.get("status") or {}).get("health"))
            out.append((applied, status))
        return out

    return read


def follow_creations(rig: Rig, tracks: list[PolicyTrack], timeout: float, interval: float = 0.005) -> None:
    """Poll the emulator until every track has all its children and a status; stamps the times."""
    pending = [t for t in tracks if t.all_children is None or t.status is None]
    deadline = time.monotonic() + timeout
    while pending:
        states = rig.call(_progress(pending))
        now = time.time()
        for track, (applied, has_status) in zip(pending, states, strict=True):
            track.applied = applied
            if applied and track.first_child is None:
                track.first_child = now
            if applied == len(track.children) and track.all_children is None:
                track.all_children = now
            if has_status and track.status is None:
                track.status = now
        pending = [t for t in pending if t.all_children is None or t.status is None]
        if not pending:
            return
        if time.monotonic() > deadline:
            rig.check_operator()
            raise BenchError(f"{len(pending)} policies without all children/status after {timeout:g}s")
        time.sleep(interval)


def create_policy(rig: Rig, track: PolicyTrack) -> None:
    track.sent = time.time()
    rig.kube.create(track.manifest)
    rig.policies.append(track)


def phase_create(rig: Rig, count: int, first_index: int) -> dict[str, Any]:
    tracks = []
    for i in range(count):
        track = policy_track(f"bench-p{first_index + i:03d}")
        create_policy(rig, track)
        follow_creations(rig, [track], timeout=60)
        tracks.append(track)
        time.sleep(0.5)  # the child-event checks the create sets off finish before the next policy
    samples = [t.result() for t in tracks]
    return {
        "policies": count,
        "samples": samples,
        **{
            key: summary([s[key] for s in samples if s[key] is not None], 1)
            for key in ("first_child_ms", "all_children_ms", "status_ms")
        },
    }


def phase_burst(rig: Rig, total: int) -> dict[str, Any]:
    """Create policies until ``total`` exist, all at once; time until every one has its children and status."""
    start = len(rig.policies)
    tracks = [policy_track(f"bench-p{i:03d}") for i in range(start, total)]
    began = time.time()
    for track in tracks:
        create_policy(rig, track)
    sent = time.time()
    follow_creations(rig, tracks, timeout=300, interval=0.05)
    done = max([t.all_children or 0.0 for t in tracks], default=began)
    statused = max([t.status or 0.0 for t in tracks], default=began)
    return {
        "created": len(tracks),
        "create_requests_s": round(sent - began, 2),
        "all_children_s": round(done - began, 2),
        "all_statuses_s": round(statused - began, 2),
        "policies_per_s": round(len(tracks) / max(done - began, 1e-9), 1),
        "per_policy_all_children_ms": summary([(t.all_children - t.sent) * 1000 for t in tracks if t.all_children], 1),
    }


# ------------------------------------------------------------------ drift


def phase_drift(rig: Rig, edits: int, tracks: list[PolicyTrack]) -> dict[str, Any]:
    spacing = rig.timer("QT_OPERATOR_REAPPLY_SECONDS") + 0.5
    image = tracks[0].manifest["spec"]["image"]
    deployment = n.deployment_name(POLICY, DRIFTED_COMPONENT)

    def containers(emulator: Any, namespace: str) -> list[dict[str, Any]]:
        return _raw(emulator, "Deployment", namespace, deployment)["spec"]["template"]["spec"]["containers"]

    samples = []
    for i in range(edits):
        track = tracks[i % len(tracks)]
        wait = track.last_edit + spacing - time.time()
        if wait > 0:
            time.sleep(wait)  # one re-apply per policy per QT_OPERATOR_REAPPLY_SECONDS: stay outside the throttle
        ns = track.namespace
        current = rig.call(lambda e, ns=ns: copy.deepcopy(containers(e, ns)))
        if current[0]["image"] != image:
            raise BenchError(f"{ns}/{deployment} does not run the policy image before the edit")
        halt_before = bool(rig.r.hexists(track.keys.halts, DRIFT_HALT))
        edit = {"spec": {"template": {"spec": {"containers": [{**current[0], "image": TAGGED}]}}}}
        sent = time.time()
        rig.merge_patch("apps/v1", "Deployment", ns, deployment, edit)
        patched = time.time()
        track.last_edit = sent
        halted: float | None = None
        deadline = time.monotonic() + 30
        while True:
            running = rig.call(lambda e, ns=ns: containers(e, ns)[0]["image"])
            now = time.time()
            if halted is None and not halt_before and rig.r.hexists(track.keys.halts, DRIFT_HALT):
                halted = time.time()
            if running == image:
                reverted = now
                break
            if time.monotonic() > deadline:
                rig.check_operator()
                raise BenchError(f"{ns}/{deployment} not reverted after 30 s")
            time.sleep(0.005)
        if halted is None and not halt_before:
            halted = poll(lambda k=track.keys: rig.r.hexists(k.halts, DRIFT_HALT) and time.time(), 10, "drift halt")
        samples.append(
            {
                "namespace": ns,
                "patch_request_ms": _ms(patched - sent),
                "reverted_ms": _ms(reverted - sent),
                "drift_halt_ms": _ms(halted - sent) if halted else None,
            }
        )
        time.sleep(0.3)  # the check the revert itself sets off
    return {
        "edits": edits,
        "component": DRIFTED_COMPONENT,
        "samples": samples,
        "reverted_ms": summary([s["reverted_ms"] for s in samples], 1),
        "drift_halt_ms": summary([s["drift_halt_ms"] for s in samples if s["drift_halt_ms"] is not None], 1),
    }


# ------------------------------------------------------------------ kill switch


class ControlListener:
    """Keyspace notifications on ``control`` and ``ack``: after each one, the generation and the acks, stamped
    with this process's clock when the notification arrived."""

    def __init__(self, url: str, keys: Keys) -> None:
        self.keys = keys
        self.reader = redis.Redis.from_url(url, decode_responses=True)
        self.reader.config_set("notify-keyspace-events", "Kh")
        self.pubsub = self.reader.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(f"__keyspace@0__:{keys.control}", f"__keyspace@0__:{keys.ack}")
        self.generation = 0
        self.acks: dict[str, int] = {}
        self.generation_seen: dict[int, float] = {}
        self.ack_seen: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control-listener", daemon=True)

    def start(self) -> ControlListener:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message is None:
                continue
            seen = time.time()
            with self.reader.pipeline(transaction=False) as pipe:
                pipe.hget(self.keys.control, "generation")
                pipe.hgetall(self.keys.ack)
                generation, acks = pipe.execute()
            generation = int(generation or 0)
            if generation > self.generation:
                self.generation = generation
                self.generation_seen.setdefault(generation, seen)
            for member, value in acks.items():
                value = int(value)
                if value > self.acks.get(member, -1):
                    self.acks[member] = value
                    self.ack_seen.setdefault((member, value), seen)

    def acked(self, pods: Iterable[str], generation: int) -> bool:
        return all(self.acks.get(p, -1) >= generation for p in pods)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.pubsub.close()
        self.reader.close()


def start_components(rig: Rig, track: PolicyTrack, workdir: Path) -> Supervisor:
    spec = parse_policy(track.manifest["spec"])
    components = spec.enabled_components()
    supervisor = Supervisor(
        spec,
        rig.redis_url,
        instance=instance_id(track.namespace, POLICY),
        workdir=workdir / "components",
        only=components,
    )
    supervisor.prepare()
    digest = n.image_digest(spec.image or "")
    for process in supervisor.processes.values():
        process.env["QT_IMAGE_DIGEST"] = digest  # what the operator's pods set: heartbeats report the policy digest
    supervisor.start()
    return supervisor


def wait_components(rig: Rig, supervisor: Supervisor, keys: Keys, pods: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for pod, process in supervisor.processes.items():
            if process.popen is not None and process.popen.poll() is not None:
                tail = process.log_path.read_text(errors="replace")[-2000:]
                raise BenchError(f"{pod} exited with {process.popen.returncode}:\n{tail}")
        beats = {f"{b.component}/{b.pod}" for b in read_heartbeats(rig.r, keys) if b.state == "running"}
        generation = read_control(rig.r, keys).generation
        acks = read_acks(rig.r, keys)
        if beats >= set(pods) and all(acks.get(p, -1) >= generation for p in pods):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"components not all running and acked after {timeout:g}s: running {sorted(beats)}")
        time.sleep(0.25)


def phase_killswitch(rig: Rig, cycles: int, workdir: Path, first_index: int) -> dict[str, Any]:
    def one_replica(manifest: dict[str, Any]) -> None:
        manifest["spec"]["components"]["governor"] = {"replicas": 1}  # one process per component: 12 pods
        manifest["spec"]["marketData"]["syntheticBars"] = 5000

    track = policy_track(f"bench-ks{first_index:03d}", one_replica)
    create_policy(rig, track)
    follow_creations(rig, [track], timeout=60)
    keys = track.keys
    started = time.monotonic()
    supervisor = start_components(rig, track, workdir)
    listener: ControlListener | None = None
    try:
        pods = sorted(f"{p.component}/{pod}" for pod, p in supervisor.processes.items())
        wait_components(rig, supervisor, keys, pods)
        startup_s = time.monotonic() - started
        listener = ControlListener(rig.redis_url, keys).start()
        switch = support.example("killswitch.yaml")
        switch["metadata"].update(name=KILL_SWITCH, namespace=track.namespace)
        switch["spec"].update(policyRef={"name": POLICY}, engaged=False, reason="bench")
        rig.kube.create(switch)
        poll(
            lambda: rig.call(lambda e: (_raw(e, "KillSwitch", track.namespace, KILL_SWITCH) or {}).get("status")),
            30,
            "the KillSwitch handled",
        )
        timer = rig.timer("QT_OPERATOR_KILLSWITCH_TIMER_SECONDS")
        meter = CpuMeter(
            {
                **rig_processes(rig),
                **{pod: psutil.Process(p.popen.pid) for pod, p in supervisor.processes.items() if p.popen is not None},
            }
        ).begin()
        engages, releases = [], []
        for _ in range(cycles):
            time.sleep(random.uniform(0, timer))  # a random phase of the KillSwitch timer
            engages.append(transition(rig, listener, track, pods, engaged=True, timer=timer))
            releases.append(transition(rig, listener, track, pods, engaged=False, timer=timer))
        cpu = meter.end()
        status = rig.call(lambda e: dict((_raw(e, "TradingPolicy", track.namespace, POLICY) or {}).get("status") or {}))
        policy_status = {k: status.get(k) for k in ("health", "ready", "drift", "message")}
    finally:
        if listener is not None:
            listener.stop()
        supervisor.stop()
    n_pods = len(pods)

    def stats(samples: list[dict[str, Any]], key: str) -> dict[str, Any]:
        return summary([s[key] for s in samples if s.get(key) is not None], 1)

    per_component: dict[str, list[float]] = {}
    for s in [*engages, *releases]:
        for pod, ms in s["ack_after_control_ms"].items():
            per_component.setdefault(pod.split("/")[0], []).append(ms)
    return {
        "cycles": cycles,
        "pods": n_pods,
        "components": sorted({p.split("/")[0] for p in pods}),
        "components_startup_s": round(startup_s, 1),
        "policy_status_after": policy_status,
        "killswitch_timer_s": timer,
        "engage": {
            "control_written_ms": stats(engages, "control_ms"),
            "all_acked_ms": stats(engages, "all_acked_ms"),
            "control_to_all_acked_ms": stats(engages, "control_to_all_acked_ms"),
            "status_acked_ms": stats(engages, "status_ms"),
            "all_acked_to_status_ms": stats(engages, "acks_to_status_ms"),
            "operator_ack_latency_ms": stats(engages, "operator_ack_latency_ms"),
        },
        "release": {
            "control_written_ms": stats(releases, "control_ms"),
            "all_acked_ms": stats(releases, "all_acked_ms"),
            "control_to_all_acked_ms": stats(releases, "control_to_all_acked_ms"),
        },
        "ack_after_control_ms_by_component": {c: summary(v, 1) for c, v in sorted(per_component.items())},
        "target_all_acked_p99_ms": TARGET_ACK_P99_MS,
        "target_met": summary([s["all_acked_ms"] for s in engages], 1).get("p99", 1e9) < TARGET_ACK_P99_MS,
        "cpu": cpu,
        "samples": {"engage": engages, "release": releases},
    }


def transition(
    rig: Rig, listener: ControlListener, track: PolicyTrack, pods: list[str], *, engaged: bool, timer: float
) -> dict[str, Any]:
    ns = track.namespace
    before = listener.generation
    sent = time.time()
    rig.merge_patch(n.API_VERSION, "KillSwitch", ns, KILL_SWITCH, {"spec": {"engaged": engaged}})
    generation = poll(lambda: listener.generation > before and listener.generation, 15, "a new control generation")
    poll(lambda: listener.acked(pods, generation), 15, f"every ack of generation {generation}")
    written = listener.generation_seen[generation]
    acks = {
        p: min(t for (member, g), t in list(listener.ack_seen.items()) if member == p and g >= generation) for p in pods
    }
    all_acked = max(acks.values())
    updated_at = int(rig.r.hget(track.keys.control, "updated_at") or 0) / 1000
    sample: dict[str, Any] = {
        "engaged": engaged,
        "generation": generation,
        "control_ms": _ms(written - sent),
        "control_updated_at_ms": _ms(updated_at - sent),
        "all_acked_ms": _ms(all_acked - sent),
        "control_to_all_acked_ms": _ms(all_acked - written),
        "last_pod": max(acks, key=lambda p: acks[p]),
        "ack_after_control_ms": {p: _ms(t - written) for p, t in acks.items()},
    }
    if engaged:
        want = f"{len(pods)}/{len(pods)}"

        def status(e: Any) -> dict[str, Any] | None:
            found = (_raw(e, "KillSwitch", ns, KILL_SWITCH) or {}).get("status") or {}
            if found.get("generation") == generation and found.get("acked") == want:
                return dict(found)
            return None

        shown = poll(lambda: rig.call(status), timer + 15, f"KillSwitch status acked {want}", interval=0.01)
        seen = time.time()
        sample["status_ms"] = _ms(seen - sent)
        sample["acks_to_status_ms"] = _ms(seen - all_acked)
        latency = shown.get("ackLatencySeconds")
        sample["operator_ack_latency_ms"] = None if latency is None else round(latency * 1000, 1)
        sample["status_state"] = shown.get("state")
    return sample


# ------------------------------------------------------------------ main


def calibrate(kube: Kube, count: int = 30) -> dict[str, Any]:
    """The emulator's own cost per request, before the operator runs: what every API call below pays."""

    def timed(fn: Callable[[int], Any]) -> dict[str, Any]:
        values = []
        for i in range(count):
            started = time.perf_counter()
            fn(i)
            values.append((time.perf_counter() - started) * 1000)
        return summary(values, 2)

    def configmap(i: int) -> dict[str, Any]:
        meta = {"name": f"c{i}", "namespace": "bench-calibration"}
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"config.yaml": "x" * 2000}}

    return {
        "get_ms": timed(lambda i: kube.get("apps/v1", "Deployment", "bench-calibration", f"d{i}")),
        "apply_create_ms": timed(lambda i: kube.apply(configmap(i))),
        "apply_unchanged_ms": timed(lambda i: kube.apply(configmap(i))),
        "list_ms": timed(lambda i: kube.list("v1", "ConfigMap", "bench-calibration")),
    }


def rig_processes(rig: Rig) -> dict[str, psutil.Process]:
    return {
        "operator": psutil.Process(rig.operator.process.pid),
        "bench+emulator": psutil.Process(os.getpid()),
        "redis-server": psutil.Process(int(rig.r.info("server")["process_id"])),
    }


def _mib(value: int) -> float:
    return round(value / 2**20, 1)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = start_redis()
    emulator = EmulatorThread().start()
    trimmer = RequestLogTrimmer(emulator).start()
    configuration = k8s_client.Configuration()
    configuration.host = emulator.url
    kube = Kube(k8s_client.ApiClient(configuration), timeout=30)
    overrides = {} if args.timers == "test" else {name: "" for name in DEFAULTS}
    operator = None
    rig = None
    try:
        emulator_cost = calibrate(kube)
        with mock.patch.dict(support.OPERATOR_ENV, overrides):
            env = dict(support.OPERATOR_ENV)
            operator = support.start_operator(
                kubeconfig=emulator.kubeconfig(workdir / "kubeconfig"),
                redis_url=server.url,
                log=workdir / "operator.log",
            )
        r = redis.Redis.from_url(server.url, decode_responses=True)
        rig = Rig(emulator, kube, r, server.url, operator, env, RssSampler(operator.process.pid).start())
        return {"emulator_request_cost": emulator_cost, **measure(rig, args, workdir)}
    except BaseException as error:
        if operator is not None and not isinstance(error, KeyboardInterrupt):
            sys.stderr.write(f"--- operator log (tail) ---\n{operator.tail(6000)}\n")
        raise
    finally:
        if rig is not None:
            rig.rss.stop()
        if operator is not None:
            operator.stop()
        trimmer.stop()
        emulator.stop()
        server.stop()


def measure(rig: Rig, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"rss_mib": {}, "phases": {}}
    clock = time.monotonic()

    def note(text: str) -> None:
        print(f"[{time.monotonic() - clock:5.1f}s] {text}", flush=True)

    def rss(label: str) -> None:
        time.sleep(1.0)
        results["rss_mib"][label] = {"policies": len(rig.policies), "rss": _mib(rig.rss.now())}

    def phase(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        quiet = wait_for_quiet(args.wait_quiet)
        rig.rss.phase = name
        metrics0 = rig.reconcile_metrics()
        meter = CpuMeter(rig_processes(rig)).begin()
        result = fn()
        result.setdefault("cpu", meter.end())
        result["operator_handlers"] = handler_stats(metrics0, rig.reconcile_metrics())
        result["machine_before"] = quiet
        result["rss_peak_mib"] = _mib(rig.rss.peaks.get(name, 0))
        results["phases"][name] = result
        rig.check_operator()
        return result

    time.sleep(2.0)
    rss("start")
    note(f"operator up, RSS {results['rss_mib']['start']['rss']} MiB")

    created = phase("create", lambda: phase_create(rig, args.policies, 0))
    note(
        f"create: children of {args.policies} policies, p50 {created['all_children_ms']['p50']} ms "
        f"p99 {created['all_children_ms']['p99']} ms"
    )
    rss("after create")

    drift = phase("drift", lambda: phase_drift(rig, args.edits, list(rig.policies)))
    reverted = drift["reverted_ms"]
    note(f"drift: {args.edits} edits reverted p50 {reverted['p50']} ms p99 {reverted['p99']} ms")

    ks = phase("killswitch", lambda: phase_killswitch(rig, args.cycles, workdir, len(rig.policies)))
    note(
        f"killswitch: engage -> {ks['pods']} acks p50 {ks['engage']['all_acked_ms'].get('p50')} ms "
        f"p99 {ks['engage']['all_acked_ms'].get('p99')} ms; status N/N p50 "
        f"{ks['engage']['status_acked_ms'].get('p50')} ms"
    )
    rss("after killswitch")

    def memory() -> dict[str, Any]:
        burst = phase_burst(rig, args.memory_policies)
        note(f"memory: {burst['created']} more policies applied in {burst['all_children_s']} s")
        settle = rig.timer("QT_OPERATOR_TIMER_SECONDS") + 5.0  # every policy's timer has run (initial delay <= 5 s)
        time.sleep(settle)
        samples = []
        for _ in range(5):
            samples.append(rig.rss.now())
            time.sleep(1.0)
        later: list[int] = []
        window = CpuMeter(rig_processes(rig)).begin()
        if args.growth_window:
            # Does it keep growing? More policy-timer rounds, sampled every second; and what idle policies cost.
            deadline = time.monotonic() + args.growth_window
            while time.monotonic() < deadline:
                later.append(rig.rss.now())
                time.sleep(1.0)
        idle_cpu = window.end() if args.growth_window else None
        objects = rig.call(lambda e: sum(1 for v in e.objects.values() if not v.deleted))
        return {
            **burst,
            "settle_s": settle,
            "policies": len(rig.policies),
            "emulator_objects": objects,
            "operator_threads": psutil.Process(rig.operator.process.pid).num_threads(),
            "rss_samples_mib": [_mib(s) for s in samples],
            "growth_window_s": args.growth_window,
            "rss_after_growth_window_mib": _mib(later[-1]) if later else None,
            "rss_max_in_growth_window_mib": _mib(max(later)) if later else None,
            "rss_min_in_growth_window_mib": _mib(min(later)) if later else None,
            "growth_window_cpu": idle_cpu,
        }

    mem = phase("memory", memory)
    count = len(rig.policies)
    start_rss = results["rss_mib"]["start"]["rss"]
    mem["rss_at_settle_mib"] = max(mem["rss_samples_mib"])
    mem["rss_mib"] = max(mem["rss_at_settle_mib"], mem["rss_max_in_growth_window_mib"] or 0.0)
    mem["rss_start_mib"] = start_rss
    mem["per_policy_kib"] = round((mem["rss_mib"] - start_rss) * 1024 / count, 1)
    results["rss_mib"][f"{count} policies, timers run"] = {"policies": count, "rss": mem["rss_at_settle_mib"]}
    if mem["growth_window_s"]:
        results["rss_mib"][f"{count} policies, {mem['growth_window_s']:g} s later (max)"] = {
            "policies": count,
            "rss": mem["rss_max_in_growth_window_mib"],
        }
    note(f"memory: RSS {start_rss} MiB at start, {mem['rss_mib']} MiB with {count} policies")
    return results


def print_tables(results: dict[str, Any]) -> None:
    phases = results["phases"]
    rows = []

    def row(what: str, stats: dict[str, Any], scale: float = 1.0) -> None:
        if stats.get("count"):
            rows.append(
                [
                    what,
                    stats["count"],
                    round(stats["p50"] * scale, 1),
                    round(stats["p90"] * scale, 1),
                    round(stats["p99"] * scale, 1),
                    round(stats["max"] * scale, 1),
                ]
            )

    c = phases["create"]
    row("create -> first child", c["first_child_ms"])
    row("create -> all children", c["all_children_ms"])
    row("create -> status", c["status_ms"])
    d = phases["drift"]
    row("image edit -> drift halt", d["drift_halt_ms"])
    row("image edit -> reverted", d["reverted_ms"])
    k = phases["killswitch"]
    for what, key in (
        ("control written", "control_written_ms"),
        ("all acked", "all_acked_ms"),
        ("status acked N/N", "status_acked_ms"),
    ):
        row(f"engage -> {what}", k["engage"][key])
    row("control -> all acked (engage)", k["engage"]["control_to_all_acked_ms"])
    row("release -> all acked", k["release"]["all_acked_ms"])
    print()
    print(table(["ms", "n", "p50", "p90", "p99", "max"], rows))
    print()
    print(
        table(
            ["component", "n", "p50", "p90", "p99", "max"],
            [
                [name, s["count"], s["p50"], s["p90"], s["p99"], s["max"]]
                for name, s in k["ack_after_control_ms_by_component"].items()
            ],
        )
    )
    print()
    print(
        table(
            ["operator RSS", "policies", "MiB"],
            [[label, v["policies"], v["rss"]] for label, v in results["rss_mib"].items()],
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.operator", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 policies, 5 edits, 5 kill-switch cycles, 30 policies")
    parser.add_argument(
        "--timers",
        choices=("default", "test"),
        default="default",
        help="the operator's production intervals (default) or the integration tests' short ones",
    )
    parser.add_argument("--policies", type=int, default=None, help="phase 1 policies (20; quick 5)")
    parser.add_argument("--edits", type=int, default=None, help="phase 2 image edits (30; quick 5)")
    parser.add_argument("--cycles", type=int, default=None, help="phase 3 engage/release cycles (30; quick 5)")
    parser.add_argument("--memory-policies", type=int, default=None, help="phase 4 policies in all (100; quick 30)")
    parser.add_argument(
        "--growth-window",
        type=float,
        default=None,
        metavar="S",
        help="after the memory sample, S more seconds of RSS samples (2 policy timer rounds; quick 0)",
    )
    add_wait_quiet_option(parser)
    parser.add_argument("--seed", type=int, default=1, help="random phase of the kill-switch engages")
    parser.add_argument(
        "--output",
        default=None,
        metavar="NAME",
        help="results file bench/results/NAME.json (default: operator, or operator-quick)",
    )
    args = parser.parse_args(argv)
    args.policies = args.policies or (5 if args.quick else 20)
    args.edits = args.edits or (5 if args.quick else 30)
    args.cycles = args.cycles or (5 if args.quick else 30)
    args.memory_policies = max(args.memory_policies or (30 if args.quick else 100), args.policies + 1)
    if args.growth_window is None:
        timer = 1.0 if args.timers == "test" else DEFAULTS["QT_OPERATOR_TIMER_SECONDS"]
        args.growth_window = 0.0 if args.quick else 2 * timer
    random.seed(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="qt-bench-operator-"))
    os.environ["QT_STATE_DIR"] = str(workdir / "state")  # never the user's run.json
    started = time.monotonic()
    try:
        results = run(args, workdir)
    except BenchError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_tables(results)
    ks = results["phases"]["killswitch"]
    print(
        f"\ntarget: engage -> all {ks['pods']} components acked, p99 < {TARGET_ACK_P99_MS:.0f} ms: "
        f"{'met' if ks['target_met'] else 'NOT met'} (p99 {ks['engage']['all_acked_ms'].get('p99')} ms)"
    )
    path = write_results(
        args.output or ("operator-quick" if args.quick else "operator"),
        {
            "benchmark": "operator",
            "quick": args.quick,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "runtime_s": round(time.monotonic() - started, 1),
            "machine": {**machine(), "operator_code_modified": bool(_git_dirty("operator"))},
            "settings": {
                "timers": args.timers,
                "operator_env": {
                    k: (v or f"(default {DEFAULTS[k]:g})") if k in DEFAULTS else v
                    for k, v in _operator_env(args).items()
                },
                "policies": args.policies,
                "edits": args.edits,
                "cycles": args.cycles,
                "memory_policies": args.memory_policies,
                "seed": args.seed,
            },
            **results,
        },
    )
    print(f"results: {path}")
    return 0


def _operator_env(args: argparse.Namespace) -> dict[str, str]:
    overrides = {} if args.timers == "test" else {name: "" for name in DEFAULTS}
    return {**support.OPERATOR_ENV, **overrides}


def _git_dirty(path: str) -> str:
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    try:
        return subprocess.run(
            ["git", "status", "--porcelain", "--", path], cwd=repo, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
