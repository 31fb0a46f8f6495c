"""The stream and component registry (DESIGN §3) and the pure wiring check.

The operator's wiring check and the local supervisor both read this table, so a consumer
whose input nobody produces is caught before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from quantum_trader.contracts import messages as m


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    message: type[m.Message]
    audit: bool = False
    """An audit stream is read by people and reports, not by a component: no consumer is expected."""


@dataclass(frozen=True, slots=True)
class ComponentSpec:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    description: str
    paper_only: bool = False
    executor: bool = False
    """On the path to the exchange (governor, apply-layer, position-state): rolled out last."""


STREAMS: dict[str, StreamSpec] = {
    s.name: s
    for s in (
        StreamSpec("market.tick", m.Tick),
        StreamSpec("features", m.FeatureVector),
        StreamSpec("trade.intent", m.TradeIntent),
        StreamSpec("apply.plan", m.Plan),
        StreamSpec("apply.approved", m.Approval),
        StreamSpec("apply.result", m.ExecutionResult),
        StreamSpec("position.snapshot", m.PositionSnapshot),
        StreamSpec("trade.closed", m.TradeClosed, audit=True),
        StreamSpec("harvest.proposal", m.HarvestProposal),
        StreamSpec("exit.shadow", m.ExitShadow, audit=True),
        StreamSpec("governor.decision", m.GovernorDecision, audit=True),
        StreamSpec("reconcile.events", m.ReconcileEvent, audit=True),
    )
}

COMPONENTS: dict[str, ComponentSpec] = {
    c.name: c
    for c in (
        ComponentSpec("market-data", (), ("market.tick",), "replays klines or streams live ticks"),
        ComponentSpec("features", ("market.tick",), ("features",), "rolling feature vectors per symbol"),
        ComponentSpec("ai-engine", ("features",), ("trade.intent",), "turns features into trade intents"),
        ComponentSpec("intent-bridge", ("trade.intent",), ("apply.plan",), "sizes intents into entry plans"),
        ComponentSpec(
            "governor",
            ("apply.plan",),
            ("apply.approved", "governor.decision"),
            "atomic risk limits; the only source of approvals",
            executor=True,
        ),
        ComponentSpec(
            "apply-layer",
            ("apply.approved",),
            ("apply.result",),
            "the only sender of orders",
            executor=True,
        ),
        ComponentSpec(
            "position-state",
            ("apply.result",),
            ("position.snapshot", "trade.closed"),
            "positions, reservations, realized PnL, portfolio heat",
            executor=True,
        ),
        ComponentSpec(
            "reconciler",
            (),
            ("position.snapshot", "reconcile.events"),
            "matches internal positions to the exchange",
        ),
        ComponentSpec(
            "exit-brain",
            ("market.tick", "position.snapshot"),
            ("apply.plan", "exit.shadow"),
            "watches stop-loss and take-profit, plans exits",
        ),
        ComponentSpec(
            "harvest",
            ("market.tick", "position.snapshot"),
            ("harvest.proposal",),
            "proposes profit taking",
        ),
        ComponentSpec("heat-gate", ("harvest.proposal",), ("apply.plan",), "gates harvest proposals by heat"),
        ComponentSpec("exchange-sim", ("market.tick",), (), "Binance USDⓈ-M futures REST simulator", paper_only=True),
    )
}

DLQ_SUFFIX = ".dlq"


def message_of(stream: str) -> type[m.Message]:
    return STREAMS[stream].message


def components_for_mode(mode: str) -> list[str]:
    """Every registered component that runs in ``mode``, in registry order."""
    return [c.name for c in COMPONENTS.values() if mode == "paper" or not c.paper_only]


@dataclass(frozen=True, slots=True)
class WiringReport:
    unknown_components: tuple[str, ...]
    unproduced: dict[str, tuple[str, ...]]
    """consumed stream -> the enabled components that read it while no enabled component writes it"""
    unconsumed: tuple[str, ...]
    """produced, non-audit streams that no enabled component reads"""

    @property
    def valid(self) -> bool:
        return not self.unknown_components and not self.unproduced

    def describe(self) -> str:
        parts = []
        if self.unknown_components:
            parts.append("unknown components: " + ", ".join(self.unknown_components))
        for stream, readers in self.unproduced.items():
            parts.append(f"{stream} is read by {', '.join(readers)} but no enabled component produces it")
        if self.unconsumed:
            parts.append("produced but not consumed: " + ", ".join(self.unconsumed))
        return "; ".join(parts) or "wiring is closed"


def check_wiring(enabled: Iterable[str], registry: dict[str, ComponentSpec] | None = None) -> WiringReport:
    """Report every consumed stream without a producer and every produced stream nobody consumes."""
    table = COMPONENTS if registry is None else registry
    names = list(dict.fromkeys(enabled))
    unknown = tuple(n for n in names if n not in table)
    specs = [table[n] for n in names if n in table]
    produced = {s for c in specs for s in c.outputs}
    consumed = {s for c in specs for s in c.inputs}
    unproduced: dict[str, list[str]] = {}
    for spec in specs:
        for stream in spec.inputs:
            if stream not in produced:
                unproduced.setdefault(stream, []).append(spec.name)
    unconsumed = sorted(s for s in produced if s not in consumed and not (s in STREAMS and STREAMS[s].audit))
    return WiringReport(
        unknown_components=unknown,
        unproduced={k: tuple(v) for k, v in sorted(unproduced.items())},
        unconsumed=tuple(unconsumed),
    )
