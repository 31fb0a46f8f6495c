"""The backtest report: ``report.html`` with PNG charts (matplotlib, Agg), ``summary.json`` and ``ledger.json``.

The page is one static file that reads well offline: headline numbers first, then the equity
curve with its drawdown, exposure, per-symbol PnL, the governor's rejections by reason, and
every trade. Charts are drawn on the Agg backend, so no display is ever needed.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quantum_trader.backtest.ledger import CurvePoint, Outcome, SymbolStats, Trade, ledger_bytes

EQUITY_PNG = "equity.png"
EXPOSURE_PNG = "exposure.png"
SYMBOLS_PNG = "per_symbol_pnl.png"
REJECTIONS_PNG = "rejections.png"
MAX_TRADE_ROWS = 2000
"""The trade table stops here (the ledger holds every trade); a page of 10,000 rows helps nobody."""


def _stamp(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _dates(curve: Sequence[CurvePoint]) -> list[datetime]:
    return [datetime.fromtimestamp(p.time / 1000, UTC) for p in curve]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_equity(curve: Sequence[CurvePoint], starting_equity: float, path: Path) -> None:
    """Equity over time above, drawdown below on a shared time axis."""
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}, constrained_layout=True
    )
    dates = _dates(curve)
    equity = [p.equity for p in curve]
    top.plot(dates, equity, color="#1f77b4", linewidth=1.2, label="equity")
    top.axhline(starting_equity, color="#888888", linewidth=0.8, linestyle="--", label="starting balance")
    top.ticklabel_format(axis="y", useOffset=False, style="plain")
    top.set_ylabel("equity (USDT)")
    top.set_title("Equity curve")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", frameon=False)
    drawdown = [-p.drawdown * 100 for p in curve]
    bottom.fill_between(dates, drawdown, 0, color="#d62728", alpha=0.35, linewidth=0)
    bottom.plot(dates, drawdown, color="#d62728", linewidth=0.8)
    bottom.set_ylabel("drawdown (%)")
    bottom.grid(alpha=0.3)
    figure.autofmt_xdate()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_exposure(curve: Sequence[CurvePoint], path: Path) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(10, 2.8), constrained_layout=True)
    axis.fill_between(_dates(curve), [p.exposure * 100 for p in curve], 0, step="post", color="#2ca02c", alpha=0.4)
    axis.set_ylabel("gross exposure\n(% of equity)")
    axis.set_title("Exposure")
    axis.grid(alpha=0.3)
    figure.autofmt_xdate()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_bars(values: Mapping[str, float], title: str, xlabel: str, path: Path, *, signed: bool) -> None:
    """Horizontal bars, one per label; green above zero and red below when ``signed``."""
    plt = _pyplot()
    labels = list(values)
    numbers = [values[k] for k in labels]
    figure, axis = plt.subplots(figsize=(8, max(1.6, 0.45 * len(labels) + 1.0)), constrained_layout=True)
    colors = ["#2ca02c" if v >= 0 else "#d62728" for v in numbers] if signed else "#ff7f0e"
    axis.barh(labels, numbers, color=colors)
    axis.invert_yaxis()
    if signed:
        axis.axvline(0, color="#555555", linewidth=0.8)
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.grid(axis="x", alpha=0.3)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            css = ' class="num"' if index >= numeric_from else ""
            cells.append(f"<td{css}>{html.escape(str(cell))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _money(value: float) -> str:
    return f"{value:,.2f}"


def _trade_rows(trades: Sequence[Trade]) -> list[list[Any]]:
    return [
        [
            _stamp(t.closed_at),
            t.symbol,
            t.side,
            f"{t.qty:g}",
            f"{t.entry_price:g}",
            f"{t.exit_price:g}",
            _money(t.realized_pnl),
            _money(t.fees),
            _money(t.net_pnl),
            t.exit_reason,
        ]
        for t in trades[:MAX_TRADE_ROWS]
    ]


def _symbol_rows(per_symbol: Mapping[str, SymbolStats]) -> list[list[Any]]:
    return [
        [
            s,
            v.trades,
            f"{(v.wins / v.trades * 100) if v.trades else 0:.0f} %",
            _money(v.gross_pnl),
            _money(v.fees),
            _money(v.net_pnl),
        ]
        for s, v in per_symbol.items()
    ]


_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 1.2em 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; min-width: 9em; }
.card .v { font-size: 1.35em; font-weight: 600; } .card .k { color: #666; font-size: 0.85em; }
.pos { color: #1a7f37; } .neg { color: #c62828; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
th, td { padding: 0.3em 0.6em; border-bottom: 1px solid #eee; text-align: left; }
td.num, th:not(:first-child) { text-align: right; } thead th { background: #f6f6f6; }
img { max-width: 100%; } .note { color: #666; font-size: 0.9em; }
"""


