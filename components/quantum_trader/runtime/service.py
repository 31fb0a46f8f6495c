"""The shape of a component: a ``Service`` gets a ``ComponentContext`` and declares handlers per input stream.

Decisions live in pure modules; a service is the thin shell that reads state, calls them and
returns a ``Step`` (outputs + state writes) that the bus applies exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import redis

from quantum_trader.bus.consumer import Handler
from quantum_trader.bus.control import ControlState, read_control
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import PolicySpec
from quantum_trader.runtime.settings import Settings


@dataclass
class ComponentContext:
    settings: Settings
    policy: PolicySpec
    client: redis.Redis
    keys: Keys
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def name(self) -> str:
        return self.settings.component

    @property
    def pod(self) -> str:
        return self.settings.pod

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"quantum_trader.{self.name}")

    def control(self) -> ControlState:
        return read_control(self.client, self.keys)

    @staticmethod
    def now_ms() -> int:
        return int(time.time() * 1000)


class Service:
    """Base of every component. Override ``handlers``; optionally ``start``, ``idle``, ``ready``, ``run``."""

    model_digest: str = ""

    def __init__(self, ctx: ComponentContext) -> None:
        self.ctx = ctx
        self.counters: dict[str, float] = {}

    def handlers(self) -> dict[str, Handler]:
        return {}

    def start(self) -> None:
        """Called once before the loop, after groups exist."""

    def idle(self) -> float | None:
        """Periodic work between reads; return seconds until it wants to run again (None: default)."""
        return None

    def on_control(self, state: ControlState) -> None:
        """A new kill-switch generation was read; the runner acks it after this returns."""

    def ready(self) -> tuple[bool, str]:
        return True, "ready"

    def accepting(self) -> bool:
        """Whether the loop reads the inputs now. False while a component cannot act on a message yet
        (apply-layer before it has reached the exchange): its messages wait unread instead of failing
        delivery after delivery into the DLQ. ``idle`` still runs (that is where it tries again)."""
        return True

    def close(self) -> None:
        """Release resources; called once after the loop stops."""

    def other_consumers_totals(self) -> dict[str, int]:
        """What consumers of the service's own (beyond the runner's one) did: processed, duplicates, errors,
        dead_lettered, reclaimed. The heartbeat and the ``stopped`` line add them to the runner's, so a
        process with worker consumers reports all it processed."""
        return {}

    def count(self, name: str, by: float = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by
