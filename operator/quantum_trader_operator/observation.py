"""What one reconcile observed, as plain data (pure types): gather.py fills them, decide.py reads them.

Kept apart from gather.py so the decide modules and their tests import no I/O library, not even indirectly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantum_trader.contracts.heartbeat import HeartbeatRecord
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import PolicySpec
from quantum_trader_operator import kube_view as kv
from quantum_trader_operator.health import GroupStats
from quantum_trader_operator.rollout import RolloutState


@dataclass
class Children:
    """A policy's children as the API server returned them."""

    deployments: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    others: list[dict[str, Any]] = field(default_factory=list)
    """StatefulSets, Services and ConfigMaps"""

    def keys(self) -> set[tuple[str, str]]:
        return {kv.key(o) for o in [*self.deployments, *self.others]}

    def configmap(self, name: str) -> dict[str, Any] | None:
        return next((o for o in self.others if kv.key(o) == ("ConfigMap", name)), None)


@dataclass
class InstanceReadings:
    """What the health and drift checks read from an instance's Redis in one pass."""

    heartbeats: list[HeartbeatRecord]
    groups: list[GroupStats]
    existing_groups: dict[str, list[str]]
    """stream name -> consumer group names (for the clean-up of groups of disabled components)"""
    dlq_lengths: dict[str, int]
    open_positions: int
    reconcile: dict[str, str]
    control: dict[str, str]
    halts: dict[str, str]
    acks: dict[str, int]


@dataclass
class RedisView:
    """The instance's Redis as one reconcile read it."""

    target: str
    """where (the URL, never the password)"""
    readings: InstanceReadings | None = None
    rollout: RolloutState | None = None
    error: str = ""
    """why it could not be read ("" when it was)"""


@dataclass
class PolicyObservation:
    body: dict[str, Any]
    children: Children
    redis: RedisView
    paper_secret_exists: bool
    now_ms: int


@dataclass
class ControlView:
    """``control`` and who acknowledged it, as read for a KillSwitch or an ExitRollout."""

    raw: dict[str, str] = field(default_factory=dict)
    halts: dict[str, str] = field(default_factory=dict)
    heartbeats: list[HeartbeatRecord] = field(default_factory=list)
    acks: dict[str, int] = field(default_factory=dict)


@dataclass
class ReferencedPolicy:
    """The TradingPolicy a KillSwitch or an ExitRollout names; ``problem`` says why it cannot be used."""

    spec: PolicySpec | None = None
    keys: Keys | None = None
    target: str = ""
    problem: str = ""


@dataclass
class SwitchObservation:
    """A KillSwitch or an ExitRollout, its policy and that policy's ``control``."""

    body: dict[str, Any]
    policy: ReferencedPolicy
    control: ControlView | None
    redis_error: str
    now_ms: int
    others: list[dict[str, Any]] = field(default_factory=list)
    """KillSwitch only: every other KillSwitch of the namespace (the one in force is chosen among all)"""
