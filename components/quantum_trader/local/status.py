"""The status table of a running stack (``qt run`` live, ``qt status`` once).

``build_status`` is pure over what ``gather`` read from Redis, so the table is tested without a stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from quantum_trader.bus.codec import text_dict
from quantum_trader.bus.control import ControlState, read_control
from quantum_trader.bus.heartbeat import HeartbeatRecord, now_ms, read_heartbeats
from quantum_trader.contracts.keys import Keys
from quantum_trader.local.ledger import ledger_figure

STALE_HEARTBEAT_SECONDS = 10.0

POSITION_DRIVEN = frozenset({"exit-brain", "harvest", "heat-gate"})
"""components with nothing to do until a position is open: zero there is health, not a stall"""


@dataclass(frozen=True)
class ComponentRow:
    component: str
    state: str
    processed: int
    lag: int
    pending: int
    last_event_age: float | None
    restarts: int = 0
    detail: str = ""


@dataclass(frozen=True)
class StackSummary:
    positions: int
    equity: float
    realized_pnl: float
    fees: float
    trades: int
    wins: int
    control: str
    dead_lettered: int

    @property
    def net_pnl(self) -> float:
        return self.realized_pnl - self.fees


@dataclass(frozen=True)
class StackStatus:
    rows: list[ComponentRow]
    summary: StackSummary


@dataclass
class Observed:
    """Everything ``build_status`` needs, as plain data."""

    now_ms: int
    components: list[str]
    heartbeats: list[HeartbeatRecord]
    ledger: dict[str, str]
    open_positions: dict[str, str]
    control: ControlState
    starting_equity: float
    dlq_lengths: dict[str, int] = field(default_factory=dict)
    processes: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    """component -> (process state, restarts, how its last process ended) when a supervisor runs them"""


def idle_reason(component: str, processed: int, lag: int, open_positions: int, counters: dict) -> str:
    """Why a healthy component shows no work, in the words a person needs; empty when it is busy."""
    from quantum_trader.contracts.registry import COMPONENTS

    if component == "market-data" and int(counters.get("finished", 0)):
        return f"finished: {int(counters.get('published', processed)):,} ticks published"
    if component in POSITION_DRIVEN and open_positions == 0:
        return "idle: no open positions"
    if component == "exchange-sim" and processed == 0:
        # its count is orders handled; the ticks it reads only move its prices
        return "idle: no orders yet"
    spec = COMPONENTS.get(component)
    if processed == 0 and lag == 0 and spec is not None and spec.inputs:
        return f"idle: nothing on {', '.join(spec.inputs)} yet"
    return ""


def is_up_or_stopped(process_state: str) -> bool:
    """The process there now is a restart that runs, or ran until the stop: its predecessor's end is history
    worth showing (a process that is itself down shows its own end as its state)."""
    return process_state == "running" or process_state.startswith("stopped")


def _process(observed: Observed, name: str) -> tuple[str, int, str]:
    state, restarts, *rest = observed.processes.get(name, ("", 0, ""))
    return state, restarts, (rest[0] if rest else "")


def build_status(observed: Observed) -> StackStatus:
    by_component: dict[str, list[HeartbeatRecord]] = {}
    for beat in observed.heartbeats:
        by_component.setdefault(beat.component, []).append(beat)
    rows = []
    for name in observed.components:
        beats = by_component.get(name, [])
        process_state, restarts, last_end = _process(observed, name)
        if not beats:
            state = process_state or "no heartbeat"
            detail = f"restarted after {last_end}" if last_end and is_up_or_stopped(process_state) else ""
            rows.append(ComponentRow(name, state, 0, 0, 0, None, restarts, detail))
            continue
        newest = max(beats, key=lambda b: b.time_ms)
        age = newest.age_seconds(observed.now_ms)
        state = "stale" if age > STALE_HEARTBEAT_SECONDS else newest.state
        if process_state and process_state != "running":
            state = process_state
        processed = sum(int(b.counters.get("processed", b.counters.get("published", 0))) for b in beats)
        lag = sum(max(g.get("lag", 0), 0) for b in beats for g in b.groups.values()) // max(len(beats), 1)
        pending = sum(g.get("pending", 0) for b in beats for g in b.groups.values()) // max(len(beats), 1)
        last_event = max(int(b.counters.get("last_event_ms", 0)) for b in beats)
        last_age = max(observed.now_ms - last_event, 0) / 1000 if last_event else None
        errors = sum(int(b.counters.get("errors", 0)) for b in beats)
        notes = [f"{errors} errors"] if errors else []
        if last_end and is_up_or_stopped(process_state):
            notes.append(f"restarted after {last_end}")
        if state == "running":
            counters: dict = {}
            for beat in beats:
                counters.update(beat.counters)
            reason = idle_reason(name, processed, lag, len(observed.open_positions), counters)
            if reason:
                notes.append(reason)
        rows.append(ComponentRow(name, state, processed, lag, pending, last_age, restarts, "; ".join(notes)))
    realized = ledger_figure(observed.ledger, "realized_pnl")
    fees = ledger_figure(observed.ledger, "fees")
    summary = StackSummary(
        positions=len(observed.open_positions),
        equity=observed.starting_equity + realized - fees,
        realized_pnl=realized,
        fees=fees,
        trades=int(ledger_figure(observed.ledger, "trades")),
        wins=int(ledger_figure(observed.ledger, "wins")),
        control=observed.control.describe(),
        dead_lettered=sum(observed.dlq_lengths.values()),
    )
    return StackStatus(rows, summary)


def gather(
    client: redis.Redis,
    keys: Keys,
    components: list[str],
    starting_equity: float,
    processes: dict[str, tuple[str, int, str]] | None = None,
) -> Observed:
    from quantum_trader.contracts.registry import STREAMS

    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.ledger_equity)
        pipe.hgetall(keys.open_positions)
        for stream in STREAMS:
            pipe.xlen(keys.dlq(stream))
        ledger, open_positions, *dlq = pipe.execute()
    return Observed(
        now_ms=now_ms(),
        components=components,
        heartbeats=read_heartbeats(client, keys),
        ledger=text_dict(ledger),
        open_positions=text_dict(open_positions),
        control=read_control(client, keys),
        starting_equity=starting_equity,
        dlq_lengths={s: int(n) for s, n in zip(STREAMS, dlq, strict=True) if n},
        processes=processes or {},
    )


def render(status: StackStatus, title: str = "quantum-trader"):
    """A rich Table of the status."""
    from rich.table import Table

    table = Table(title=title, caption=_caption(status.summary), expand=False)
    table.add_column("component", no_wrap=True, min_width=14)
    for column in ("state", "processed", "lag", "pending", "last event", "restarts", "detail"):
        table.add_column(column, justify="right" if column in ("processed", "lag", "pending", "restarts") else "left")
    for row in status.rows:
        style = "green" if row.state == "running" else ("yellow" if row.state in ("starting", "stale") else "red")
        table.add_row(
            row.component,
            f"[{style}]{row.state}[/{style}]",
            f"{row.processed:,}",
            f"{row.lag:,}",
            f"{row.pending:,}",
            "-" if row.last_event_age is None else f"{row.last_event_age:.1f}s",
            str(row.restarts),
            row.detail,
        )
    return table


def _caption(summary: StackSummary) -> str:
    return (
        f"positions {summary.positions} · equity {summary.equity:,.2f} · PnL {summary.net_pnl:+,.2f} "
        f"(realized {summary.realized_pnl:+,.2f}, fees {summary.fees:,.2f}) · trades {summary.trades} "
        f"(wins {summary.wins}) · DLQ {summary.dead_lettered} · kill switch {summary.control}"
    )


def render_text(status: StackStatus) -> str:
    """Plain text for logs and non-terminals."""
    width = max([18, *(len(row.state) for row in status.rows)])  # "killed (forced stop)" and longer fit
    lines = [
        f"{'component':<15} {'state':<{width}} {'processed':>10} {'lag':>7} {'pending':>7} {'last event':>10} "
        "restarts  detail"
    ]
    for row in status.rows:
        age = "-" if row.last_event_age is None else f"{row.last_event_age:.1f}s"
        lines.append(
            f"{row.component:<15} {row.state:<{width}} {row.processed:>10,} {row.lag:>7,} {row.pending:>7,} {age:>10} "
            f"{row.restarts:>8}  {row.detail}".rstrip()
        )
    lines.append(_caption(status.summary))
    return "\n".join(lines)
