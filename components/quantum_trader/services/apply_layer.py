"""apply-layer: ``apply.approved`` -> orders -> ``apply.result``. The only sender of orders (invariant 1).

An order reaches the exchange at most once per plan, even across crashes: the client order id is
derived from the plan id, an in-flight marker is set before sending, and any redelivery (or marker)
queries the order by that id before anything is resubmitted.
"""

from __future__ import annotations

import json
from decimal import Decimal

from quantum_trader.bus.consumer import Delivery, Handler
from quantum_trader.bus.control import ControlState
from quantum_trader.bus.step import Step
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.messages import Approval, ExecutionResult, ResultStatus
from quantum_trader.exchange.client import ExchangeClient
from quantum_trader.exchange.errors import ConditionalOrderRefused, ExchangeError
from quantum_trader.exchange.filters import SymbolFilters
from quantum_trader.exchange.models import OrderResult
from quantum_trader.exchange.order_ids import client_order_id
from quantum_trader.execution.gateway import Refuse, decide_order
from quantum_trader.runtime.service import ComponentContext, Service
from quantum_trader.runtime.settings import SettingsError

IN_FLIGHT_TTL_SECONDS = 7 * 86400


def exchange_client(ctx: ComponentContext) -> ExchangeClient:
    """The client for the policy's mode. Paper needs QT_EXCHANGE_URL; every mode needs credentials."""
    settings = ctx.settings
    if not settings.api_key or not settings.api_secret:
        raise SettingsError("BINANCE_API_KEY and BINANCE_API_SECRET are required (from a Secret)")
    mode = ctx.policy.mode.value
    options = {
        "timeout": ctx.policy.exchange.request_timeout_seconds,
        "recv_window": ctx.policy.exchange.recv_window_ms,
    }
    if mode == "paper":
        if not settings.exchange_url:
            raise SettingsError("QT_EXCHANGE_URL is required in paper mode (the exchange simulator)")
        return ExchangeClient(settings.api_key, settings.api_secret, base_url=settings.exchange_url, **options)
    return ExchangeClient(
        settings.api_key, settings.api_secret, testnet=mode == "testnet", live=mode == "live", **options
    )


class ApplyLayer(Service):
    def __init__(self, ctx: ComponentContext, client: ExchangeClient | None = None) -> None:
        super().__init__(ctx)
        self.exchange = client or exchange_client(ctx)
        self.filters: dict[str, SymbolFilters] = {}
        self.leverage: dict[str, int] = {}
        self.control: ControlState = ctx.control()

    def handlers(self) -> dict[str, Handler]:
        return {"apply.approved": self.on_approval}

    def start(self) -> None:
        self.publish_filters()

    def publish_filters(self) -> None:
        """Read the exchange's rules for the allowlist and share them (intent-bridge sizes with them)."""
        self.exchange.refresh_filters()
        published = {}
        for symbol in self.ctx.policy.symbols:
            try:
                found = self.exchange.filters(symbol)
            except ExchangeError as error:
                self.ctx.log.warning("no exchange rules for symbol", extra={"symbol": symbol, "error": str(error)})
                continue
            self.filters[symbol] = found
            published[symbol] = json.dumps({"symbol": symbol, "filters": found.to_exchange_info()["filters"]})
        if published:
            self.ctx.client.hset(self.ctx.keys.exchange_filters, mapping=published)

    def on_control(self, state: ControlState) -> None:
        self.control = state

    def ready(self) -> tuple[bool, str]:
        if not self.filters:
            return False, "no exchange rules loaded"
        return True, f"rules for {len(self.filters)} symbols"

    def open_qty(self, symbol: str) -> float:
        raw = self.ctx.client.hget(self.ctx.keys.position(symbol), "qty")
        return float(raw) if raw else 0.0

    def on_approval(self, envelope: Envelope[Approval], delivery: Delivery) -> Step:
        approval = envelope.message
        plan = approval.plan
        # per order, not per batch: a kill switch engaged a moment ago applies to this order
        self.control = self.ctx.control()
        decision = decide_order(
            approval,
            control=self.control,
            now_ms=self.ctx.now_ms(),
            open_qty=self.open_qty(plan.symbol),
            filters=self.filters.get(plan.symbol),
        )
        coid = client_order_id(plan.plan_id)
        if isinstance(decision, Refuse):
            if decision.reason.startswith("conditional_order_refused"):
                try:  # the gateway's own refusal path: counted, and provably no request
                    self.exchange.send_order(plan.order_type, plan.symbol, plan.side, plan.qty or 1, coid)
                except ConditionalOrderRefused:
                    self.count("refused_conditional")
            self.count(f"refused_{decision.reason.split(':')[0]}")
            return self._result(envelope, approval, coid, decision.status, reason=decision.reason)
        order = self._submit_once(approval, coid, decision.qty, decision.reduce_only, delivery)
        if isinstance(order, ExchangeError):
            self.count("rejected_by_exchange")
            return self._result(
                envelope, approval, coid, ResultStatus.REJECTED, reason=order.message, error_code=order.code
            )
        if not order.filled:
            self.count("not_filled")
            return self._result(
                envelope, approval, coid, ResultStatus.ERROR, reason=f"order status {order.status}", order=order
            )
        fee = order.fee if order.fee is not None else self.exchange.order_fee(plan.symbol, order.order_id)
        self.count("filled")
        return self._result(envelope, approval, coid, ResultStatus.FILLED, order=order, fee=fee)

    def _submit_once(
        self, approval: Approval, coid: str, qty: Decimal, reduce_only: bool, delivery: Delivery
    ) -> OrderResult | ExchangeError:
        """The order for this plan: found at the exchange if it was sent before, else sent now.

        Raises on an unknown outcome (timeout, 5xx, connection) after a lookup finds nothing: the
        approval stays pending and is retried, looking the order up first.
        """
        plan = approval.plan
        marker = self.ctx.keys.in_flight(plan.plan_id)
        maybe_sent = delivery.deliveries > 1 or bool(self.ctx.client.exists(marker))
        if maybe_sent:
            found = self.exchange.get_order(plan.symbol, coid)
            if found is not None:
                self.count("recovered_after_restart")
                return found
        self.ctx.client.set(marker, "1", ex=IN_FLIGHT_TTL_SECONDS)
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
        filled = order is not None and order.filled
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
