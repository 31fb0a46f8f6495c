"""The consumer loop of one component: read its groups, validate, step exactly once, reclaim, DLQ.

Delivery is at-least-once; the stage step makes effects exactly-once. A message that fails
validation, or fails ``max_deliveries`` times, goes to ``<stream>.dlq`` with its reason and is acked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from quantum_trader.bus.step import Step, StepOutcome, StepRunner
from quantum_trader.contracts.envelope import Envelope, InvalidMessage, decode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import StreamRetention
from quantum_trader.contracts.registry import message_of

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    stream: str
    entry_id: str
    deliveries: int


Handler = Callable[[Envelope, Delivery], "Step | StepOutcome | None"]
"""A handler returns the Step the consumer applies exactly once, or — when it ran its own stage script
(the governor's Lua decides and steps in one call) — that script's StepOutcome."""


class StepConflict(Exception):
    """The step's guards failed: state moved under the handler; it is recomputed."""


@dataclass
class ConsumerStats:
    processed: int = 0
    duplicates: int = 0
    errors: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    last_event_ms: int = 0
    last_error: str = ""
    per_stream: dict[str, int] = field(default_factory=dict)


Observer = Callable[[str, str, float], None]
"""(stream, outcome, seconds) for metrics: outcome is processed | duplicate | error | dlq"""


class StreamConsumer:
    MAX_CONFLICT_RETRIES = 20

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        group: str,
        consumer: str,
        handlers: dict[str, Handler],
        retention: StreamRetention,
        *,
        batch: int = 100,
        observer: Observer | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.group = group
        self.consumer = consumer
        self.handlers = handlers
        self.retention = retention
        self.batch = batch
        self.stats = ConsumerStats()
        self.steps = StepRunner(client, keys, group, retention.max_len, retention.done_ttl_seconds)
        self._observer = observer
        self._stream_of_key = {keys.stream(s): s for s in handlers}
        self._backlog = True
        self._backlog_cursor = {keys.stream(s): "0" for s in handlers}
        self._last_reclaim = 0.0

    # --- groups -------------------------------------------------------------------------------
    def ensure_groups(self) -> None:
        """Create this component's group on every input stream (idempotent; MKSTREAM)."""
        for stream in self.handlers:
            try:
                self.client.xgroup_create(self.keys.stream(stream), self.group, id="0", mkstream=True)
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    # --- the loop -----------------------------------------------------------------------------
    def poll_once(self, block_ms: int = 1000) -> int:
        """Read and handle up to ``batch`` entries per stream; first this consumer's own pending backlog."""
        if time.monotonic() - self._last_reclaim > max(self.retention.claim_idle_ms / 2000, 0.5):
            self._last_reclaim = time.monotonic()
            self.reclaim()
        if self._backlog:
            handled = self._read(None, None)
            if handled:
                return handled
            self._backlog = False
        return self._read(">", block_ms)

    def _read(self, start_id: str | None, block_ms: int | None) -> int:
        """``start_id`` None reads this consumer's own pending entries after the backlog cursor."""
        streams = dict(self._backlog_cursor) if start_id is None else {k: start_id for k in self._backlog_cursor}
        response = self.client.xreadgroup(self.group, self.consumer, streams, count=self.batch, block=block_ms)
        handled = 0
        for stream_key, entries in response or []:
            key = _text(stream_key)
            for entry_id, fields in entries:
                if not fields:  # deleted by trimming while pending
                    self._ack(key, entry_id)
                    continue
                deliveries = 1
                if start_id is None:
                    deliveries = self._deliveries(key, entry_id)
                    self._backlog_cursor[key] = _text(entry_id)
                self.handle_entry(self._stream_of_key[key], _text(entry_id), fields, deliveries)
                handled += 1
        return handled

    def handle_entry(self, stream: str, entry_id: str, fields: dict, deliveries: int) -> None:
        started = time.perf_counter()
        if deliveries > self.retention.max_deliveries:
            reason = f"delivered {deliveries} times (max {self.retention.max_deliveries})"
            if self.stats.last_error:
                reason += f"; last error: {self.stats.last_error}"
            self.dead_letter(stream, entry_id, fields, reason, deliveries)
            return
        try:
            envelope = decode(fields, message_of(stream))
        except InvalidMessage as error:
            self.dead_letter(stream, entry_id, fields, str(error), deliveries)
            return
        delivery = Delivery(stream, entry_id, deliveries)
        try:
            outcome = self._step(envelope, delivery)
        except Exception as error:  # a handler bug or Redis hiccup: leave pending, reclaim retries
            self.stats.errors += 1
            self.stats.last_error = f"{type(error).__name__}: {error}"[:300]
            log.exception("handler failed", extra={"stream": stream, "entry": entry_id, "msg_id": envelope.id})
            self._observe(stream, "error", started)
            return
        self.stats.last_event_ms = int(time.time() * 1000)
        if outcome is StepOutcome.DUPLICATE:
            self.stats.duplicates += 1
            self._observe(stream, "duplicate", started)
        else:
            self.stats.processed += 1
            self.stats.per_stream[stream] = self.stats.per_stream.get(stream, 0) + 1
            self._observe(stream, "processed", started)

    def _step(self, envelope: Envelope, delivery: Delivery) -> StepOutcome:
        handler = self.handlers[delivery.stream]
        for _ in range(self.MAX_CONFLICT_RETRIES):
            if self.client.exists(self.keys.done(self.group, envelope.id)):
                self._ack(self.keys.stream(delivery.stream), delivery.entry_id)
                return StepOutcome.DUPLICATE
            answer = handler(envelope, delivery)
            if isinstance(answer, StepOutcome):
                if answer is StepOutcome.CONFLICT:
                    continue
                return answer
            step = answer or Step()
            outcome = self.steps.run(
                step,
                message_id=envelope.id,
                input_stream=delivery.stream,
                group=self.group,
                entry_id=delivery.entry_id,
            )
            if outcome is not StepOutcome.CONFLICT:
                return outcome
        raise StepConflict(f"state kept changing under message {envelope.id}")

    # --- reclaim and DLQ ----------------------------------------------------------------------
    def reclaim(self) -> int:
        """Take over entries idle longer than ``claim_idle_ms`` from dead consumers (XAUTOCLAIM)."""
        claimed = 0
        for stream in self.handlers:
            key = self.keys.stream(stream)
            cursor = "0-0"
            while True:
                try:
                    reply = self.client.xautoclaim(
                        key, self.group, self.consumer, self.retention.claim_idle_ms, start_id=cursor, count=self.batch
                    )
                except redis.ResponseError as error:
                    if "NOGROUP" in str(error):
                        self.ensure_groups()
                        break
                    raise
                cursor, entries = _text(reply[0]), reply[1]
                for entry_id, fields in entries:
                    if fields is None:
                        self._ack(key, entry_id)
                        continue
                    claimed += 1
                    self.stats.reclaimed += 1
                    self.handle_entry(stream, _text(entry_id), fields, self._deliveries(key, entry_id))
                if cursor == "0-0" or not entries:
                    break
        return claimed

    def dead_letter(self, stream: str, entry_id: str, fields: dict, reason: str, deliveries: int) -> None:
        started = time.perf_counter()
        record = {(_text(k)): _text(v) for k, v in fields.items()}
        dlq_fields = {
            "reason": reason,
            "stream": stream,
            "entry_id": entry_id,
            "group": self.group,
            "deliveries": str(deliveries),
            "time": str(int(time.time() * 1000)),
            **{f"orig.{k}": v for k, v in record.items()},
        }
        with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.dlq(stream), dlq_fields, maxlen=self.retention.max_len, approximate=True)
            pipe.xack(self.keys.stream(stream), self.group, entry_id)
            pipe.execute()
        self.stats.dead_lettered += 1
        log.warning("dead-lettered", extra={"stream": stream, "entry": entry_id, "reason": reason})
        self._observe(stream, "dlq", started)

    def group_info(self) -> dict[str, dict[str, int]]:
        """Lag and pending of this component's group on each input stream (XINFO GROUPS)."""
        info: dict[str, dict[str, int]] = {}
        for stream in self.handlers:
            try:
                groups = self.client.xinfo_groups(self.keys.stream(stream))
            except redis.ResponseError:
                continue
            for group in groups:
                if _text(group.get("name", b"")) == self.group:
                    lag = group.get("lag")
                    info[stream] = {"lag": int(lag) if lag is not None else -1, "pending": int(group.get("pending", 0))}
        return info

    # --- helpers ------------------------------------------------------------------------------
    def _deliveries(self, stream_key: str, entry_id: bytes | str) -> int:
        reply = self.client.xpending_range(stream_key, self.group, min=entry_id, max=entry_id, count=1)
        if not reply:
            return 1
        return int(reply[0]["times_delivered"])

    def _ack(self, stream_key: str, entry_id: bytes | str) -> None:
        self.client.xack(stream_key, self.group, entry_id)

    def _observe(self, stream: str, outcome: str, started: float) -> None:
        if self._observer is not None:
            self._observer(stream, outcome, time.perf_counter() - started)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
