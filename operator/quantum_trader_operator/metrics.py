"""The operator's Prometheus metrics, served on QT_OPERATOR_METRICS_PORT (default 9200).

A dedicated registry, so importing the operator in a process that has its own metrics (a test, ``qt``) does not
mix the two, and starting the server twice in one process is a no-op rather than a port clash.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

METRICS_PORT_ENV = "QT_OPERATOR_METRICS_PORT"
DEFAULT_METRICS_PORT = 9200

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILE_SECONDS = Histogram(
    "qt_operator_reconcile_duration_seconds",
    "Time one handler or timer spent reconciling a resource",
    ["kind", "handler"],
    registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
DRIFT_DETECTIONS = Counter(
    "qt_operator_drift_detections_total",
    "Drift found between what runs and the TradingPolicy (each new or changed finding set)",
    ["namespace", "policy"],
    registry=REGISTRY,
)
KILL_SWITCH_ACK_LATENCY = Histogram(
    "qt_operator_killswitch_ack_latency_seconds",
    "From writing the control key to the last live component's ack of that generation",
    registry=REGISTRY,
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)

_started: set[int] = set()
_lock = threading.Lock()


def metrics_port(env: Mapping[str, str]) -> int:
    """The port from the environment; 0 disables the endpoint."""
    return int(env.get(METRICS_PORT_ENV) or DEFAULT_METRICS_PORT)


def start_metrics_server(port: int, host: str = "0.0.0.0") -> bool:
    """Serve ``/metrics`` on ``port`` (once per process); False when disabled or already serving."""
    with _lock:
        if port <= 0 or port in _started:
            return False
        start_http_server(port, addr=host, registry=REGISTRY)
        _started.add(port)
        return True
