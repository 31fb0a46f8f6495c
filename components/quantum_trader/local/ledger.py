"""The run ledger of ``qt run``: what the stack did, read from Redis once the components stopped, kept
as ``ledger.json`` next to the logs, and the closing summary printed from it.

The embedded Redis holds no file and ends with the run, so the ledger file is the run's lasting
record. The summary is a pure function of the ledger, so what it prints is exactly what the file
says: orders and fills from ``apply.result``, rejections from ``governor.decision`` and
``apply.result``, PnL and fees from position-state's ledger hash, bars from market-data's progress.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from quantum_trader.bus.codec import text, text_dict
from quantum_trader.contracts.keys import Keys

LEDGER_FILE = "ledger.json"


@dataclass(frozen=True)
class Crash:
    pod: str
    state: str
    """how it ended, as the status table shows it: ``crashed (SIGKILL)`` or ``exited (1)``"""
    at_seconds: float
    """seconds into the run"""


@dataclass
class RunLedger:
    started_at: float
    """wall time, seconds"""
    ended_at: float
    bars: int
    intents: int
    results: list[dict[str, Any]]
    """every ExecutionResult on ``apply.result``, the first per plan"""
    decisions_rejected: list[dict[str, Any]]
    """every GovernorDecision that refused a plan"""
    ledger: dict[str, str]
    """position-state's ledger hash: realized_pnl, fees, trades, wins"""
    open_positions: list[str]
    starting_equity: float
    crashes: list[Crash] = field(default_factory=list)
    workdir: str = ""
    error: str = ""
    """why the ledger is incomplete (Redis gone before it could be read), empty when complete"""


@dataclass(frozen=True)
class Summary:
    run_seconds: float
    bars: int
    bars_per_second: float
    intents: int
    orders: int
    fills: int
    rejections: dict[str, int]
    """``<component>: <reason>`` -> count"""
    open_positions: list[str]
    realized_pnl: float
    fees: float
    equity: float
    crashes: list[Crash]

    @property
    def net_pnl(self) -> float:
        return self.realized_pnl - self.fees


def ledger_figure(raw: Mapping[str, str], name: str) -> float:
    """One figure of position-state's ledger hash; 0 when it is missing, not a number or not finite (the
    summary and the status table show a figure, they never fail on one: ``int()`` of an inf would)."""
    try:
        value = float(raw.get(name) or 0)
    except ValueError:
        return 0.0
    return value if math.isfinite(value) else 0.0


def reached_exchange(result: dict[str, Any]) -> bool:
    """An order was sent: it filled, or the exchange answered with an error code, or its status was odd."""
    status = result.get("status")
    return status == "FILLED" or status == "ERROR" or (status == "REJECTED" and result.get("error_code") is not None)


