"""A read batch's orders sent together: ``POST /fapi/v1/batchOrders``, up to 5 orders a call.

The batch's states are read in one pipeline and decided as the one-by-one path decides them; which
approvals go this way is :mod:`quantum_trader.execution.batching` (a symbol's first approval of the
batch, a first delivery, a plain MARKET send with no leverage to set, its symbol's lock free). The
in-flight markers of exactly the orders to send are set (``SET ... GET``: one already set leaves that
approval to the one-by-one path, which looks it up first), then the orders go out, in requests of up
to ``MAX_BATCH_ORDERS`` side by side. Each order keeps its own answer: a fill, or a refusal of that
order alone, kept for the approval's handler (:meth:`BatchSender.take`). Everything else —
redeliveries, refusals, leverage changes, orders a whole failed batch request left unanswered (their
markers are set: looked up first) — goes through the one-by-one path.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from quantum_trader.bus.consumer import Delivery
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.messages import Approval
from quantum_trader.exchange.client import MAX_BATCH_ORDERS
from quantum_trader.exchange.errors import DISCONNECTED, ExchangeError
from quantum_trader.exchange.models import MarketOrder, OrderResult
from quantum_trader.execution.batching import batch_candidates, in_groups, sets_leverage, settled
from quantum_trader.execution.gateway import Send, decide_order, maybe_sent, order_to_send
from quantum_trader.runtime.service import Service
from quantum_trader.services.apply_layer.exchange_link import ExchangeLink
from quantum_trader.services.apply_layer.order_reads import read_order_states, set_markers
from quantum_trader.services.apply_layer.workers import SymbolLocks

BATCH_REQUESTS_IN_FLIGHT = 4
"""batchOrders requests of one read batch sent side by side"""

Answer = OrderResult | ExchangeError


class BatchSender:
    def __init__(self, service: Service, link: ExchangeLink, symbol_locks: SymbolLocks) -> None:
        self.service = service
        self.ctx = service.ctx
        self.link = link
        self.symbol_locks = symbol_locks
        self._thread_state = threading.local()
        self._pool_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def _prepared(self) -> dict[str, Answer]:
        """This consumer thread's orders sent by :meth:`send_batch`, by approval message id."""
        prepared = getattr(self._thread_state, "prepared", None)
        if prepared is None:
            prepared = self._thread_state.prepared = {}
        return prepared

    def take(self, message_id: str) -> Answer | None:
        """The answer to the approval's order if this thread's batch sent it (then only once), else None."""
        return self._prepared().pop(message_id, None)

    def send_batch(self, envelopes: list[Envelope[Approval]], deliveries: list[Delivery]) -> None:
        """Send the orders of a read batch together (module doc); each answer waits for :meth:`take`.

        A request that fails as a whole leaves nothing prepared: each of its approvals has its marker
        set, so the one-by-one path looks its order up before it sends anything.
        """
        prepared = self._prepared()
        prepared.clear()
        if not self.link.started:
            return
        chosen = batch_candidates(
            [(e.message.plan.symbol, d.deliveries) for e, d in zip(envelopes, deliveries, strict=True)]
        )
        if len(chosen) < 2:
            return  # one order: the one-by-one path sends it alone
        candidates = [(envelopes[n], deliveries[n]) for n in chosen]
        sends = self._sends(candidates)
        locks = []
        try:
            held = []
            for envelope, decision in sends:
                lock = self.symbol_locks(envelope.message.plan.symbol)
                if lock.acquire(blocking=False):  # another consumer of this process has one in flight
                    locks.append(lock)
                    held.append((envelope, decision))
            marked = set_markers(self.ctx, [e.message.plan.plan_id for e, _ in held])
            to_send = [item for item, already in zip(held, marked, strict=True) if not already]
            groups = in_groups(to_send, MAX_BATCH_ORDERS)
            if len(groups) == 1:
                self._send_group(groups[0], prepared)
            else:  # side by side, each on its thread's kept connection: the exchange works while we wait
                list(self._senders().map(lambda group: self._send_group(group, prepared), groups))
        finally:
            for lock in locks:
                lock.release()

    def _sends(self, candidates: list[tuple[Envelope[Approval], Delivery]]) -> list[tuple[Envelope[Approval], Send]]:
        """The candidates whose decision is a plain Send, decided on their states read in one pipeline."""
        states = read_order_states(self.ctx, [(e.id, e.message.plan.symbol) for e, _ in candidates])
        sends = []
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
                filters=self.link.filters.get(plan.symbol),
                sent_before=maybe_sent(delivery.deliveries, False),
            )
            if not isinstance(decision, Send):
                continue  # refused, or looked up first: the one-by-one path does it
            if sets_leverage(plan, self.link.leverage.get(plan.symbol), decision.reduce_only):
                continue  # its leverage is set first, by the one-by-one path
            sends.append((envelope, decision))
        return sends

    def _send_group(self, group: list[tuple[Envelope[Approval], Send]], prepared: dict[str, Answer]) -> None:
        orders = [order_to_send(envelope.message, decision) for envelope, decision in group]
        try:
            answers = self.link.exchange.market_orders(orders) if len(orders) > 1 else [self._send_alone(orders[0])]
        except ExchangeError as error:
            self.service.count("batch_failed")
            self.ctx.log.warning("batch of orders failed: each is looked up first", extra={"error": str(error)})
            if error.code == DISCONNECTED:
                self.link.lost(error)
            return
        self.service.count("batch_requests")
        for (envelope, _), answer in zip(group, answers, strict=True):
            if settled(answer):  # else its marker is set: the one-by-one path looks it up, then sends it
                prepared[envelope.id] = answer

    def _send_alone(self, order: MarketOrder) -> Answer:
        try:
            return self.link.exchange.market_order(*order)
        except ExchangeError as error:
            if not settled(error):
                raise
            return error

    def _senders(self) -> ThreadPoolExecutor:
        """The threads a batch's requests go out on (``BATCH_REQUESTS_IN_FLIGHT``), made once."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(BATCH_REQUESTS_IN_FLIGHT, thread_name_prefix="apply-send")
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
