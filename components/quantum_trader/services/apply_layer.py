"""apply-layer: ``apply.approved`` -> orders -> ``apply.result``. The only sender of orders (invariant 1).

An order reaches the exchange at most once per plan, even across crashes: the client order id is
derived from the plan id, an in-flight marker is set before sending, and any redelivery (or marker)
queries the order by that id before anything is resubmitted — or refused: an order found there is
reported as what the exchange did with it, even if the approval expired or the kill switch was
engaged meanwhile, so a fill is never lost (docs/EXECUTION.md, "Redelivery").

An exchange unreachable at start, or lost later (connection refused or dropped), is waited for
(retried with backoff, /readyz not ready, no approval read, nothing sent); apply-layer never exits
for it, and an approval in hand stays pending, to be looked up first once the exchange is back.

Per order: one Redis round trip checks the message is not done yet, reads the kill switch and the
position's quantity and sets the in-flight marker (``SET ... GET``: whether it was already set
comes back in the same trip); one HTTP request sends the order, plus one to set leverage only when
the plan wants another leverage than the symbol has (read for every symbol at start, then
remembered). The fee is the filled notional times the account's taker commission rate, read once
per symbol (``GET /fapi/v1/commissionRate``) and refreshed hourly, instead of a ``userTrades``
request per order. The stage step writes the result (the steps of a batch go to Redis together:
``bus.consumer.independent_steps``).

An approval that goes to the DLQ (undecodable or invalid, or delivered ``max_deliveries`` times)
gets no result, so position-state never releases what the governor reserved for it. apply-layer
follows its DLQ (group ``apply-layer.release``, at most every ``DLQ_RELEASE_SECONDS``) and releases
the reservation, the entry lock and the exit lock of the plan when both hold:
- the plan is identified: the dead-lettered entry's envelope id is the governor's ``apr:<plan id>``
  (the one approval the governor ever writes for a plan; the id is read even when the data is not);
- no order can exist for it: its in-flight marker is absent. The marker is set (7 days) in the same
  round trip that precedes any request, so without it no attempt ever got as far as sending. With
  it, an order may have filled: the reservation is kept, counted (``dead_letter_reservation_kept``)
  and logged, since releasing it would let the governor admit past its limits while a position may
  be real. Nothing releases it automatically then: the reconciler is what finds such a position at
  the exchange, and an operator deletes the plan's field of ``governor:reservations`` (and its lock)
  once the position is accounted for.
An entry whose envelope id is missing or not ``apr:...`` cannot be tied to a plan: nothing is
released (counted as ``dead_letter_unidentified``), its reservation stays until an operator deletes it.

Several orders in flight (``QT_APPLY_IN_FLIGHT``, default ``DEFAULT_IN_FLIGHT``): besides the
runner's consumer, the process runs that many minus one more consumers of the same group in
threads (consumer names ``<pod>~1``, ``<pod>~2``, ...), each reading ``WORKER_BATCH`` approvals at
a time. To Redis and the exchange they are replicas: every rule above holds for each order as it
does across replicas — the done key, kill switch and marker are read right before each request,
the client order id makes a second order for a plan impossible, a redelivery is looked up first,
and a worker's pending approvals are its own backlog after a restart (same pod) or reclaimed
(XAUTOCLAIM) otherwise. In the process, one symbol has at most one order at the exchange at a
time (``_symbol_lock``, held from the state read to the answer). The governor allows at most one
entry and one exit per symbol in flight at all; which of two such approvals of one symbol, taken by
two consumers at once, goes first is not the stream's order — as with two replicas (within one
consumer it is). The HTTP requests run on one kept-alive connection per thread
(``exchange.transport``), so they wait for the exchange side by side.

A read batch's orders go out together (``send_batch``, ``BATCH_ORDERS``): the batch's states are
read in one pipeline and decided as ``on_approval`` decides them, the markers of exactly the orders
to send are set, and those orders go in ``POST /fapi/v1/batchOrders`` calls of up to 5 — each a
symbol's first approval of the batch (its later ones wait for it, in order), a first delivery, a
plain MARKET send with no leverage to set. Each order keeps its own answer: a fill, or a refusal of
that order alone. Everything else — redeliveries, refusals, leverage changes, orders a whole failed
batch request left unanswered (their markers are set: looked up first) — goes through
``on_approval`` one by one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

import redis

from quantum_trader.bus.codec import text, text_dict
from quantum_trader.bus.consumer import (
    Delivery,
    Handler,
    Prepared,
    StreamConsumer,
    independent_steps,
    no_done_precheck,
)
from quantum_trader.bus.control import ControlState, parse_control
from quantum_trader.bus.step import Step, StepOutcome, StepRunner
from quantum_trader.contracts.admission import Admission
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.messages import Approval, ExecutionResult, PositionSide, ResultStatus
from quantum_trader.contracts.registry import DLQ_SUFFIX
from quantum_trader.exchange.client import MAX_BATCH_ORDERS, CommissionRate, ExchangeClient, MarketOrder
from quantum_trader.exchange.connect import exchange_client
from quantum_trader.exchange.errors import DISCONNECTED, ConditionalOrderRefused, ExchangeError
from quantum_trader.exchange.filters import SymbolFilters
from quantum_trader.exchange.models import OrderResult
from quantum_trader.exchange.order_ids import client_order_id
from quantum_trader.execution.gateway import LookUp, Refuse, Report, Send, decide_order, has_fill, maybe_sent
from quantum_trader.runtime import metrics
from quantum_trader.runtime.service import ComponentContext, Service

IN_FLIGHT_TTL_SECONDS = 7 * 86400
FILTERS_REPUBLISH_SECONDS = 10.0
"""while an allowlisted symbol has no exchange rules (not priced yet), look again this often; each look
that finds nothing new doubles the wait, up to ``FILTERS_REPUBLISH_MAX_SECONDS``"""
FILTERS_REPUBLISH_MAX_SECONDS = 60.0
FILTERS_MISS_SECONDS = 1.0
"""an approval for a symbol without rules re-reads exchangeInfo at most this often"""
COMMISSION_REFRESH_SECONDS = 3600.0
START_WARM_SECONDS = 15.0
"""paper mode: start() reads the commission rates of the tradable allowlist for at most this long"""
IDLE_WARM_SECONDS = 0.02
"""time idle() may spend per call reading commission rates (the loop must keep serving approvals)"""
STALE_SCAN_SECONDS = 60.0
EXCHANGE_RETRY_FIRST_SECONDS = 0.5
EXCHANGE_RETRY_MAX_SECONDS = 30.0
"""an exchange unreachable at start is tried again after 0.5 s, doubling up to 30 s"""
BATCH_ORDERS = True
"""send a read batch's orders together (``send_batch``, batchOrders of up to 5); False: one by one"""
BATCH_REQUESTS_IN_FLIGHT = 4
"""batchOrders requests of one read batch sent side by side"""
DLQ_RELEASE_SECONDS = 1.0
"""how often apply-layer looks at its DLQ for reservations to release"""
DLQ_RELEASE_BATCH = 100
APPROVAL_ID_PREFIX = "apr:"
"""the governor's approval envelope id is ``apr:<plan id>`` (governor.approval_id)"""
DEFAULT_IN_FLIGHT = 4
"""orders one process has in flight at most (``QT_APPLY_IN_FLIGHT``: 1 to ``MAX_IN_FLIGHT``)"""
MAX_IN_FLIGHT = 16
WORKER_BATCH = 5
"""approvals a worker consumer reads at a time: few, so the approvals are spread over the consumers"""
WORKER_POLL_MS = 200
RATE_READ_INTERVAL_SECONDS = {"paper": 0.0, "testnet": 2.0, "live": 2.0}
"""Binance weighs GET /fapi/v1/commissionRate 20 (of 2,400 a minute per IP): against a real exchange,
reading ahead is paced to one request every 2 s (a quarter of the budget); a symbol's first fill
reads its rate at once if it is still unknown"""


