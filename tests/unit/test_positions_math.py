"""Position math, settlement and heat: pure, exhaustive, no Redis."""

from __future__ import annotations

import math

import pytest

from quantum_trader.contracts.messages import (
    ExecutionResult,
    PlanKind,
    PositionSide,
    Reservation,
    ResultStatus,
    Side,
)
from quantum_trader.risk.heat import equity, portfolio_heat
from quantum_trader.risk.positions import (
    Position,
    PositionFormatError,
    apply_fill,
    exit_reason,
    realized_pnl,
)
from quantum_trader.risk.settlement import PortfolioView, settle

SYM = "BTCUSDT"


def fill(
    side: Side,
    qty: float,
    price: float,
    *,
    fee: float = 0.0,
    kind: PlanKind = PlanKind.ENTRY,
    reduce_only: bool | None = None,
    status: ResultStatus = ResultStatus.FILLED,
    plan_id: str = "p",
    time: int = 1_000,
    stop_loss: float | None = None,
    take_profit: float | None = None,
    reasons: tuple[str, ...] = (),
    source: str = "exit-brain",
) -> ExecutionResult:
    reduce = (kind is PlanKind.EXIT) if reduce_only is None else reduce_only
    return ExecutionResult(
        symbol=SYM,
        plan_id=plan_id,
        approval_id="apr:" + plan_id,
        client_order_id="qt-x",
        status=status,
        kind=kind,
        side=side,
        reduce_only=reduce,
        filled_qty=qty,
        avg_price=price,
        fee=fee,
        reservation=Reservation(slot=kind is PlanKind.ENTRY, notional=0.0, exit_lock=kind is PlanKind.EXIT),
        time=time,
        stop_loss=stop_loss,
        take_profit=take_profit,
        source=source,
        reason_codes=reasons,
    )


def long(qty: float = 2.0, entry: float = 100.0, fees: float = 0.2, version: int = 3) -> Position:
    return Position(
        SYM,
        PositionSide.LONG,
        qty,
        entry,
        fees,
        stop_loss=95.0,
        take_profit=110.0,
        opened_at=500,
        entry_plan_id="e0",
        mark_price=entry,
        version=version,
        updated_at=500,
    )


def short(qty: float = 2.0, entry: float = 100.0, fees: float = 0.2) -> Position:
    return Position(SYM, PositionSide.SHORT, qty, entry, fees, 105.0, 90.0, 500, "e0", entry, 3, 500)


# --- opening and adding ---------------------------------------------------------------------------
def test_open_from_flat_takes_levels_and_identity_from_the_result() -> None:
    out = apply_fill(
        Position(SYM, version=7), fill(Side.BUY, 1.5, 200.0, fee=0.12, plan_id="e1", stop_loss=190.0, take_profit=220.0)
    )
    p = out.position
    assert (p.side, p.qty, p.entry_price, p.entry_fees) == (PositionSide.LONG, 1.5, 200.0, 0.12)
    assert (p.stop_loss, p.take_profit, p.opened_at, p.entry_plan_id) == (190.0, 220.0, 1_000, "e1")
    assert (p.version, p.updated_at, p.mark_price) == (8, 1_000, 200.0)
    assert out.changed and out.closed is None and out.realized_pnl == 0 and out.fee == 0.12


def test_open_short_from_flat() -> None:
    p = apply_fill(Position(SYM), fill(Side.SELL, 3.0, 50.0, stop_loss=55.0)).position
    assert (p.side, p.qty, p.entry_price, p.stop_loss) == (PositionSide.SHORT, 3.0, 50.0, 55.0)


@pytest.mark.parametrize(
    ("start", "side", "qty", "price", "avg", "total"),
    [
        (long(2.0, 100.0), Side.BUY, 2.0, 110.0, 105.0, 4.0),
        (long(1.0, 100.0), Side.BUY, 3.0, 120.0, 115.0, 4.0),
        (short(2.0, 100.0), Side.SELL, 1.0, 70.0, 90.0, 3.0),
    ],
)
def test_adds_average_the_entry_and_carry_fees(start, side, qty, price, avg, total) -> None:
    out = apply_fill(start, fill(side, qty, price, fee=0.3))
    p = out.position
    assert p.qty == pytest.approx(total) and p.entry_price == pytest.approx(avg)
    assert p.entry_fees == pytest.approx(start.entry_fees + 0.3)
    assert (p.opened_at, p.entry_plan_id, p.version) == (start.opened_at, "e0", start.version + 1)
    assert out.closed is None


