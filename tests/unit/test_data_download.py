"""Archive download arguments: months, URLs and the mistakes a user can make on the command line."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from quantum_trader.data.download import BINANCE_FUTURES_MONTHLY, archive_url, download_klines, month_range
from quantum_trader.data.errors import DataError


def test_month_range_is_inclusive_and_crosses_years() -> None:
    assert month_range("2024-01", "2024-03") == ["2024-01", "2024-02", "2024-03"]
    assert month_range("2023-11", "2024-02") == ["2023-11", "2023-12", "2024-01", "2024-02"]
    assert month_range("2024-05", "2024-05") == ["2024-05"]


@pytest.mark.parametrize(
    ("start", "end", "problem"),
    [
        ("2024-03", "2024-01", "start 2024-03 is after end 2024-01"),
        ("2024-13", "2024-12", "start '2024-13' must be a month like 2024-01"),
        ("2024-01", "2024-1", "end '2024-1' must be a month like 2024-01"),
        ("2024-01-05", "2024-02", "must be a month"),
    ],
)
def test_month_range_refuses(start: str, end: str, problem: str) -> None:
    with pytest.raises(DataError, match=problem):
        month_range(start, end)


def test_archive_url_follows_the_archive_layout() -> None:
    assert archive_url(BINANCE_FUTURES_MONTHLY, "BTCUSDT", "1h", "2024-01") == (
        "https://data.binance.vision/data/futures/um/monthly/klines/BTCUSDT/1h/BTCUSDT-1h-2024-01.zip"
    )
    assert archive_url("http://127.0.0.1:9/base/", "ETHUSDT", "1m", "2023-12") == (
        "http://127.0.0.1:9/base/ETHUSDT/1m/ETHUSDT-1m-2023-12.zip"
    )


def test_bad_arguments_fail_before_any_request(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown interval '2m'"):
        download_klines("BTCUSDT", interval="2m", start="2024-01", end="2024-01", out_dir=tmp_path)
    with pytest.raises(DataError, match="symbol 'BTC-USDT' must be 2-20 ASCII letters and digits"):
        download_klines("btc-usdt", start="2024-01", end="2024-01", out_dir=tmp_path)
    # fullwidth and Cyrillic look-alikes pass str.isalnum(); the archive URL must never be built from them
    for look_alike in ("BTCUSD\uff34", "\u0412TCUSDT"):
        with pytest.raises(DataError, match="ASCII letters and digits"):
            download_klines(look_alike, start="2024-01", end="2024-01", out_dir=tmp_path)
    with pytest.raises(DataError, match="after end"):
        download_klines("BTCUSDT", start="2024-02", end="2024-01", out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_server_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError, match=r"^cannot reach http://127\.0\.0\.1:\d+/k/BTCUSDT/1h/BTCUSDT-1h-2024-01\.zip"):
        download_klines(
            "BTCUSDT",
            start="2024-01",
            end="2024-01",
            out_dir=tmp_path,
            base_url=f"http://127.0.0.1:{port}/k",
            timeout=5,
            verify_checksum=False,
        )
