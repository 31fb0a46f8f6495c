"""Every metric the Grafana dashboard queries is exported by a component or the operator, and docs/METRICS.md
documents every metric the code defines.

The metric definitions are found by reading the code (every prometheus_client Counter/Gauge/Histogram/Summary
created with a literal name under components/ and operator/) and cross-checked against the registries the two
metrics modules fill when imported, so a metric defined another way is not missed silently.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts" / "quantum-trader" / "dashboards" / "quantum-trader.json"
METRICS_DOC = REPO / "docs" / "METRICS.md"
DEFINITION = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"\s*,\s*\"([^\"]*)\"(?:\s*,\s*\[([^\]]*)\])?",
    re.S,
)
SUFFIXES = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("", "_sum", "_count", "_created"),
    "Info": ("_info",),
    "Enum": ("",),
}


def defined_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (type, labels) of every metric the code defines (a Counter's name without ``_total``)."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for root in ("components", "operator"):
        for path in (REPO / root).rglob("*.py"):
            for kind, name, _, labels in DEFINITION.findall(path.read_text()):
                base = name.removesuffix("_total") if kind == "Counter" else name
                assert base not in found, f"{name} defined twice"
                found[base] = (kind, tuple(re.findall(r"\"(\w+)\"", labels or "")))
    return found


def exported_series() -> set[str]:
    return {base + suffix for base, (kind, _) in defined_metrics().items() for suffix in SUFFIXES[kind]}


def test_the_code_scan_matches_the_registries() -> None:
    from prometheus_client import REGISTRY

    import quantum_trader.runtime.metrics  # noqa: F401  (registers the component metrics)
    from quantum_trader_operator import metrics as operator_metrics

    registered = set()
    for registry in (REGISTRY, operator_metrics.REGISTRY):
        for family in registry.collect():
            if family.name.startswith("qt_"):
                registered.add(family.name)
    assert registered == {name for name in defined_metrics() if name.startswith("qt_")}
    assert len(registered) >= 14


def _expressions(node: object) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if (key in ("expr", "definition") and isinstance(value, str)) or (
                key == "query" and isinstance(value, str) and "(" in value
            ):
                out.append(value)
            else:
                out += _expressions(value)
    elif isinstance(node, list):
        for item in node:
            out += _expressions(item)
    return out


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = _expressions(dashboard)
    assert len(expressions) >= 15
    exported = exported_series()
    used: set[str] = set()
    for expr in expressions:
        without_strings = re.sub(r"\"[^\"]*\"", '""', expr)
        selectors = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", without_strings))
        names = set(re.findall(r"\bqt_[a-z0-9_]+", without_strings)) | selectors
        for name in names:
            assert name in exported, f"the dashboard queries {name}, which no component or the operator exports: {expr}"
        used |= names
    # the panels the issue asks for, by what they query
    for needed in (
        "qt_messages_processed_total",
        "qt_message_seconds_bucket",
        "qt_consumer_lag",
        "qt_consumer_pending",
        "qt_messages_dead_lettered_total",
        "qt_killswitch_engaged",
        "qt_operator_drift_detections_total",
    ):
        assert needed in used, needed


def test_dashboard_panels_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "quantum-trader" and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "latency", "lag", "pending", "dead-letter", "positions", "pnl", "kill", "drift"):
        assert topic in titles, topic
    for panel in dashboard["panels"]:
        if panel["type"] in ("row", "text"):
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace", "policy"}


def test_metrics_doc_lists_every_metric_with_type_and_labels() -> None:
    if not METRICS_DOC.is_file():
        pytest.fail("docs/METRICS.md is missing")
    doc = METRICS_DOC.read_text()
    rows = {
        cells[0].strip("` "): cells
        for line in doc.splitlines()
        if line.startswith("| `")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    for base, (kind, labels) in defined_metrics().items():
        name = base + "_total" if kind == "Counter" else base
        if not name.startswith("qt_"):
            continue
        assert name in rows, f"docs/METRICS.md does not document {name}"
        row = rows[name]
        assert row[1].lower() == kind.lower(), f"{name}: documented as {row[1]}, defined as {kind}"
        documented = set(re.findall(r"`(\w+)`", row[2]))
        assert documented == set(labels), f"{name}: documented labels {documented}, defined {set(labels)}"
