"""Heartbeats: ``heartbeat:<component>:<pod>`` hashes with a TTL (DESIGN §3).

They carry code version, image and model digests (drift checks read them) and counters
(a stalled consumer shows as zero progress with lag growing).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from quantum_trader.contracts.keys import Keys

HEARTBEAT_TTL_SECONDS = 15


@dataclass(frozen=True, slots=True)
class HeartbeatRecord:
    component: str
    pod: str
    time_ms: int
    started_ms: int
    state: str
    code_version: str
    image_digest: str
    model_digest: str
    control_generation: int
    counters: dict[str, float]
    groups: dict[str, dict[str, int]]
    """input stream -> {lag, pending}"""

    def age_seconds(self, now_ms: int) -> float:
        return max(0.0, (now_ms - self.time_ms) / 1000)


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


def parse_heartbeat(raw: dict[str, str]) -> HeartbeatRecord | None:
    """A heartbeat from its hash, or None when it is incomplete (treated as absent)."""
    try:
        return HeartbeatRecord(
            component=raw["component"],
            pod=raw["pod"],
            time_ms=int(raw["time"]),
            started_ms=int(raw.get("started", raw["time"])),
            state=raw.get("state", ""),
            code_version=raw.get("code_version", ""),
            image_digest=raw.get("image_digest", ""),
            model_digest=raw.get("model_digest", ""),
            control_generation=int(raw.get("control_generation", "0")),
            counters=json.loads(raw.get("counters", "{}")),
            groups=json.loads(raw.get("groups", "{}")),
        )
    except (KeyError, ValueError):
        return None


def read_heartbeats(client: redis.Redis, keys: Keys) -> list[HeartbeatRecord]:
    records = []
    for key in client.scan_iter(match=keys.heartbeat_pattern(), count=500):
        raw = client.hgetall(key)
        text = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        record = parse_heartbeat(text)
        if record is not None:
            records.append(record)
    return sorted(records, key=lambda r: (r.component, r.pod))


def now_ms() -> int:
    return int(time.time() * 1000)
