"""Prices for the paper exchange: follow the ``market.tick`` stream in consumer group ``exchange-sim``.

Why the simulator reads ticks itself: in paper mode the exchange must fill at the same prices the
rest of the system sees, and a restart must not lose them — it reads through its own consumer
group, first re-applying its own pending entries, and acks each tick only after applying it.
An entry that is not a valid Tick, or is about a symbol the simulator does not trade (the policy's
allowlist), goes to ``<stream>.dlq`` with its reason — the same record every consumer writes
(``contracts.envelope.dead_letter_record``) — and is acked: bad input never stops the exchange.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from quantum_trader.contracts.envelope import dead_letter_record, decode
from quantum_trader.contracts.messages import Tick
from quantum_trader.contracts.policy import StreamRetention
from quantum_trader.contracts.registry import DLQ_SUFFIX

log = logging.getLogger(__name__)

TICK_GROUP = "exchange-sim"
TICK_STREAM = "market.tick"
DLQ_MAXLEN = StreamRetention().max_len
"""as long as every other consumer keeps its DLQ by default: the simulator trims the stream they all share"""


async def ensure_group(client: aioredis.Redis, stream_key: str, group: str, start_id: str = "0") -> None:
    """Create the consumer group (and the stream) unless it exists."""
    try:
        await client.xgroup_create(stream_key, group, id=start_id, mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def _apply(
    client: aioredis.Redis,
    stream_key: str,
    group: str,
    entry_id: Any,
    fields: dict[Any, Any] | None,
    on_tick: Callable[[Tick], Any],
    dlq_maxlen: int,
) -> bool:
    """Apply one entry; True when it was a valid tick of a traded symbol."""
    if not fields:  # a pending entry trimmed away meanwhile: nothing to apply
        await client.xack(stream_key, group, entry_id)
        return False
    try:
        envelope = decode(fields, Tick)
        result = on_tick(envelope.message)
        if inspect.isawaitable(result):
            result = await result
        if result is False:
            reason = f"symbol {envelope.message.symbol!r} is not traded by this simulator (not in the allowlist)"
        else:
            reason = ""
    except Exception as error:  # the price of any tick that passes validation is applied; anything else is input
        reason = str(error) or type(error).__name__
    if reason:
        log.warning("tick %s on %s sent to the DLQ: %s", _text(entry_id), stream_key, reason)
        record = dead_letter_record(
            reason=reason,
            stream=TICK_STREAM,
            entry_id=_text(entry_id),
            group=group,
            deliveries=1,
            fields=fields,
            time_ms=int(time.time() * 1000),
        )
        await client.xadd(stream_key + DLQ_SUFFIX, record, maxlen=dlq_maxlen, approximate=True)
    await client.xack(stream_key, group, entry_id)
    return not reason


async def follow_ticks(
    redis_url: str,
    stream_key: str,
    group: str,
    consumer: str,
    on_tick: Callable[[Tick], Any],
    *,
    block_ms: int = 1000,
    count: int = 200,
    dlq_maxlen: int = DLQ_MAXLEN,
    stop: asyncio.Event | None = None,
) -> None:
    """Read ticks with XREADGROUP until cancelled (or ``stop`` is set), applying and acking each.

    The group starts at the stream's beginning, so a new simulator learns every price; a
    restarted one first re-applies its own pending (delivered, unacked) entries.
    """
    client = aioredis.Redis.from_url(redis_url)
    try:
        await ensure_group(client, stream_key, group)
        backlog = True
        while stop is None or not stop.is_set():
            reply = await client.xreadgroup(
                group,
                consumer,
                {stream_key: "0" if backlog else ">"},
                count=count,
                block=None if backlog else block_ms,
            )
            entries = reply[0][1] if reply else []
            if backlog and not entries:
                backlog = False
                continue
            for entry_id, fields in entries:
                await _apply(client, stream_key, group, entry_id, fields, on_tick, dlq_maxlen)
    finally:
        await client.aclose()
