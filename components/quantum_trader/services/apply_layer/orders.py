"""One approval's order, decided and sent on its own, and the result every order path writes.

Per order: one Redis round trip (``order_reads.read_order_state``) checks the message is not done
yet, reads the kill switch and the position, and sets the in-flight marker; one HTTP request sends
the order, plus one to set leverage only when the plan wants another leverage than the symbol has.
The decision is the gateway's (:func:`quantum_trader.execution.gateway.decide_order`): a redelivery,
or an approval whose marker was set already, is looked up by its client order id first, and an order
found there is reported as what the exchange did with it, even if the approval expired or the kill
switch was engaged meanwhile, so a fill is never lost (docs/EXECUTION.md, "Redelivery"). The result's
step writes ``apply.result`` and deletes the marker.
"""

from __future__ import annotations

from functools import partial

from quantum_trader.bus.consumer import Delivery
from quantum_trader.bus.step import Step
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.messages import Approval, ExecutionResult, ResultStatus
from quantum_trader.exchange.errors import ConditionalOrderRefused, ExchangeError
from quantum_trader.exchange.models import MarketOrder, OrderResult
from quantum_trader.exchange.order_ids import client_order_id
from quantum_trader.execution.batching import sets_leverage
from quantum_trader.execution.gateway import (
    LookUp,
    Refuse,
    Report,
    Send,
    decide_order,
    has_fill,
    maybe_sent,
    order_to_send,
)
from quantum_trader.runtime.service import Service
from quantum_trader.services.apply_layer.exchange_link import ExchangeLink
from quantum_trader.services.apply_layer.fees import CommissionRates
from quantum_trader.services.apply_layer.order_reads import read_order_state

RESULTS = "apply.result"


class OrderPath:
    def __init__(self, service: Service, link: ExchangeLink, fees: CommissionRates) -> None:
        self.service = service
        self.ctx = service.ctx
        self.exchange = link.exchange
        self.link = link
        self.fees = fees

    def execute(self, envelope: Envelope[Approval], delivery: Delivery) -> Step:
        """Decide and send one approval's order (its symbol's lock held); the result's step."""
        approval = envelope.message
        plan = approval.plan
        # per order, not per batch: a kill switch engaged a moment ago applies to this order.
        # A Redis error raises: no order without a readable kill switch; the approval stays pending.
        state = read_order_state(self.ctx, envelope.id, plan.symbol, plan.plan_id)
        if state.done:  # handled meanwhile (another replica, or a redelivery): never a second order
            self.ctx.client.delete(self.ctx.keys.in_flight(plan.plan_id))
            return Step()  # the stage step finds the done key and only acks
        coid = client_order_id(plan.plan_id)
        # The redelivery rule (gateway module doc): an order an earlier attempt may have sent is
        # looked up before expiry or the kill switch may refuse it. A failed lookup raises: the
        # approval stays pending, nothing is refused or sent without knowing.
        decide = partial(
            decide_order,
            approval,
            control=state.control,
            now_ms=self.ctx.now_ms(),
            open_qty=state.open_qty,
            open_side=state.open_side,
            open_opened_at=state.open_opened_at,
            filters=self.link.symbol_filters(plan.symbol),
            sent_before=maybe_sent(delivery.deliveries, state.marked),
        )
        decision = decide()
        if isinstance(decision, LookUp):
            decision = decide(looked_up=True, found=self.exchange.get_order(plan.symbol, coid))
        if isinstance(decision, Report):
            self.service.count("recovered_after_restart")
            return self.order_result(envelope, decision.order)
        if isinstance(decision, Refuse):
            if decision.reason.startswith("conditional_order_refused"):
                try:  # the gateway's own refusal path: counted, and provably no request
                    self.exchange.send_order(plan.order_type, MarketOrder(plan.symbol, plan.side, plan.qty or 1, coid))
                except ConditionalOrderRefused:
                    self.service.count("refused_conditional")
            self.service.count(f"refused_{decision.reason.split(':')[0]}")
            return self.result(envelope, decision.status, reason=decision.reason)
        assert isinstance(decision, Send)
        order = self._submit(approval, decision)
        if isinstance(order, ExchangeError):
            return self.refused_by_exchange(envelope, order)
        return self.order_result(envelope, order)

    def _submit(self, approval: Approval, decision: Send) -> OrderResult | ExchangeError:
        """Send the order (the lookup of an earlier attempt's order came first, in the gateway's decision).

        Raises on an unknown outcome (timeout, 5xx, connection) after a lookup finds nothing: the
        approval stays pending and is retried, looking the order up first (its marker is set).
        """
        plan = approval.plan
        if sets_leverage(plan, self.link.leverage.get(plan.symbol), decision.reduce_only):
            self.link.leverage[plan.symbol] = self.exchange.set_leverage(plan.symbol, plan.leverage)
        order = order_to_send(approval, decision)
        try:
            return self.exchange.send_order(plan.order_type, order)
        except ExchangeError as error:
            if not (error.retryable or error.unknown_outcome):
                return error
            found = self.exchange.get_order(plan.symbol, order.client_order_id) if error.unknown_outcome else None
            if found is not None:
                self.service.count("recovered_after_timeout")
                return found
            self.service.count("retry_later")
            raise

    def batch_answer(self, envelope: Envelope[Approval], sent: OrderResult | ExchangeError) -> Step:
        """The result of an order ``batch.BatchSender`` sent with its batch: its fill or its own refusal."""
        if isinstance(sent, ExchangeError):  # that order alone refused (never retryable: see batching.settled)
            return self.refused_by_exchange(envelope, sent)
        self.service.count("sent_in_batch")
        return self.order_result(envelope, sent)

    def refused_by_exchange(self, envelope: Envelope[Approval], error: ExchangeError) -> Step:
        self.service.count("rejected_by_exchange")
        return self.result(envelope, ResultStatus.REJECTED, reason=error.message, error_code=error.code)

    def order_result(self, envelope: Envelope[Approval], order: OrderResult) -> Step:
        """The result of an order the exchange has: FILLED with what it executed, else ERROR with its status."""
        if not has_fill(order):
            self.service.count("not_filled")
            return self.result(envelope, ResultStatus.ERROR, reason=f"order status {order.status}", order=order)
        fee = self.fees.order_fee(order)
        self.service.count("filled")
        return self.result(envelope, ResultStatus.FILLED, order=order, fee=fee)

    def result(
        self,
        envelope: Envelope[Approval],
        status: ResultStatus,
        *,
        reason: str = "",
        error_code: int | None = None,
        order: OrderResult | None = None,
        fee: float = 0.0,
    ) -> Step:
        """The step of an approval's result: ``apply.result``, and the in-flight marker deleted."""
        approval = envelope.message
        plan = approval.plan
        filled = order is not None and has_fill(order)
        result = ExecutionResult(
            symbol=plan.symbol,
            plan_id=plan.plan_id,
            approval_id=approval.approval_id,
            client_order_id=client_order_id(plan.plan_id),
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
        step = Step().emit(RESULTS, result, id="res:" + plan.plan_id, corr=envelope.corr)
        return step.write("DEL", self.ctx.keys.in_flight(plan.plan_id))
