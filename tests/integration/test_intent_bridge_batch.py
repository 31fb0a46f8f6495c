"""intent-bridge against a real Redis: a batch of intents stepped together (no done pre-check, the steps
pipelined), still one plan per intent, a copy of a done intent only acked, and a position's side read."""

from __future__ import annotations

import json

import redis

from quantum_trader.bus.consumer import StreamConsumer
from quantum_trader.contracts.envelope import decode, encode
from quantum_trader.contracts.messages import Plan, Side, TradeIntent
from quantum_trader.services import intent_bridge
from tests.integration._governor_support import T0, context, policy

SYMBOLS = [f"I{i:02d}USDT" for i in range(30)]


def exchange_entry(symbol: str) -> str:
    return json.dumps(
        {
            "symbol": symbol,
            "filters": [
                {"filterType": "LOT_SIZE", "stepSize": "0.001", "minQty": "0.001", "maxQty": "1000"},
                {"filterType": "PRICE_FILTER", "tickSize": "0.01", "minPrice": "0.01", "maxPrice": "1000000"},
                {"filterType": "MIN_NOTIONAL", "notional": "5"},
            ],
        }
    )


def intent(symbol: str, intent_id: str) -> TradeIntent:
    return TradeIntent(
        symbol=symbol,
        intent_id=intent_id,
        time=T0,
        side=Side.BUY,
        confidence=0.9,
        entry_price=100.0,
        stop_loss=90.0,
        take_profit=120.0,
        leverage=2,
        notional=20.0,
        strategy="test",
        model_digest="test",
    )


def test_a_batch_of_intents_is_planned_once_each(redis_url: str, instance: str, r: redis.Redis) -> None:
    ctx = context(redis_url, instance, policy(SYMBOLS), "intent-bridge")
    keys = ctx.keys
    r.hset(keys.exchange_filters, mapping={s: exchange_entry(s) for s in SYMBOLS})
    r.hset(keys.position(SYMBOLS[0]), mapping={"side": "LONG", "qty": "0.2", "entry_price": "100", "version": "1"})
    service = intent_bridge.build(ctx)
    c = StreamConsumer(ctx.client, keys, "intent-bridge", "ib-0", service.handlers(), ctx.policy.streams)
    c.ensure_groups()
    stream = keys.stream("trade.intent")
    for i, symbol in enumerate(SYMBOLS):
        r.xadd(stream, encode(intent(symbol, f"in-{i}"), id=f"in-{i}"))
    r.xadd(stream, encode(intent(SYMBOLS[5], "in-5"), id="in-5"))  # a copy in the same batch
    r.config_resetstat()
    while c.poll_once(block_ms=50):
        pass
    r.xadd(stream, encode(intent(SYMBOLS[6], "in-6"), id="in-6"))  # again, once in-6 is done
    while c.poll_once(block_ms=50):
        pass
    plans = [decode(fields, Plan).message for _, fields in r.xrange(keys.stream("apply.plan"))]
    # the symbol with an open LONG gets no entry (intent-bridge adds to no position); every other one exactly one
    assert sorted(p.symbol for p in plans) == SYMBOLS[1:]
    assert c.stats.processed == len(SYMBOLS) and c.stats.duplicates == 2
    assert r.xpending(stream, "intent-bridge")["pending"] == 0
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in r.info("commandstats").items()}
    # no done pre-check: the scripts check the done keys themselves, one SET NX per step (the 30 intents
    # and in-6's copy); the only EXISTS is that of in-5's copy in the same batch, stepped on its own
    assert calls.get("exists") == 1 and calls.get("set") == len(SYMBOLS) + 1
