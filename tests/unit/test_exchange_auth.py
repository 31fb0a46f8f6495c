"""The simulator's SIGNED-request checks: API key, HMAC-SHA256 over totalParams, recvWindow."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from quantum_trader.exchange.simulator.auth import HttpRejection, parse_params, verify_signed

KEYS = {"key-1": "secret-1"}
NOW = 1_700_000_000_000


def sign(payload: str, secret: str = "secret-1") -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def signed(payload: str, secret: str = "secret-1") -> str:
    return f"{payload}&signature={sign(payload, secret)}"


def refused(status: int, code: int, *args: object) -> HttpRejection:
    with pytest.raises(HttpRejection) as caught:
        verify_signed(*args)  # type: ignore[arg-type]
    assert (caught.value.status, caught.value.code) == (status, code), caught.value.message
    return caught.value


def test_valid_query_signature() -> None:
    query = signed(f"symbol=BTCUSDT&timestamp={NOW}")
    params = verify_signed(query, "", "key-1", KEYS, NOW)
    assert params == {"symbol": "BTCUSDT", "timestamp": str(NOW)}


def test_valid_body_signature_and_mixed_query_body() -> None:
    body = signed(f"quantity=0.01&side=BUY&symbol=BTCUSDT&timestamp={NOW}&type=MARKET")
    assert verify_signed("", body, "key-1", KEYS, NOW)["side"] == "BUY"
    query, rest = "symbol=BTCUSDT", f"side=BUY&timestamp={NOW}"
    mixed_body = f"{rest}&signature={sign(query + rest)}"
    assert verify_signed(query, mixed_body, "key-1", KEYS, NOW)["symbol"] == "BTCUSDT"


def test_form_encoded_values_are_accepted_in_their_decoded_form() -> None:
    # python-binance signs "newClientOrderId=a:b" while requests sends "a%3Ab"
    raw = f"newClientOrderId=a%3Ab&timestamp={NOW}"
    body = f"{raw}&signature={sign(f'newClientOrderId=a:b&timestamp={NOW}')}"
    assert verify_signed("", body, "key-1", KEYS, NOW)["newClientOrderId"] == "a:b"


def test_wrong_secret_is_minus_1022() -> None:
    error = refused(400, -1022, signed(f"timestamp={NOW}", "other"), "", "key-1", KEYS, NOW)
    assert error.message == "Signature for this request is not valid."


def test_tampered_parameter_is_minus_1022() -> None:
    query = signed(f"quantity=1&timestamp={NOW}").replace("quantity=1", "quantity=9")
    refused(400, -1022, query, "", "key-1", KEYS, NOW)


def test_missing_and_unknown_keys() -> None:
    refused(401, -2014, signed(f"timestamp={NOW}"), "", None, KEYS, NOW)
    error = refused(401, -2015, signed(f"timestamp={NOW}"), "", "key-2", KEYS, NOW)
    assert error.message == "Invalid API-key, IP, or permissions for action."


def test_missing_signature() -> None:
    refused(400, -1102, f"timestamp={NOW}", "", "key-1", KEYS, NOW)


@pytest.mark.parametrize(
    ("stamp", "window", "ok"),
    [
        (NOW, None, True),
        (NOW - 5000, None, True),
        (NOW - 5001, None, False),  # default recvWindow 5000
        (NOW - 9000, 10_000, True),
        (NOW + 999, None, True),
        (NOW + 1000, None, False),  # from the future beyond 1 s
    ],
)
def test_timestamp_window(stamp: int, window: int | None, ok: bool) -> None:
    payload = f"timestamp={stamp}" + (f"&recvWindow={window}" if window else "")
    if ok:
        verify_signed(signed(payload), "", "key-1", KEYS, NOW)
    else:
        error = refused(400, -1021, signed(payload), "", "key-1", KEYS, NOW)
        assert error.message == "Timestamp for this request is outside of the recvWindow."


def test_recv_window_limit_and_missing_timestamp() -> None:
    refused(400, -1131, signed(f"timestamp={NOW}&recvWindow=60001"), "", "key-1", KEYS, NOW)
    refused(400, -1102, signed("symbol=BTCUSDT"), "", "key-1", KEYS, NOW)


def test_duplicate_parameters() -> None:
    with pytest.raises(HttpRejection) as caught:
        parse_params("a=1", "a=2")
    assert caught.value.code == -1101
