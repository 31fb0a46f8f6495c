"""The simulator answers like Binance where it serves nothing: python-binance, unchanged, over real HTTP with
real signatures, meets Binance's JSON errors for unknown paths and methods, and the leverage brackets
that standard clients read before they fetch positions."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import requests
from binance.client import Client
from binance.exceptions import BinanceAPIException

from quantum_trader.contracts.policy import SimulatorSpec
from quantum_trader.exchange.client import _URL_ATTRIBUTES
from quantum_trader.exchange.simulator.engine import MAINT_MARGIN_RATE, MAX_LEVERAGE
from quantum_trader.exchange.simulator.server import MAX_NOTIONAL_VALUE, RunningSimulator, run_simulator_in_thread

API_KEY = "routes-key-0123456789"
API_SECRET = "routes-secret-abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    running = run_simulator_in_thread(
        SimulatorSpec(slippage_bps=0), symbols=["BTCUSDT", "ETHUSDT"], credentials={API_KEY: API_SECRET}
    )
    running.set_price("BTCUSDT", 60_000)
    running.set_price("ETHUSDT", 3_000)
    yield running
    running.stop()


def stock_client(sim: RunningSimulator, secret: str = API_SECRET, requests_params: dict | None = None) -> Client:
    """A stock python-binance Client pointed at the simulator, nothing of ours in between."""
    client = Client(API_KEY, secret, ping=False, requests_params=requests_params)
    for attribute, path in _URL_ATTRIBUTES.items():
        setattr(client, attribute, sim.base_url + path)
    return client


def mixed_batch(prefix: str) -> list[dict[str, str]]:
    """Three orders: a buy, a reduce-only sell with nothing to reduce (refused alone), another buy."""
    return [
        {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01", "newClientOrderId": f"{prefix}-1"},
        {
            "symbol": "ETHUSDT",
            "side": "SELL",
            "type": "MARKET",
            "quantity": "0.1",
            "newClientOrderId": f"{prefix}-2",
            "reduceOnly": "true",
        },
        {"symbol": "ETHUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.1", "newClientOrderId": f"{prefix}-3"},
    ]


@pytest.fixture
def binance(sim: RunningSimulator) -> Iterator[Client]:
    client = stock_client(sim)
    yield client
    client.close_connection()


def raw(sim: RunningSimulator, method: str, path: str) -> tuple[int, str, str]:
    request = urllib.request.Request(sim.base_url + path, method=method, data=b"" if method != "GET" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers.get_content_type(), answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get_content_type(), error.read().decode()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fapi/v1/openAlgoOrders"),
        ("GET", "/fapi/v1/positionRisk"),  # v1 is gone at Binance; v2 and v3 are served
        ("DELETE", "/fapi/v1/order"),  # a served path, a method it does not take
        ("PUT", "/fapi/v1/ping"),
        ("GET", "/sapi/v1/capital/config/getall"),
        ("POST", "/"),
        ("GET", "/no/such/thing"),
        ("GET", "/sim/nothing"),
    ],
)
def test_every_unknown_route_and_method_is_binances_json_error(sim, method, path):
    status, content_type, body = raw(sim, method, path)
    assert status == 404
    assert content_type == "application/json"
    assert json.loads(body) == {"code": -5000, "msg": f"Path {path}, Method {method} is invalid"}


def test_python_binance_sees_the_error_code_of_an_unknown_endpoint(binance):
    with pytest.raises(BinanceAPIException) as caught:
        binance._request_futures_api("get", "openAlgoOrders", True, data={})
    assert caught.value.status_code == 404
    assert caught.value.code == -5000
    assert "Path /fapi/v1/openAlgoOrders, Method GET is invalid" in caught.value.message


def test_leverage_brackets_for_every_symbol_in_binances_shape(binance):
    brackets = binance.futures_leverage_bracket()
    assert [entry["symbol"] for entry in brackets] == ["BTCUSDT", "ETHUSDT"]
    for entry in brackets:
        assert set(entry) == {"symbol", "brackets"}
        (bracket,) = entry["brackets"]
        assert bracket == {
            "bracket": 1,
            "initialLeverage": MAX_LEVERAGE,
            "notionalCap": MAX_NOTIONAL_VALUE,
            "notionalFloor": 0,
            "maintMarginRatio": float(MAINT_MARGIN_RATE),
            "cum": 0.0,
        }


def test_leverage_bracket_of_one_symbol_is_the_bare_object(binance):
    entry = binance.futures_leverage_bracket(symbol="ETHUSDT")
    assert entry["symbol"] == "ETHUSDT" and entry["brackets"][0]["initialLeverage"] == MAX_LEVERAGE


def test_leverage_bracket_of_an_unknown_symbol_is_invalid_symbol(binance):
    with pytest.raises(BinanceAPIException) as caught:
        binance.futures_leverage_bracket(symbol="DOGEUSDT")
    assert (caught.value.status_code, caught.value.code) == (400, -1121)


def test_leverage_bracket_is_signed(sim, binance):
    status, _, body = raw(sim, "GET", "/fapi/v1/leverageBracket")
    assert status == 401 and json.loads(body)["code"] == -2014
    wrong = stock_client(sim, "not-the-secret")
    with pytest.raises(BinanceAPIException) as caught:
        wrong.futures_leverage_bracket()
    assert caught.value.code == -1022
    wrong.close_connection()


def test_a_position_fetch_as_standard_clients_do_it(binance):
    """Brackets first (to compute maintenance margin), then positions: the sequence of ccxt's fetch_positions."""
    binance.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.01")
    brackets = {entry["symbol"]: entry["brackets"] for entry in binance.futures_leverage_bracket()}
    positions = [p for p in binance.futures_position_information() if float(p["positionAmt"]) != 0]
    assert [p["symbol"] for p in positions] == ["BTCUSDT"]
    (position,) = positions
    notional = abs(float(position["notional"]))
    bracket = next(b for b in brackets["BTCUSDT"] if b["notionalFloor"] <= notional < b["notionalCap"])
    assert float(position["maintMargin"]) == pytest.approx(notional * bracket["maintMarginRatio"] - bracket["cum"])


