"""Paper prices from the market.tick stream (real Redis): group exchange-sim, DLQ, ack, restart."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis

from quantum_trader.contracts.envelope import encode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import Tick
from quantum_trader.contracts.policy import SimulatorSpec
from quantum_trader.exchange.client import ExchangeClient
from quantum_trader.exchange.order_ids import client_order_id
from quantum_trader.exchange.simulator.server import SimulatorApp, serve
from quantum_trader.exchange.simulator.ticks import TICK_GROUP, follow_ticks

T0 = 1_700_000_000_000


def tick(symbol: str, price: float, offset: int) -> dict[str, str]:
    message = Tick(
        symbol=symbol, price=price, bid=price, ask=price, volume=1, event_time=T0 + offset, source="synthetic:1"
    )
    return encode(message, id=f"{symbol}-{offset}")


async def wait_for(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_ticks_are_applied_acked_and_bad_entries_go_to_the_dlq(
    redis_url: str, r: redis.Redis, instance: str
) -> None:
    stream = Keys(instance).stream("market.tick")
    r.xadd(stream, tick("BTCUSDT", 60_000, 0))
    r.xadd(stream, {"type": "Tick", "v": "1", "id": "x", "corr": "x", "symbol": "BTCUSDT", "data": "{oops"})
    r.xadd(stream, tick("BTCUSDT", 60_100, 1))
    seen: list[Tick] = []
    stop = asyncio.Event()
    task = asyncio.create_task(
        follow_ticks(redis_url, stream, TICK_GROUP, "sim-0", seen.append, block_ms=50, stop=stop)
    )
    await wait_for(lambda: len(seen) == 2)
    r.xadd(stream, tick("ETHUSDT", 3_000, 2))
    await wait_for(lambda: len(seen) == 3)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [t.price for t in seen] == [60_000, 60_100, 3_000]
    assert r.xpending(stream, TICK_GROUP)["pending"] == 0, "every entry is acked, the bad one too"
    [(_, dlq_fields)] = r.xrange(stream + ".dlq")
    assert "data is not JSON" in dlq_fields["reason"]
    assert dlq_fields["orig.data"] == "{oops" and dlq_fields["group"] == TICK_GROUP


async def test_group_creation_is_idempotent_and_pending_is_reapplied_after_restart(
    redis_url: str, r: redis.Redis, instance: str
) -> None:
    stream = Keys(instance).stream("market.tick")
    r.xgroup_create(stream, TICK_GROUP, id="0", mkstream=True)
    r.xadd(stream, tick("BTCUSDT", 61_000, 0))
    # a previous incarnation of consumer sim-0 received the tick and died before acking it
    r.xreadgroup(TICK_GROUP, "sim-0", {stream: ">"}, count=10)
    assert r.xpending(stream, TICK_GROUP)["pending"] == 1
    seen: list[Tick] = []
    stop = asyncio.Event()
    task = asyncio.create_task(
        follow_ticks(redis_url, stream, TICK_GROUP, "sim-0", seen.append, block_ms=50, stop=stop)
    )
    await wait_for(lambda: len(seen) == 1)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert seen[0].price == 61_000
    assert r.xpending(stream, TICK_GROUP)["pending"] == 0


async def test_serve_follows_ticks_and_fills_at_the_streamed_price(redis_url: str, instance: str) -> None:
    stream = Keys(instance).stream("market.tick")
    client = aioredis.Redis.from_url(redis_url)
    started: asyncio.Future[tuple[str, SimulatorApp]] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve(
            SimulatorSpec(slippage_bps=0),
            "127.0.0.1",
            0,
            symbols=["BTCUSDT"],
            credentials={"k": "s"},
            redis_url=redis_url,
            tick_stream=stream,
            started=lambda url, app: started.set_result((url, app)),
        )
    )
    try:
        url, app = await asyncio.wait_for(started, 10)
        await client.xadd(stream, tick("BTCUSDT", 62_000, 0))
        await wait_for(lambda: app.engine.last_price("BTCUSDT") is not None)
        exchange = ExchangeClient("k", "s", base_url=url)
        result = await asyncio.to_thread(exchange.market_order, "BTCUSDT", "BUY", "0.01", client_order_id("t"))
        assert result.avg_price == pytest.approx(62_000)
        assert result.update_time == T0, "the fill carries the tick's market time"
        exchange.close()
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
        await client.aclose()
