"""gather: everything one reconcile reads, into one plain observation (the only reads of the reconcile).

decide.py turns an observation into a plan without a server; act.py carries the plan out. Nothing here writes:
a missing ``control`` key is observed missing, and act.py initialises it.
Reads that fail become part of the observation (``RedisView.error``), never an exception, except API errors
(``runtime_io.KubeError``), which the handler reports as Degraded.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis

from quantum_trader.bus.control import read_acks
from quantum_trader.bus.heartbeat import read_heartbeats
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import Mode, PolicyError, PolicySpec
from quantum_trader_operator import kube_view as kv
from quantum_trader_operator import naming as n
from quantum_trader_operator import redis_io
from quantum_trader_operator.models import policy_spec
from quantum_trader_operator.observation import (
    Children,
    ControlView,
    PolicyObservation,
    RedisView,
    ReferencedPolicy,
    SwitchObservation,
)
from quantum_trader_operator.runtime_io import Kube, KubeError

OURS = {n.LABEL_MANAGED_BY: n.MANAGED_BY}
CHILD_KINDS = (("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"), ("v1", "Service"), ("v1", "ConfigMap"))
"""what a policy owns and prunes. The paper credentials Secret is not among them: created once, it must
outlive re-renders."""


def now_ms() -> int:
    return int(time.time() * 1000)


class Sources:
    """What gather and act talk to: the API server and the instances' Redis servers."""

    def __init__(self, kube: Kube, pool: redis_io.RedisPool, env: Mapping[str, str]) -> None:
        self.kube = kube
        self.pool = pool
        self.env = env

    def redis_target(self, body: Mapping[str, Any], spec: PolicySpec) -> redis_io.RedisTarget:
        return redis_io.redis_target(body, spec, self.kube.secret_value, self.env)

    def client(self, body: Mapping[str, Any], spec: PolicySpec) -> redis.Redis:
        return self.pool.client(self.redis_target(body, spec))


def children(kube: Kube, namespace: str, policy: str, uid: str) -> Children:
    labels = {**OURS, n.LABEL_POLICY: policy}
    found = Children()
    for api_version, kind in CHILD_KINDS:
        owned = [o for o in kube.list(api_version, kind, namespace, labels) if kv.owned_by(o, uid)]
        if kind == "Deployment":
            found.deployments = owned
        else:
            found.others += owned
    # Pods belong to ReplicaSets, not to the policy: the policy label (set on the template) says whose.
    found.pods = kube.list("v1", "Pod", namespace, labels)
    return found


def instance_redis(
    sources: Sources, body: Mapping[str, Any], spec: PolicySpec, keys: Keys
) -> tuple[RedisView, redis.Redis | None]:
    """What the instance's Redis holds, and a client for act.py (None when the password Secret is unreadable):
    the Secret is read here once per check, and act.py writes through the same client."""
    try:
        target = sources.redis_target(body, spec)
    except KubeError as error:
        return RedisView("(password secret unreadable)", error=str(error)), None
    client = sources.pool.client(target)
    try:
        view = RedisView(target.display, redis_io.read_instance(client, keys), redis_io.read_rollout(client, keys))
    except redis.RedisError as error:
        view = RedisView(target.display, error=str(error) or type(error).__name__)
    return view, client


def policy(
    sources: Sources, body: Mapping[str, Any], spec: PolicySpec, keys: Keys
) -> tuple[PolicyObservation, redis.Redis | None]:
    """Children, pods, the instance's Redis (heartbeats, groups, control, halts, rollout state) and whether the
    paper key pair exists — for a policy ``validation.check_policy`` found nothing wrong with — and the client
    of its Redis for act.py (None: its password Secret could not be read)."""
    namespace, name = kv.namespace(body), kv.name(body)
    paper_secret = spec.mode is not Mode.PAPER or (
        sources.kube.get("v1", "Secret", namespace, n.paper_credentials_secret_name(name)) is not None
    )
    view, client = instance_redis(sources, body, spec, keys)
    observed = PolicyObservation(
        body=dict(body),
        children=children(sources.kube, namespace, name, str(kv.meta(body).get("uid") or "")),
        redis=view,
        paper_secret_exists=paper_secret,
        now_ms=now_ms(),
    )
    return observed, client


# ------------------------------------------------------------------ KillSwitch and ExitRollout


def referenced_policy(sources: Sources, namespace: str, name: str) -> tuple[ReferencedPolicy, redis.Redis | None]:
    """The policy a KillSwitch or ExitRollout names, and a client for its Redis (None with a problem)."""
    body = sources.kube.get(n.API_VERSION, "TradingPolicy", namespace, name)
    if body is None:
        return ReferencedPolicy(problem=f"TradingPolicy {name} not found in {namespace}"), None
    try:
        spec = policy_spec(body)
    except PolicyError as error:
        return ReferencedPolicy(problem=f"TradingPolicy {name} is invalid: {error}"), None
    try:
        target = sources.redis_target(body, spec)
    except KubeError as error:
        return ReferencedPolicy(problem=f"TradingPolicy {name}: Redis password unreadable: {error}"), None
    keys = Keys(n.instance_id(namespace, name))
    return ReferencedPolicy(spec, keys, target.display), sources.pool.client(target)


def control_view(client: redis.Redis, keys: Keys) -> ControlView:
    """Raises ``redis.RedisError`` (the caller reports the Redis as unreachable)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.control)
        pipe.hgetall(keys.halts)
        raw, halts = pipe.execute()
    return ControlView(dict(raw), dict(halts), read_heartbeats(client, keys), read_acks(client, keys))


def switch(
    sources: Sources, body: Mapping[str, Any], policy_name: str | None, *, kill_switch: bool
) -> tuple[SwitchObservation, redis.Redis | None]:
    """A KillSwitch (``kill_switch``) or an ExitRollout naming ``policy_name`` (None: its spec is invalid), and
    a client for the policy's Redis for act.py (None when there is none to write to)."""
    namespace, name = kv.namespace(body), kv.name(body)
    if policy_name is None:
        return SwitchObservation(dict(body), ReferencedPolicy(), None, "", now_ms()), None
    found, client = referenced_policy(sources, namespace, policy_name)
    others = (
        [s for s in sources.kube.list(n.API_VERSION, "KillSwitch", namespace) if kv.name(s) != name]
        if kill_switch
        else []
    )
    control, error = None, ""
    if client is not None and found.keys is not None:
        try:
            control = control_view(client, found.keys)
        except redis.RedisError as failure:
            error = f"redis unreachable at {found.target}: {failure}"
    return SwitchObservation(dict(body), found, control, error, now_ms(), others), client
