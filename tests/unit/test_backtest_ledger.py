"""The backtest's bookkeeping: fills, marks and decisions in, equity curve, ledger and summary out."""

from __future__ import annotations

import json

import pytest

from quantum_trader.backtest.ledger import (
    Mark,
    equity_curve,
    fills_from_results,
    ledger_bytes,
    ledger_document,
    outcome,
    rejections_by_reason,
    summary,
)


def result(plan_id: str, t: int, side: str, qty: float, price: float, *, fee: float = 0.1, status: str = "FILLED"):
    return {"plan_id": plan_id, "time": t, "symbol": "BTCUSDT", "side": side, "filled_qty": qty, "avg_price": price,
            "fee": fee, "status": status, "kind": "ENTRY", "reduce_only": False, "client_order_id": f"c-{plan_id}",
            "source": "test"}  # fmt: skip


def test_only_filled_results_count_once_each_in_market_time_order():
    fills = fills_from_results([
        result("b", 20, "SELL", 1, 110), result("a", 10, "BUY", 1, 100), result("a", 10, "BUY", 1, 100),
        result("r", 5, "BUY", 1, 100, status="REJECTED"), result("z", 5, "BUY", 0, 100),
    ])  # fmt: skip
    assert [f.plan_id for f in fills] == ["a", "b"]


def test_equity_is_marked_from_the_fills_at_each_market_time():
    marks = [Mark(10, "BTCUSDT", 100), Mark(20, "BTCUSDT", 120), Mark(30, "BTCUSDT", 90), Mark(40, "BTCUSDT", 95)]
    fills = fills_from_results([result("a", 10, "BUY", 2, 101, fee=0.5), result("b", 30, "SELL", 2, 89, fee=0.5)])
    curve, open_positions = equity_curve(marks, fills, 1_000)
    assert [p.time for p in curve] == [10, 20, 30, 40]
    # bought 2 at 101 (fee 0.5): marked at 100, then 120; sold at 89 at t=30 (fee 0.5): flat from then on
    assert [p.equity for p in curve] == pytest.approx([997.5, 1037.5, 975.0, 975.0])
    assert curve[2].drawdown == pytest.approx((1037.5 - 975.0) / 1037.5)
    assert curve[1].exposure == pytest.approx(240 / 1037.5) and curve[3].exposure == 0
    assert open_positions == {}


def test_a_position_left_open_is_reported_and_marked_to_the_last_price():
    marks = [Mark(10, "BTCUSDT", 100), Mark(10, "ETHUSDT", 10), Mark(20, "ETHUSDT", 12)]
    fills = fills_from_results([result("a", 10, "SELL", 1, 100, fee=0)])
    curve, open_positions = equity_curve(marks, fills, 1_000)
    assert open_positions == {"BTCUSDT": -1.0}
    assert [p.equity for p in curve] == [1_000.0, 1_000.0]


def test_rejections_count_each_plan_once_per_reason():
    decisions = [
        {"plan_id": "1", "approved": True},
        {"plan_id": "2", "approved": False, "reasons": ["cooldown"]},
        {"plan_id": "2", "approved": False, "reasons": ["cooldown"]},
        {"plan_id": "3", "approved": False, "reasons": ["killswitch_entries"]},
        {"plan_id": "4", "approved": False, "reasons": ["cooldown"]},
    ]
    assert rejections_by_reason(decisions) == ({"cooldown": 2, "killswitch_entries": 1}, 1)


def test_the_ledger_encoding_is_canonical_and_the_summary_adds_up():
    marks = [Mark(10, "BTCUSDT", 100), Mark(20, "BTCUSDT", 110)]
    closed = [{"trade_id": "t1", "symbol": "BTCUSDT", "side": "LONG", "qty": 1, "entry_price": 100,
               "exit_price": 110, "realized_pnl": 10, "fees": 0.2, "exit_reason": "tp", "opened_at": 10,
               "closed_at": 20}]  # fmt: skip
    done = outcome(
        [result("a", 10, "BUY", 1, 100), result("b", 20, "SELL", 1, 110)], closed, [], marks, 1_000
    )
    document = ledger_document(done, {"realized_pnl": "10", "fees": "0.2"})
    encoded = ledger_bytes(document)
    assert encoded == ledger_bytes(json.loads(encoded)), "one encoding for one content"
    headline = summary(done, bars=2, symbols=["BTCUSDT"])
    assert headline["final_equity"] == pytest.approx(1_000 + 10 - 0.2)
    assert headline["trades"] == 1 and headline["win_rate"] == 1.0
    assert headline["per_symbol"]["BTCUSDT"]["net_pnl"] == pytest.approx(9.8)


def test_the_report_draws_every_chart_and_lists_rejections_and_trades(tmp_path):
    from quantum_trader.backtest.report import write_report

    marks = [Mark(t * 3_600_000, "BTCUSDT", 100 + t) for t in range(1, 30)]
    closed = [{"trade_id": "t<1>", "symbol": "BTCUSDT", "side": "LONG", "qty": 1, "entry_price": 101,
               "exit_price": 110, "realized_pnl": 9, "fees": 0.2, "exit_reason": "take_profit",
               "opened_at": 3_600_000, "closed_at": 36_000_000}]  # fmt: skip
    fills = [result("a", 3_600_000, "BUY", 1, 101), result("b", 36_000_000, "SELL", 1, 110)]
    decisions = [{"plan_id": "x", "approved": False, "reasons": ["max_open_positions"]}]
    done = outcome(fills, closed, decisions, marks, 1_000)
    headline = summary(done, bars=len(marks), symbols=["BTCUSDT"])
    files = write_report(tmp_path, done, headline, {"bars_per_second": 10.0}, ledger_document(done, {}))
    for png in ("equity.png", "exposure.png", "per_symbol_pnl.png", "rejections.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = files["report"].read_text()
    assert "max_open_positions" in page and "take_profit" in page
    assert "t&lt;1&gt;" not in page and "<1>" not in page, "text is escaped, and trade ids are not shown"
    assert json.loads(files["summary"].read_text())["rejections"] == {"max_open_positions": 1}
