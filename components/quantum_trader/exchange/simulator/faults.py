"""Seeded fault injection (FaultSpec): latency, 5xx, 429 and accept-then-withhold.

Why seeded: a test or benchmark that injects faults must see the same faults on the same
request sequence; one ``random.Random(seed)`` draws every decision in request order.
Which requests a fault can hit:
- latency: every Binance API request;
- 429 (-1003): every SIGNED request, before it is processed;
- 5xx (HTTP 503, -1008): order requests (POST and GET /fapi/v1/order), before they are processed;
- timeout: accepted new orders — the order IS filled, then the answer is withheld
  ``timeout_seconds`` so the client gives up without knowing.
"""

from __future__ import annotations

import random
from collections import Counter

from quantum_trader.contracts.policy import FaultSpec


class FaultInjector:
    def __init__(self, spec: FaultSpec, seed: int) -> None:
        self.spec = spec
        self._rng = random.Random(seed)
        self.injected: Counter[str] = Counter()
        """fault kind -> how many were injected"""

    def replace(self, spec: FaultSpec) -> None:
        """Change the rates at run time (tests turn faults on after setting up)."""
        self.spec = spec

    @property
    def latency_seconds(self) -> float:
        return self.spec.latency_ms / 1000.0

    def rate_limited(self) -> bool:
        return self._draw("rate_limit", self.spec.rate_limit_rate)

    def server_error(self) -> bool:
        return self._draw("error", self.spec.error_rate)

    def withhold_answer(self) -> bool:
        return self._draw("timeout", self.spec.timeout_rate)

    def _draw(self, kind: str, rate: float) -> bool:
        if rate <= 0:
            return False
        hit = self._rng.random() < rate
        if hit:
            self.injected[kind] += 1
        return hit
