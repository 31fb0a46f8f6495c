"""The simulator's matching engine: fills, fees, slippage, positions and Binance's rejections."""

from __future__ import annotations

from decimal import Decimal

import pytest

from quantum_trader.contracts.policy import SimulatorSpec
from quantum_trader.exchange.filters import SymbolFilters
from quantum_trader.exchange.simulator.engine import (
    MatchingEngine,
    SimRejection,
    derive_filters,
)

BTC = SymbolFilters.from_exchange_info(
    {
        "symbol": "BTCUSDT",
        "quantityPrecision": 3,
        "pricePrecision": 1,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.1", "maxPrice": "1000000", "tickSize": "0.1"},
            {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000", "stepSize": "0.001"},
            {"filterType": "MARKET_LOT_SIZE", "minQty": "0.001", "maxQty": "100", "stepSize": "0.001"},
            {"filterType": "MIN_NOTIONAL", "notional": "5"},
        ],
    }
)
T0 = 1_700_000_000_000


def make_engine(slippage_bps: float = 0.0, fee: float = 0.0004, balance: float = 10_000.0) -> MatchingEngine:
    spec = SimulatorSpec(taker_fee=fee, slippage_bps=slippage_bps, starting_balance=balance)
    engine = MatchingEngine(spec, ["BTCUSDT", "ETHUSDT"], filters={"BTCUSDT": BTC})
    engine.set_leverage("BTCUSDT", 10)
    engine.on_tick("BTCUSDT", 60_000, T0)
    engine.on_tick("ETHUSDT", 3_000, T0)
    return engine


def rejected(code: int, call: object) -> SimRejection:
    with pytest.raises(SimRejection) as caught:
        call()  # type: ignore[operator]
    assert caught.value.code == code, caught.value.message
    return caught.value


def test_buy_fills_at_last_price_and_charges_the_taker_fee() -> None:
    engine = make_engine()
    order = engine.submit_market("BTCUSDT", "BUY", "0.1", "a")
    assert order.status == "FILLED"
    assert order.executed_qty == Decimal("0.1")
    assert order.avg_price == Decimal("60000")
    assert order.fee == Decimal("2.4")  # 0.1 * 60000 * 0.0004
    assert order.time == T0, "fills carry market time, not the wall clock"
    assert engine.wallet_balance == Decimal("9997.6")
    position = engine.position("BTCUSDT")
    assert (position.qty, position.entry_price) == (Decimal("0.1"), Decimal("60000"))


def test_slippage_moves_the_price_against_the_taker_rounded_to_the_tick() -> None:
    engine = make_engine(slippage_bps=10)
    buy = engine.submit_market("BTCUSDT", "BUY", "0.01", "b")
    sell = engine.submit_market("BTCUSDT", "SELL", "0.01", "s")
    assert buy.avg_price == Decimal("60060.0")
    assert sell.avg_price == Decimal("59940.0")
    engine.on_tick("BTCUSDT", "60000.03", T0 + 1)
    assert engine.submit_market("BTCUSDT", "BUY", "0.01", "b2").avg_price == Decimal("60060.1")  # ceil
    assert engine.submit_market("BTCUSDT", "SELL", "0.01", "s2").avg_price == Decimal("59940.0")  # floor


def test_adding_to_a_position_weights_the_entry() -> None:
    engine = make_engine()
    engine.submit_market("BTCUSDT", "BUY", "0.1", "1")
    engine.on_tick("BTCUSDT", 61_000, T0 + 1000)
    engine.submit_market("BTCUSDT", "BUY", "0.3", "2")
    position = engine.position("BTCUSDT")
    assert position.qty == Decimal("0.4")
    assert position.entry_price == Decimal("60750")  # (0.1*60000 + 0.3*61000) / 0.4
    assert position.update_time == T0 + 1000


def test_reducing_realizes_pnl_into_the_wallet() -> None:
    engine = make_engine()
    engine.submit_market("BTCUSDT", "BUY", "0.2", "1")
    engine.on_tick("BTCUSDT", 61_000, T0 + 1)
    order = engine.submit_market("BTCUSDT", "SELL", "0.1", "2")
    assert order.realized_pnl == Decimal("100")
    assert engine.position("BTCUSDT").qty == Decimal("0.1")
    assert engine.position("BTCUSDT").entry_price == Decimal("60000")
    # 10000 - 4.8 (open fee) - 2.44 (close fee) + 100
    assert engine.wallet_balance == Decimal("10092.76")
    assert engine.fees_paid == Decimal("7.24")