def test_add_keeps_levels_unless_the_result_brings_new_ones() -> None:
    kept = apply_fill(long(), fill(Side.BUY, 1.0, 100.0)).position
    assert (kept.stop_loss, kept.take_profit) == (95.0, 110.0)
    moved = apply_fill(long(), fill(Side.BUY, 1.0, 100.0, stop_loss=97.0)).position
    assert (moved.stop_loss, moved.take_profit) == (97.0, 110.0)


# --- reducing, closing, flipping ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("start", "side", "qty", "price", "pnl", "left"),
    [
        (long(2.0, 100.0), Side.SELL, 0.5, 110.0, 5.0, 1.5),  # long partial, profit
        (long(2.0, 100.0), Side.SELL, 1.0, 90.0, -10.0, 1.0),  # long partial, loss
        (short(2.0, 100.0), Side.BUY, 0.5, 90.0, 5.0, 1.5),  # short partial, profit
        (short(2.0, 100.0), Side.BUY, 1.5, 104.0, -6.0, 0.5),  # short partial, loss
    ],
)
def test_partial_close_realizes_pnl_and_carries_entry_fees_pro_rata(start, side, qty, price, pnl, left) -> None:
    out = apply_fill(start, fill(side, qty, price, fee=0.05, kind=PlanKind.EXIT, plan_id="x1", reasons=("tp1",)))
    trade = out.closed
    assert trade is not None
    assert trade.realized_pnl == pytest.approx(pnl) and out.realized_pnl == pytest.approx(pnl)
    share = start.entry_fees * qty / start.qty
    assert trade.fees == pytest.approx(share + 0.05)
    assert out.position.qty == pytest.approx(left)
    assert out.position.entry_fees == pytest.approx(start.entry_fees - share)
    assert out.position.entry_price == start.entry_price and out.position.side is start.side
    assert (trade.qty, trade.side, trade.trade_id, trade.exit_reason) == (qty, start.side, "e0:x1", "tp1")
    assert not out.fully_closed and out.position.version == start.version + 1


@pytest.mark.parametrize(
    ("start", "side", "price", "pnl"),
    [
        (long(2.0, 100.0, fees=0.2), Side.SELL, 104.0, 8.0),
        (short(2.0, 100.0, fees=0.2), Side.BUY, 104.0, -8.0),
        (short(2.0, 100.0, fees=0.2), Side.BUY, 97.5, 5.0),
    ],
)
def test_full_close_goes_flat_and_keeps_the_version_growing(start, side, price, pnl) -> None:
    out = apply_fill(start, fill(side, 2.0, price, fee=0.1, kind=PlanKind.EXIT, plan_id="x9", time=9_000))
    assert out.closed is not None and out.fully_closed
    assert out.closed.realized_pnl == pytest.approx(pnl)
    assert out.closed.fees == pytest.approx(0.3)
    assert out.closed.net_pnl == pytest.approx(pnl - 0.3)
    assert (out.closed.opened_at, out.closed.closed_at) == (500, 9_000)
    flat = out.position
    assert (flat.side, flat.qty, flat.entry_price, flat.entry_fees, flat.stop_loss) == (
        PositionSide.FLAT,
        0.0,
        0.0,
        0.0,
        None,
    )
    assert (flat.version, flat.updated_at, flat.mark_price) == (start.version + 1, 9_000, price)


def test_float_noise_remainder_closes_the_position() -> None:
    built = apply_fill(
        apply_fill(Position(SYM), fill(Side.BUY, 0.1, 10.0)).position, fill(Side.BUY, 0.2, 10.0)
    ).position
    assert built.qty != 0.3  # 0.30000000000000004
    out = apply_fill(built, fill(Side.SELL, 0.3, 11.0, kind=PlanKind.EXIT))
    assert out.fully_closed and out.position.side is PositionSide.FLAT


def test_flip_closes_the_position_and_opens_the_rest_with_its_fee_share() -> None:
    out = apply_fill(
        long(2.0, 100.0, fees=0.2),
        fill(Side.SELL, 5.0, 90.0, fee=0.5, kind=PlanKind.ENTRY, plan_id="f1", stop_loss=95.0, take_profit=80.0),
    )
    trade = out.closed
    assert trade is not None and trade.qty == 2.0 and trade.realized_pnl == pytest.approx(-20.0)
    assert trade.fees == pytest.approx(0.2 + 0.5 * 2 / 5)
    assert trade.exit_reason == "flip"
    p = out.position
    assert (p.side, p.qty, p.entry_price, p.entry_plan_id, p.opened_at) == (PositionSide.SHORT, 3.0, 90.0, "f1", 1_000)
    assert p.entry_fees == pytest.approx(0.5 * 3 / 5)
    assert (p.stop_loss, p.take_profit) == (95.0, 80.0)
    assert not out.fully_closed  # a flip leaves a position: no cooldown