@pytest.mark.parametrize(
    ("quantity", "code"),
    [
        ("1e400", -4005),
        ("0.001e1000", -4005),
        ("9" * 5000, -4005),
        ("inf", -1102),
        ("NaN", -1102),
        ("true", -1102),
        ("1e-400", -1111),
    ],
)
def test_a_quantity_out_of_every_bound_is_binances_refusal_not_an_unknown_error(sim, binance, quantity, code):
    """Quantities with more digits than the decimal context holds once failed the step check with
    InvalidOperation, answered as 500 -1000; Binance refuses them as the order's own error."""
    with pytest.raises(BinanceAPIException) as refused:
        binance.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity=quantity)
    assert (refused.value.status_code, refused.value.code) == (400, code), refused.value.message
    assert sim.state()["orders"] == 0
    placed = binance.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.01")
    assert placed["status"] == "FILLED"


def admin_post(sim: RunningSimulator, path: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        sim.base_url + path, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/sim/price", b'{"symbol": "BTCUSDT", "price": "1e400"}'),
        ("/sim/price", b'{"symbol": "BTCUSDT", "price": 1e10}'),
        ("/sim/price", b'{"symbol": "BTCUSDT", "price": Infinity}'),
        ("/sim/price", b'{"symbol": "BTCUSDT", "price": true}'),
        ("/sim/price", b'{"symbol": "BTCUSDT", "price": 100, "time": 1e400}'),
        ("/sim/price", b'{"symbol": "BTCUSDT", "price": 100, "time": -1}'),
        ("/sim/price", b"[" * 100_000),
        ("/sim/adjust-position", b'{"symbol": "BTCUSDT", "qty": "1e400", "entryPrice": "100"}'),
        ("/sim/adjust-position", b'{"symbol": "BTCUSDT", "qty": "1", "entryPrice": "1e400"}'),
        ("/sim/adjust-position", b'{"symbol": "BTCUSDT", "qty": "NaN", "entryPrice": "100"}'),
        ("/sim/faults", b'{"timeoutRate": NaN}'),
    ],
)
def test_admin_numbers_out_of_bounds_are_refused_and_leave_the_simulator_as_it_was(sim, binance, path, body):
    """A price of 1e400 through /sim/price was taken, and every later /sim/state answered 500 from then on."""
    status, answer = admin_post(sim, path, body)
    assert status == 400 and answer["error"], answer
    state = sim.state()
    assert state["prices"]["BTCUSDT"] == "60000" and state["positions"] == []
    assert binance.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.01")["status"] == (
        "FILLED"
    )