def test_short_pnl_and_close() -> None:
    engine = make_engine(fee=0)
    engine.submit_market("BTCUSDT", "SELL", "0.1", "1")
    engine.on_tick("BTCUSDT", 59_000, T0 + 1)
    assert engine.unrealized_pnl("BTCUSDT") == Decimal("100")
    order = engine.submit_market("BTCUSDT", "BUY", "0.1", "2")
    assert order.realized_pnl == Decimal("100")
    assert engine.position("BTCUSDT").qty == 0
    assert engine.wallet_balance == Decimal("10100")


def test_flip_closes_then_opens_the_rest_at_the_fill_price() -> None:
    engine = make_engine(fee=0)
    engine.submit_market("BTCUSDT", "BUY", "0.1", "1")
    engine.on_tick("BTCUSDT", 59_000, T0 + 1)
    order = engine.submit_market("BTCUSDT", "SELL", "0.3", "2")
    assert order.realized_pnl == Decimal("-100")
    position = engine.position("BTCUSDT")
    assert (position.qty, position.entry_price) == (Decimal("-0.2"), Decimal("59000"))


def test_reduce_only_is_capped_at_the_position() -> None:
    engine = make_engine()
    engine.submit_market("BTCUSDT", "BUY", "0.1", "1")
    order = engine.submit_market("BTCUSDT", "SELL", "0.5", "2", reduce_only=True)
    assert order.executed_qty == Decimal("0.1")
    assert order.orig_qty == Decimal("0.1")
    assert order.reduce_only
    assert engine.position("BTCUSDT").qty == 0


def test_reduce_only_that_would_open_or_increase_is_rejected() -> None:
    engine = make_engine()
    rejected(-2022, lambda: engine.submit_market("BTCUSDT", "SELL", "0.1", "1", reduce_only=True))
    engine.submit_market("BTCUSDT", "BUY", "0.1", "2")
    rejected(-2022, lambda: engine.submit_market("BTCUSDT", "BUY", "0.1", "3", reduce_only=True))
    assert engine.position("BTCUSDT").qty == Decimal("0.1")


def test_reduce_only_is_exempt_from_min_notional() -> None:
    engine = make_engine()
    engine.adjust_position("ETHUSDT", "0.001", 3000)
    order = engine.submit_market("ETHUSDT", "SELL", "0.001", "x", reduce_only=True)  # 3 USDT < 5
    assert order.executed_qty == Decimal("0.001")


def test_duplicate_client_order_id_is_refused_and_changes_nothing() -> None:
    engine = make_engine()
    engine.submit_market("BTCUSDT", "BUY", "0.1", "same")
    balance = engine.wallet_balance
    error = rejected(-4116, lambda: engine.submit_market("BTCUSDT", "BUY", "0.1", "same"))
    assert error.message == "ClientOrderId is duplicated."
    assert engine.position("BTCUSDT").qty == Decimal("0.1")
    assert engine.wallet_balance == balance
    assert len(engine.orders()) == 1


def test_a_rejected_order_leaves_its_client_id_free() -> None:
    engine = make_engine()
    rejected(-4164, lambda: engine.submit_market("ETHUSDT", "BUY", "0.001", "id"))
    rejected(-2013, lambda: engine.order("ETHUSDT", "id"))
    assert engine.submit_market("ETHUSDT", "BUY", "0.002", "id").executed_qty == Decimal("0.002")


def test_min_notional() -> None:
    engine = make_engine()
    error = rejected(-4164, lambda: engine.submit_market("ETHUSDT", "BUY", "0.001", "x"))
    assert "no smaller than 5" in error.message


def test_margin_is_checked_against_leverage() -> None:
    engine = make_engine()
    engine.set_leverage("BTCUSDT", 1)
    error = rejected(-2019, lambda: engine.submit_market("BTCUSDT", "BUY", "0.2", "x"))  # 12 000 > 10 000
    assert error.message == "Margin is insufficient."
    engine.set_leverage("BTCUSDT", 2)
    assert engine.submit_market("BTCUSDT", "BUY", "0.2", "x").executed_qty == Decimal("0.2")


