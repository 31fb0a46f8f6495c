"""Prometheus metrics every component exports (names documented in docs/METRICS.md)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PROCESSED = Counter("qt_messages_processed_total", "Messages handled exactly once", ["component", "stream"])
DUPLICATES = Counter("qt_messages_duplicate_total", "Redelivered messages found already done", ["component", "stream"])
ERRORS = Counter("qt_message_errors_total", "Handler failures (message left pending)", ["component", "stream"])
DEAD_LETTERED = Counter("qt_messages_dead_lettered_total", "Messages sent to the DLQ", ["component", "stream"])
LATENCY = Histogram(
    "qt_message_seconds",
    "Time to handle one message",
    ["component", "stream"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LAG = Gauge("qt_consumer_lag", "Entries not yet delivered to the group", ["component", "stream"])
PENDING = Gauge("qt_consumer_pending", "Entries delivered, not yet acked", ["component", "stream"])
LAST_EVENT = Gauge("qt_last_event_timestamp_seconds", "Wall time of the last handled message", ["component"])
CONTROL_GENERATION = Gauge("qt_killswitch_generation_applied", "Kill-switch generation acked", ["component"])
KILLSWITCH_ENGAGED = Gauge("qt_killswitch_engaged", "1 when entries are blocked", ["component"])
UP = Gauge("qt_component_up", "1 while the component loop runs", ["component"])
MODEL_AGE = Gauge("qt_model_age_seconds", "Seconds since the newest bar the loaded model learned from", ["component"])
INFERENCE = Histogram(
    "qt_inference_seconds",
    "Model inference for one feature vector (both models and the ensemble rule)",
    ["component"],
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
)


def observer(component: str):
    """A consumer observer that feeds the per-message metrics."""

    def observe(stream: str, outcome: str, seconds: float) -> None:
        if outcome == "processed":
            PROCESSED.labels(component, stream).inc()
            LATENCY.labels(component, stream).observe(seconds)
        elif outcome == "duplicate":
            DUPLICATES.labels(component, stream).inc()
        elif outcome == "error":
            ERRORS.labels(component, stream).inc()
        elif outcome == "dlq":
            DEAD_LETTERED.labels(component, stream).inc()

    return observe
