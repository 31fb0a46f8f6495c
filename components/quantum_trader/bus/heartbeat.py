"""Heartbeats: ``heartbeat:<component>:<pod>`` hashes with a TTL (DESIGN §3).

They carry code version, image and model digests (drift checks read them) and counters
(a stalled consumer shows as zero progress with lag growing).
"""

from __future__ import annotations

import json
import time

import redis

from quantum_trader.bus.codec import text_dict
from quantum_trader.contracts.heartbeat import HeartbeatRecord, parse_heartbeat
from quantum_trader.contracts.keys import Keys

__all__ = [
    "HEARTBEAT_TTL_SECONDS",
    "HeartbeatRecord",
    "now_ms",
    "parse_heartbeat",
    "read_heartbeats",
    "write_heartbeat",
]

HEARTBEAT_TTL_SECONDS = 15


def write_heartbeat(
    client: redis.Redis,
    keys: Keys,
    record: HeartbeatRecord,
    ttl_seconds: int = HEARTBEAT_TTL_SECONDS,
) -> None:
    key = keys.heartbeat(record.component, record.pod)
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.hset(
            key,
            mapping={
                "component": record.component,
                "pod": record.pod,
                "time": str(record.time_ms),
                "started": str(record.started_ms),
                "state": record.state,
                "code_version": record.code_version,
                "image_digest": record.image_digest,
                "model_digest": record.model_digest,
                "control_generation": str(record.control_generation),
                "counters": json.dumps(record.counters, sort_keys=True),
                "groups": json.dumps(record.groups, sort_keys=True),
            },
        )
        pipe.expire(key, ttl_seconds)
        pipe.execute()


def read_heartbeats(client: redis.Redis, keys: Keys) -> list[HeartbeatRecord]:
    records = []
    for key in client.scan_iter(match=keys.heartbeat_pattern(), count=500):
        record = parse_heartbeat(text_dict(client.hgetall(key)))
        if record is not None:
            records.append(record)
    return sorted(records, key=lambda r: (r.component, r.pod))


def now_ms() -> int:
    return int(time.time() * 1000)
