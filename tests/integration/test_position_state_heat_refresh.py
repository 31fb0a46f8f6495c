"""position-state's periodic heat refresh against a real Redis: from the running totals (no position read)
while they are trusted, from every position when they are not (the reconciler corrected a position) or
when the rebuild is due."""

from __future__ import annotations

import time

import pytest

from quantum_trader.services.position_state import RISK_OK
from tests.factories import entry
from tests.integration.test_position_state_heat import Book, book, exact  # noqa: F401 (fixture)


def calls(b: Book) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in b.r.info("commandstats").items()}


def refresh_due(b: Book) -> None:
    b.service._next_refresh = 0.0


def test_the_periodic_refresh_reads_no_position_while_the_totals_are_trusted(book: Book) -> None:  # noqa: F811
    b = book
    for i, symbol in enumerate(("BTCUSDT", "ETHUSDT", "SOLUSDT")):
        b.fill(entry(symbol, f"o{i}", price=100.0), 1.0 + i, 100.0)
    after_steps = b.heat()
    time.sleep(0.01)
    b.r.config_resetstat()
    refresh_due(b)
    b.service.idle()
    used = calls(b)
    assert used.get("hgetall", 0) == 1  # the ledger only: no position hash
    assert "hkeys" not in used
    refreshed = b.heat()
    assert exact(refreshed) == exact(after_steps)
    assert int(refreshed["time"]) > int(after_steps["time"])  # heat-gate keeps trusting it
    b.service.refresh_heat()  # the rebuild from every position agrees
    rebuilt = exact(b.heat())
    assert rebuilt[:3] == pytest.approx(exact(after_steps)[:3]) and rebuilt[3] == after_steps["positions"]


def test_a_reconciler_correction_makes_the_next_refresh_a_rebuild(book: Book) -> None:  # noqa: F811
    b = book
    b.fill(entry("BTCUSDT", "b1", price=100.0), 2.0, 100.0)
    assert b.entries() == pytest.approx({"BTCUSDT": 20.0})
    # what reconciler.correct writes: the exchange's position, and the totals marked for a rebuild
    b.r.hset(b.keys.position("BTCUSDT"), mapping={"qty": "3.0", "version": "9"})
    b.r.hset(b.keys.portfolio_risk_total, "state", "rebuild:reconciler")
    refresh_due(b)
    b.service.idle()
    assert b.totals()["state"] == RISK_OK
    assert b.entries() == pytest.approx({"BTCUSDT": 30.0})
    assert float(b.heat()["open_risk"]) == pytest.approx(30.0)


def test_the_rebuild_still_runs_when_it_is_due(book: Book) -> None:  # noqa: F811
    b = book
    b.fill(entry("BTCUSDT", "b1", price=100.0), 2.0, 100.0)
    b.r.hset(b.keys.portfolio_risk, "BTCUSDT", "20.000000001")  # drift the increments could leave
    b.r.hset(b.keys.portfolio_risk_total, "open_risk", "20.000000001")
    refresh_due(b)
    b.service.idle()
    assert b.entries() == {"BTCUSDT": pytest.approx(20.000000001, abs=0)}  # not due: left alone
    b.service._next_rebuild = 0.0
    b.service.idle()
    assert b.entries() == {"BTCUSDT": 20.0}
    assert float(b.totals()["open_risk"]) == 20.0
