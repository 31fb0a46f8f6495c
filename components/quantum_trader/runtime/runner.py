"""Runs one component process: health and metrics endpoints, groups, the loop, heartbeats, kill-switch acks.

SIGTERM finishes the current message, acks it and exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

import redis
from prometheus_client import start_http_server

from quantum_trader.bus.consumer import StreamConsumer
from quantum_trader.bus.control import ack_generation, read_control
from quantum_trader.bus.heartbeat import HeartbeatRecord, write_heartbeat
from quantum_trader.contracts.admission import Admission
from quantum_trader.contracts.keys import Keys
from quantum_trader.runtime import metrics
from quantum_trader.runtime.health import HealthServer
from quantum_trader.runtime.service import ComponentContext, Service
from quantum_trader.runtime.settings import Settings

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_SECONDS = 2.0
CONTROL_EVERY_SECONDS = 0.2


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=15)


def build_context(settings: Settings) -> ComponentContext:
    return ComponentContext(
        settings=settings,
        policy=settings.policy(),
        client=connect(settings.redis_url),
        keys=Keys(settings.instance),
    )


class ComponentRunner:
    def __init__(self, ctx: ComponentContext, service: Service, *, serve_http: bool = True) -> None:
        self.ctx = ctx
        self.service = service
        self.serve_http = serve_http
        handlers = service.handlers()
        self.consumer = (
            StreamConsumer(
                ctx.client,
                ctx.keys,
                group=ctx.name,
                consumer=ctx.pod,
                handlers=handlers,
                retention=ctx.policy.streams,
                observer=metrics.observer(ctx.name),
                admission=Admission.for_component(ctx.name, list(handlers), ctx.policy.symbols),
            )
            if handlers
            else None
        )
        self.started_ms = int(time.time() * 1000)
        self.applied_generation = -1
        self._last_loop = time.monotonic()
        self._last_heartbeat = 0.0
        self._last_control = 0.0
        self._state = "starting"
        self._groups_ok = False

    # --- health -------------------------------------------------------------------------------
    def alive(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self._last_loop
        return (stalled < 60, f"loop {self._state}, last iteration {stalled:.1f}s ago")

    def ready(self) -> tuple[bool, str]:
        try:
            self.ctx.client.ping()
        except redis.RedisError as error:
            return False, f"redis unreachable: {error}"
        if self.consumer is not None and not self._groups_ok:
            return False, "consumer groups not created yet"
        return self.service.ready()

    # --- loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        stop = self.ctx.stop
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
        health = None
        try:
            if self.serve_http:
                health = HealthServer(self.ctx.settings.health_port, self.alive, self.ready).start()
                start_http_server(self.ctx.settings.metrics_port)
        except OSError as error:
            log.error(
                "cannot serve health or metrics",
                extra={
                    "error": str(error),
                    "health_port": self.ctx.settings.health_port,
                    "metrics_port": self.ctx.settings.metrics_port,
                },
            )
            if health is not None:
                health.stop()
            return 1
        metrics.UP.labels(self.ctx.name).set(1)
        try:
            if self.consumer is not None:
                self.consumer.ensure_groups()
                self._groups_ok = True
            self.service.start()
            self._state = "running"
            self._maybe_control(force=True)
            self._heartbeat()
            wait = 0.0
            while not stop.is_set():
                self._last_loop = time.monotonic()
                if self.consumer is not None and self.service.accepting():
                    self.consumer.poll_once(block_ms=int(min(max(wait or 0.0, 0.05), 0.5) * 1000))
                    wait = self.service.idle() or 0.2
                else:
                    wait = self.service.idle()
                    # never sleep past a control check: a new kill-switch generation is applied promptly
                    stop.wait(min(CONTROL_EVERY_SECONDS, 0.2 if wait is None else max(wait, 0.0)))
                self._maybe_control()
                if time.monotonic() - self._last_heartbeat >= HEARTBEAT_EVERY_SECONDS:
                    self._heartbeat()
            self._state = "stopping"
            self._heartbeat()
        except Exception as error:  # one log line with the cause; the supervisor or Deployment restarts us
            log.exception("component failed", extra={"error": f"{type(error).__name__}: {error}"})
            self._state = "failed"
            return 1
        finally:
            metrics.UP.labels(self.ctx.name).set(0)
            self.service.close()
            if health is not None:
                health.stop()
        log.info("stopped", extra={"reason": "signal", "counts": self.stopped_counts()})
        return 0

    def stopped_counts(self) -> dict[str, int]:
        """What this process did, for its one ``stopped`` line: the service's counters and the consumer's."""
        counts = {k: v for k, v in self.service.counters.items() if isinstance(v, int) and k != "last_event_ms"}
        if self.consumer is not None:
            stats = self.consumer.stats
            others = self.service.other_consumers_totals()
            counts.update(
                processed=stats.processed + others.get("processed", 0),
                dead_lettered=stats.dead_lettered + others.get("dead_lettered", 0),
                errors=stats.errors + others.get("errors", 0),
            )
        return counts

    def _maybe_control(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_control < CONTROL_EVERY_SECONDS:
            return
        self._last_control = time.monotonic()
        state = read_control(self.ctx.client, self.ctx.keys)
        metrics.KILLSWITCH_ENGAGED.labels(self.ctx.name).set(1 if state.blocks_entries else 0)
        if state.generation != self.applied_generation:
            self.service.on_control(state)
            self.applied_generation = state.generation
            ack_generation(self.ctx.client, self.ctx.keys, self.ctx.name, self.ctx.pod, state.generation)
            metrics.CONTROL_GENERATION.labels(self.ctx.name).set(state.generation)
            log.info("kill switch applied", extra={"control": state.describe()})

    def _heartbeat(self) -> None:
        self._last_heartbeat = time.monotonic()
        counters = dict(self.service.counters)
        groups: dict[str, dict[str, int]] = {}
        if self.consumer is not None:
            stats = self.consumer.stats
            others = self.service.other_consumers_totals()
            counters.update(
                processed=stats.processed + others.get("processed", 0),
                duplicates=stats.duplicates + others.get("duplicates", 0),
                errors=stats.errors + others.get("errors", 0),
                dead_lettered=stats.dead_lettered + others.get("dead_lettered", 0),
                reclaimed=stats.reclaimed + others.get("reclaimed", 0),
                last_event_ms=max(stats.last_event_ms or 0, others.get("last_event_ms", 0)),
            )
            groups = self.consumer.group_info()
            for stream, info in groups.items():
                metrics.LAG.labels(self.ctx.name, stream).set(info["lag"])
                metrics.PENDING.labels(self.ctx.name, stream).set(info["pending"])
            if counters["last_event_ms"]:
                metrics.LAST_EVENT.labels(self.ctx.name).set(counters["last_event_ms"] / 1000)
        record = HeartbeatRecord(
            component=self.ctx.name,
            pod=self.ctx.pod,
            time_ms=int(time.time() * 1000),
            started_ms=self.started_ms,
            state=self._state,
            code_version=self.ctx.settings.code_version,
            image_digest=self.ctx.settings.image_digest,
            model_digest=self.service.model_digest,
            control_generation=max(self.applied_generation, 0),
            counters=counters,
            groups=groups,
        )
        try:
            write_heartbeat(self.ctx.client, self.ctx.keys, record)
        except redis.RedisError as error:
            log.warning("heartbeat failed", extra={"error": str(error)})


ServiceFactory = Callable[[ComponentContext], Service]
