"""Kline files: exact round trips, clear refusals with file and line, deterministic merging."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from quantum_trader.data.errors import DataError, KlineFormatError
from quantum_trader.data.klines import (
    COLUMNS,
    Kline,
    format_number,
    interval_ms,
    kline_file_name,
    merge_by_time,
    parse_kline_filename,
    read_klines,
    write_klines,
)

MINUTE = 60_000
T0 = 1_746_403_200_000  # 2025-05-05 00:00 UTC


def bar(i: int, close: float = 100.0, *, symbol: str = "BTCUSDT", interval: str = "1m", start: int = T0) -> Kline:
    step = interval_ms(interval)
    open_time = start + i * step
    return Kline(
        open_time=open_time,
        open=close,
        high=close + 1,
        low=close - 1,
        close=close,
        volume=12.5,
        close_time=open_time + step - 1,
        quote_volume=1250.0,
        trades=7,
        taker_buy_volume=6.25,
        taker_buy_quote_volume=625.0,
        symbol=symbol,
        interval=interval,
    )


def line(*fields: object) -> str:
    return ",".join(str(f) for f in fields)


GOOD = line(T0, "94230.2", "94230.3", "94159.7", "94220", "465.598", T0 + MINUTE - 1, 0, 0, 0, 0, 0)
GOOD2 = line(T0 + MINUTE, "94220", "94334", "94209", "94334", "167.275", T0 + 2 * MINUTE - 1, 0, 0, 0, 0, 0)


def write_text(tmp_path: Path, text: str, name: str = "BTCUSDT-1m-2025-05-05_2025-05-05.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_round_trip_keeps_every_value(tmp_path: Path) -> None:
    rows = [bar(i, 100 + i * 0.125) for i in range(50)]
    path = tmp_path / kline_file_name("BTCUSDT", "1m", rows[0].open_time, rows[-1].open_time)
    assert write_klines(path, rows) == 50
    back = list(read_klines(path))
    assert back == [dataclasses.replace(k, source=f"replay:{path.name}") for k in rows]
    assert path.read_text().splitlines()[0].split(",") == [
        str(T0),
        "100",
        "101",
        "99",
        "100",
        "12.5",
        str(T0 + MINUTE - 1),
        "1250",
        "7",
        "6.25",
        "625",
        "0",
    ]


def test_reads_values_and_names_from_the_file(tmp_path: Path) -> None:
    path = write_text(tmp_path, GOOD + "\n" + GOOD2 + "\n")
    first, second = read_klines(path)
    assert (first.symbol, first.interval, first.source) == ("BTCUSDT", "1m", f"replay:{path.name}")
    assert (first.open, first.high, first.low, first.close) == (94230.2, 94230.3, 94159.7, 94220.0)
    assert first.volume == 465.598
    assert (first.quote_volume, first.trades, first.taker_buy_volume) == (0.0, 0, 0.0)
    assert second.open_time == first.open_time + MINUTE


def test_futures_archive_header_and_crlf_are_tolerated(tmp_path: Path) -> None:
    plain = list(read_klines(write_text(tmp_path, GOOD + "\n" + GOOD2 + "\n")))
    headed = write_text(tmp_path, ",".join(COLUMNS) + "\r\n" + GOOD + "\r\n" + GOOD2 + "\r\n", "BTCUSDT-1m-2025-05.csv")
    assert [dataclasses.replace(k, source="") for k in read_klines(headed)] == [
        dataclasses.replace(k, source="") for k in plain
    ]


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (line(T0 + MINUTE, 1, 2, 1, 1, 1, T0 + 2 * MINUTE - 1, 0, 0, 0, 0), "expected 12 comma-separated columns"),
        (line(T0 + MINUTE, "x", 2, 1, 1, 1, T0 + 2 * MINUTE - 1, 0, 0, 0, 0, 0), "open 'x' is not a number"),
        (line(T0 + MINUTE, 1, 2, 1, 1, "nan", T0 + 2 * MINUTE - 1, 0, 0, 0, 0, 0), "volume 'nan' must be finite"),
        (line(T0 + MINUTE, 1, 2, 1, 1, -1, T0 + 2 * MINUTE - 1, 0, 0, 0, 0, 0), "volume '-1' must be finite"),
        (line(T0 + MINUTE, 1, 2, 1, 1, 1, T0 + 2 * MINUTE - 1, 0, "1.5", 0, 0, 0), "count '1.5' is not an integer"),
        (line(T0 + MINUTE, 1, 2, 1, 1, 1, T0 + 2 * MINUTE, 0, 0, 0, 0, 0), "close_time"),
        (line(T0 + MINUTE, 1, 2, 1, 3, 1, T0 + 2 * MINUTE - 1, 0, 0, 0, 0, 0), "prices out of order"),
        (line(T0 + MINUTE, 1, 2, 0, 1, 1, T0 + 2 * MINUTE - 1, 0, 0, 0, 0, 0), "low 0.0 must be above 0"),
        (line(T0, 1, 2, 1, 1, 1, T0 + MINUTE - 1, 0, 0, 0, 0, 0), f"open_time {T0} is not after the previous bar's"),
        (line(T0 * 1000, 1, 2, 1, 1, 1, T0 * 1000 + MINUTE - 1, 0, 0, 0, 0, 0), "looks like microseconds"),
    ],
)
def test_a_bad_line_names_file_line_and_problem(tmp_path: Path, bad: str, problem: str) -> None:
    path = write_text(tmp_path, GOOD + "\n" + bad + "\n" + GOOD2 + "\n")
    with pytest.raises(KlineFormatError) as caught:
        list(read_klines(path))
    assert str(caught.value).startswith(f"{path}:2: ")
    assert problem in str(caught.value)
    assert caught.value.line_no == 2
    assert isinstance(caught.value, DataError) and isinstance(caught.value, ValueError)


def test_a_header_anywhere_but_the_first_line_is_an_error(tmp_path: Path) -> None:
    path = write_text(tmp_path, GOOD + "\n" + ",".join(COLUMNS) + "\n")
    with pytest.raises(KlineFormatError, match=":2: open_time 'open_time' is not an integer"):
        list(read_klines(path))


def test_missing_file_and_unnamed_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_klines(tmp_path / "BTCUSDT-1m-2025-05.csv")
    unnamed = write_text(tmp_path, GOOD + "\n", "prices.csv")
    with pytest.raises(DataError, match=r"cannot tell symbol and interval from file name 'prices\.csv'"):
        read_klines(unnamed)
    (k,) = read_klines(unnamed, symbol="BTCUSDT", interval="1m")
    assert (k.symbol, k.interval, k.source) == ("BTCUSDT", "1m", "replay:prices.csv")


def test_given_symbol_must_agree_with_the_name(tmp_path: Path) -> None:
    path = write_text(tmp_path, GOOD + "\n")
    with pytest.raises(DataError, match="symbol 'ETHUSDT' given but the file name says 'BTCUSDT'"):
        read_klines(path, symbol="ETHUSDT")


def test_interval_decides_the_close_time_check(tmp_path: Path) -> None:
    path = write_text(tmp_path, GOOD + "\n", "BTCUSDT-1h-2025-05.csv")
    with pytest.raises(KlineFormatError, match=r":1: close_time .* is not open_time \+ 1h - 1 ms"):
        list(read_klines(path))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("BTCUSDT-1m-2025-05-05_2025-06-23.csv", ("BTCUSDT", "1m")),
        ("BTCUSDT-1h-2024-01.csv", ("BTCUSDT", "1h")),
        ("1000PEPEUSDT-1h-2023-05-06_2024-05-13.csv", ("1000PEPEUSDT", "1h")),
        ("/some/dir/ETHUSDT-15m-2024-02.zip", ("ETHUSDT", "15m")),
        (Path("x") / "SOLUSDT-1d-2024-01-01.csv", ("SOLUSDT", "1d")),
    ],
)
def test_parse_kline_filename(name: str | Path, expected: tuple[str, str]) -> None:
    assert parse_kline_filename(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "btcusdt-1m-2025-05.csv",
        "BTCUSDT-1m.csv",
        "BTCUSDT-2025-05.csv",
        "BTCUSDT-1m-2025-05.txt",
        "BTCUSDT-7m-2025-05.csv",
    ],
)
def test_parse_kline_filename_refuses(name: str) -> None:
    with pytest.raises(DataError):
        parse_kline_filename(name)


def test_interval_ms() -> None:
    assert interval_ms("1s") == 1_000
    assert interval_ms("1m") == 60_000
    assert interval_ms("1h") == 3_600_000
    assert interval_ms("4h") == 14_400_000
    assert interval_ms("1d") == 86_400_000
    assert interval_ms("1w") == 604_800_000
    with pytest.raises(DataError, match="no fixed length"):
        interval_ms("1M")
    with pytest.raises(DataError, match="unknown interval '2m'; use one of 1s, 1m, 3m"):
        interval_ms("2m")


def test_kline_file_name_uses_utc_dates_of_first_and_last_open() -> None:
    name = kline_file_name("BTCUSDT", "1h", 1_672_531_200_000, 1_715_641_200_000)
    assert name == "BTCUSDT-1h-2023-01-01_2024-05-13.csv"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (94220.0, "94220"),
        (0.379, "0.379"),
        (1e-05, "0.00001"),
        (1.5e-07, "0.00000015"),
        (123456.789, "123456.789"),
        (0.0, "0"),
    ],
)
def test_format_number_is_short_exact_and_plain(value: float, text: str) -> None:
    assert format_number(value) == text
    assert float(text) == value


def test_write_refuses_unordered_or_mixed_bars_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-1m-2025-05.csv"
    with pytest.raises(DataError, match="strictly increasing"):
        write_klines(path, [bar(1), bar(0)])
    with pytest.raises(DataError, match="one symbol and interval"):
        write_klines(path, [bar(0), bar(1, symbol="ETHUSDT")])
    assert list(tmp_path.iterdir()) == []


def test_merge_by_time_breaks_ties_by_symbol_whatever_the_input_order() -> None:
    eth = [bar(i, symbol="ETHUSDT") for i in range(3)]
    btc = [bar(i, symbol="BTCUSDT") for i in range(3)]
    sol = [bar(i, symbol="SOLUSDT") for i in range(0, 3, 2)]
    expected = [
        ("BTCUSDT", 0),
        ("ETHUSDT", 0),
        ("SOLUSDT", 0),
        ("BTCUSDT", 1),
        ("ETHUSDT", 1),
        ("BTCUSDT", 2),
        ("ETHUSDT", 2),
        ("SOLUSDT", 2),
    ]
    for order in ([eth, btc, sol], [sol, btc, eth], [btc, sol, eth]):
        merged = [(k.symbol, (k.open_time - T0) // MINUTE) for k in merge_by_time([iter(x) for x in order])]
        assert merged == expected


def test_merge_by_time_orders_mixed_intervals_by_close() -> None:
    hourly = [bar(0, symbol="AAAUSDT", interval="1h")]
    minutes = [bar(i, symbol="ZZZUSDT") for i in range(60)]
    merged = list(merge_by_time([hourly, minutes]))
    assert merged.index(hourly[0]) == 59  # the hour closes with the 60th minute and sorts before ZZZ
    assert [k.close_time for k in merged] == sorted(k.close_time for k in merged)


@pytest.mark.data
def test_real_btcusdt_1m_reads_completely(shared_klines: Path) -> None:
    path = shared_klines / "BTCUSDT-1m-2025-05-05_2025-06-23.csv"
    count, previous = 0, None
    for kline in read_klines(path):
        assert previous is None or kline.open_time == previous + MINUTE
        previous = kline.open_time
        count += 1
    assert count == 72_000


@pytest.mark.data
def test_every_shared_file_reads_and_its_name_matches_its_bars(shared_klines: Path) -> None:
    files = sorted(shared_klines.glob("*.csv"))
    assert len(files) == 24
    for path in files:
        klines = list(read_klines(path))
        symbol, interval = parse_kline_filename(path.name)
        assert kline_file_name(symbol, interval, klines[0].open_time, klines[-1].open_time) == path.name
        assert len(klines) == sum(1 for _ in path.open())
