"""Adding messages to streams outside a stage step (sources such as market-data), trimmed with MAXLEN ~."""

from __future__ import annotations

import redis

from quantum_trader.bus.step import Output
from quantum_trader.contracts.envelope import encode
from quantum_trader.contracts.keys import Keys


def publish(client: redis.Redis | redis.client.Pipeline, keys: Keys, output: Output, max_len: int) -> None:
    fields = encode(output.message, id=output.id, corr=output.corr)
    client.xadd(keys.stream(output.stream), fields, maxlen=max_len, approximate=True)


def publish_many(client: redis.Redis, keys: Keys, outputs: list[Output], max_len: int) -> None:
    with client.pipeline(transaction=False) as pipe:
        for output in outputs:
            publish(pipe, keys, output, max_len)
        pipe.execute()
