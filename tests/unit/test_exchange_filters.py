"""Lot size, tick and min-notional arithmetic: Decimal all the way, Binance's exchangeInfo shape."""

from __future__ import annotations

from decimal import Decimal

import pytest

from quantum_trader.exchange.filters import (
    SymbolFilters,
    check_order,
    format_qty,
    plain,
    qty_for_notional,
    round_price,
    round_qty_down,
    to_decimal,
)

BTC_ENTRY = {
    "symbol": "BTCUSDT",
    "pricePrecision": 2,
    "quantityPrecision": 3,
    "filters": [
        {"filterType": "PRICE_FILTER", "minPrice": "556.80", "maxPrice": "4529764", "tickSize": "0.10"},
        {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000", "stepSize": "0.001"},
        {"filterType": "MARKET_LOT_SIZE", "minQty": "0.001", "maxQty": "120", "stepSize": "0.001"},
        {"filterType": "MAX_NUM_ORDERS", "limit": 200},
        {"filterType": "MIN_NOTIONAL", "notional": "100"},
        {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500"},
    ],
}


def filters_with(step: str, min_notional: str = "5", tick: str = "0.01") -> SymbolFilters:
    return SymbolFilters.from_exchange_info(
        {
            "symbol": "TESTUSDT",
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000", "tickSize": tick},
                {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "100000", "stepSize": step},
                {"filterType": "MIN_NOTIONAL", "notional": min_notional},
            ],
        }
    )


BTC = SymbolFilters.from_exchange_info(BTC_ENTRY)


def test_parses_binance_exchange_info_entry() -> None:
    assert BTC.symbol == "BTCUSDT"
    assert BTC.step_size == Decimal("0.001")
    assert BTC.tick_size == Decimal("0.10")
    assert BTC.min_qty == Decimal("0.001")
    assert BTC.max_qty == Decimal("1000")
    assert BTC.market_max_qty == Decimal("120")
    assert BTC.order_max_qty == Decimal("120"), "MARKET orders are bound by MARKET_LOT_SIZE too"
    assert BTC.min_notional == Decimal("100"), "futures MIN_NOTIONAL uses the key 'notional'"
    assert (BTC.quantity_precision, BTC.price_precision) == (3, 2)


def test_precision_defaults_to_step_decimals_and_market_lot_to_lot_size() -> None:
    f = filters_with("0.01")
    assert f.quantity_precision == 2
    assert f.price_precision == 2
    assert f.market_step_size == f.step_size
    assert f.market_max_qty == f.max_qty


def test_missing_lot_size_is_an_error() -> None:
    entry = {"symbol": "X", "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.1"}]}
    with pytest.raises(ValueError, match="no LOT_SIZE"):
        SymbolFilters.from_exchange_info(entry)


def test_exchange_info_round_trip() -> None:
    assert SymbolFilters.from_exchange_info(BTC.to_exchange_info()) == BTC


@pytest.mark.parametrize(
    ("qty", "step", "expected"),
    [
        (0.0019, "0.001", "0.001"),
        (0.1 + 0.2, "0.1", "0.3"),  # float drift 0.30000000000000004 must not cost a step
        (0.3, "0.1", "0.3"),
        (0.7, "0.1", "0.7"),  # 0.7 / 0.1 in floats is 6.999999999999999
        (1.23456, "0.01", "1.23"),
        ("2.999999", "0.001", "2.999"),
        (12.9, "1", "12"),
        (57, "10", "50"),
        (0.0004, "0.001", "0"),
        (-1, "0.001", "0"),
        (Decimal("5.000"), "0.001", "5"),
    ],
)
def test_round_qty_down(qty: object, step: str, expected: str) -> None:
    rounded = round_qty_down(qty, filters_with(step))  # type: ignore[arg-type]
    assert rounded == Decimal(expected)
    assert rounded % Decimal(step) == 0


def test_round_down_uses_the_coarser_of_lot_and_market_lot_steps() -> None:
    entry = dict(BTC_ENTRY)
    entry["filters"] = [
        *[f for f in BTC_ENTRY["filters"] if f["filterType"] != "MARKET_LOT_SIZE"],
        {"filterType": "MARKET_LOT_SIZE", "minQty": "0.01", "maxQty": "120", "stepSize": "0.01"},
    ]
    f = SymbolFilters.from_exchange_info(entry)
    assert round_qty_down("0.019", f) == Decimal("0.01")


@pytest.mark.parametrize(
    ("notional", "price", "step", "expected"),
    [
        (100, 60_000, "0.001", "0.001"),
        (500, 60_000, "0.001", "0.008"),
        (5, 0.5, "1", "10"),
        (1000, 3000, "0.001", "0.333"),
        (10, 3.3, "0.1", "3"),
    ],
)
def test_qty_for_notional(notional: float, price: float, step: str, expected: str) -> None:
    assert qty_for_notional(notional, price, filters_with(step)) == Decimal(expected)


def test_qty_for_notional_refuses_non_positive_price() -> None:
    with pytest.raises(ValueError, match="price must be positive"):
        qty_for_notional(100, 0, BTC)


@pytest.mark.parametrize(
    ("qty", "price", "reduce_only", "reason"),
    [
        ("0.002", 60_000, False, None),
        ("0", 60_000, False, "must be positive"),
        ("0.0015", 60_000, False, "not a multiple of the step size 0.001"),
        ("121", 60_000, False, "above the maximum 120"),
        ("0.001", 60_000, False, "notional 60 USDT is below the minimum 100 USDT"),
        ("0.001", 60_000, True, None),  # reduce-only orders are exempt from min notional
    ],
)
def test_check_order(qty: str, price: float, reduce_only: bool, reason: str | None) -> None:
    found = check_order(qty, price, BTC, reduce_only=reduce_only)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found


def test_check_order_min_qty() -> None:
    f = SymbolFilters.from_exchange_info(
        {
            "symbol": "X",
            "filters": [
                {"filterType": "PRICE_FILTER", "tickSize": "0.1"},
                {"filterType": "LOT_SIZE", "minQty": "0.01", "maxQty": "10", "stepSize": "0.001"},
            ],
        }
    )
    assert "below the minimum 0.01" in (check_order("0.005", 100, f) or "")


@pytest.mark.parametrize(
    ("qty", "step", "text"),
    [("0.010", "0.001", "0.01"), (Decimal("1.000"), "1", "1"), (0.3, "0.1", "0.3"), ("1E+1", "1", "10")],
)
def test_format_qty(qty: object, step: str, text: str) -> None:
    assert format_qty(qty, filters_with(step)) == text  # type: ignore[arg-type]


def test_format_qty_refuses_off_step() -> None:
    with pytest.raises(ValueError, match="not a multiple"):
        format_qty("0.0015", BTC)


def test_round_price_and_plain() -> None:
    assert round_price(60123.456, BTC) == Decimal("60123.4")
    assert plain(Decimal("1.2300")) == "1.23"
    assert plain(Decimal("1E+2")) == "100"
    assert plain(Decimal("0")) == "0"


def test_to_decimal_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        to_decimal("abc")
    with pytest.raises(ValueError):
        to_decimal(float("nan"))
    with pytest.raises(TypeError):
        to_decimal(True)