def test_reduce_only_never_over_closes() -> None:
    out = apply_fill(long(2.0, 100.0), fill(Side.SELL, 3.0, 110.0, fee=0.3, kind=PlanKind.EXIT))
    assert out.fully_closed and out.closed is not None
    assert out.closed.qty == 2.0 and out.ignored_qty == pytest.approx(1.0)
    assert out.closed.fees == pytest.approx(0.2 + 0.3)  # the whole fee was paid for the close
    assert out.position.side is PositionSide.FLAT


@pytest.mark.parametrize("start", [Position(SYM, version=2), long()])
def test_reduce_only_with_nothing_to_reduce_changes_nothing(start) -> None:
    out = apply_fill(start, fill(Side.BUY, 1.0, 100.0, kind=PlanKind.EXIT, reduce_only=True))
    assert not out.changed and out.position == start and out.ignored_qty == 1.0 and out.fee == 0.0


@pytest.mark.parametrize("status", [ResultStatus.REJECTED, ResultStatus.ERROR, ResultStatus.SKIPPED])
def test_unfilled_results_change_nothing(status) -> None:
    out = apply_fill(long(), fill(Side.SELL, 0.0, 0.0, kind=PlanKind.EXIT, status=status))
    assert not out.changed and out.position == long() and out.closed is None


def test_filled_with_zero_quantity_changes_nothing() -> None:
    assert not apply_fill(long(), fill(Side.BUY, 0.0, 100.0)).changed


def test_pnl_formula_and_exit_reason() -> None:
    assert realized_pnl(PositionSide.LONG, 100.0, 110.0, 2.0) == 20.0
    assert realized_pnl(PositionSide.SHORT, 100.0, 110.0, 2.0) == -20.0
    assert exit_reason(fill(Side.SELL, 1, 1, kind=PlanKind.EXIT, reasons=("stop_loss", "kill"))) == "stop_loss,kill"
    assert exit_reason(fill(Side.SELL, 1, 1, kind=PlanKind.EXIT)) == "unspecified"


def test_trade_without_a_known_entry_plan_still_gets_an_id() -> None:
    reconciled = Position(SYM, PositionSide.LONG, 1.0, 100.0, opened_at=1, version=5)
    out = apply_fill(reconciled, fill(Side.SELL, 1.0, 101.0, kind=PlanKind.EXIT, plan_id="x"))
    assert out.closed is not None and out.closed.trade_id == "unknown:x"


# --- the hash and the snapshot --------------------------------------------------------------------
def test_hash_round_trip() -> None:
    for p in (long(), short(), Position(SYM, version=4, mark_price=3.0, updated_at=8)):
        assert Position.from_hash(SYM, p.to_hash()) == p
    no_levels = Position(SYM, PositionSide.LONG, 1.0, 10.0, version=1)
    assert Position.from_hash(SYM, no_levels.to_hash()) == no_levels
    assert no_levels.to_hash()["stop_loss"] == ""


def test_absent_hash_is_flat_and_partial_hashes_are_read() -> None:
    assert Position.from_hash(SYM, {}) == Position(SYM)
    assert Position.from_hash(SYM, None) == Position(SYM)
    minimal = Position.from_hash(SYM, {"side": "FLAT", "qty": "0", "entry_price": "0", "version": "6"})
    assert minimal.version == 6 and not minimal.is_open


@pytest.mark.parametrize(
    "raw",
    [
        {"side": "LONG", "qty": "0"},
        {"side": "FLAT", "qty": "1"},
        {"side": "SIDEWAYS", "qty": "1"},
        {"side": "LONG", "qty": "abc"},
        {"side": "LONG", "qty": "-1"},
        {"side": "LONG", "qty": "1", "version": "1.5"},
    ],
)
def test_unreadable_hashes_are_refused(raw) -> None:
    with pytest.raises(PositionFormatError):
        Position.from_hash(SYM, raw)


def test_snapshot_and_unrealized_pnl() -> None:
    snap = long(2.0, 100.0).snapshot(time=77)
    assert (snap.side, snap.qty, snap.entry_price, snap.version, snap.source, snap.time) == (
        PositionSide.LONG,
        2.0,
        100.0,
        3,
        "position-state",
        77,
    )
    assert long(2.0, 100.0).unrealized_pnl(105.0) == 10.0
    assert short(2.0, 100.0).unrealized_pnl(105.0) == -10.0
    assert Position(SYM).unrealized_pnl(1.0) == 0.0
    assert Position(SYM).snapshot(1).side is PositionSide.FLAT


