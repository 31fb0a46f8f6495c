"""The lean path's request building equals python-binance's own for the same inputs (signing.py, transport.py)."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from binance.client import Client
from hypothesis import given
from hypothesis import strategies as st

from quantum_trader.exchange.errors import UNKNOWN, ExchangeError
from quantum_trader.exchange.signing import batch_orders_body, form_body, query_string, signature, signed_pairs
from quantum_trader.exchange.transport import decode_answer

KEY, SECRET = "test-key", "test-secret-ZZ9"
STAMP = 1_765_000_000_123


@pytest.fixture(scope="module")
def library() -> Client:
    client = Client(KEY, SECRET, ping=False)
    client.REQUEST_RECVWINDOW = 5000
    return client


def library_kwargs(library: Client, method: str, params: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """What python-binance hands to requests for a SIGNED request, at the fixed timestamp."""
    monkeypatch.setattr("binance.base_client.time.time", lambda: STAMP / 1000)
    return library._get_request_kwargs(method, True, data=dict(params))


ORDER = {
    "symbol": "BTCUSDT",
    "side": "SELL",
    "type": "MARKET",
    "quantity": "0.012",
    "newClientOrderId": "qt-p:abc_/.9-Z",
    "newOrderRespType": "RESULT",
    "reduceOnly": "true",
}


def test_an_order_body_is_python_binances(library: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = library_kwargs(library, "post", ORDER, monkeypatch)["data"]
    ours = signed_pairs(ORDER, SECRET, STAMP, 5000)
    assert ours == theirs
    assert [name for name, _ in ours] == [*sorted([*ORDER, "recvWindow", "timestamp"]), "signature"]
    # requests form-encodes the list of pairs as the body
    assert form_body(ours) == urlencode(theirs)


def test_a_lookup_query_is_python_binances(library: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"symbol": "ETHUSDT", "origClientOrderId": "qt-p:1/2"}
    theirs = library_kwargs(library, "get", params, monkeypatch)["params"]
    assert query_string(signed_pairs(params, SECRET, STAMP, 5000)) == theirs


def test_the_offset_timestamp_and_no_recv_window(library: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(library, "REQUEST_RECVWINDOW", None)
    monkeypatch.setattr(library, "timestamp_offset", -250)
    theirs = library_kwargs(library, "post", ORDER, monkeypatch)["data"]
    assert signed_pairs(ORDER, SECRET, STAMP - 250, None) == theirs
    assert "recvWindow" not in dict(theirs)


names = st.text(st.sampled_from("abcdefgXYZ"), min_size=1, max_size=8)
values = st.one_of(
    st.none(),
    st.integers(-(10**12), 10**12),
    st.text(st.characters(codec="ascii", exclude_characters="\x00"), max_size=12),
)


@given(params=st.dictionaries(st.one_of(names, st.just("symbol")), values, max_size=6))
def test_any_parameters_sign_as_python_binance_signs_them(params: dict) -> None:
    library = Client(KEY, SECRET, ping=False)
    library.REQUEST_RECVWINDOW = 7000
    import binance.base_client as base

    original = base.time.time
    base.time.time = lambda: STAMP / 1000  # type: ignore[assignment]
    try:
        theirs_post = library._get_request_kwargs("post", True, data=dict(params))["data"]
        theirs_get = library._get_request_kwargs("get", True, data=dict(params))["params"]
    finally:
        base.time.time = original  # type: ignore[assignment]
    ours = signed_pairs(params, SECRET, STAMP, 7000)
    assert ours == theirs_post
    assert query_string(ours) == theirs_get


def test_the_signature_is_hmac_sha256_hex() -> None:
    # RFC 4231 test case 2
    assert signature("what do ya want for nothing?", "Jefe") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def error_of(status: int, text: str) -> ExchangeError:
    with pytest.raises(ExchangeError) as caught:
        decode_answer(status, text)
    return caught.value


def test_answers_map_as_python_binances_exceptions_do() -> None:
    assert decode_answer(200, '{"orderId": 7}') == {"orderId": 7}
    assert decode_answer(200, "") == {}
    missing = error_of(400, '{"code": -2013, "msg": "Order does not exist."}')
    assert (missing.code, missing.message, missing.retryable, missing.unknown_outcome, missing.http_status) == (
        -2013,
        "Order does not exist.",
        False,
        False,
        400,
    )
    busy = error_of(503, '{"code": -1008, "msg": "overloaded"}')
    assert (busy.code, busy.retryable, busy.unknown_outcome) == (-1008, True, True)
    limited = error_of(429, '{"code": -1003, "msg": "slow down"}')
    assert (limited.retryable, limited.unknown_outcome) == (True, False)
    page = error_of(502, "<html>bad gateway</html>")
    assert (page.code, page.unknown_outcome) == (UNKNOWN, True)
    assert page.message == "Invalid JSON error message from Binance: <html>bad gateway</html>"
    no_message = error_of(400, '{"code": -1102}')
    assert no_message.message == "HTTP 400"
    garbled = error_of(200, "not json")
    assert (garbled.code, garbled.retryable, garbled.unknown_outcome) == (UNKNOWN, True, True)
    assert garbled.message == "unreadable answer: Invalid Response: not json"


def test_a_batch_body_is_python_binances(library: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: dict = {}

    def capture(url: str, **kwargs: object) -> object:
        sent.update(kwargs)
        raise RuntimeError("captured")

    monkeypatch.setattr("binance.base_client.time.time", lambda: STAMP / 1000)
    monkeypatch.setattr(library.session, "post", capture)
    orders = [
        {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01", "newClientOrderId": "qt-p:a/1"},
        {
            "symbol": "ETHUSDT",
            "side": "SELL",
            "type": "MARKET",
            "quantity": "0.2",
            "newClientOrderId": "qt-p:b",
            "reduceOnly": "true",
        },
    ]
    with pytest.raises(RuntimeError, match="captured"):
        library.futures_place_batch_order(batchOrders=[dict(o) for o in orders])
    assert batch_orders_body(orders, SECRET, STAMP, 5000) == sent["data"]
