"""The evaluation report: ``index.html`` with PNG plots, and ``summary.json`` with every number in it.

Out-of-sample only: it shows what ``evaluate`` computed from walk-forward test rows, and says how.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

COLOURS = {"ensemble": "#1f77b4", "buy_and_hold": "#7f7f7f", "baseline": "#ff7f0e"}
LABELS = {"ensemble": "ensemble (xgboost + torch)", "buy_and_hold": "buy and hold", "baseline": "baseline-trend"}


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def write_report(folder: Path, name: str, digest: str, summary: dict[str, Any], manifest: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    curves = summary.get("_curves", {})
    public = {k: v for k, v in summary.items() if not k.startswith("_")}
    public = {"model": name, "digest": digest, **public}
    (folder / "summary.json").write_text(json.dumps(public, indent=2, sort_keys=True) + "\n")
    _equity_plot(folder / "equity.png", curves)
    _calibration_plot(folder / "calibration.png", summary["calibration"])
    _precision_plot(folder / "precision.png", summary["precision_by_threshold"], summary["threshold"])
    (folder / "index.html").write_text(_html(name, digest, public, manifest))
    return folder / "index.html"


def _equity_plot(path: Path, curves: dict[str, Any]) -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for key in ("buy_and_hold", "baseline", "ensemble"):
        if key not in curves:
            continue
        times = [datetime.fromtimestamp(t / 1000, UTC) for t in curves[key]["times"]]
        equity = curves[key]["equity"]
        top.plot(times, equity, color=COLOURS[key], label=LABELS[key], linewidth=1.4 if key == "ensemble" else 1.0)
        drawdown = 1 - equity / np.maximum.accumulate(equity)
        bottom.plot(times, -100 * drawdown, color=COLOURS[key], linewidth=0.9)
    top.axhline(1.0, color="black", linewidth=0.5)
    top.set_ylabel("equity (start = 1)")
    top.set_title("Out-of-sample equity after fees and slippage (equal weight per symbol)")
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    bottom.set_ylabel("drawdown %")
    bottom.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _calibration_plot(path: Path, calibration: dict[str, dict[str, list[float]]]) -> None:
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=0.8, label="perfectly calibrated")
    for cls, colour in (("up", "#2ca02c"), ("down", "#d62728")):
        curve = calibration.get(cls)
        if not curve or not curve["predicted"]:
            continue
        sizes = 10 + 60 * np.sqrt(np.array(curve["count"]) / max(curve["count"]))
        ax.plot(curve["predicted"], curve["observed"], color=colour, linewidth=1.2, label=f"P({cls})")
        ax.scatter(curve["predicted"], curve["observed"], s=sizes, color=colour, alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability (ensemble, calibrated)")
    ax.set_ylabel("observed frequency")
    ax.set_title("Calibration, out of sample (marker size: bars in bin)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _precision_plot(path: Path, rows: list[dict[str, Any]], threshold: float) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    xs = [r["threshold"] for r in rows if r["signals"]]
    ax.plot(xs, [r["precision"] for r in rows if r["signals"]], color="#1f77b4", marker="o", label="right direction")
    ax.plot(
        xs, [r["wrong_direction"] for r in rows if r["signals"]], color="#d62728", marker="o", label="wrong direction"
    )
    ax.set_xlabel("confidence threshold")
    ax.set_ylabel("share of signalled bars")
    ax.set_ylim(0, 1)
    ax.axvline(threshold, color="black", linestyle=":", linewidth=0.8, label=f"evaluation threshold {threshold}")
    twin = ax.twinx()
    twin.bar(xs, [r["coverage"] for r in rows if r["signals"]], width=0.015, color="#7f7f7f", alpha=0.3)
    twin.set_ylabel("coverage (share of bars with a signal)", color="#555555")
    twin.set_ylim(0, 1)
    ax.set_title("Precision by confidence threshold, out of sample")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(headers: list[str], body: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return html.escape("-" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    rows = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in body)
    return f"<table><tr>{head}</tr>{rows}</table>"


def _html(name: str, digest: str, summary: dict[str, Any], manifest: dict[str, Any]) -> str:
    training = manifest["training"]
    oos = summary["out_of_sample_range"]
    pnl = summary["pnl"]
    data_rows = [[d["file"], d["symbol"], d["bars"], _utc(d["first_bar_close"]), _utc(d["last_bar_close"])]
                 for d in training["data"]]
    pnl_rows = [
        [LABELS[k], v["total_return"], v["annualised_sharpe"], v["max_drawdown"], v["fees_paid"], v["turnover"],
         v["exposure"]]
        for k, v in pnl.items()
    ]
    acc, ll = summary["accuracy"], summary["log_loss"]
    quality = [
        ["xgboost", acc["xgboost"], ll["xgboost"]],
        ["torch MLP", acc["torch"], ll["torch"]],
        ["ensemble (equal weights)", acc["ensemble"], ll["ensemble"]],
        ["always the most frequent class", acc["always_most_frequent"], None],
        ["uniform probabilities", None, ll["uniform"]],
        ["class frequencies (known only in hindsight)", None, ll["class_frequencies_in_hindsight"]],
    ]
    precision = [
        [r["threshold"], r["signals"], r["coverage"], r["precision"], r["wrong_direction"], r["long_precision"],
         r["short_precision"]]
        for r in summary["precision_by_threshold"]
    ]
    label = manifest["label"]
    folds = [[f["fold"], _utc(f["train_end"]), _utc(f["test_start"]), _utc(f["test_end"]), f["fit_rows"],
              f["test_rows"]] for f in summary["folds"]]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Model report: {html.escape(name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.92em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child {{ text-align: left; }}
code {{ background: #f3f3f3; padding: 0 0.25em; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
.note {{ background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 1em; }}
</style></head><body>
<h1>Model <code>{html.escape(name)}</code></h1>
<p>Digest <code>{html.escape(digest)}</code> (pin it as <code>spec.model.digest</code>). Feature set
<code>{html.escape(manifest["feature_set"]["name"])}</code>
<code>{html.escape(manifest["feature_set"]["hash"])}</code>.</p>
<p class="note"><b>Out of sample only.</b> Every number and plot below comes from walk-forward test windows: each
window is predicted by models fitted only on bars that end at least {training["walk_forward"]["gap_bars"]} bars
before it (label horizon {label["horizon_bars"]} bars + embargo {training["walk_forward"]["embargo_bars"]}), and
calibrated on a later slice of their own training window. Out-of-sample span: {_utc(oos["start"])} to
{_utc(oos["end"])} UTC, {summary["out_of_sample_rows"]} bars over all symbols. PnL is after a cost of
{summary["cost_per_unit_traded"] * 1e4:.1f} bp per unit traded (taker fee + slippage).</p>

<h2>Simulated PnL against buy-and-hold and the baseline</h2>
<img src="equity.png" alt="equity curves">
{_table(["strategy", "total return", "Sharpe (annualised)", "max drawdown", "fees paid", "turnover", "exposure"],
        pnl_rows)}
<p>How it is simulated: on each out-of-sample bar a strategy holds -1, 0 or +1 from that bar's close to the next;
every change of position pays the cost per unit traded, and the last position is closed at the end; symbols are
equally weighted. The ensemble's signal at threshold {summary["threshold"]} (long when P(up) reaches it and beats
P(down), short the other way round) opens a position held for {summary["hold_bars"]} bars, the label horizon, or
until a newer signal; without a signal it is flat. The baseline holds <code>baseline-trend</code>'s
last crossover side. Stop-loss and take-profit exits are not simulated here (<code>qt backtest</code> runs the whole
pipeline with them).</p>

<h2>Classification</h2>
<p>Labels: {html.escape(label["rule"])}, horizon {label["horizon_bars"]} bars, band {label["band_atr"]} ATR.
Out-of-sample class frequencies: {", ".join(f"{k} {v:.3f}" for k, v in summary["class_frequencies"].items())}.</p>
{_table(["model", "accuracy", "log-loss"], quality)}
<img src="calibration.png" alt="calibration curve">
<h2>Precision by confidence threshold</h2>
<img src="precision.png" alt="precision by threshold">
{_table(["threshold", "signals", "coverage", "right direction", "wrong direction", "long precision",
         "short precision"], precision)}

<h2>Walk-forward folds</h2>
{_table(["fold", "training ends", "test starts", "test ends", "fit rows", "test rows"], folds)}
<h2>Training data</h2>
{_table(["file", "symbol", "bars", "first bar close (UTC)", "last bar close (UTC)"], data_rows)}
<p>Seed {training["seed"]}; configuration <code>{html.escape(json.dumps(training["config"], sort_keys=True))}</code>.
Every number is also in <a href="summary.json">summary.json</a>.</p>
</body></html>
"""