def test_closing_needs_no_margin() -> None:
    engine = make_engine(balance=100)
    engine.adjust_position("BTCUSDT", "1", 60_000)  # far beyond what 100 USDT could open
    assert engine.submit_market("BTCUSDT", "SELL", "1", "close").realized_pnl == 0


def test_per_order_leverage_override_only_affects_that_check() -> None:
    engine = make_engine()
    engine.set_leverage("BTCUSDT", 1)
    assert engine.submit_market("BTCUSDT", "BUY", "0.2", "x", leverage=5).executed_qty == Decimal("0.2")
    assert engine.leverage("BTCUSDT") == 1


@pytest.mark.parametrize(
    ("qty", "code"),
    [
        ("0", -4003),
        ("-1", -4003),
        ("0.0001", -1111),
        ("101", -4005),
        ("abc", -1102),
    ],
)
def test_quantity_rules(qty: str, code: int) -> None:
    engine = make_engine()
    rejected(code, lambda: engine.submit_market("BTCUSDT", "BUY", qty, "x"))


def test_off_step_quantity() -> None:
    coarse = SymbolFilters.from_exchange_info(
        {
            "symbol": "BTCUSDT",
            "quantityPrecision": 3,
            "filters": [
                {"filterType": "PRICE_FILTER", "tickSize": "0.1"},
                {"filterType": "LOT_SIZE", "minQty": "0.002", "maxQty": "100", "stepSize": "0.002"},
                {"filterType": "MIN_NOTIONAL", "notional": "5"},
            ],
        }
    )
    engine = MatchingEngine(SimulatorSpec(), ["BTCUSDT"], filters={"BTCUSDT": coarse})
    engine.on_tick("BTCUSDT", 60_000, T0)
    rejected(-4023, lambda: engine.submit_market("BTCUSDT", "BUY", "0.003", "x"))


def test_unknown_symbol_side_and_missing_price() -> None:
    spec = SimulatorSpec()
    engine = MatchingEngine(spec, ["BTCUSDT"])
    assert rejected(-1121, lambda: engine.submit_market("DOGEUSDT", "BUY", "1", "x")).message == "Invalid symbol."
    rejected(-2020, lambda: engine.submit_market("BTCUSDT", "BUY", "0.01", "x"))
    engine.on_tick("BTCUSDT", 60_000, T0)
    rejected(-1117, lambda: engine.submit_market("BTCUSDT", "HOLD", "0.01", "x"))
    rejected(-1100, lambda: engine.submit_market("BTCUSDT", "BUY", "0.01", "bad id!"))
    assert not engine.on_tick("DOGEUSDT", 0.1, T0)
    assert engine.ignored_ticks == 1


def test_order_query_by_client_id_and_order_id() -> None:
    engine = make_engine()
    order = engine.submit_market("BTCUSDT", "BUY", "0.1", "find-me")
    assert engine.order("BTCUSDT", "find-me") == order
    assert engine.order("BTCUSDT", order_id=order.order_id) == order
    assert rejected(-2013, lambda: engine.order("BTCUSDT", "nope")).message == "Order does not exist."
    rejected(-2013, lambda: engine.order("ETHUSDT", "find-me"))
    body = order.to_binance(query=True)
    assert body["clientOrderId"] == "find-me"
    assert body["status"] == "FILLED"
    assert body["executedQty"] == "0.1"
    assert body["avgPrice"] == "60000"
    assert body["type"] == "MARKET"


def test_generated_client_id_when_none_is_sent() -> None:
    engine = make_engine()
    order = engine.submit_market("BTCUSDT", "BUY", "0.1")
    assert order.client_order_id == f"sim-{order.order_id}"


def test_leverage_bounds() -> None:
    engine = make_engine()
    assert engine.set_leverage("BTCUSDT", 125) == 125
    rejected(-4028, lambda: engine.set_leverage("BTCUSDT", 0))
    rejected(-4028, lambda: engine.set_leverage("BTCUSDT", 126))


