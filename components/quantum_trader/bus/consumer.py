"""The consumer loop of one component: read its groups, validate, step exactly once, reclaim, DLQ.

Delivery is at-least-once; the stage step makes effects exactly-once. A message that fails
validation, or fails ``max_deliveries`` times, goes to ``<stream>.dlq`` with its reason and is acked.
No entry, whatever its bytes, makes the loop raise: one that did would stay pending and crash the
component again on every restart. With an :class:`Admission` (the runtime passes the policy's), an
entry about a symbol its stream does not admit goes to the DLQ too, before any handler keeps state
for it (see ``contracts/admission.py`` for which symbols each stream admits, and why).

Round trips per batch, not per message: the done keys of a whole XREADGROUP batch are checked with
one EXISTS of all of them before any handler runs (a pipelined EXISTS per key only when some are
done; a message already done is only acked, all of them in one XACK). The check is an
optimization, not the guarantee: every stage script checks its done key
again atomically, so a message that became done after the check is still applied once. The check
only spares a redelivered message its handler. A handler marked :func:`no_done_precheck` goes
without it (one round trip less per batch): one whose effects all go through its stage step or its
own stage script (which find the done key), or one that checks the done key itself in its own first
read — as apply-layer must, right before any order, since an order is an effect outside Redis. A
message id seen twice in one batch is checked again on its own.

A handler marked :func:`independent_steps` (its messages never read what the steps of the same
batch write) has its steps applied together: one script call for up to ``STEP_FLUSH`` messages or
once the first deferred step has waited ``STEP_WAIT`` seconds (counted from when it was deferred, not
from when its message was read: a handler that itself takes longer than ``STEP_WAIT``, as
apply-layer's order does, would otherwise flush every step alone). The call applies each step
exactly as its own script would (done key, guards, writes, outputs) and acks them with one XACK; it
is atomic, so a process killed around it leaves each message applied or not, never half a batch
(``StepRunner.run_many``). Handlers that read their own stage's writes (say position-state, whose
heat builds on the previous step's totals) are stepped one by one.

The steps a batch ends with — the last message's of a handler stepped one by one, the last
deferred ones of an ``independent_steps`` handler — go in the pipeline of the consumer's next
XREADGROUP instead of a round trip of their own. Redis runs the pipeline in order, so they are
applied before the read, as they were before it; their outcomes are settled (a conflict recomputed)
before any entry the read brought is handled. ``poll_once`` keeps reading this way for at most
``TAIL_CHAIN_SECONDS`` and never returns with a step unapplied, so a caller sees every effect of the
entries it counted.

A handler wrapped in :class:`Prepared` gets the batch's messages once, before it runs for each of
them, so that what it reads (or a script it runs) for every message goes in one round trip for the
batch: intent-bridge reads the positions' sides, the governor decides every plan of the batch in one
pipeline of its scripts. The handler itself still runs for each message and must not rely on the
preparation (a reclaimed entry, or a preparation that failed, is handled without it).

The consumer talks to Redis over a connection of its own (``single_connection_client``) instead of
checking one out of the pool for every command: a checkout costs a lock and a poll of the socket per
command, and the loop is single-threaded anyway. The read that carries the last steps goes on that
connection too (:func:`own_connection_pipeline`): paced, that is one round trip per message, and a
redis-py pipeline costs about five times the sending itself. The rarer pipelines (done keys of a
batch some of which are done, admission's position checks, the DLQ) still take one from the pool.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from quantum_trader.bus.codec import text
from quantum_trader.bus.step import Step, StepOutcome, StepRunner
from quantum_trader.contracts.admission import Admission
from quantum_trader.contracts.envelope import Envelope, dead_letter_record, decode
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
HandlerT = TypeVar("HandlerT", bound=Callable)
"""A handler returns the Step the consumer applies exactly once, or — when it ran its own stage script
(the governor's Lua decides and steps in one call) — that script's StepOutcome."""


def no_done_precheck(handler: HandlerT) -> HandlerT:
    """Mark a handler the consumer calls without checking the batch's done keys first.

    Allowed when running it for a message that is already done has no effect but its step (or its
    own stage script), which finds the done key and only acks — or when the handler reads
    ``done:<group>:<message id>`` itself before any other effect and returns an empty :class:`Step`
    when it is set (apply-layer, position-state: in the same round trip as their first read).
    """
    handler.no_done_precheck = True  # type: ignore[attr-defined]
    return handler


def independent_steps(handler: HandlerT) -> HandlerT:
    """Mark a handler whose messages of one batch may be stepped together (see the module doc)."""
    handler.independent_steps = True  # type: ignore[attr-defined]
    return handler


@dataclass(frozen=True, slots=True)
class Prepared:
    """A handler with a preparation for its whole batch (see the module doc).

    ``prepare`` gets the envelopes and deliveries of the batch's messages that will be handled, in
    order, once per batch; ``handle`` then runs for each of them as any handler does. The handler's
    markers (:func:`no_done_precheck`, :func:`independent_steps`) are read from ``handle``.
    """

    handle: Handler
    prepare: Callable[[list[Envelope], list[Delivery]], None]

    def __call__(self, envelope: Envelope, delivery: Delivery) -> Step | StepOutcome | None:
        return self.handle(envelope, delivery)

    @property
    def no_done_precheck(self) -> bool:
        return bool(getattr(self.handle, "no_done_precheck", False))

    @property
    def independent_steps(self) -> bool:
        return bool(getattr(self.handle, "independent_steps", False))


def dedicated_connection(client: redis.Redis) -> redis.Redis:
    """A client on ``client``'s pool that keeps one connection for every command (not for pipelines).

    A pool checkout finds a connection the server dropped and opens a new one before the command; a
    kept connection learns it only when the command fails, so it reconnects and sends the command once
    more. Every command the consumer sends on it may be sent twice: reads, XACK, and stage steps (a
    step already applied finds its done key).
    """
    if client.connection is not None:  # already a single-connection client
        return client
    own = redis.Redis(connection_pool=client.connection_pool, single_connection_client=True)
    own.connection.retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
    return own


def own_connection_pipeline(client: redis.Redis, commands: list[tuple]) -> list:
    """Send ``commands`` in one round trip on ``client``'s kept connection; their replies, in order.

    What a pipeline does, without its pool checkout (a lock and a poll of the socket), its objects and
    its reset, which cost several times the sending itself; the consumer's paced path sends one such
    round trip per message. A command's error reply comes back as its exception, as with
    ``execute(raise_on_error=False)``. The connection dropped while sending: reconnected and sent once
    more (as :func:`dedicated_connection` does for a command; everything the consumer sends that way may
    be applied twice). Anything else going wrong midway closes the connection, so no reply is left unread.
    """
    connection = client.connection
    if connection is None:
        raise ValueError("own_connection_pipeline needs a client with a kept connection (dedicated_connection)")
    packed = connection.pack_commands(commands)
    with getattr(client, "single_connection_lock", None) or contextlib.nullcontext():
        for attempt in range(2):
            try:
                connection.send_packed_command(packed)
                replies: list = []
                for command in commands:
                    try:
                        replies.append(client.parse_response(connection, command[0]))
                    except redis.ResponseError as error:
                        replies.append(error)
                return replies
            except redis.ConnectionError:
                connection.disconnect()
                if attempt:
                    raise
            except BaseException:
                connection.disconnect()
                raise
    raise AssertionError("unreachable")


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


@dataclass(slots=True)
class _Pending:
    """One decoded message of a batch on its way through the handler."""

    envelope: Envelope
    delivery: Delivery
    started: float
    ended: float = 0.0
    """when its handling ended, if its step's outcome is learnt later (sent with the next read)"""


class StreamConsumer:
    MAX_CONFLICT_RETRIES = 20
    STEP_FLUSH = 20
    STEP_WAIT = 0.005
    TAIL_CHAIN_SECONDS = 0.05
    """how long one ``poll_once`` keeps sending a batch's last steps with the next read before it
    sends them alone and returns (the runner's kill-switch and heartbeat work waits meanwhile)"""
    """independent steps are applied at least every ``STEP_FLUSH`` messages, and as soon as the first
    of them has waited ``STEP_WAIT`` seconds: deferring saves round trips, not latency"""

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
        admission: Admission | None = None,
    ) -> None:
        self.client = dedicated_connection(client)
        self.keys = keys
        self.group = group
        self.consumer = consumer
        self.handlers = handlers
        self.retention = retention
        self.batch = batch
        self.stats = ConsumerStats()
        self.steps = StepRunner(self.client, keys, group, retention.max_len, retention.done_ttl_seconds)
        self._observer = observer
        self.admission = admission
        self._stream_of_key = {keys.stream(s): s for s in handlers}
        self._backlog = True
        self._backlog_cursor = {keys.stream(s): "0" for s in handlers}
        self._last_reclaim = 0.0
        self._tail: list[tuple[_Pending, Step]] = []
        """the last batch's steps not applied yet: they go in the next read's pipeline"""

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
            self._flush_tail()
            if handled:
                return handled
            self._backlog = False
        handled = self._read(">", block_ms)
        chain_until = time.monotonic() + self.TAIL_CHAIN_SECONDS
        while self._tail and time.monotonic() < chain_until:
            handled += self._read(">", block_ms)
        self._flush_tail()  # never return with a step unapplied
        return handled

    def _read(self, start_id: str | None, block_ms: int | None) -> int:
        """``start_id`` None reads this consumer's own pending entries after the backlog cursor.

        The last batch's steps not applied yet go first in the same pipeline: Redis applies them
        before the read, as a round trip of their own would, so the next handler sees their writes.
        """
        streams = dict(self._backlog_cursor) if start_id is None else {k: start_id for k in self._backlog_cursor}
        if self._tail:
            response = self._read_after_tail(streams, block_ms)
        else:
            response = self.client.xreadgroup(self.group, self.consumer, streams, count=self.batch, block=block_ms)
        handled = 0
        for stream_key, entries in response or []:
            key = text(stream_key)
            batch: list[tuple[str, dict, int]] = []
            for entry_id, fields in entries:
                if not fields:  # deleted by trimming while pending
                    self._ack(key, entry_id)
                    continue
                deliveries = 1
                if start_id is None:
                    deliveries = self._deliveries(key, entry_id)
                    self._backlog_cursor[key] = text(entry_id)
                batch.append((text(entry_id), fields, deliveries))
                handled += 1
            self.handle_batch(self._stream_of_key[key], batch, carry=start_id is not None)
        return handled

    def _read_after_tail(self, streams: dict[str, str], block_ms: int | None) -> list:
        """The tail's steps and the read in one pipeline; the steps' outcomes are settled before any entry."""
        tail = list(self._tail)
        self._tail.clear()
        calls = [(step, p.envelope.id, p.delivery.stream, self.group, p.delivery.entry_id) for p, step in tail]
        self.steps.ensure_loaded()
        keys, payload = self.steps.batch_call(calls)
        read = ["GROUP", self.group, self.consumer, "COUNT", str(self.batch)]
        if block_ms is not None:
            read += ["BLOCK", str(block_ms)]
        read += ["STREAMS", *streams, *streams.values()]
        try:
            replies = own_connection_pipeline(
                self.client, [("EVALSHA", self.steps.sha, len(keys), *keys, payload), ("XREADGROUP", *read)]
            )
        except Exception as error:  # the connection dropped: the steps stay pending, reclaim retries them
            self._settle(tail, [error] * len(tail))
            raise
        self._settle(tail, self.steps.batch_outcomes(replies[0], len(tail)))
        if isinstance(replies[-1], Exception):
            raise replies[-1]
        return replies[-1]

    def handle_batch(self, stream: str, batch: list[tuple[str, dict, int]], *, carry: bool = False) -> None:
        """Handle ``(entry_id, fields, deliveries)`` entries of one stream, in order (see the module doc).

        ``carry``: the batch's last steps may be left for the next read's pipeline (``poll_once``
        sends them before it returns); otherwise every step is applied before this returns.
        """
        self._flush_tail()  # another stream's: applied before any handler of this batch reads
        pending: list[_Pending] = []
        for entry_id, fields, deliveries in batch:
            started = time.perf_counter()
            envelope = self._validated(stream, entry_id, fields, deliveries)
            if envelope is not None:
                pending.append(_Pending(envelope, Delivery(stream, entry_id, deliveries), started))
        pending = self._admitted(stream, pending, {entry_id: fields for entry_id, fields, _ in batch})
        if not pending:
            return
        stream_key = self.keys.stream(stream)
        handler = self.handlers[stream]
        if getattr(handler, "no_done_precheck", False):
            done = [False] * len(pending)
        else:
            done = self._done_flags([p.envelope.id for p in pending])
        together = bool(getattr(handler, "independent_steps", False))
        if isinstance(handler, Prepared):
            self._prepare(handler, [item for item, already_done in zip(pending, done, strict=True) if not already_done])
        acks: list[str] = []
        deferred: list[tuple[_Pending, Step]] = []
        deferred_since = 0.0
        seen: set[str] = set()
        for item, already_done in zip(pending, done, strict=True):
            item.started = time.perf_counter()
            if already_done:
                acks.append(item.delivery.entry_id)
                self.stats.duplicates += 1
                self.stats.last_event_ms = int(time.time() * 1000)
                self._observe(stream, "duplicate", item.started)
                continue
            repeated = item.envelope.id in seen
            seen.add(item.envelope.id)
            if repeated:  # the same message twice in one batch: the first one's step must be applied first
                self._flush(deferred)
            if not together or repeated:
                if carry and not repeated and item is pending[-1]:
                    self._run_later(handler, item)
                else:
                    self._run(item, checked=not repeated)
                continue
            step = self._handled(handler, item)
            if step is None:
                continue
            if not deferred:
                deferred_since = time.perf_counter()
            deferred.append((item, step))
            if len(deferred) >= self.STEP_FLUSH or time.perf_counter() - deferred_since >= self.STEP_WAIT:
                self._flush(deferred)
        if carry:
            ended = time.perf_counter()
            for item, _ in deferred:
                item.ended = ended
            self._tail.extend(deferred)
            deferred.clear()
        self._flush(deferred)
        if acks:
            self.client.xack(stream_key, self.group, *acks)

    def _handled(self, handler: Handler, item: _Pending) -> Step | None:
        """Run the handler once; the Step to apply later, or None when nothing is left to apply.

        A failure leaves the message pending; a handler that ran its own step is counted here (its
        conflict is recomputed at once, on its own).
        """
        try:
            answer = handler(item.envelope, item.delivery)
        except Exception as error:
            self._failed(item, error)
            return None
        if isinstance(answer, StepOutcome):  # the handler ran its own step
            if answer is StepOutcome.CONFLICT:
                self._run(item, checked=True)
            else:
                self._finish(item, answer)
            return None
        return answer or Step()

    def _run_later(self, handler: Handler, item: _Pending) -> None:
        """Handle the batch's last message now; its step goes with the next read (see ``_read``)."""
        step = self._handled(handler, item)
        if step is not None:
            item.ended = time.perf_counter()
            self._tail.append((item, step))

    def _flush_tail(self) -> None:
        if self._tail:
            self._flush(self._tail)

    def _prepare(self, handler: Prepared, items: list[_Pending]) -> None:
        """The handler's preparation for the batch; a failure only costs its round trip (see the module doc)."""
        if not items:
            return
        try:
            handler.prepare([item.envelope for item in items], [item.delivery for item in items])
        except Exception as error:  # each message is then handled without it
            log.warning("batch preparation failed", extra={"error": f"{type(error).__name__}: {error}"})

    def _validated(self, stream: str, entry_id: str, fields: dict, deliveries: int) -> Envelope | None:
        """The message, or None when it went to the DLQ (too many deliveries, or invalid)."""
        if deliveries > self.retention.max_deliveries:
            reason = f"delivered {deliveries} times (max {self.retention.max_deliveries})"
            if self.stats.last_error:
                reason += f"; last error: {self.stats.last_error}"
            self.dead_letter(stream, entry_id, fields, reason, deliveries)
            return None
        try:
            return decode(fields, message_of(stream))
        except Exception as error:  # decode says InvalidMessage for everything; anything else is input too
            self.dead_letter(stream, entry_id, fields, str(error) or type(error).__name__, deliveries)
            return None

    def _admitted(self, stream: str, pending: list[_Pending], fields_of: dict[str, dict]) -> list[_Pending]:
        """The messages whose symbol the stream admits; the others go to the DLQ with the reason.

        Open positions are looked up only for symbols outside the allowlist, all of a batch in one round trip.
        """
        admission = self.admission
        if admission is None or not pending:
            return pending
        symbols = {p.envelope.symbol for p in pending}
        doubtful = sorted(s for s in symbols if admission.needs_position_check(stream, s))
        held: set[str] = set()
        if doubtful:
            with self.client.pipeline(transaction=False) as pipe:
                for symbol in doubtful:
                    pipe.hexists(self.keys.open_positions, symbol)
                held = {symbol for symbol, found in zip(doubtful, pipe.execute(), strict=True) if found}
        admitted = []
        for item in pending:
            symbol = item.envelope.symbol
            reason = admission.refusal(stream, symbol, has_position=symbol in held)
            if reason is None:
                admitted.append(item)
            else:
                entry_id = item.delivery.entry_id
                self.dead_letter(stream, entry_id, fields_of.get(entry_id, {}), reason, item.delivery.deliveries)
        return admitted

    def _done_flags(self, message_ids: list[str]) -> list[bool]:
        """Which messages are already done: one EXISTS of every done key of the batch, which counts them.

        Usually none is (a batch of new messages): that one command answers for all of them. Only when
        some are does a pipelined EXISTS per key say which.
        """
        done_keys = [self.keys.done(self.group, message_id) for message_id in message_ids]
        if not self.client.exists(*done_keys):
            return [False] * len(done_keys)
        with self.client.pipeline(transaction=False) as pipe:
            for done_key in done_keys:
                pipe.exists(done_key)
            return [bool(n) for n in pipe.execute()]

    def _flush(self, deferred: list[tuple[_Pending, Step]]) -> None:
        """Apply the deferred steps in one round trip; a conflict is recomputed on its own."""
        if not deferred:
            return
        items = list(deferred)
        deferred.clear()
        calls = [(step, p.envelope.id, p.delivery.stream, self.group, p.delivery.entry_id) for p, step in items]
        try:
            outcomes: list[StepOutcome | Exception] = self.steps.run_many(calls)
        except Exception as error:  # e.g. the connection dropped: every one stays pending, reclaim retries
            outcomes = [error] * len(items)
        self._settle(items, outcomes)

    def _settle(self, items: list[tuple[_Pending, Step]], outcomes: list[StepOutcome | Exception]) -> None:
        """Count applied steps; a conflict, or a script the server did not know, is recomputed on its own."""
        for (item, _), outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, redis.exceptions.NoScriptError):  # a restarted server: its own call loads it
                self._run(item, checked=False)
            elif isinstance(outcome, Exception):
                self._failed(item, outcome)
            elif outcome is StepOutcome.CONFLICT:
                self._run(item, checked=False)
            else:
                self._finish(item, outcome)

    def _run(self, item: _Pending, *, checked: bool) -> None:
        """Handle and step one message on its own (``checked``: its done key was just found absent)."""
        try:
            outcome = self._step(item.envelope, item.delivery, checked=checked)
        except Exception as error:  # a handler bug or Redis hiccup: leave pending, reclaim retries
            self._failed(item, error)
            return
        self._finish(item, outcome)

    def _failed(self, item: _Pending, error: Exception) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{type(error).__name__}: {error}"[:300]
        log.error(
            "handler failed",
            exc_info=error,
            extra={"stream": item.delivery.stream, "entry": item.delivery.entry_id, "msg_id": item.envelope.id},
        )
        self._observe(item.delivery.stream, "error", item.started)

    def _finish(self, item: _Pending, outcome: StepOutcome) -> None:
        stream = item.delivery.stream
        self.stats.last_event_ms = int(time.time() * 1000)
        if outcome is StepOutcome.DUPLICATE:
            self.stats.duplicates += 1
            self._observe(stream, "duplicate", item.started, item.ended)
        else:
            self.stats.processed += 1
            self.stats.per_stream[stream] = self.stats.per_stream.get(stream, 0) + 1
            self._observe(stream, "processed", item.started, item.ended)

    def handle_entry(self, stream: str, entry_id: str, fields: dict, deliveries: int) -> None:
        """Handle one entry on its own (reclaimed entries; tests), checking its done key first."""
        started = time.perf_counter()
        envelope = self._validated(stream, entry_id, fields, deliveries)
        if envelope is None:
            return
        for item in self._admitted(
            stream, [_Pending(envelope, Delivery(stream, entry_id, deliveries), started)], {entry_id: fields}
        ):
            self._run(item, checked=False)

    def _step(self, envelope: Envelope, delivery: Delivery, *, checked: bool = False) -> StepOutcome:
        handler = self.handlers[delivery.stream]
        for attempt in range(self.MAX_CONFLICT_RETRIES):
            if not (checked and attempt == 0) and self.client.exists(self.keys.done(self.group, envelope.id)):
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
                cursor, entries = text(reply[0]), reply[1]
                for entry_id, fields in entries:
                    if fields is None:
                        self._ack(key, entry_id)
                        continue
                    claimed += 1
                    self.stats.reclaimed += 1
                    self.handle_entry(stream, text(entry_id), fields, self._deliveries(key, entry_id))
                if cursor == "0-0" or not entries:
                    break
        return claimed

    def dead_letter(self, stream: str, entry_id: str, fields: dict, reason: str, deliveries: int) -> None:
        started = time.perf_counter()
        dlq_fields = dead_letter_record(
            reason=reason,
            stream=stream,
            entry_id=entry_id,
            group=self.group,
            deliveries=deliveries,
            fields=fields,
            time_ms=int(time.time() * 1000),
        )
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
                if text(group.get("name", b"")) == self.group:
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

    def _observe(self, stream: str, outcome: str, started: float, ended: float = 0.0) -> None:
        if self._observer is not None:
            self._observer(stream, outcome, (ended or time.perf_counter()) - started)