# --- heat -----------------------------------------------------------------------------------------
def test_heat_is_risk_to_stop_over_equity() -> None:
    positions = [long(2.0, 100.0), short(1.0, 100.0), Position("ETHUSDT", version=3)]
    heat = portfolio_heat(positions, 1_000.0)
    assert heat.open_risk == pytest.approx(2 * 5 + 1 * 5)
    assert heat.heat == pytest.approx(15 / 1_000)
    assert heat.positions == 2
    assert heat.to_hash(123) == {
        "heat": repr(heat.heat),
        "open_risk": repr(15.0),
        "equity": repr(1_000.0),
        "positions": "2",
        "time": "123",
    }


def test_a_position_without_stop_risks_its_whole_notional() -> None:
    naked = Position(SYM, PositionSide.LONG, 2.0, 50.0, version=1)
    assert portfolio_heat([naked], 1_000.0).open_risk == 100.0


def test_non_positive_equity_makes_heat_infinite() -> None:
    assert math.isinf(portfolio_heat([long()], 0.0).heat)
    assert portfolio_heat([], -5.0).heat == math.inf
    assert equity(10_000.0, 50.0, 2.5) == 10_047.5


# --- settlement: what is committed and released ----------------------------------------------------
def view(
    position: Position | None = None, *, entry_lock: str | None = None, exit_lock: str | None = None
) -> PortfolioView:
    others = [Position("ETHUSDT", PositionSide.LONG, 1.0, 100.0, stop_loss=90.0, version=1)]
    return PortfolioView(position or Position(SYM), others, entry_lock, exit_lock, realized_pnl=10.0, fees=1.0)


@pytest.mark.parametrize("status", list(ResultStatus))
def test_entry_results_always_release_the_reservation_and_own_lock(status) -> None:
    filled = status is ResultStatus.FILLED
    result = fill(
        Side.BUY,
        2.0 if filled else 0.0,
        100.0 if filled else 0.0,
        fee=0.1 if filled else 0.0,
        status=status,
        plan_id="e1",
        stop_loss=99.0,
    )
    s = settle(view(entry_lock="e1"), result, 1_000.0)
    assert s.release_reservation and s.release_entry_lock and not s.release_exit_lock
    assert s.open_notional == (200.0 if filled else None)
    assert s.cooldown_from is None and s.trades == 0 and s.wins == 0
    assert s.heat.positions == (2 if filled else 1)
    assert s.heat.equity == pytest.approx(1_000 + 10 - 1 - (0.1 if filled else 0))


def test_entry_result_does_not_release_a_lock_another_plan_holds() -> None:
    s = settle(view(entry_lock="newer"), fill(Side.BUY, 0.0, 0.0, status=ResultStatus.REJECTED, plan_id="old"), 1_000.0)
    assert s.release_reservation and not s.release_entry_lock


@pytest.mark.parametrize("status", [ResultStatus.REJECTED, ResultStatus.ERROR, ResultStatus.SKIPPED])
def test_unfilled_exit_releases_only_its_exit_lock(status) -> None:
    s = settle(
        view(long(), exit_lock="x1"),
        fill(Side.SELL, 0.0, 0.0, kind=PlanKind.EXIT, status=status, plan_id="x1"),
        1_000.0,
    )
    assert s.release_exit_lock and not s.release_reservation and not s.release_entry_lock
    assert s.open_notional is None and s.cooldown_from is None and not s.fill.changed


def test_closing_exit_commits_close_cooldown_and_a_win() -> None:
    s = settle(
        view(long(2.0, 100.0, fees=0.2), exit_lock="x1"),
        fill(Side.SELL, 2.0, 110.0, fee=0.2, kind=PlanKind.EXIT, plan_id="x1", time=4_242),
        1_000.0,
    )
    assert s.release_exit_lock and s.open_notional == 0.0 and s.cooldown_from == 4_242
    assert (s.trades, s.wins) == (1, 1)
    assert s.heat.positions == 1  # only ETHUSDT is left
    assert s.heat.equity == pytest.approx(1_000 + 10 + 20 - 1 - 0.2)


def test_partial_exit_updates_the_open_notional_and_losing_trade_is_no_win() -> None:
    s = settle(
        view(long(2.0, 100.0), exit_lock="x1"),
        fill(Side.SELL, 0.5, 99.0, fee=0.01, kind=PlanKind.EXIT, plan_id="x1"),
        1_000.0,
    )
    assert s.open_notional == pytest.approx(150.0) and s.cooldown_from is None
    assert (s.trades, s.wins) == (1, 0)


def test_exit_result_with_someone_elses_lock_leaves_it() -> None:
    s = settle(
        view(long(), exit_lock="x2"),
        fill(Side.SELL, 0.0, 0.0, kind=PlanKind.EXIT, status=ResultStatus.REJECTED, plan_id="x1"),
        1_000.0,
    )
    assert not s.release_exit_lock
