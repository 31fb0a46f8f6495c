"""Issue 8 acceptance: property-based fuzzing of every consumed stream of real component processes.

Every component that consumes a stream runs as its own ``qt component`` process on a real
redis-server (exchange-sim first, as ``qt run`` starts them). Hypothesis writes thousands of
malformed entries (``tests/malformed.py``: bad types, huge integers, deep nesting, invalid UTF-8,
NaN and Infinity, booleans for numbers, unknown versions, look-alike and non-allowlisted symbols,
missing fields) to every consumed stream, then one valid message per stream. Afterwards:

- no process exited;
- every malformed entry is in ``<stream>.dlq`` once for every consumer group of the stream, with a
  reason and the original entry, bytes included;
- every consumer processed the valid message written after them.

``QT_FUZZ_EXAMPLES`` (entries per stream, default 300) makes a longer run.
"""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantum_trader.contracts.envelope import encode
from quantum_trader.exchange.simulator.ticks import TICK_GROUP
from tests.malformed import (
    ALLOWED,
    CONSUMED,
    CONSUMERS,
    all_running,
    as_bytes,
    entry_of,
    malformed_fields,
    restored,
    valid_message,
)
from tests.stack import log_tail, running_stack, wait_for

EXAMPLES_PER_STREAM = int(os.environ.get("QT_FUZZ_EXAMPLES", "300"))
PROCESSING_SECONDS = 300 + EXAMPLES_PER_STREAM // 5
"""a generous bound for the consumers to work through the flood on a loaded machine (not a speed check)"""
COMPONENTS = sorted({group for groups in CONSUMERS.values() for group in groups})


def policy() -> dict:
    return {
        "symbols": [ALLOWED],
        "streams": {"claimIdleMs": 1000, "maxLen": 1_000_000},
        "exchange": {"requestTimeoutSeconds": 3},
    }


def write_malformed(client: redis.Redis, key: str, stream: str, examples: int) -> dict[str, dict[bytes, bytes]]:
    """Let hypothesis draw ``examples`` malformed entries for ``stream`` and XADD each; entry id -> fields."""
    written: dict[str, dict[bytes, bytes]] = {}

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(data=st.data())
    def write(data: st.DataObject) -> None:
        _, fields = data.draw(malformed_fields(stream))
        fields = entry_of(stream, fields, f"fz-{stream}-{len(written)}")
        written[client.xadd(key, fields).decode()] = as_bytes(fields)

    write()
    return written


def sim_price(stack) -> str:
    with urllib.request.urlopen(f"{stack.exchange_url}/sim/state", timeout=10) as answer:
        return json.dumps(json.loads(answer.read()))


@pytest.mark.timeout(300 + 2 * PROCESSING_SECONDS)
def test_thousands_of_malformed_entries_on_every_consumed_stream_kill_no_process(
    redis_url, instance, tmp_path, monkeypatch
):
    client = redis.Redis.from_url(redis_url)
    with running_stack(policy(), redis_url, instance, tmp_path, monkeypatch, only=COMPONENTS) as stack:
        keys = stack.keys
        # a first price: the simulator derives the symbol's rules, apply-layer publishes them, intent-bridge starts
        client.xadd(keys.stream("market.tick"), encode(valid_message("market.tick"), id="fz-first-price"))
        wait_for(lambda: all(client.exists(keys.heartbeat(c, f"{c}-0")) for c in COMPONENTS if c != "exchange-sim"),
                 120, "every consumer to start", stack)
        written = {stream: write_malformed(client, keys.stream(stream), stream, EXAMPLES_PER_STREAM)
                   for stream in CONSUMED}
        assert sum(len(w) for w in written.values()) >= 8 * min(EXAMPLES_PER_STREAM, 100)

        valid_ids = {stream: f"fz-valid-{stream}" for stream in CONSUMED}
        for stream in CONSUMED:
            message = valid_message(stream)
            if stream == "market.tick":
                message = message.model_copy(update={"price": 123.25, "bid": 123.25, "ask": 123.25})
            client.xadd(keys.stream(stream), encode(message, id=valid_ids[stream]))

        def every_valid_message_processed() -> bool:
            done = all(client.exists(keys.done(group, valid_ids[stream]))
                       for stream in CONSUMED for group in CONSUMERS[stream] if group != TICK_GROUP)
            return done and "123.25" in sim_price(stack)

        wait_for(every_valid_message_processed, PROCESSING_SECONDS,
                 "every consumer to process the valid message after the flood", stack)
        assert all_running(stack), "\n".join(log_tail(stack, pod, 20) for pod in stack.processes)

        for stream in CONSUMED:
            records: dict[tuple[str, str], dict[str, str]] = {}
            for _, fields in client.xrange(keys.dlq(stream)):
                record = {k.decode(): v.decode() for k, v in fields.items()}
                records[(record["entry_id"], record["group"])] = record
            for group in CONSUMERS[stream]:
                missing = [entry_id for entry_id in written[stream] if (entry_id, group) not in records]
                assert not missing, f"{group} did not dead-letter {len(missing)} entries of {stream}: " + repr(
                    [written[stream][m] for m in missing[:3]])[:2000]
                for entry_id, original in written[stream].items():
                    record = records[(entry_id, group)]
                    assert record["reason"] and record["stream"] == stream
                    assert restored(record) == original
                valid = [r for (entry_id, g), r in records.items() if g == group and r.get("orig.id") == valid_ids[
                    stream]]
                assert not valid, f"{group} dead-lettered the valid {stream} message: {valid[0]['reason']}"
            for group in CONSUMERS[stream]:
                assert client.xpending(keys.stream(stream), group)["pending"] == 0, (stream, group)