def in_flight_setting(raw: str | None) -> int:
    """``QT_APPLY_IN_FLIGHT`` as a count of orders in flight: unset is the default, else 1..MAX_IN_FLIGHT."""
    if raw is None or not raw.strip():
        return DEFAULT_IN_FLIGHT
    if not raw.strip().isdigit() or not 1 <= int(raw) <= MAX_IN_FLIGHT:
        raise ValueError(f"QT_APPLY_IN_FLIGHT must be 1..{MAX_IN_FLIGHT}, got {raw!r}")
    return int(raw)


def dead_lettered_plan(record: dict[str, str]) -> str | None:
    """The plan id of a dead-lettered approval (a ``<stream>.dlq`` record's ``orig.id``), or None when
    the entry cannot be tied to a plan: no readable envelope id, or not the governor's ``apr:<plan id>``."""
    message_id = record.get("orig.id")
    if message_id is None or not message_id.startswith(APPROVAL_ID_PREFIX):
        return None
    plan_id = message_id.removeprefix(APPROVAL_ID_PREFIX)
    if not plan_id or len(plan_id) > 200 or not plan_id.isprintable() or not plan_id.isascii():
        return None
    return plan_id


def position_side(raw: bytes | str | None) -> PositionSide | None:
    """The recorded side of the position hash; None when absent or not a side (no check is made then)."""
    if raw is None:
        return None
    try:
        return PositionSide(text(raw))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class OrderState:
    """What one approval needs from Redis, read in one round trip right before any request."""

    done: bool
    """the approval's message is already done (its result written): nothing more may be sent"""
    control: ControlState
    """the kill switch (fail closed)"""
    open_qty: float
    """the symbol's open position (an exit never closes more)"""
    open_side: PositionSide | None
    open_opened_at: int | None
    """which trade is open (an exit planned for another one is refused); None: not recorded"""
    marked: bool
    """the in-flight marker — set by this same round trip, before any request — was set already:
    an earlier attempt may have sent the order, so it is looked up first. Every result's step
    deletes the marker."""


