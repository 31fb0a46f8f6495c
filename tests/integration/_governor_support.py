"""Helpers for the governor and position-state integration tests: contexts, plans, results, and
the worker functions the multi-process acceptance tests run (module level, so they can be forked)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable

import redis

from quantum_trader.bus.consumer import StreamConsumer
from quantum_trader.bus.control import write_control
from quantum_trader.contracts.envelope import decode, encode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import (
    Approval,
    ExecutionResult,
    GovernorDecision,
    Plan,
    PlanKind,
    Reservation,
    ResultStatus,
    Side,
)
from quantum_trader.contracts.policy import PolicySpec
from quantum_trader.runtime.service import ComponentContext, Service
from quantum_trader.runtime.settings import load_settings
from quantum_trader.services import governor, position_state

T0 = 1_700_000_000_000
"""a market time (ms) the tests count from"""

SYMBOLS = [f"S{i:02d}USDT" for i in range(50)]


def policy(symbols: Iterable[str] = ("BTCUSDT", "ETHUSDT"), **risk: object) -> PolicySpec:
    data = {"symbols": list(symbols), "risk": {"cooldownSeconds": 0, **risk}}
    return PolicySpec.model_validate(data)


def context(redis_url: str, instance: str, spec: PolicySpec, component: str, pod: str = "test-0") -> ComponentContext:
    settings = load_settings(
        env={"QT_COMPONENT": component, "QT_INSTANCE": instance, "QT_REDIS_URL": redis_url, "QT_POD": pod}
    )
    return ComponentContext(settings=settings, policy=spec, client=redis.Redis.from_url(redis_url), keys=Keys(instance))


def consumer(ctx: ComponentContext, service: Service, name: str | None = None) -> StreamConsumer:
    """The consumer ComponentRunner would build for ``service`` (group = component name)."""
    c = StreamConsumer(
        ctx.client,
        ctx.keys,
        group=ctx.name,
        consumer=name or ctx.pod,
        handlers=service.handlers(),
        retention=ctx.policy.streams,
    )
    c.ensure_groups()
    return c


def release(client: redis.Redis, keys: Keys) -> None:
    write_control(client, keys, engaged=False)


def entry(
    symbol: str = "BTCUSDT",
    plan_id: str | None = None,
    *,
    time: int = T0,
    notional: float = 100.0,
    leverage: int = 1,
    price: float = 100.0,
) -> Plan:
    return Plan(
        symbol=symbol,
        plan_id=plan_id or f"e-{symbol}-{time}",
        kind=PlanKind.ENTRY,
        side=Side.BUY,
        notional=notional,
        source="intent-bridge",
        time=time,
        price=price,
        leverage=leverage,
        stop_loss=price * 0.98,
        take_profit=price * 1.04,
        reason_codes=("trend",),
    )


def exit_plan(
    symbol: str = "BTCUSDT",
    plan_id: str | None = None,
    *,
    time: int = T0,
    qty: float = 1.0,
    price: float = 100.0,
    side: Side = Side.SELL,
    reasons: tuple[str, ...] = ("stop_loss",),
) -> Plan:
    return Plan(
        symbol=symbol,
        plan_id=plan_id or f"x-{symbol}-{time}",
        kind=PlanKind.EXIT,
        side=side,
        qty=qty,
        reduce_only=True,
        source="exit-brain",
        time=time,
        price=price,
        reason_codes=reasons,
    )


def publish(client: redis.Redis, keys: Keys, stream: str, message: object, id: str, corr: str = "") -> str:
    entry_id = client.xadd(keys.stream(stream), encode(message, id=id, corr=corr))  # type: ignore[arg-type]
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def publish_plan(client: redis.Redis, keys: Keys, plan: Plan) -> str:
    return publish(client, keys, "apply.plan", plan, id=plan.plan_id, corr=f"corr-{plan.plan_id}")


def read_stream(client: redis.Redis, keys: Keys, stream: str, message_type: type) -> list:
    return [decode(fields, message_type) for _, fields in client.xrange(keys.stream(stream))]


def decisions(client: redis.Redis, keys: Keys) -> list[GovernorDecision]:
    return [e.message for e in read_stream(client, keys, "governor.decision", GovernorDecision)]


def approvals(client: redis.Redis, keys: Keys) -> list[Approval]:
    return [e.message for e in read_stream(client, keys, "apply.approved", Approval)]


def result_for(
    approval: Approval,
    status: ResultStatus = ResultStatus.FILLED,
    *,
    filled_qty: float | None = None,
    avg_price: float | None = None,
    fee: float = 0.0,
    time: int | None = None,
) -> ExecutionResult:
    """What apply-layer would send for ``approval`` (the test plays apply-layer)."""
    plan = approval.plan
    filled = status is ResultStatus.FILLED
    qty = filled_qty if filled_qty is not None else (plan.qty or plan.reference_notional / plan.price)
    return ExecutionResult(
        symbol=plan.symbol,
        plan_id=plan.plan_id,
        approval_id=approval.approval_id,
        client_order_id="qt-" + plan.plan_id[:30],
        status=status,
        kind=plan.kind,
        side=plan.side,
        reduce_only=plan.reduce_only,
        filled_qty=qty if filled else 0.0,
        avg_price=(avg_price if avg_price is not None else plan.price) if filled else 0.0,
        fee=fee if filled else 0.0,
        reason="" if filled else "test",
        reservation=approval.reservation,
        time=time if time is not None else plan.time,
        stop_loss=plan.stop_loss,
        take_profit=plan.take_profit,
        leverage=plan.leverage,
        source=plan.source,
        reason_codes=plan.reason_codes,
    )


def publish_result(client: redis.Redis, keys: Keys, result: ExecutionResult) -> str:
    return publish(client, keys, "apply.result", result, id=f"res:{result.plan_id}", corr=f"corr-{result.plan_id}")


def drain(c: StreamConsumer, *, until: Callable[[], bool] | None = None, timeout: float = 20.0) -> None:
    """Poll ``c`` until nothing is left (or ``until`` holds)."""
    deadline = time.monotonic() + timeout
    idle_rounds = 0
    while time.monotonic() < deadline:
        handled = c.poll_once(block_ms=50)
        if until is not None and until():
            return
        idle_rounds = idle_rounds + 1 if handled == 0 else 0
        if until is None and idle_rounds >= 2:
            return
    raise AssertionError("consumer did not finish in time")


def text_hash(client: redis.Redis, key: str) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in client.hgetall(key).items()
    }


# --- multi-process workers ------------------------------------------------------------------------
def governor_worker(redis_url: str, instance: str, spec_json: str, name: str, stop: object) -> None:
    """A governor replica: the real service in a StreamConsumer, until ``stop`` (an Event) is set."""
    spec = PolicySpec.model_validate_json(spec_json)
    ctx = context(redis_url, instance, spec, "governor", pod=name)
    c = consumer(ctx, governor.build(ctx), name)
    while not stop.is_set():  # type: ignore[attr-defined]
        c.poll_once(block_ms=50)
    # a last pass: anything read but not finished is finished by this consumer's backlog read
    c.poll_once(block_ms=10)


def position_state_worker(redis_url: str, instance: str, spec_json: str, name: str, stop: object) -> None:
    spec = PolicySpec.model_validate_json(spec_json)
    ctx = context(redis_url, instance, spec, "position-state", pod=name)
    c = consumer(ctx, position_state.build(ctx), name)
    while not stop.is_set():  # type: ignore[attr-defined]
        c.poll_once(block_ms=50)


def rejecting_apply_layer_worker(redis_url: str, instance: str, stop: object) -> None:
    """Plays apply-layer: every approval becomes one REJECTED result (so the reservation is released)."""
    client = redis.Redis.from_url(redis_url)
    keys = Keys(instance)
    stream = keys.stream("apply.approved")
    with contextlib.suppress(redis.ResponseError):
        client.xgroup_create(stream, "apply-layer", id="0", mkstream=True)
    while not stop.is_set():  # type: ignore[attr-defined]
        reply = client.xreadgroup("apply-layer", "stub", {stream: ">"}, count=100, block=50)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                approval = decode(fields, Approval).message
                publish_result(client, keys, result_for(approval, ResultStatus.REJECTED))
                client.xack(stream, "apply-layer", entry_id)


def producer_worker(redis_url: str, instance: str, plans_json: list[str], start: object) -> None:
    """XADDs its share of plans as fast as it can once ``start`` (an Event) is set."""
    client = redis.Redis.from_url(redis_url)
    keys = Keys(instance)
    plans = [Plan.model_validate_json(p) for p in plans_json]
    start.wait(30)  # type: ignore[attr-defined]
    for plan in plans:
        publish_plan(client, keys, plan)


def reservation_total(client: redis.Redis, keys: Keys) -> float:
    return sum(float(v) for v in client.hvals(keys.reservations))


def as_json(plans: Iterable[Plan]) -> list[str]:
    return [p.model_dump_json() for p in plans]


def dumps(spec: PolicySpec) -> str:
    return json.dumps(spec.model_dump(mode="json", by_alias=True))


def reservation(notional: float) -> Reservation:
    return Reservation(slot=True, notional=notional, exit_lock=False)
