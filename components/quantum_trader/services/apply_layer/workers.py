"""Several orders in flight in one apply-layer process: the worker consumers and the per-symbol lock.

``QT_APPLY_IN_FLIGHT`` (default ``DEFAULT_IN_FLIGHT``): besides the runner's consumer, the process
runs that many minus one more consumers of the same group in threads (consumer names ``<pod>~1``,
``<pod>~2``, ...), each reading ``WORKER_BATCH`` approvals at a time. To Redis and the exchange they
are replicas: every rule of apply-layer holds for each order as it does across replicas — the done
key, kill switch and marker are read right before each request, the client order id makes a second
order for a plan impossible, a redelivery is looked up first, and a worker's pending approvals are
its own backlog after a restart (same pod) or reclaimed (XAUTOCLAIM) otherwise. In the process, one
symbol has at most one order at the exchange at a time (:class:`SymbolLocks`, held from the state
read to the answer). The governor allows at most one entry and one exit per symbol in flight at
all; which of two such approvals of one symbol, taken by two consumers at once, goes first is not
the stream's order — as with two replicas (within one consumer it is). The HTTP requests run on one
kept-alive connection per thread (``exchange.transport``), so they wait for the exchange side by side.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from quantum_trader.bus.consumer import Handler, StreamConsumer
from quantum_trader.contracts.admission import Admission
from quantum_trader.runtime import metrics
from quantum_trader.runtime.service import ComponentContext

DEFAULT_IN_FLIGHT = 4
"""orders one process has in flight at most (``QT_APPLY_IN_FLIGHT``: 1 to ``MAX_IN_FLIGHT``)"""
MAX_IN_FLIGHT = 16
WORKER_BATCH = 5
"""approvals a worker consumer reads at a time: few, so the approvals are spread over the consumers"""
WORKER_POLL_MS = 200
NOT_ACCEPTING_WAIT_SECONDS = 0.05
TOTALS = ("processed", "duplicates", "errors", "dead_lettered", "reclaimed")


def in_flight_setting(raw: str | None) -> int:
    """``QT_APPLY_IN_FLIGHT`` as a count of orders in flight: unset is the default, else 1..MAX_IN_FLIGHT."""
    if raw is None or not raw.strip():
        return DEFAULT_IN_FLIGHT
    if not raw.strip().isdigit() or not 1 <= int(raw) <= MAX_IN_FLIGHT:
        raise ValueError(f"QT_APPLY_IN_FLIGHT must be 1..{MAX_IN_FLIGHT}, got {raw!r}")
    return int(raw)


class SymbolLocks:
    """One lock per symbol, made on first use: at most one order of a symbol at the exchange in the process."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def __call__(self, symbol: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(symbol)
            if lock is None:
                lock = self._locks[symbol] = threading.Lock()
            return lock


class WorkerConsumers:
    """The consumers beyond the runner's (``in_flight - 1`` threads), reading while ``accepting()``."""

    def __init__(self, ctx: ComponentContext, in_flight: int) -> None:
        self.ctx = ctx
        self.in_flight = in_flight
        self._workers: list[tuple[threading.Thread, StreamConsumer]] = []
        self.error: BaseException | None = None
        """what ended a worker's loop (not a message's failure: the consumer keeps those pending)"""

    def start(self, handlers: dict[str, Handler], accepting: Callable[[], bool]) -> None:
        ctx = self.ctx
        for n in range(1, self.in_flight):
            consumer = StreamConsumer(
                ctx.client,
                ctx.keys,
                group=ctx.name,
                consumer=f"{ctx.pod}~{n}",
                handlers=handlers,
                retention=ctx.policy.streams,
                batch=WORKER_BATCH,
                observer=metrics.observer(ctx.name),
                admission=Admission.for_component(ctx.name, list(handlers), ctx.policy.symbols),
            )
            thread = threading.Thread(
                target=self._work, args=(consumer, accepting), name=f"apply-worker-{n}", daemon=True
            )
            self._workers.append((thread, consumer))
            thread.start()

    def _work(self, consumer: StreamConsumer, accepting: Callable[[], bool]) -> None:
        """A worker's loop: read and handle while the exchange is reachable, until the process stops.
        A failure of the loop itself ends the process through the service's ``idle``, as the runner's
        loop would."""
        stop = self.ctx.stop
        try:
            while not stop.is_set():
                if accepting():
                    consumer.poll_once(block_ms=WORKER_POLL_MS)
                else:
                    stop.wait(NOT_ACCEPTING_WAIT_SECONDS)
        except BaseException as error:
            self.error = error
            self.ctx.log.exception("apply-layer worker failed", extra={"consumer": consumer.consumer})

    def totals(self) -> dict[str, int]:
        """What the worker consumers did: the runner adds it to its own consumer's counts."""
        totals = dict.fromkeys((*TOTALS, "last_event_ms"), 0)
        for _, consumer in self._workers:
            stats = consumer.stats
            for name in TOTALS:
                totals[name] += getattr(stats, name)
            totals["last_event_ms"] = max(totals["last_event_ms"], stats.last_event_ms or 0)
        return totals

    def join(self, timeout_seconds: float) -> None:
        """Wait for the workers to finish (after ``ctx.stop`` is set), each for up to ``timeout_seconds``."""
        for thread, _ in self._workers:
            thread.join(timeout_seconds)