def test_adjust_position_behind_the_systems_back() -> None:
    engine = make_engine()
    balance = engine.wallet_balance
    engine.adjust_position("BTCUSDT", "-0.5", 61_000)
    [entry] = engine.position_risk("BTCUSDT")
    assert entry["positionAmt"] == "-0.5"
    assert entry["entryPrice"] == "61000"
    assert entry["unRealizedProfit"] == "500"
    assert engine.wallet_balance == balance
    engine.adjust_position("BTCUSDT", 0, 0)
    assert engine.position_risk() == []


def test_position_risk_and_account_views() -> None:
    engine = make_engine(fee=0)
    engine.submit_market("BTCUSDT", "BUY", "0.1", "1")
    engine.on_tick("BTCUSDT", 61_000, T0 + 5)
    [v3] = engine.position_risk()
    assert v3["symbol"] == "BTCUSDT"
    assert v3["positionSide"] == "BOTH"
    assert v3["markPrice"] == "61000"
    assert v3["notional"] == "6100"
    assert v3["initialMargin"] == "610"  # 6100 / leverage 10
    assert "leverage" not in v3
    v2 = engine.position_risk(version=2)
    assert [e["symbol"] for e in v2] == ["BTCUSDT", "ETHUSDT"]
    assert v2[0]["leverage"] == "10"
    account = engine.account(update_time=T0)
    assert account["totalWalletBalance"] == "10000"
    assert account["totalUnrealizedProfit"] == "100"
    assert account["totalMarginBalance"] == "10100"
    assert account["availableBalance"] == "9490"  # 10100 - 610
    assert account["assets"][0]["asset"] == "USDT"
    assert {p["symbol"] for p in account["positions"]} == {"BTCUSDT", "ETHUSDT"}


def test_exchange_info_lists_symbols_whose_rules_are_known() -> None:
    engine = MatchingEngine(SimulatorSpec(), ["BTCUSDT", "ETHUSDT"], filters={"BTCUSDT": BTC})
    info = engine.exchange_info(server_time=T0)
    assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT"]
    engine.on_tick("ETHUSDT", 3000, T0)
    info = engine.exchange_info(server_time=T0)
    eth = SymbolFilters.from_exchange_info(info["symbols"][1])
    assert eth == derive_filters("ETHUSDT", 3000)
    engine.on_tick("ETHUSDT", 5, T0 + 1)
    assert engine.symbol_filters("ETHUSDT") == eth, "derived rules never change after the first price"


@pytest.mark.parametrize(
    ("price", "step", "tick"),
    [(60_000, "0.0001", "0.1"), (3_000, "0.001", "0.01"), (150, "0.01", "0.001"), (0.5, "10", "0.000001")],
)
def test_derived_filters(price: float, step: str, tick: str) -> None:
    f = derive_filters("XUSDT", price)
    assert f.step_size == Decimal(step)
    assert f.tick_size == Decimal(tick)
    assert f.min_notional == Decimal(5)
    assert Decimal(1) <= f.step_size * Decimal(str(price)) < Decimal(10)


def test_user_trades_view() -> None:
    engine = make_engine()
    order = engine.submit_market("BTCUSDT", "BUY", "0.1", "1")
    [trade] = engine.trades("BTCUSDT", order.order_id)
    body = trade.to_binance()
    assert body["commission"] == "2.4"
    assert body["commissionAsset"] == "USDT"
    assert body["orderId"] == order.order_id


def test_same_inputs_same_orders() -> None:
    def run() -> list[dict[str, object]]:
        engine = make_engine(slippage_bps=3)
        out = []
        for i, (price, side, qty) in enumerate(
            [(60_000, "BUY", "0.1"), (60_500, "SELL", "0.3"), (59_000, "BUY", "0.2")]
        ):
            engine.on_tick("BTCUSDT", price, T0 + i)
            out.append(engine.submit_market("BTCUSDT", side, qty, f"o{i}").to_binance())
        out.append(engine.account(update_time=0))
        return out

    assert run() == run()


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="at least one symbol"):
        MatchingEngine(SimulatorSpec(), [])
    with pytest.raises(ValueError, match="not traded"):
        MatchingEngine(SimulatorSpec(), ["ETHUSDT"], filters={"BTCUSDT": BTC})