def render_html(result: Outcome, headline: Mapping[str, Any], run: Mapping[str, Any], charts: Mapping[str, str]) -> str:
    ret = headline["return_pct"]
    cards = [
        ("final equity", _money(headline["final_equity"]), ""),
        ("return", f"{ret:+.2f} %", "pos" if ret >= 0 else "neg"),
        ("max drawdown", f"{headline['max_drawdown_pct']:.2f} %", "neg" if headline["max_drawdown_pct"] else ""),
        ("trades", str(headline["trades"]), ""),
        ("win rate", "-" if headline["win_rate"] is None else f"{headline['win_rate'] * 100:.0f} %", ""),
        ("fees paid", _money(headline["fees_paid"]), ""),
        ("bars", f"{headline['bars']:,}", ""),
    ]
    card_html = "".join(
        f'<div class="card"><div class="v {css}">{html.escape(v)}</div><div class="k">{html.escape(k)}</div></div>'
        for k, v, css in cards
    )
    rejections = result.rejections
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>Backtest {html.escape(', '.join(headline['symbols']))}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Backtest: {html.escape(', '.join(headline['symbols']))}</h1>",
        f'<p class="sub">{_stamp(headline["start_time"])} to {_stamp(headline["end_time"])} UTC · '
        f"model {html.escape(str(run.get('model', '-')))} · taker fee {run.get('taker_fee', '-')} · "
        f"slippage {run.get('slippage_bps', '-')} bps · "
        f"starting balance {_money(headline['starting_equity'])} USDT</p>",
        f'<div class="cards">{card_html}</div>',
        "<h2>Equity and drawdown</h2>",
        f'<img src="{charts["equity"]}" alt="equity curve and drawdown">',
        "<h2>Exposure</h2>",
        f'<img src="{charts["exposure"]}" alt="gross exposure over time">',
        "<h2>PnL by symbol</h2>",
    ]
    if result.per_symbol:
        parts.append(f'<img src="{charts["symbols"]}" alt="net PnL by symbol">')
        parts.append(
            _table(["symbol", "trades", "won", "gross PnL", "fees", "net PnL"], _symbol_rows(result.per_symbol))
        )
    else:
        parts.append('<p class="note">No trade closed.</p>')
    if result.open_positions:
        parts.append(
            '<p class="note">Open at the end (marked to the last price in the equity curve): '
            + html.escape(", ".join(f"{s} {q:g}" for s, q in result.open_positions.items()))
            + "</p>"
        )
    parts.append("<h2>Governor rejections by reason</h2>")
    if rejections:
        parts.append(f'<img src="{charts["rejections"]}" alt="rejections by reason">')
        parts.append(_table(["reason", "plans"], [[k, v] for k, v in rejections.items()]))
    parts.append(f'<p class="note">{result.approvals} plans approved, {sum(rejections.values())} rejections.</p>')
    parts.append(f"<h2>Trades ({len(result.trades)})</h2>")
    if result.trades:
        parts.append(
            _table(
                ["closed (UTC)", "symbol", "side", "qty", "entry", "exit", "gross PnL", "fees", "net PnL", "reason"],
                _trade_rows(result.trades),
                numeric_from=3,
            )
        )
        if len(result.trades) > MAX_TRADE_ROWS:
            parts.append(f'<p class="note">First {MAX_TRADE_ROWS} shown; ledger.json holds all.</p>')
    parts.append(
        f'<p class="note">Replayed in lockstep through the component processes and the exchange simulator: '
        f"{run.get('bars_per_second', 0):,.0f} bars/s over {run.get('replay_seconds', 0):.1f} s of replay "
        f"({run.get('elapsed_seconds', 0):.1f} s with start-up and stop). "
        "Files: summary.json, ledger.json.</p></body></html>"
    )
    return "\n".join(parts) + "\n"


def write_report(
    out: Path, result: Outcome, headline: Mapping[str, Any], run: Mapping[str, Any], ledger: Mapping[str, Any]
) -> dict[str, Path]:
    """Write every file of the report into ``out`` and return them by name."""
    out.mkdir(parents=True, exist_ok=True)
    plot_equity(result.curve, result.starting_equity, out / EQUITY_PNG)
    plot_exposure(result.curve, out / EXPOSURE_PNG)
    if result.per_symbol:
        plot_bars(
            {s: v.net_pnl for s, v in result.per_symbol.items()},
            "Net PnL by symbol",
            "USDT, after fees",
            out / SYMBOLS_PNG,
            signed=True,
        )
    if result.rejections:
        plot_bars(dict(result.rejections), "Governor rejections", "plans rejected", out / REJECTIONS_PNG, signed=False)
    charts = {"equity": EQUITY_PNG, "exposure": EXPOSURE_PNG, "symbols": SYMBOLS_PNG, "rejections": REJECTIONS_PNG}
    files = {
        "report": out / "report.html",
        "summary": out / "summary.json",
        "ledger": out / "ledger.json",
    }
    files["report"].write_text(render_html(result, headline, run, charts), encoding="utf-8")
    files["summary"].write_text(json.dumps({**headline, "run": dict(run)}, indent=2, sort_keys=True) + "\n")
    files["ledger"].write_bytes(ledger_bytes(ledger))
    return files
