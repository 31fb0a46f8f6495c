"""What orders need from Redis right before any request: their states and in-flight markers.

One order's state is one round trip: its done key, the kill switch, the symbol's position and —
``SET ... GET``, so whether it was set already comes back in the same trip — the plan's in-flight
marker (:func:`read_order_state`). A batch reads its states in one pipeline without the markers
(:func:`read_order_states`), then sets the markers of exactly the orders it sends (:func:`set_markers`).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.client import Pipeline

from quantum_trader.bus.codec import text, text_dict
from quantum_trader.bus.control import parse_control
from quantum_trader.execution.order_state import OrderState, order_state
from quantum_trader.runtime.service import ComponentContext

IN_FLIGHT_TTL_SECONDS = 7 * 86400
POSITION_FIELDS = ("qty", "side", "opened_at")


def _queue_order_reads(ctx: ComponentContext, pipe: Pipeline, message_id: str, symbol: str) -> None:
    pipe.exists(ctx.keys.done(ctx.name, message_id))
    pipe.hmget(ctx.keys.position(symbol), *POSITION_FIELDS)


def _position(raw: Sequence[bytes | str | None]) -> tuple[str | None, str | None, str | None]:
    qty, side, opened_at = (text(value) for value in raw)
    return qty, side, opened_at


def _queue_marker(ctx: ComponentContext, pipe: Pipeline, plan_id: str) -> None:
    pipe.set(ctx.keys.in_flight(plan_id), "1", ex=IN_FLIGHT_TTL_SECONDS, get=True)


def read_order_state(ctx: ComponentContext, message_id: str, symbol: str, plan_id: str) -> OrderState:
    """One round trip for everything an order needs from Redis (see :class:`OrderState`); sets the marker."""
    with ctx.client.pipeline(transaction=False) as pipe:
        pipe.hgetall(ctx.keys.control)
        pipe.hgetall(ctx.keys.halts)
        _queue_order_reads(ctx, pipe, message_id, symbol)
        _queue_marker(ctx, pipe, plan_id)
        raw_control, halts, done, position, marker = pipe.execute()
    control = parse_control(text_dict(raw_control), text_dict(halts))
    return order_state(done=bool(done), control=control, position=_position(position), marked=marker is not None)


def read_order_states(ctx: ComponentContext, wanted: Sequence[tuple[str, str]]) -> list[OrderState]:
    """``(message id, symbol)`` each: done, position (the kill switch once), without the markers."""
    with ctx.client.pipeline(transaction=False) as pipe:
        pipe.hgetall(ctx.keys.control)
        pipe.hgetall(ctx.keys.halts)
        for message_id, symbol in wanted:
            _queue_order_reads(ctx, pipe, message_id, symbol)
        replies = pipe.execute()
    control = parse_control(text_dict(replies[0]), text_dict(replies[1]))
    return [
        order_state(done=bool(done), control=control, position=_position(position), marked=False)
        for done, position in zip(replies[2::2], replies[3::2], strict=True)
    ]


def set_markers(ctx: ComponentContext, plan_ids: Sequence[str]) -> list[bool]:
    """Set the in-flight markers of ``plan_ids`` (one round trip); True where one was set already."""
    if not plan_ids:
        return []
    with ctx.client.pipeline(transaction=False) as pipe:
        for plan_id in plan_ids:
            _queue_marker(ctx, pipe, plan_id)
        return [marker is not None for marker in pipe.execute()]
