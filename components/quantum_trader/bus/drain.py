"""Whether the streams hold work: every consumer group has read and acknowledged everything.

One pipelined XINFO GROUPS per stream of the registry; a stream that does not exist yet holds nothing.
market-data's lockstep, the backtest and the tests that wait for a replay's effects all ask this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import redis

from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.registry import STREAMS


def groups_by_stream(client: redis.Redis, keys: Keys) -> dict[str, list[Mapping[str, Any]]]:
    """The consumer groups of every registry stream (an empty list where the stream does not exist yet)."""
    with client.pipeline(transaction=False) as pipe:
        for stream in STREAMS:
            pipe.xinfo_groups(keys.stream(stream))
        replies = pipe.execute(raise_on_error=False)
    return {s: ([] if isinstance(g, Exception) else g) for s, g in zip(STREAMS, replies, strict=True)}


def groups_drained(groups: Iterable[Mapping[str, Any]]) -> bool:
    """No group has entries it has not been delivered (lag) or not acknowledged (pending)."""
    return not any(int(g.get("pending", 0)) or int(g.get("lag") or 0) for g in groups)


def all_drained(client: redis.Redis, keys: Keys) -> bool:
    """No group of any stream has undelivered or unacknowledged entries."""
    return all(groups_drained(groups) for groups in groups_by_stream(client, keys).values())
