"""Client order ids: deterministic from plan_id, within Binance's alphabet and length."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from quantum_trader.exchange.order_ids import MAX_LENGTH, client_order_id, is_valid_client_order_id


def test_format_and_determinism() -> None:
    first = client_order_id("plan-123")
    assert first == client_order_id("plan-123")
    assert first == "qt-" + hashlib.sha256(b"plan-123").hexdigest()[:32]
    assert len(first) <= MAX_LENGTH
    assert is_valid_client_order_id(first)
    assert client_order_id("plan-124") != first


def test_same_id_in_another_process() -> None:
    code = "from quantum_trader.exchange.order_ids import client_order_id; print(client_order_id('p:9/x'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == client_order_id("p:9/x")


def test_long_and_unicode_plan_ids_stay_valid() -> None:
    assert is_valid_client_order_id(client_order_id("x" * 500))
    assert is_valid_client_order_id(client_order_id("plän ✓ with spaces"))


def test_empty_plan_id_is_refused() -> None:
    with pytest.raises(ValueError):
        client_order_id("")


@pytest.mark.parametrize("value", ["", "a" * 37, "has space", "semi;colon", "ümlaut"])
def test_invalid_ids(value: str) -> None:
    assert not is_valid_client_order_id(value)


@pytest.mark.parametrize("value", ["a", "A.b:c/d_e-f", "x" * 36])
def test_valid_ids(value: str) -> None:
    assert is_valid_client_order_id(value)
