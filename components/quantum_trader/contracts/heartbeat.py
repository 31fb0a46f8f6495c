"""What a heartbeat says (DESIGN §3): code version, image and model digests, counters, group lag.

Plain data, so the operator's health and drift checks can read heartbeats without a Redis client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


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
