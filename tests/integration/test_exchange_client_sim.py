"""ExchangeClient (real python-binance, real signatures) against the simulator over real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantum_trader.contracts.messages import OrderType, PositionSide
from quantum_trader.contracts.policy import SimulatorSpec
from quantum_trader.exchange.client import _URL_ATTRIBUTES, ExchangeClient
from quantum_trader.exchange.errors import ConditionalOrderRefused, ExchangeError
from quantum_trader.exchange.filters import qty_for_notional
from quantum_trader.exchange.models import MarketOrder, OrderResult
from quantum_trader.exchange.order_ids import client_order_id
from quantum_trader.exchange.simulator.order_log import read_order_log
from quantum_trader.exchange.simulator.server import RunningSimulator, run_simulator_in_thread

API_KEY = "paper-key-0123456789"
API_SECRET = "paper-secret-abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def order_log(tmp_path: Path) -> Path:
    return tmp_path / "orders.jsonl"


@pytest.fixture
def sim(order_log: Path) -> Iterator[RunningSimulator]:
    spec = SimulatorSpec(taker_fee=0.0004, slippage_bps=0, starting_balance=10_000, seed=3)
    running = run_simulator_in_thread(
        spec, symbols=["BTCUSDT", "ETHUSDT"], credentials={API_KEY: API_SECRET}, order_log_path=order_log
    )
    running.set_price("BTCUSDT", 60_000)
    running.set_price("ETHUSDT", 3_000)
    yield running
    running.stop()


@pytest.fixture
def client(sim: RunningSimulator) -> Iterator[ExchangeClient]:
    c = ExchangeClient(API_KEY, API_SECRET, base_url=sim.base_url, timeout=5)
    yield c
    c.close()


def error_of(call: object) -> ExchangeError:
    with pytest.raises(ExchangeError) as caught:
        call()  # type: ignore[operator]
    return caught.value


def test_order_round_trip_and_query_by_client_id(
    sim: RunningSimulator, client: ExchangeClient, order_log: Path
) -> None:
    coid = client_order_id("plan-1")
    result = client.market_order("BTCUSDT", "BUY", "0.01", coid)
    assert result.status == "FILLED"
    assert result.client_order_id == coid
    assert result.executed_qty == pytest.approx(0.01)
    assert result.avg_price == pytest.approx(60_000)
    assert not result.reduce_only
    queried = client.get_order("BTCUSDT", coid)
    assert queried is not None
    assert (queried.order_id, queried.status, queried.executed_qty) == (result.order_id, "FILLED", 0.01)
    assert client.order_fee("BTCUSDT", result.order_id) == pytest.approx(0.24)
    [entry] = sim.orders(coid)
    assert entry["outcome"] == "accepted"
    assert entry["orderId"] == result.order_id
    assert read_order_log(order_log) == sim.orders(), "the file and the admin endpoint agree"


def test_unknown_client_id_is_none(client: ExchangeClient) -> None:
    assert client.get_order("BTCUSDT", client_order_id("never-sent")) is None


def test_second_order_for_the_same_plan_is_refused_as_duplicate(sim: RunningSimulator, client: ExchangeClient) -> None:
    coid = client_order_id("plan-dup")
    client.market_order("BTCUSDT", "BUY", "0.01", coid)
    error = error_of(lambda: client.market_order("BTCUSDT", "BUY", "0.01", coid))
    assert (error.code, error.retryable) == (-4116, False)
    assert [e["outcome"] for e in sim.orders(coid)] == ["accepted", "rejected"]
    assert sim.state()["orders"] == 1


def test_bad_secret_is_minus_1022(sim: RunningSimulator) -> None:
    bad = ExchangeClient(API_KEY, "not-the-secret", base_url=sim.base_url)
    error = error_of(lambda: bad.market_order("BTCUSDT", "BUY", "0.01", client_order_id("p")))
    assert (error.code, error.http_status, error.retryable) == (-1022, 400, False)
    assert error.message == "Signature for this request is not valid."
    assert sim.state()["orders"] == 0
    [entry] = sim.orders()
    assert (entry["outcome"], entry["code"]) == ("rejected", -1022)


def test_unknown_api_key_is_minus_2015(sim: RunningSimulator) -> None:
    stranger = ExchangeClient("someone-else", API_SECRET, base_url=sim.base_url)
    error = error_of(stranger.account)
    assert (error.code, error.http_status) == (-2015, 401)


def test_stale_timestamp_is_minus_1021_and_sync_time_fixes_it(client: ExchangeClient) -> None:
    client.timestamp_offset = -60_000
    error = error_of(client.positions)
    assert (error.code, error.http_status) == (-1021, 400)
    assert error.message == "Timestamp for this request is outside of the recvWindow."
    offset = client.sync_time()
    assert abs(offset) < 1000
    assert client.positions() == []


@pytest.mark.parametrize(
    "order_type",
    [
        OrderType.STOP,
        OrderType.STOP_MARKET,
        OrderType.TAKE_PROFIT,
        OrderType.TAKE_PROFIT_MARKET,
        OrderType.TRAILING_STOP_MARKET,
        OrderType.LIMIT,
        "TRAILING_STOP_MARKET",
        "stop_market",
    ],
)
def test_conditional_types_are_refused_before_any_request(
    sim: RunningSimulator, client: ExchangeClient, order_type: OrderType | str
) -> None:
    with pytest.raises(ConditionalOrderRefused):
        client.send_order(
            order_type, MarketOrder("BTCUSDT", "SELL", "0.01", client_order_id("stop-plan"), reduce_only=True)
        )
    assert client.refused_orders == 1
    assert client.requests_sent == 0
    assert sim.orders() == [], "the exchange never saw the refused order"


def test_send_order_market_goes_out(sim: RunningSimulator, client: ExchangeClient) -> None:
    result = client.send_order(OrderType.MARKET, MarketOrder("BTCUSDT", "BUY", "0.01", client_order_id("m")))
    assert result.filled
    assert client.refused_orders == 0
    assert len(sim.orders()) == 1


def test_server_error_is_retryable_with_unknown_outcome(sim: RunningSimulator, client: ExchangeClient) -> None:
    sim.set_faults(errorRate=1.0)
    error = error_of(lambda: client.market_order("BTCUSDT", "BUY", "0.01", client_order_id("p5")))
    assert (error.http_status, error.code, error.retryable, error.unknown_outcome) == (503, -1008, True, True)
    [entry] = sim.orders()
    assert (entry["outcome"], entry["fault"]) == ("fault", "error")
    assert sim.state()["orders"] == 0


def test_rate_limit_is_retryable(sim: RunningSimulator, client: ExchangeClient) -> None:
    sim.set_faults(rateLimitRate=1.0)
    error = error_of(client.positions)
    assert (error.http_status, error.code, error.retryable, error.unknown_outcome) == (429, -1003, True, False)
    error = error_of(lambda: client.market_order("BTCUSDT", "BUY", "0.01", client_order_id("p6")))
    assert error.code == -1003
    assert sim.orders()[0]["fault"] == "rate_limit"


def test_accept_then_timeout_order_exists_when_queried(sim: RunningSimulator) -> None:
    impatient = ExchangeClient(API_KEY, API_SECRET, base_url=sim.base_url, timeout=0.5)
    sim.set_faults(timeoutRate=1.0, timeoutSeconds=3.0)
    coid = client_order_id("plan-timeout")
    started = time.monotonic()
    error = error_of(lambda: impatient.market_order("BTCUSDT", "BUY", "0.01", coid))
    assert time.monotonic() - started < 2.5
    assert (error.code, error.retryable, error.unknown_outcome) == (-1007, True, True)
    sim.set_faults()
    found = impatient.get_order("BTCUSDT", coid)
    assert found is not None and found.status == "FILLED", "the order was executed although unanswered"
    [entry] = sim.orders(coid)
    assert (entry["outcome"], entry["fault"]) == ("accepted", "timeout")
    [position] = impatient.positions()
    assert position.qty == pytest.approx(0.01)


def test_latency_is_added(sim: RunningSimulator, client: ExchangeClient) -> None:
    sim.set_faults(latencyMs=200)
    started = time.monotonic()
    client.ping()
    assert time.monotonic() - started >= 0.19


def test_positions_and_account(sim: RunningSimulator, client: ExchangeClient) -> None:
    assert client.positions() == []
    client.set_leverage("BTCUSDT", 5)
    client.market_order("BTCUSDT", "BUY", "0.1", client_order_id("a"))
    sim.set_price("BTCUSDT", 61_000)
    [long] = client.positions()
    assert (long.symbol, long.side, long.qty) == ("BTCUSDT", PositionSide.LONG, pytest.approx(0.1))
    assert long.entry_price == pytest.approx(60_000)
    assert long.mark_price == pytest.approx(61_000)
    assert long.unrealized_pnl == pytest.approx(100)
    account = client.account()
    assert account.wallet_balance == pytest.approx(10_000 - 2.4)
    assert account.unrealized_pnl == pytest.approx(100)
    assert account.margin_balance == pytest.approx(10_000 - 2.4 + 100)
    assert account.initial_margin == pytest.approx(6100 / 5)
    assert account.available_balance == pytest.approx(10_000 - 2.4 + 100 - 1220)
    [flat] = client.positions("ETHUSDT")
    assert (flat.side, flat.qty) == (PositionSide.FLAT, 0)


def test_position_changed_behind_the_systems_back(sim: RunningSimulator, client: ExchangeClient) -> None:
    sim.adjust_position("ETHUSDT", "-2.5", "3100")
    [short] = client.positions()
    assert (short.side, short.qty, short.signed_qty) == (PositionSide.SHORT, 2.5, -2.5)
    assert short.entry_price == pytest.approx(3100)


def test_reduce_only_rules_through_the_client(sim: RunningSimulator, client: ExchangeClient) -> None:
    error = error_of(lambda: client.market_order("BTCUSDT", "SELL", "0.01", client_order_id("r1"), True))
    assert (error.code, error.message) == (-2022, "ReduceOnly Order is rejected.")
    client.market_order("BTCUSDT", "BUY", "0.01", client_order_id("r2"))
    capped = client.market_order("BTCUSDT", "SELL", "1", client_order_id("r3"), reduce_only=True)
    assert capped.executed_qty == pytest.approx(0.01)
    assert capped.reduce_only
    assert client.positions() == []


def test_filters_from_exchange_info(sim: RunningSimulator, client: ExchangeClient) -> None:
    f = client.filters("ETHUSDT")
    assert f.min_notional == 5
    qty = qty_for_notional(4, 3000, f)
    error = error_of(lambda: client.market_order("ETHUSDT", "BUY", qty, client_order_id("tiny")))
    assert error.code == -4164
    assert client.market_order("ETHUSDT", "BUY", qty_for_notional(50, 3000, f), client_order_id("ok")).filled
    assert error_of(lambda: client.filters("DOGEUSDT")).code == -1121


def test_lot_size_errors_through_the_client(client: ExchangeClient) -> None:
    assert error_of(lambda: client.market_order("BTCUSDT", "BUY", "0.00001", client_order_id("x"))).code == -1111
    assert error_of(lambda: client.market_order("DOGEUSDT", "BUY", "1", client_order_id("x"))).code == -1121


def test_leverage(client: ExchangeClient) -> None:
    assert client.set_leverage("BTCUSDT", 7) == 7
    assert error_of(lambda: client.set_leverage("BTCUSDT", 500)).code == -4028


def test_margin_insufficient(client: ExchangeClient) -> None:
    client.set_leverage("BTCUSDT", 1)
    error = error_of(lambda: client.market_order("BTCUSDT", "BUY", "1", client_order_id("big")))
    assert (error.code, error.message) == (-2019, "Margin is insufficient.")


def test_every_library_url_points_at_the_simulator(sim: RunningSimulator, client: ExchangeClient) -> None:
    inner = client._client
    for attribute in _URL_ATTRIBUTES:
        assert getattr(inner, attribute).startswith(sim.base_url), attribute
    assert inner.ping() == {}  # spot /api/v3/ping answered by the simulator
    assert inner.get_server_time()["serverTime"] > 0
    assert client.server_time() > 0


def test_secrets_never_shown(sim: RunningSimulator, client: ExchangeClient, order_log: Path) -> None:
    client.market_order("BTCUSDT", "BUY", "0.01", client_order_id("s"))
    text = repr(client) + str(client) + order_log.read_text() + json.dumps(sim.state())
    assert API_SECRET not in text
    assert API_KEY not in text
    client.timestamp_offset = -60_000
    error = error_of(client.account)
    assert API_SECRET not in repr(error) + str(error)


def test_constructor_needs_exactly_one_target() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ExchangeClient(API_KEY, API_SECRET)
    with pytest.raises(ValueError, match="exactly one"):
        ExchangeClient(API_KEY, API_SECRET, base_url="http://127.0.0.1:1", live=True)
    with pytest.raises(ValueError, match="required"):
        ExchangeClient("", API_SECRET, base_url="http://127.0.0.1:1")


def test_unreachable_exchange_is_retryable() -> None:
    dead = ExchangeClient(API_KEY, API_SECRET, base_url="http://127.0.0.1:9", timeout=2)
    error = error_of(dead.ping)
    assert (error.code, error.retryable) == (-1001, True)


def test_an_order_to_an_unreachable_exchange_may_have_been_executed() -> None:
    dead = ExchangeClient(API_KEY, API_SECRET, base_url="http://127.0.0.1:9", timeout=2)
    error = error_of(lambda: dead.market_order("BTCUSDT", "BUY", "0.01", client_order_id("plan-dead")))
    assert (error.code, error.retryable, error.unknown_outcome) == (-1001, True, True)
    lookup = error_of(lambda: dead.get_order("BTCUSDT", client_order_id("plan-dead")))
    assert lookup.code == -1001


def test_a_kept_connection_the_server_closed_is_opened_again(order_log: Path) -> None:
    """Orders go over one kept-alive connection; a restarted exchange closed it: the next order opens a new one
    (found before the request, so the order is sent once, not failed as a dropped connection)."""
    first = run_simulator_in_thread(symbols=["BTCUSDT"], credentials={API_KEY: API_SECRET})
    port = int(first.base_url.rsplit(":", 1)[1])
    first.set_price("BTCUSDT", 60_000)
    client = ExchangeClient(API_KEY, API_SECRET, base_url=first.base_url, timeout=5)
    try:
        assert client.market_order("BTCUSDT", "BUY", "0.01", client_order_id("plan-a")).status == "FILLED"
        first.stop()
        second = run_simulator_in_thread(symbols=["BTCUSDT"], credentials={API_KEY: API_SECRET}, port=port)
        try:
            second.set_price("BTCUSDT", 60_000)
            time.sleep(0.05)  # the old server's close reaches the client's socket
            assert client.market_order("BTCUSDT", "BUY", "0.01", client_order_id("plan-b")).status == "FILLED"
            assert [e["clientOrderId"] for e in second.orders()] == [client_order_id("plan-b")]
        finally:
            second.stop()
    finally:
        client.close()


def test_a_batch_answers_each_order_or_its_own_refusal(sim: RunningSimulator, client: ExchangeClient) -> None:
    orders = [
        MarketOrder("BTCUSDT", "BUY", "0.01", client_order_id("plan-b1")),
        MarketOrder("ETHUSDT", "SELL", "0.1", client_order_id("plan-b2"), reduce_only=True),
        MarketOrder("ETHUSDT", "BUY", "0.1", client_order_id("plan-b3")),
    ]
    filled, refused, second = client.market_orders(orders)
    assert isinstance(filled, OrderResult) and filled.status == "FILLED" and filled.executed_qty == pytest.approx(0.01)
    assert isinstance(refused, ExchangeError)
    assert (refused.code, refused.retryable, refused.unknown_outcome) == (-2022, False, False)
    assert isinstance(second, OrderResult) and second.client_order_id == client_order_id("plan-b3")
    assert client.get_order("ETHUSDT", client_order_id("plan-b2")) is None
    assert client.requests_sent == 2
    with pytest.raises(ValueError, match="1 to 5"):
        client.market_orders(orders * 2)


def test_orders_and_lookups_count_as_requests(client: ExchangeClient) -> None:
    client.market_order("ETHUSDT", "BUY", "0.1", client_order_id("plan-count"))
    client.get_order("ETHUSDT", client_order_id("plan-count"))
    client.ping()
    assert client.requests_sent == 3


def test_invalid_arguments_fail_before_any_request(client: ExchangeClient) -> None:
    with pytest.raises(ValueError, match="client order id"):
        client.market_order("BTCUSDT", "BUY", "0.01", "not valid!")
    with pytest.raises(ValueError, match="positive"):
        client.market_order("BTCUSDT", "BUY", "0", client_order_id("z"))
    assert client.requests_sent == 0
