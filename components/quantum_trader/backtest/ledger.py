"""What a backtest produced, as plain data: the ledger, the equity curve and the report's figures.

Pure: the runner hands over the records it read from the streams (``apply.result``,
``trade.closed``, ``governor.decision``) and the ticks it replayed, and gets back numbers. The
ledger holds only fields a replay fixes (market times, prices, quantities, ids derived from the
data), never wall-clock times or approval ids, so two runs of one backtest write the same bytes
(DESIGN §4.9); everything that depends on the machine goes into the summary's ``run`` section.

The equity curve is marked to market from the fills themselves, not from position-state's
snapshots: for linear USDⓈ-M contracts equity is the starting balance, plus the cash flow of
every fill (``-signed qty x price``), minus fees, plus each open quantity at the last price. So
the curve checks the components' bookkeeping instead of repeating it.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

LEDGER_VERSION = 1


@dataclass(frozen=True, slots=True)
class Fill:
    """One filled order, from ``apply.result``."""

    time: int
    symbol: str
    side: str
    qty: float
    price: float
    fee: float
    reduce_only: bool
    kind: str
    plan_id: str
    client_order_id: str
    source: str

    @property
    def signed_qty(self) -> float:
        return self.qty if self.side == "BUY" else -self.qty


@dataclass(frozen=True, slots=True)
class Trade:
    """One closed (or partly closed) position, from ``trade.closed``."""

    trade_id: str
    symbol: str
    side: str
    qty: float
    entry_price: float
    exit_price: float
    realized_pnl: float
    fees: float
    exit_reason: str
    exit_controller: str
    opened_at: int
    closed_at: int

    @property
    def net_pnl(self) -> float:
        return self.realized_pnl - self.fees


@dataclass(frozen=True, slots=True)
class Mark:
    """A price the market printed: one replayed tick."""

    time: int
    symbol: str
    price: float


@dataclass(frozen=True, slots=True)
class CurvePoint:
    time: int
    equity: float
    drawdown: float
    """fraction below the running peak, 0 at a new high"""
    exposure: float
    """gross open notional at the marks over equity"""


@dataclass
class SymbolStats:
    trades: int = 0
    wins: int = 0
    gross_pnl: float = 0.0
    fees: float = 0.0
    net_pnl: float = 0.0


@dataclass
class Outcome:
    """Everything the report shows."""

    fills: list[Fill]
    trades: list[Trade]
    curve: list[CurvePoint]
    rejections: dict[str, int]
    approvals: int
    per_symbol: dict[str, SymbolStats]
    starting_equity: float
    open_positions: dict[str, float] = field(default_factory=dict)

    @property
    def final_equity(self) -> float:
        return self.curve[-1].equity if self.curve else self.starting_equity

    @property
    def max_drawdown(self) -> float:
        return max((p.drawdown for p in self.curve), default=0.0)


def fills_from_results(results: Iterable[Mapping[str, Any]]) -> list[Fill]:
    """The FILLED execution results, in market-time order (ties: plan id), one per plan.

    A result is exactly-once per approval, but sorting rather than trusting stream order keeps the
    ledger independent of which replica wrote first.
    """
    fills = {}
    for result in results:
        if result.get("status") != "FILLED" or not float(result.get("filled_qty") or 0):
            continue
        fill = Fill(
            time=int(result["time"]),
            symbol=str(result["symbol"]),
            side=str(result["side"]),
            qty=float(result["filled_qty"]),
            price=float(result["avg_price"]),
            fee=float(result.get("fee") or 0.0),
            reduce_only=bool(result.get("reduce_only")),
            kind=str(result.get("kind", "")),
            plan_id=str(result["plan_id"]),
            client_order_id=str(result.get("client_order_id", "")),
            source=str(result.get("source", "")),
        )
        fills[fill.plan_id] = fill
    return sorted(fills.values(), key=lambda f: (f.time, f.plan_id))


def trades_from_closed(records: Iterable[Mapping[str, Any]]) -> list[Trade]:
    trades = {}
    for record in records:
        trade = Trade(
            trade_id=str(record["trade_id"]),
            symbol=str(record["symbol"]),
            side=str(record["side"]),
            qty=float(record["qty"]),
            entry_price=float(record["entry_price"]),
            exit_price=float(record["exit_price"]),
            realized_pnl=float(record["realized_pnl"]),
            fees=float(record["fees"]),
            exit_reason=str(record.get("exit_reason", "")),
            exit_controller=str(record.get("exit_controller", "")),
            opened_at=int(record.get("opened_at") or 0),
            closed_at=int(record.get("closed_at") or 0),
        )
        trades[trade.trade_id] = trade
    return sorted(trades.values(), key=lambda t: (t.closed_at, t.trade_id))


def rejections_by_reason(decisions: Iterable[Mapping[str, Any]]) -> tuple[dict[str, int], int]:
    """``(reason -> rejected plans, approved plans)`` from ``governor.decision``; a plan counts once
    per reason it was refused for, and a redelivered decision of one plan counts once."""
    seen: dict[str, Mapping[str, Any]] = {}
    for decision in decisions:
        seen[str(decision.get("plan_id"))] = decision
    reasons: Counter[str] = Counter()
    approvals = 0
    for decision in seen.values():
        if decision.get("approved"):
            approvals += 1
        else:
            for reason in decision.get("reasons") or ("unspecified",):
                reasons[str(reason)] += 1
    return dict(sorted(reasons.items(), key=lambda item: (-item[1], item[0]))), approvals


def equity_curve(
    marks: Iterable[Mark], fills: Sequence[Fill], starting_equity: float
) -> tuple[list[CurvePoint], dict[str, float]]:
    """Equity, drawdown and exposure after each market time, and the quantities left open.

    Fills carry the market time of the tick they were planned on and happened after it, so a
    fill is applied once the marks have reached its time, before the next mark is taken.
    """
    position: dict[str, float] = defaultdict(float)
    last_price: dict[str, float] = {}
    cash = 0.0
    fees = 0.0
    pending = iter(fills)
    next_fill = next(pending, None)
    curve: list[CurvePoint] = []
    peak = starting_equity
    current_time: int | None = None

    def close_time_step(time: int) -> None:
        nonlocal peak
        value = starting_equity + cash - fees + sum(q * last_price.get(s, 0.0) for s, q in position.items())
        gross = sum(abs(q) * last_price.get(s, 0.0) for s, q in position.items())
        peak = max(peak, value)
        drawdown = (peak - value) / peak if peak > 0 else 0.0
        exposure = gross / value if value > 0 else math.inf if gross else 0.0
        curve.append(CurvePoint(time, value, drawdown, exposure))

    for mark in marks:
        if current_time is not None and mark.time != current_time:
            while next_fill is not None and next_fill.time <= current_time:
                cash -= next_fill.signed_qty * next_fill.price
                fees += next_fill.fee
                position[next_fill.symbol] += next_fill.signed_qty
                next_fill = next(pending, None)
            close_time_step(current_time)
        current_time = mark.time
        last_price[mark.symbol] = mark.price
    if current_time is not None:
        while next_fill is not None:
            cash -= next_fill.signed_qty * next_fill.price
            fees += next_fill.fee
            position[next_fill.symbol] += next_fill.signed_qty
            next_fill = next(pending, None)
        close_time_step(current_time)
    open_positions = {s: q for s, q in sorted(position.items()) if abs(q) > 1e-12}
    return curve, open_positions


def per_symbol_stats(trades: Iterable[Trade]) -> dict[str, SymbolStats]:
    stats: dict[str, SymbolStats] = {}
    for trade in trades:
        entry = stats.setdefault(trade.symbol, SymbolStats())
        entry.trades += 1
        entry.wins += trade.net_pnl > 0
        entry.gross_pnl += trade.realized_pnl
        entry.fees += trade.fees
        entry.net_pnl += trade.net_pnl
    return dict(sorted(stats.items()))


def outcome(
    results: Iterable[Mapping[str, Any]],
    closed: Iterable[Mapping[str, Any]],
    decisions: Iterable[Mapping[str, Any]],
    marks: Iterable[Mark],
    starting_equity: float,
) -> Outcome:
    fills = fills_from_results(results)
    trades = trades_from_closed(closed)
    rejections, approvals = rejections_by_reason(decisions)
    curve, open_positions = equity_curve(marks, fills, starting_equity)
    return Outcome(
        fills=fills,
        trades=trades,
        curve=curve,
        rejections=rejections,
        approvals=approvals,
        per_symbol=per_symbol_stats(trades),
        starting_equity=starting_equity,
        open_positions=open_positions,
    )


def ledger_document(result: Outcome, totals: Mapping[str, str]) -> dict[str, Any]:
    """The ledger file's content: fills, closed trades, position-state's ledger totals, open quantities."""
    return {
        "version": LEDGER_VERSION,
        "fills": [asdict(f) for f in result.fills],
        "trades": [asdict(t) for t in result.trades],
        "totals": {k: totals[k] for k in sorted(totals)},
        "open_positions": result.open_positions,
    }


def ledger_bytes(document: Mapping[str, Any]) -> bytes:
    """One canonical encoding: sorted keys, fixed separators, ``repr`` floats (shortest round-trip)."""
    return (json.dumps(document, sort_keys=True, indent=1, separators=(",", ": ")) + "\n").encode()


def summary(result: Outcome, *, bars: int, symbols: Sequence[str]) -> dict[str, Any]:
    """The headline numbers (the JSON summary and the report's table)."""
    trades = result.trades
    wins = sum(1 for t in trades if t.net_pnl > 0)
    gross = sum(t.realized_pnl for t in trades)
    fees_paid = sum(f.fee for f in result.fills)
    final = result.final_equity
    return {
        "bars": bars,
        "symbols": list(symbols),
        "start_time": result.curve[0].time if result.curve else None,
        "end_time": result.curve[-1].time if result.curve else None,
        "starting_equity": result.starting_equity,
        "final_equity": final,
        "return_pct": (final / result.starting_equity - 1) * 100 if result.starting_equity else 0.0,
        "max_drawdown_pct": result.max_drawdown * 100,
        "max_exposure": max((p.exposure for p in result.curve), default=0.0),
        "orders_filled": len(result.fills),
        "trades": len(trades),
        "wins": wins,
        "win_rate": wins / len(trades) if trades else None,
        "closed_gross_pnl": gross,
        "closed_net_pnl": sum(t.net_pnl for t in trades),
        "fees_paid": fees_paid,
        "approvals": result.approvals,
        "rejections": result.rejections,
        "per_symbol": {s: asdict(v) for s, v in result.per_symbol.items()},
        "open_positions": result.open_positions,
    }
