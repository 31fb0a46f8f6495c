"""apply-layer: ``apply.approved`` -> orders -> ``apply.result``. The only sender of orders (invariant 1).

An order reaches the exchange at most once per plan, even across crashes: the client order id is
derived from the plan id, an in-flight marker is set before sending, and any redelivery (or marker)
queries the order by that id before anything is resubmitted — or refused: an order found there is
reported as what the exchange did with it, even if the approval expired or the kill switch was
engaged meanwhile, so a fill is never lost (docs/EXECUTION.md, "Redelivery").

This module is the shell that joins the parts, each in its own module:

- ``orders``: one approval's order, decided (``execution.gateway``) and sent on its own, and the
  result every path writes; what it reads from Redis first is ``order_reads``.
- ``batch``: a read batch's first deliveries sent together in ``POST /fapi/v1/batchOrders``
  (``BATCH_ORDERS``; which ones: ``execution.batching``).
- ``workers``: several orders in flight (``QT_APPLY_IN_FLIGHT``): worker consumers of the same group
  in threads, and one order per symbol at the exchange in the process.
- ``dlq_release``: the reservation of an approval that went to the DLQ released, when no order can
  exist for it (the rule: ``execution.dead_letters``), by a second consumer group looked at once a second.
- ``exchange_link``: reaching the exchange (waited for with backoff, never fatal), its rules and leverages.
- ``fees``: the fee of a fill from the account's commission rate, read once per symbol.
"""

from __future__ import annotations

import os
import threading
import time

from quantum_trader.bus.consumer import Delivery, Handler, Prepared, independent_steps, no_done_precheck
from quantum_trader.bus.step import Step
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.messages import Approval
from quantum_trader.exchange.client import ExchangeClient
from quantum_trader.exchange.connect import exchange_client
from quantum_trader.exchange.errors import DISCONNECTED, ExchangeError
from quantum_trader.runtime.service import ComponentContext, Service
from quantum_trader.services.apply_layer.batch import BatchSender
from quantum_trader.services.apply_layer.dlq_release import DeadLetterRelease
from quantum_trader.services.apply_layer.exchange_link import ExchangeLink
from quantum_trader.services.apply_layer.fees import IDLE_WARM_SECONDS, CommissionRates
from quantum_trader.services.apply_layer.orders import OrderPath
from quantum_trader.services.apply_layer.workers import SymbolLocks, WorkerConsumers, in_flight_setting

BATCH_ORDERS = True
"""send a read batch's orders together (``batch``, batchOrders of up to 5); False: one by one"""
WORKER_JOIN_SECONDS = 10.0


class ApplyLayer(Service):
    def __init__(self, ctx: ComponentContext, client: ExchangeClient | None = None) -> None:
        super().__init__(ctx)
        self.exchange = client or exchange_client(ctx.policy, ctx.settings)
        self._count_lock = threading.Lock()
        self.fees = CommissionRates(self, self.exchange)
        self.link = ExchangeLink(self, self.exchange, self.fees)
        self.orders = OrderPath(self, self.link, self.fees)
        self.symbol_locks = SymbolLocks()
        self.batch = BatchSender(self, self.link, self.symbol_locks)
        self.release = DeadLetterRelease(self)
        self.workers = WorkerConsumers(ctx, in_flight_setting(os.environ.get("QT_APPLY_IN_FLIGHT")))

    def handlers(self) -> dict[str, Handler]:
        if BATCH_ORDERS:
            return {"apply.approved": Prepared(self.on_approval, self.batch.send_batch)}
        return {"apply.approved": self.on_approval}

    def start(self) -> None:
        self.link.reach()
        self.workers.start(self.handlers(), self.accepting)

    def accepting(self) -> bool:
        return self.link.started

    def count(self, name: str, by: float = 1) -> None:
        with self._count_lock:  # the workers count too
            super().count(name, by)

    def other_consumers_totals(self) -> dict[str, int]:
        return self.workers.totals()

    def idle(self) -> float | None:
        if self.workers.error is not None:
            raise RuntimeError(f"an apply-layer worker failed: {self.workers.error}")
        now = time.monotonic()
        self.release.look_when_due(now)
        wait = self.link.retry_wait(now)
        if wait is not None:
            return wait
        self.link.republish_when_due(time.monotonic())
        self.fees.warm(IDLE_WARM_SECONDS)
        return None

    def ready(self) -> tuple[bool, str]:
        if self.link.problem:
            return False, f"exchange unreachable, retrying: {self.link.problem}"
        if not self.link.started:
            return False, "reading exchange rules and commission rates"
        if not self.link.filters:
            return False, "no exchange rules loaded"
        return True, f"rules for {len(self.link.filters)} symbols, commission rates for {len(self.fees.rates)}"

    @no_done_precheck  # in order_reads.read_order_state, right before any request
    @independent_steps  # an approval reads nothing the results of the same batch write
    def on_approval(self, envelope: Envelope[Approval], delivery: Delivery) -> Step:
        sent = self.batch.take(envelope.id)
        if sent is not None:  # the batch sent its order with the batch's (and has its answer)
            return self.orders.batch_answer(envelope, sent)
        if not self.link.started:  # the rest of a batch read before the exchange went away: left pending
            raise ExchangeError(DISCONNECTED, f"waiting for the exchange: {self.link.problem}", retryable=True)
        try:
            with self.symbol_locks(envelope.message.plan.symbol):  # one order per symbol in flight
                return self.orders.execute(envelope, delivery)
        except ExchangeError as error:
            if error.code == DISCONNECTED:
                self.link.lost(error)
            raise  # the approval stays pending; after the exchange is back it is looked up first

    def close(self) -> None:
        self.ctx.stop.set()
        self.workers.join(WORKER_JOIN_SECONDS)
        self.batch.close()
        self.exchange.close()


def build(ctx: ComponentContext) -> Service:
    return ApplyLayer(ctx)