class ApplyLayer(Service):
    def __init__(self, ctx: ComponentContext, client: ExchangeClient | None = None) -> None:
        super().__init__(ctx)
        self.exchange = client or exchange_client(ctx.policy, ctx.settings)
        self.filters: dict[str, SymbolFilters] = {}
        self._allowlist = frozenset(ctx.policy.symbols)
        self.leverage: dict[str, int] = {}
        self.rates: dict[str, tuple[CommissionRate, float]] = {}
        """symbol -> (the account's commission rates, when read: monotonic s)"""
        self.control: ControlState = ctx.control()
        self._next_filters = time.monotonic() + FILTERS_REPUBLISH_SECONDS
        self._filters_wait = FILTERS_REPUBLISH_SECONDS
        self._last_filters_miss = 0.0
        self._started = False
        """the exchange's rules were read: approvals are read from then on"""
        self._exchange_wait = EXCHANGE_RETRY_FIRST_SECONDS
        self._next_exchange_try = 0.0
        self._exchange_problem = ""
        self._next_rate_read = 0.0
        self._next_stale_scan = time.monotonic() + STALE_SCAN_SECONDS
        self._rate_queue: deque[str] = deque()
        """symbols whose commission rate is to be read (they have rules; no rate, or an old one)"""
        self.in_flight = in_flight_setting(os.environ.get("QT_APPLY_IN_FLIGHT"))
        self._workers: list[tuple[threading.Thread, StreamConsumer]] = []
        self._worker_error: BaseException | None = None
        self._count_lock = threading.Lock()
        self._symbols_lock = threading.Lock()
        self._symbol_locks: dict[str, threading.Lock] = {}
        self._thread_state = threading.local()
        self._sender_pool: ThreadPoolExecutor | None = None
        self._next_dlq_look = 0.0
        self._release_group_ready = False
        self._release_steps: StepRunner | None = None

    def handlers(self) -> dict[str, Handler]:
        if BATCH_ORDERS:
            return {"apply.approved": Prepared(self.on_approval, self.send_batch)}
        return {"apply.approved": self.on_approval}

    def start(self) -> None:
        self.reach_exchange()
        self.start_workers()

    # ---- orders in flight side by side ---------------------------------------------------------

    def start_workers(self) -> None:
        """The consumers beyond the runner's (see the module doc): ``in_flight - 1`` threads."""
        handlers = self.handlers()
        for n in range(1, self.in_flight):
            consumer = StreamConsumer(
                self.ctx.client,
                self.ctx.keys,
                group=self.ctx.name,
                consumer=f"{self.ctx.pod}~{n}",
                handlers=handlers,
                retention=self.ctx.policy.streams,
                batch=WORKER_BATCH,
                observer=metrics.observer(self.ctx.name),
                admission=Admission.for_component(self.ctx.name, list(handlers), self.ctx.policy.symbols),
            )
            thread = threading.Thread(target=self._work, args=(consumer,), name=f"apply-worker-{n}", daemon=True)
            self._workers.append((thread, consumer))
            thread.start()

    def _work(self, consumer: StreamConsumer) -> None:
        """A worker's loop: read and handle while the exchange is reachable, until the process stops.
        A failure of the loop itself (not of a message: the consumer keeps those pending) ends the
        process through ``idle``, as the runner's loop would."""
        stop = self.ctx.stop
        try:
            while not stop.is_set():
                if self.accepting():
                    consumer.poll_once(block_ms=WORKER_POLL_MS)
                else:
                    stop.wait(0.05)
        except BaseException as error:
            self._worker_error = error
            self.ctx.log.exception("apply-layer worker failed", extra={"consumer": consumer.consumer})

    def other_consumers_totals(self) -> dict[str, int]:
        """What the worker consumers did: the runner adds it to its own consumer's counts."""
        totals = {"processed": 0, "duplicates": 0, "errors": 0, "dead_lettered": 0, "reclaimed": 0, "last_event_ms": 0}
        for _, consumer in self._workers:
            stats = consumer.stats
            totals["processed"] += stats.processed
            totals["duplicates"] += stats.duplicates
            totals["errors"] += stats.errors
            totals["dead_lettered"] += stats.dead_lettered
            totals["reclaimed"] += stats.reclaimed
            totals["last_event_ms"] = max(totals["last_event_ms"], stats.last_event_ms or 0)
        return totals

    def _symbol_lock(self, symbol: str) -> threading.Lock:
        with self._symbols_lock:
            lock = self._symbol_locks.get(symbol)
            if lock is None:
                lock = self._symbol_locks[symbol] = threading.Lock()
            return lock

    def count(self, name: str, by: float = 1) -> None:
        with self._count_lock:  # the workers count too
            super().count(name, by)

    def close(self) -> None:
        self.ctx.stop.set()
        for thread, _ in self._workers:
            thread.join(10)
        if self._sender_pool is not None:
            self._sender_pool.shutdown(wait=True)
        self.exchange.close()

    def reach_exchange(self) -> bool:
        """Read the exchange's rules and leverages; True once done. An unreachable exchange is not a
        reason to exit: apply-layer stays up, not ready and not reading approvals (``accepting``),
        and ``idle`` tries again with backoff (``EXCHANGE_RETRY_*``) until the exchange answers."""
        try:
            self.publish_filters()
            self.read_leverages()
        except ExchangeError as error:
            self._exchange_problem = str(error)
            self._next_exchange_try = time.monotonic() + self._exchange_wait
            self.count("exchange_unreachable")
            self.ctx.log.warning(
                "exchange unreachable: waiting, no approval is read",
                extra={"error": str(error), "retry_in_s": self._exchange_wait},
            )
            self._exchange_wait = min(self._exchange_wait * 2, EXCHANGE_RETRY_MAX_SECONDS)
            return False
        if not RATE_READ_INTERVAL_SECONDS.get(self.exchange.mode, 2.0):
            self.warm_rates(START_WARM_SECONDS)
        if self._exchange_problem:
            self.ctx.log.info("exchange reached", extra={"after": self._exchange_problem})
        self._exchange_problem = ""
        self._started = True
        return True

    def accepting(self) -> bool:
        return self._started

    def read_leverages(self) -> None:
        """What leverage each symbol already has at the exchange (one request), so an order only sets
        it when its plan wants another. Unknown (the request failed): set before the first order."""
        try:
            current = self.exchange.leverages()
        except ExchangeError as error:
            self.ctx.log.warning("current leverages not read", extra={"error": str(error)})
            return
        self.leverage.update(current)

    def idle(self) -> float | None:
        if self._worker_error is not None:
            raise RuntimeError(f"an apply-layer worker failed: {self._worker_error}")
        now = time.monotonic()
        if now >= self._next_dlq_look:
            self._next_dlq_look = now + DLQ_RELEASE_SECONDS
            try:
                self.release_dead_lettered()
            except redis.RedisError as error:
                self.ctx.log.warning("dead-lettered approvals not looked at", extra={"error": str(error)})
        if not self._started:
            if now < self._next_exchange_try or not self.reach_exchange():
                return max(0.05, self._next_exchange_try - time.monotonic())
            now = time.monotonic()
        if now >= self._next_filters:
            if any(symbol not in self.filters for symbol in self.ctx.policy.symbols):
                known = len(self.filters)
                try:
                    self.publish_filters()
                except ExchangeError as error:
                    self.ctx.log.warning("exchange rules not re-read", extra={"error": str(error)})
                found_new = len(self.filters) > known
                self._filters_wait = (
                    FILTERS_REPUBLISH_SECONDS
                    if found_new
                    else min(self._filters_wait * 2, FILTERS_REPUBLISH_MAX_SECONDS)
                )
            self._next_filters = now + self._filters_wait
        self.warm_rates(IDLE_WARM_SECONDS)
        return None

    # ---- reservations of dead-lettered approvals -------------------------------------------------

    @property
    def release_group(self) -> str:
        return f"{self.ctx.name}.release"

    def release_dead_lettered(self) -> int:
        """Release what the governor holds for dead-lettered approvals (module doc); returns how many.

        Each DLQ entry is handled once (its own exactly-once step, acked in the release group); one
        whose step conflicted (a lock moved meanwhile) stays pending and is looked at again.
        """
        keys, client = self.ctx.keys, self.ctx.client
        dlq = keys.dlq("apply.approved")
        if not self._release_group_ready:
            try:
                client.xgroup_create(dlq, self.release_group, id="0", mkstream=True)
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise
            retention = self.ctx.policy.streams
            self._release_steps = StepRunner(
                client, keys, self.release_group, retention.max_len, retention.done_ttl_seconds
            )
            self._release_group_ready = True
        released = 0
        for start in ("0", ">"):  # what conflicted last time, then what is new
            reply = client.xreadgroup(self.release_group, self.ctx.pod, {dlq: start}, count=DLQ_RELEASE_BATCH)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    if fields:
                        released += self._release_one(text(entry_id), text_dict(fields))
                    else:  # trimmed while pending
                        client.xack(dlq, self.release_group, entry_id)
        return released

    def _release_one(self, entry_id: str, record: dict[str, str]) -> int:
        keys, client = self.ctx.keys, self.ctx.client
        plan_id = dead_lettered_plan(record)
        step = Step()
        if plan_id is None:
            self.count("dead_letter_unidentified")
            self.ctx.log.warning("dead-lettered approval names no plan: nothing released", extra={"entry": entry_id})
        else:
            with client.pipeline(transaction=False) as pipe:
                pipe.exists(keys.in_flight(plan_id))
                pipe.hexists(keys.reservations, plan_id)
                pipe.hgetall(keys.entry_locks)
                pipe.hgetall(keys.exit_locks)
                marked, reserved, entry_locks, exit_locks = pipe.execute()
            if marked:
                self.count("dead_letter_reservation_kept")
                self.ctx.log.warning(
                    "dead-lettered approval may have been sent: its reservation is kept",
                    extra={"plan_id": plan_id, "entry": entry_id},
                )
            else:
                if reserved:
                    step.tally("HDEL", keys.reservations, plan_id, totals=keys.reservations_totals)
                for locks_key, locks in ((keys.entry_locks, entry_locks), (keys.exit_locks, exit_locks)):
                    for symbol, holder in text_dict(locks).items():
                        if holder == plan_id:
                            step.guard(locks_key, symbol, plan_id)
                            step.write("HDEL", locks_key, symbol)
        assert self._release_steps is not None
        outcome = self._release_steps.run(
            step,
            message_id=f"dlq:{entry_id}",
            input_stream="apply.approved" + DLQ_SUFFIX,
            group=self.release_group,
            entry_id=entry_id,
        )
        if outcome is StepOutcome.CONFLICT:
            return 0  # stays pending: the next look reads it again
        if step.ops and outcome is StepOutcome.DONE:
            self.count("dead_letter_released")
            self.ctx.log.info("released the reservation of a dead-lettered approval", extra={"plan_id": plan_id})
            return 1
        return 0

    def publish_filters(self) -> None:
        """Read the exchange's rules for the allowlist and share them (intent-bridge sizes with them).

        At start and then every ``FILTERS_REPUBLISH_SECONDS`` while an allowlisted symbol still has
        none (the simulator lists a symbol once it has its first price), so a symbol priced later
        becomes tradable without a restart. Only symbols not published by this process before are
        written again.
        """
        self.exchange.refresh_filters()
        published = {}
        for symbol in self.ctx.policy.symbols:
            if symbol in self.filters:
                continue
            found = self.exchange.cached_filters(symbol)
            if found is None:
                continue
            self.filters[symbol] = found
            self._rate_queue.append(symbol)
            published[symbol] = json.dumps({"symbol": symbol, "filters": found.to_exchange_info()["filters"]})
        missing = [s for s in self.ctx.policy.symbols if s not in self.filters]
        if missing:
            self.ctx.log.warning(
                "no exchange rules for symbols yet", extra={"symbols": missing[:20], "missing": len(missing)}
            )
        if published:
            self.ctx.client.hset(self.ctx.keys.exchange_filters, mapping=published)
        self.counters["symbols_with_rules"] = len(self.filters)

    def symbol_filters(self, symbol: str) -> SymbolFilters | None:
        """The symbol's rules; a symbol without any is looked up again (at most every ``FILTERS_MISS_SECONDS``)."""
        found = self.filters.get(symbol)
        if found is not None:
            return found
        found = self.exchange.cached_filters(symbol)
        if found is None and time.monotonic() - self._last_filters_miss >= FILTERS_MISS_SECONDS:
            self._last_filters_miss = time.monotonic()
            try:
                found = self.exchange.filters(symbol)
            except ExchangeError:
                return None
        if found is not None:
            self.filters[symbol] = found
            self._rate_queue.append(symbol)
            if symbol in self._allowlist:
                info = json.dumps({"symbol": symbol, "filters": found.to_exchange_info()["filters"]})
                self.ctx.client.hset(self.ctx.keys.exchange_filters, symbol, info)
        return found

    # ---- commission rates ----------------------------------------------------------------------

    def warm_rates(self, budget_seconds: float) -> int:
        """Read queued commission rates (symbols with rules but no rate, or an hour-old one) for at most
        ``budget_seconds``, and against a real exchange one request per ``RATE_READ_INTERVAL_SECONDS``."""
        now = time.monotonic()
        if now >= self._next_stale_scan and not self._rate_queue:
            self._next_stale_scan = now + STALE_SCAN_SECONDS
            self._rate_queue.extend(
                s for s, (_, read_at) in self.rates.items() if now - read_at >= COMMISSION_REFRESH_SECONDS
            )
        deadline = now + budget_seconds
        interval = RATE_READ_INTERVAL_SECONDS.get(self.exchange.mode, 2.0)
        read = 0
        while self._rate_queue:
            now = time.monotonic()
            if now >= deadline or now < self._next_rate_read:
                break
            symbol = self._rate_queue[0]
            known = self.rates.get(symbol)
            if known is not None and now - known[1] < COMMISSION_REFRESH_SECONDS:
                self._rate_queue.popleft()  # read meanwhile (a first fill)
                continue
            self._next_rate_read = now + interval
            try:
                self.rates[symbol] = (self.exchange.commission_rate(symbol), time.monotonic())
            except ExchangeError as error:
                self.ctx.log.warning("commission rate not read", extra={"symbol": symbol, "error": str(error)})
                break  # stays queued: the next call tries again
            self._rate_queue.popleft()
            read += 1
        self.counters["commission_rates"] = len(self.rates)
        return read

    def order_fee(self, order: OrderResult) -> float:
        """The commission of a filled MARKET order: filled notional x the taker rate of the account.

        The rate is read once per symbol (a miss reads it now). If it cannot be read, the fee is
        asked of the exchange for this order (``userTrades``), as the only way left to know it.
        """
        if order.fee is not None:
            return order.fee
        known = self.rates.get(order.symbol)
        if known is None:
            try:
                known = (self.exchange.commission_rate(order.symbol), time.monotonic())
            except ExchangeError:
                self.count("fee_from_user_trades")
                return self.exchange.order_fee(order.symbol, order.order_id)
            self.rates[order.symbol] = known
        return known[0].taker_fee(order.executed_qty, order.avg_price)

    # ---- orders -------------------------------------------------------------------------------

    def on_control(self, state: ControlState) -> None:
        self.control = state

    def ready(self) -> tuple[bool, str]:
        if self._exchange_problem:
            return False, f"exchange unreachable, retrying: {self._exchange_problem}"
        if not self._started:
            return False, "reading exchange rules and commission rates"
        if not self.filters:
            return False, "no exchange rules loaded"
        return True, f"rules for {len(self.filters)} symbols, commission rates for {len(self.rates)}"

    def read_order_state(self, message_id: str, symbol: str, plan_id: str) -> OrderState:
        """One round trip for everything an order needs from Redis (see :class:`OrderState`)."""
        keys = self.ctx.keys
        with self.ctx.client.pipeline(transaction=False) as pipe:
            pipe.exists(keys.done(self.ctx.name, message_id))
            pipe.hgetall(keys.control)
            pipe.hgetall(keys.halts)
            pipe.hmget(keys.position(symbol), "qty", "side", "opened_at")
            pipe.set(keys.in_flight(plan_id), "1", ex=IN_FLIGHT_TTL_SECONDS, get=True)
            done, raw_control, halts, (qty, side, opened_at), marker = pipe.execute()
        control = parse_control(text_dict(raw_control), text_dict(halts))
        return OrderState(
            bool(done),
            control,
            float(qty) if qty else 0.0,
            position_side(side),
            int(opened_at) if opened_at and text(opened_at).isdigit() else None,
            marker is not None,
        )

    # ---- a batch's orders together (batchOrders) ---------------------------------------------------

    def send_batch(self, envelopes: list[Envelope[Approval]], deliveries: list[Delivery]) -> None:
        """Send the orders of a read batch together: ``POST /fapi/v1/batchOrders``, up to 5 a call.

        Only a symbol's first approval in the batch, when it is a first delivery and its decision is a
        plain Send (no leverage to set, its symbol's lock free), goes this way; every other one is left to
        ``on_approval`` as it comes. The rules are those of ``on_approval``: the states are read and
        decided first, the in-flight markers of exactly the orders to send are set (``SET ... GET``:
        one already set leaves that approval to ``on_approval``, which looks it up first), then the
        orders go out. A request that fails as a whole leaves nothing prepared: each of its approvals
        has its marker set, so ``on_approval`` looks its order up before it sends anything.
        """
        prepared = self._prepared_map()
        prepared.clear()
        if not self._started:
            return
        symbols: set[str] = set()
        candidates = []
        for envelope, delivery in zip(envelopes, deliveries, strict=True):
            symbol = envelope.message.plan.symbol
            if symbol in symbols:
                continue  # a symbol's later approvals wait for its first one: on_approval, in order
            symbols.add(symbol)
            if delivery.deliveries == 1:  # a redelivery is looked up first, by on_approval
                candidates.append((envelope, delivery))
        if len(candidates) < 2:
            return  # one order: on_approval sends it alone
        states = self.read_order_states([(e.id, e.message.plan.symbol) for e, _ in candidates])
        sends: list[tuple[Envelope[Approval], Send]] = []
        for (envelope, delivery), state in zip(candidates, states, strict=True):
            plan = envelope.message.plan
            if state.done:
                continue
            decision = decide_order(
                envelope.message,
                control=state.control,
                now_ms=self.ctx.now_ms(),
                open_qty=state.open_qty,
                open_side=state.open_side,
                open_opened_at=state.open_opened_at,
                filters=self.filters.get(plan.symbol),
                sent_before=maybe_sent(delivery.deliveries, False),
            )
            if not isinstance(decision, Send):
                continue  # refused, or looked up first: on_approval does it
            if plan.leverage != self.leverage.get(plan.symbol) and not decision.reduce_only:
                continue  # its leverage is set first, by on_approval
            sends.append((envelope, decision))
        locks = []
        try:
            chosen = []
            for envelope, decision in sends:
                lock = self._symbol_lock(envelope.message.plan.symbol)
                if lock.acquire(blocking=False):  # another consumer of this process has one in flight
                    locks.append(lock)
                    chosen.append((envelope, decision))
            marked = self.set_markers([e.message.plan.plan_id for e, _ in chosen])
            chosen = [item for item, already in zip(chosen, marked, strict=True) if not already]
            groups = [chosen[start : start + MAX_BATCH_ORDERS] for start in range(0, len(chosen), MAX_BATCH_ORDERS)]
            if len(groups) == 1:
                self._send_group(groups[0], prepared)
            else:  # side by side, each on its thread's kept connection: the exchange works while we wait
                list(self._senders().map(lambda group: self._send_group(group, prepared), groups))
        finally:
            for lock in locks:
                lock.release()

    def _send_group(
        self, group: list[tuple[Envelope[Approval], Send]], prepared: dict[str, OrderResult | ExchangeError]
    ) -> None:
        orders = [
            MarketOrder(
                e.message.plan.symbol,
                e.message.plan.side,
                d.qty,
                client_order_id(e.message.plan.plan_id),
                d.reduce_only,
            )
            for e, d in group
        ]
        try:
            answers = self.exchange.market_orders(orders) if len(orders) > 1 else [self._send_alone(orders[0])]
        except ExchangeError as error:
            self.count("batch_failed")
            self.ctx.log.warning("batch of orders failed: each is looked up first", extra={"error": str(error)})
            if error.code == DISCONNECTED:
                self.lost_exchange(error)
            return
        self.count("batch_requests")
        for (envelope, _), answer in zip(group, answers, strict=True):
            if isinstance(answer, ExchangeError) and (answer.retryable or answer.unknown_outcome):
                continue  # its marker is set: on_approval looks it up, then sends it if it is not there
            prepared[envelope.id] = answer

    def _senders(self) -> ThreadPoolExecutor:
        """The threads a batch's requests go out on (``BATCH_REQUESTS_IN_FLIGHT``), made once."""
        with self._symbols_lock:
            if self._sender_pool is None:
                self._sender_pool = ThreadPoolExecutor(BATCH_REQUESTS_IN_FLIGHT, thread_name_prefix="apply-send")
            return self._sender_pool

    def _send_alone(self, order: MarketOrder) -> OrderResult | ExchangeError:
        try:
            return self.exchange.market_order(*order)
        except ExchangeError as error:
            if error.retryable or error.unknown_outcome:
                raise
            return error

    def _prepared_map(self) -> dict[str, OrderResult | ExchangeError]:
        """This consumer thread's orders sent by ``send_batch``, by approval message id."""
        prepared = getattr(self._thread_state, "prepared", None)
        if prepared is None:
            prepared = self._thread_state.prepared = {}
        return prepared

    def read_order_states(self, wanted: list[tuple[str, str]]) -> list[OrderState]:
        """``(message id, symbol)`` each: done, position (the kill switch once), without the markers."""
        keys = self.ctx.keys
        with self.ctx.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.control)
            pipe.hgetall(keys.halts)
            for message_id, symbol in wanted:
                pipe.exists(keys.done(self.ctx.name, message_id))
                pipe.hmget(keys.position(symbol), "qty", "side", "opened_at")
            replies = pipe.execute()
        control = parse_control(text_dict(replies[0]), text_dict(replies[1]))
        states = []
        for n in range(len(wanted)):
            done, (qty, side, opened_at) = replies[2 + 2 * n], replies[3 + 2 * n]
            states.append(
                OrderState(
                    bool(done),
                    control,
                    float(qty) if qty else 0.0,
                    position_side(side),
                    int(opened_at) if opened_at and text(opened_at).isdigit() else None,
                    False,
                )
            )
        return states

    def set_markers(self, plan_ids: list[str]) -> list[bool]:
        """Set the in-flight markers of ``plan_ids`` (one round trip); True where one was set already."""
        if not plan_ids:
            return []
        with self.ctx.client.pipeline(transaction=False) as pipe:
            for plan_id in plan_ids:
                pipe.set(self.ctx.keys.in_flight(plan_id), "1", ex=IN_FLIGHT_TTL_SECONDS, get=True)
            return [marker is not None for marker in pipe.execute()]

    @no_done_precheck  # in read_order_state, right before any request
    @independent_steps  # an approval reads nothing the results of the same batch write
    def on_approval(self, envelope: Envelope[Approval], delivery: Delivery) -> Step:
        sent = self._prepared_map().pop(envelope.id, None)
        if sent is not None:  # send_batch sent its order with the batch's (and has its answer)
            return self._batch_answer(envelope, sent)
        if not self._started:  # the rest of a batch read before the exchange went away: left pending
            raise ExchangeError(DISCONNECTED, f"waiting for the exchange: {self._exchange_problem}", retryable=True)
        try:
            with self._symbol_lock(envelope.message.plan.symbol):  # one order per symbol in flight
                return self._execute(envelope, delivery)
        except ExchangeError as error:
            if error.code == DISCONNECTED:
                self.lost_exchange(error)
            raise  # the approval stays pending; after the exchange is back it is looked up first

    def _batch_answer(self, envelope: Envelope[Approval], sent: OrderResult | ExchangeError) -> Step:
        approval = envelope.message
        coid = client_order_id(approval.plan.plan_id)
        if isinstance(sent, ExchangeError):  # that order alone refused (never retryable: see send_batch)
            self.count("rejected_by_exchange")
            return self._result(
                envelope, approval, coid, ResultStatus.REJECTED, reason=sent.message, error_code=sent.code
            )
        self.count("sent_in_batch")
        return self._order_result(envelope, approval, coid, sent)

    def lost_exchange(self, error: ExchangeError) -> None:
        """The exchange stopped answering: read no more approvals until it does (as at start), so an
        outage costs each pending approval one delivery, not one per reclaim until the DLQ."""
        self._started = False
        self._exchange_problem = str(error)
        self._exchange_wait = EXCHANGE_RETRY_FIRST_SECONDS
        self._next_exchange_try = time.monotonic() + self._exchange_wait
        self.count("exchange_lost")
        self.ctx.log.warning("exchange unreachable: waiting, no approval is read", extra={"error": str(error)})

    def _execute(self, envelope: Envelope[Approval], delivery: Delivery) -> Step:
        approval = envelope.message
        plan = approval.plan
        # per order, not per batch: a kill switch engaged a moment ago applies to this order.
        # A Redis error raises: no order without a readable kill switch; the approval stays pending.
        state = self.read_order_state(envelope.id, plan.symbol, plan.plan_id)
        if state.done:  # handled meanwhile (another replica, or a redelivery): never a second order
            self.ctx.client.delete(self.ctx.keys.in_flight(plan.plan_id))
            return Step()  # the stage step finds the done key and only acks
        self.control = state.control
        coid = client_order_id(plan.plan_id)
        # The redelivery rule (gateway module doc): an order an earlier attempt may have sent is
        # looked up before expiry or the kill switch may refuse it. A failed lookup raises: the
        # approval stays pending, nothing is refused or sent without knowing.
        decide = partial(
            decide_order,
            approval,
            control=self.control,
            now_ms=self.ctx.now_ms(),
            open_qty=state.open_qty,
            open_side=state.open_side,
            open_opened_at=state.open_opened_at,
            filters=self.symbol_filters(plan.symbol),
            sent_before=maybe_sent(delivery.deliveries, state.marked),
        )
        decision = decide()
        if isinstance(decision, LookUp):
            decision = decide(looked_up=True, found=self.exchange.get_order(plan.symbol, coid))
        if isinstance(decision, Report):
            self.count("recovered_after_restart")
            return self._order_result(envelope, approval, coid, decision.order)
        if isinstance(decision, Refuse):
            if decision.reason.startswith("conditional_order_refused"):
                try:  # the gateway's own refusal path: counted, and provably no request
                    self.exchange.send_order(plan.order_type, plan.symbol, plan.side, plan.qty or 1, coid)
                except ConditionalOrderRefused:
                    self.count("refused_conditional")
            self.count(f"refused_{decision.reason.split(':')[0]}")
            return self._result(envelope, approval, coid, decision.status, reason=decision.reason)
        assert isinstance(decision, Send)
        order = self._submit(approval, coid, decision.qty, decision.reduce_only)
        if isinstance(order, ExchangeError):
            self.count("rejected_by_exchange")
            return self._result(
                envelope, approval, coid, ResultStatus.REJECTED, reason=order.message, error_code=order.code
            )
        return self._order_result(envelope, approval, coid, order)

    def _order_result(self, envelope: Envelope[Approval], approval: Approval, coid: str, order: OrderResult) -> Step:
        """The result of an order the exchange has: FILLED with what it executed, else ERROR with its status."""
        if not has_fill(order):
            self.count("not_filled")
            return self._result(
                envelope, approval, coid, ResultStatus.ERROR, reason=f"order status {order.status}", order=order
            )
        fee = self.order_fee(order)
        self.count("filled")
        return self._result(envelope, approval, coid, ResultStatus.FILLED, order=order, fee=fee)

    def _submit(self, approval: Approval, coid: str, qty: Decimal, reduce_only: bool) -> OrderResult | ExchangeError:
        """Send the order (the lookup of an earlier attempt's order came first, in the gateway's decision).

        Raises on an unknown outcome (timeout, 5xx, connection) after a lookup finds nothing: the
        approval stays pending and is retried, looking the order up first (its marker is set).
        """
        plan = approval.plan
        if plan.leverage != self.leverage.get(plan.symbol) and not reduce_only:
            self.leverage[plan.symbol] = self.exchange.set_leverage(plan.symbol, plan.leverage)
        try:
            return self.exchange.send_order(plan.order_type, plan.symbol, plan.side, qty, coid, reduce_only)
        except ExchangeError as error:
            if not (error.retryable or error.unknown_outcome):
                return error
            found = self.exchange.get_order(plan.symbol, coid) if error.unknown_outcome else None
            if found is not None:
                self.count("recovered_after_timeout")
                return found
            self.count("retry_later")
            raise

    def _result(
        self,
        envelope: Envelope[Approval],
        approval: Approval,
        coid: str,
        status: ResultStatus,
        *,
        reason: str = "",
        error_code: int | None = None,
        order: OrderResult | None = None,
        fee: float = 0.0,
    ) -> Step:
        plan = approval.plan
        filled = order is not None and has_fill(order)
        result = ExecutionResult(
            symbol=plan.symbol,
            plan_id=plan.plan_id,
            approval_id=approval.approval_id,
            client_order_id=coid,
            status=status,
            kind=plan.kind,
            side=plan.side,
            reduce_only=plan.reduce_only,
            filled_qty=order.executed_qty if filled and order else 0.0,
            avg_price=order.avg_price if filled and order else 0.0,
            fee=fee,
            error_code=error_code,
            reason=reason,
            reservation=approval.reservation,
            time=plan.time,
            exchange_time=order.update_time if order else 0,
            stop_loss=plan.stop_loss,
            take_profit=plan.take_profit,
            leverage=plan.leverage,
            source=plan.source,
            reason_codes=plan.reason_codes,
        )
        step = Step().emit("apply.result", result, id="res:" + plan.plan_id, corr=envelope.corr)
        return step.write("DEL", self.ctx.keys.in_flight(plan.plan_id))


def build(ctx: ComponentContext) -> Service:
    return ApplyLayer(ctx)