def summarize(ledger: RunLedger) -> Summary:
    rejections: Counter[str] = Counter()
    for decision in ledger.decisions_rejected:
        for reason in decision.get("reasons") or ("unknown",):
            rejections[f"governor: {reason}"] += 1
    for result in ledger.results:
        if result.get("status") == "REJECTED":
            reason = str(result.get("reason") or "unknown")
            where = "exchange" if result.get("error_code") is not None else "apply-layer"
            rejections[f"{where}: {reason}"] += 1
        elif result.get("status") == "SKIPPED":
            # refused before any request, e.g. an exit for a trade already closed: by its code, not
            # its detail (which names times and sides), so the same cause is one line
            code = str(result.get("reason") or "unknown").split(":", 1)[0]
            rejections[f"apply-layer: skipped {code}"] += 1
    seconds = max(ledger.ended_at - ledger.started_at, 0.0)
    realized = ledger_figure(ledger.ledger, "realized_pnl")
    fees = ledger_figure(ledger.ledger, "fees")
    return Summary(
        run_seconds=seconds,
        bars=ledger.bars,
        bars_per_second=ledger.bars / seconds if seconds > 0 else 0.0,
        intents=ledger.intents,
        orders=sum(1 for r in ledger.results if reached_exchange(r)),
        fills=sum(1 for r in ledger.results if r.get("status") == "FILLED"),
        rejections=dict(sorted(rejections.items(), key=lambda item: (-item[1], item[0]))),
        open_positions=sorted(ledger.open_positions),
        realized_pnl=realized,
        fees=fees,
        equity=ledger.starting_equity + realized - fees,
        crashes=list(ledger.crashes),
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def render_summary(ledger: RunLedger, summary: Summary, *, forced: bool = False) -> str:
    """The closing summary, one fact a line."""
    lines = [f"qt: run summary ({'forced stop' if forced else 'stopped in order'})"]
    rows: list[tuple[str, str]] = [
        ("run time", _duration(summary.run_seconds)),
        ("bars", f"{summary.bars:,} ({summary.bars_per_second:,.1f} bars/s)"),
        ("intents", f"{summary.intents:,}"),
        ("orders", f"{summary.orders:,} sent, {summary.fills:,} filled"),
        (
            "rejections",
            "; ".join(f"{count} {reason}" for reason, count in summary.rejections.items()) or "none",
        ),
        (
            "positions",
            f"{len(summary.open_positions)} open"
            + (f" ({', '.join(summary.open_positions)})" if summary.open_positions else ""),
        ),
        (
            "PnL",
            f"{summary.net_pnl:+,.2f} USDT after {summary.fees:,.2f} fees "
            f"(realized {summary.realized_pnl:+,.2f}); equity {summary.equity:,.2f}",
        ),
    ]
    if summary.crashes:
        rows.append(("crashes", ", ".join(f"{c.pod} {c.state} at {_duration(c.at_seconds)}" for c in summary.crashes)))
    if ledger.error:
        rows.append(("incomplete", ledger.error))
    if ledger.workdir:
        rows.append(("logs", str(Path(ledger.workdir) / "<component>-<n>.log")))
        rows.append(("ledger", str(Path(ledger.workdir) / LEDGER_FILE)))
    width = max(len(name) for name, _ in rows)
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


# ---- I/O: read it from Redis, keep it as a file ------------------------------------------------------


def _entries(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    found = []
    for _, fields in client.xrange(stream):
        try:
            found.append(json.loads(text(fields.get(b"data", fields.get("data")))))
        except (ValueError, TypeError, AttributeError):
            continue  # invalid entries are in the DLQ and counted by the status table
    return found


def entries_added(client: redis.Redis, stream: str) -> int:
    """Entries ever added to ``stream``, trimming notwithstanding (XINFO's entries-added, Redis 7)."""
    try:
        info = client.xinfo_stream(stream)
    except redis.ResponseError:
        return 0  # no such stream: nothing was ever added
    added = info.get("entries-added", info.get(b"entries-added"))
    return int(added if added is not None else info.get("length", 0))


def read_ledger(
    client: redis.Redis,
    keys: Keys,
    *,
    started_at: float,
    ended_at: float,
    starting_equity: float,
    crashes: list[Crash],
    workdir: Path,
) -> RunLedger:
    """Everything the summary needs, from Redis, after the components stopped (nothing changes it then)."""
    base = RunLedger(
        started_at=started_at,
        ended_at=ended_at,
        bars=0,
        intents=0,
        results=[],
        decisions_rejected=[],
        ledger={},
        open_positions=[],
        starting_equity=starting_equity,
        crashes=crashes,
        workdir=str(workdir),
    )
    try:
        results: dict[str, dict[str, Any]] = {}
        for result in _entries(client, keys.stream("apply.result")):
            results.setdefault(str(result.get("plan_id")), result)
        base.results = list(results.values())
        base.decisions_rejected = [
            d for d in _entries(client, keys.stream("governor.decision")) if d.get("approved") is False
        ]
        base.ledger = text_dict(client.hgetall(keys.ledger_equity))
        base.open_positions = sorted(text_dict(client.hgetall(keys.open_positions)))
        base.bars = int(client.hget(keys.component_state("market-data", "progress"), "published") or 0)
        base.intents = entries_added(client, keys.stream("trade.intent"))
    except redis.RedisError as error:
        base.error = f"Redis went away before the ledger was read ({error})"
    return base


def write_ledger(ledger: RunLedger, path: Path) -> None:
    document = asdict(ledger)
    document["summary"] = asdict(summarize(ledger))
    path.write_text(json.dumps(document, indent=1, default=str))


def load_ledger(path: Path) -> RunLedger:
    document = json.loads(path.read_text())
    document.pop("summary", None)
    document["crashes"] = [Crash(**c) for c in document.get("crashes", [])]
    return RunLedger(**document)