def test_an_internal_failure_is_binances_unknown_error_not_a_stack_trace():
    """A handler that fails unexpectedly answers Binance's 500 -1000 in JSON; the cause goes to the log only."""
    import asyncio

    import aiohttp
    from aiohttp import web

    from quantum_trader.exchange.simulator.server import SimulatorApp

    async def scenario() -> tuple[int, dict]:
        app = SimulatorApp(SimulatorSpec(), symbols=["BTCUSDT"], credentials={API_KEY: API_SECRET}).application()

        async def broken(request: web.Request) -> web.Response:
            raise RuntimeError("a bug in the simulator")

        app.router.add_get("/fapi/v1/broken", broken)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/fapi/v1/broken") as r:
                return r.status, await r.json()
        finally:
            await runner.cleanup()

    status, body = asyncio.run(scenario())
    assert status == 500
    assert body == {"code": -1000, "msg": "An unknown error occurred while processing the request."}


def test_python_binance_places_and_looks_up_an_order_with_real_signatures(sim, binance):
    """The order path's own requests (exchange/transport.py) replace python-binance's for orders; python-binance
    itself must still place, look up and be refused exactly as at Binance."""
    placed = binance.futures_create_order(
        symbol="BTCUSDT",
        side="BUY",
        type="MARKET",
        quantity="0.01",
        newClientOrderId="lib-1",
        newOrderRespType="RESULT",
    )
    assert (placed["status"], placed["clientOrderId"], placed["executedQty"]) == ("FILLED", "lib-1", "0.01")
    found = binance.futures_get_order(symbol="BTCUSDT", origClientOrderId="lib-1")
    assert found["orderId"] == placed["orderId"]
    with pytest.raises(BinanceAPIException) as duplicate:
        binance.futures_create_order(
            symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.01", newClientOrderId="lib-1"
        )
    assert duplicate.value.code == -4116
    with pytest.raises(BinanceAPIException) as missing:
        binance.futures_get_order(symbol="BTCUSDT", origClientOrderId="never-sent")
    assert missing.value.code == -2013
    wrong = stock_client(sim, "not-the-secret")
    with pytest.raises(BinanceAPIException) as unsigned:
        wrong.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.01")
    assert unsigned.value.code == -1022
    assert [(e["clientOrderId"], e["outcome"], e["code"]) for e in sim.orders()][:2] == [
        ("lib-1", "accepted", None),
        ("lib-1", "rejected", -4116),
    ]


def test_batch_orders_through_python_binance_answer_each_order_or_its_error(sim, binance):
    answers = binance.futures_place_batch_order(batchOrders=mixed_batch("b"))
    assert [a.get("clientOrderId") for a in answers] == ["b-1", None, "b-3"]
    assert answers[1] == {"code": -2022, "msg": "ReduceOnly Order is rejected."}, "nothing to reduce: that order alone"
    assert binance.futures_get_order(symbol="ETHUSDT", origClientOrderId="b-3")["status"] == "FILLED"
    assert [(e["clientOrderId"], e["outcome"], e["path"]) for e in sim.orders()] == [
        ("b-1", "accepted", "/fapi/v1/batchOrders"),
        ("b-2", "rejected", "/fapi/v1/batchOrders"),
        ("b-3", "accepted", "/fapi/v1/batchOrders"),
    ]


def test_a_withheld_batch_answer_logs_its_fills_as_timeouts_as_a_single_order_does(sim):
    """The order log says which fills went unanswered (fault "timeout"): the chaos test kills apply-layer
    inside exactly that window, so a batch's must be marked as a single order's are."""
    impatient = stock_client(sim, requests_params={"timeout": 0.5})
    sim.set_faults(timeoutRate=1.0, timeoutSeconds=3.0)
    with pytest.raises(requests.exceptions.Timeout):
        impatient.futures_place_batch_order(batchOrders=mixed_batch("w"))
    sim.set_faults()
    assert [(e["clientOrderId"], e["outcome"], e["fault"]) for e in sim.orders()] == [
        ("w-1", "accepted", "timeout"),
        ("w-2", "rejected", None),
        ("w-3", "accepted", "timeout"),
    ]
    assert impatient.futures_get_order(symbol="ETHUSDT", origClientOrderId="w-3")["status"] == "FILLED"
    impatient.close_connection()


def test_a_batch_of_more_than_five_orders_is_refused_whole(sim, binance):
    orders = [
        {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01", "newClientOrderId": f"x-{i}"}
        for i in range(6)
    ]
    with pytest.raises(BinanceAPIException) as refused:
        binance.futures_place_batch_order(batchOrders=orders)
    assert refused.value.code == -1130
    assert {e["outcome"] for e in sim.orders()} == {"rejected"} and len(sim.orders()) == 6
    assert sim.state()["orders"] == 0
