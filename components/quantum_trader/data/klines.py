"""Binance kline files (data.binance.vision CSV, 12 columns, ms timestamps): read, write, name, merge.

Replays must be deterministic (DESIGN §4.9), so a file is either read completely and exactly or
refused at the first bad line with its file and line number: a silently skipped or reordered bar
would change every order downstream. Files with zeros in the volume columns 8-11 are valid: zero
there means "unknown" (OHLCV-only sources), not "no trades".
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from quantum_trader.data.cache import atomic_writer
from quantum_trader.data.errors import DataError, KlineFormatError

INTERVALS: dict[str, int] = {
    "1s": 1_000,
    "1m": 60_000,
    "3m": 3 * 60_000,
    "5m": 5 * 60_000,
    "15m": 15 * 60_000,
    "30m": 30 * 60_000,
    "1h": 3_600_000,
    "2h": 2 * 3_600_000,
    "4h": 4 * 3_600_000,
    "6h": 6 * 3_600_000,
    "8h": 8 * 3_600_000,
    "12h": 12 * 3_600_000,
    "1d": 86_400_000,
    "3d": 3 * 86_400_000,
    "1w": 7 * 86_400_000,
}
"""Binance's fixed-length kline intervals. Monthly bars (``1M``/``1mo``) vary in length and are not replayable."""

COLUMNS: tuple[str, ...] = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)
"""The archive's column names; the futures archive's optional header line carries exactly these."""

_MICROSECONDS = 10**14
"""An epoch-ms value this large is year 5138: the field is in microseconds (Binance spot archives from 2025)."""

_FILE_NAME = re.compile(
    r"^(?P<symbol>[A-Z0-9]+)-(?P<interval>[0-9]+[a-zA-Z]+)-"
    r"\d{4}-\d{2}(?:-\d{2})?(?:_\d{4}-\d{2}(?:-\d{2})?)?\.(?:csv|zip)$"
)


@dataclass(frozen=True, slots=True)
class Kline:
    """One bar. ``symbol``, ``interval`` and ``source`` are not columns: the reader fills them from the file."""

    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    close_time: int
    quote_volume: float
    trades: int
    taker_buy_volume: float
    taker_buy_quote_volume: float
    symbol: str = ""
    interval: str = ""
    source: str = ""
    """Where the bar came from: ``replay:<file name>`` or ``synthetic:<seed>``; ticks inherit it."""

    def to_row(self) -> list[str]:
        """The 12 archive columns as text, numbers in their shortest exact decimal form."""
        return [
            str(self.open_time),
            format_number(self.open),
            format_number(self.high),
            format_number(self.low),
            format_number(self.close),
            format_number(self.volume),
            str(self.close_time),
            format_number(self.quote_volume),
            str(self.trades),
            format_number(self.taker_buy_volume),
            format_number(self.taker_buy_quote_volume),
            "0",
        ]


def interval_ms(interval: str) -> int:
    """Length of a Binance kline interval in milliseconds; a ``DataError`` names the valid ones."""
    try:
        return INTERVALS[interval]
    except KeyError:
        if interval in ("1M", "1mo"):
            raise DataError(f"interval {interval!r} has no fixed length; use one of {', '.join(INTERVALS)}") from None
        raise DataError(f"unknown interval {interval!r}; use one of {', '.join(INTERVALS)}") from None


def parse_kline_filename(name: str | Path) -> tuple[str, str]:
    """``(symbol, interval)`` from names like ``BTCUSDT-1m-2025-05-05_2025-06-23.csv`` or ``BTCUSDT-1h-2024-01.csv``.

    The file name is the only place a kline file records what it holds, so a name that does not
    follow the archive's pattern is refused rather than guessed.
    """
    base = Path(name).name
    match = _FILE_NAME.match(base)
    if match is None:
        raise DataError(
            f"cannot tell symbol and interval from file name {base!r}; "
            "expected <SYMBOL>-<interval>-<YYYY-MM[-DD]>[_<YYYY-MM[-DD]>].csv, e.g. BTCUSDT-1h-2024-01.csv"
        )
    interval_ms(match["interval"])
    return match["symbol"], match["interval"]


def kline_file_name(symbol: str, interval: str, first_open_ms: int, last_open_ms: int) -> str:
    """The name the shared files use: ``<SYMBOL>-<interval>-<first bar date>_<last bar date>.csv`` (UTC)."""
    first = datetime.fromtimestamp(first_open_ms / 1000, UTC).strftime("%Y-%m-%d")
    last = datetime.fromtimestamp(last_open_ms / 1000, UTC).strftime("%Y-%m-%d")
    return f"{symbol}-{interval}-{first}_{last}.csv"


def format_number(value: float) -> str:
    """Shortest decimal text that reads back as the same float, never in exponent form (``94220``, ``0.00001``)."""
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text


def is_header(fields: list[str]) -> bool:
    """The futures archive's first line names the columns; spot archives and the shared files have none."""
    return fields[0].strip().lower() == COLUMNS[0]


def parse_kline_lines(lines: Iterable[str], *, origin: str, symbol: str, interval: str, source: str) -> Iterator[Kline]:
    """Validated klines from CSV lines; ``origin`` (a file name) prefixes every error with the line number."""
    step = interval_ms(interval)
    previous_open: int | None = None
    for line_no, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split(",")
        if line_no == 1 and is_header(fields):
            continue
        kline = _parse_fields(fields, origin, line_no, symbol, interval, source, step)
        if previous_open is not None and kline.open_time <= previous_open:
            raise KlineFormatError(
                origin, line_no, f"open_time {kline.open_time} is not after the previous bar's {previous_open}"
            )
        previous_open = kline.open_time
        yield kline


def _parse_fields(
    fields: list[str], origin: str, line_no: int, symbol: str, interval: str, source: str, step: int
) -> Kline:
    if len(fields) != len(COLUMNS):
        raise KlineFormatError(origin, line_no, f"expected {len(COLUMNS)} comma-separated columns, got {len(fields)}")

    def integer(index: int) -> int:
        text = fields[index].strip()
        try:
            value = int(text)
        except ValueError:
            raise KlineFormatError(origin, line_no, f"{COLUMNS[index]} {text!r} is not an integer") from None
        if value < 0:
            raise KlineFormatError(origin, line_no, f"{COLUMNS[index]} {value} is negative")
        return value

    def number(index: int) -> float:
        text = fields[index].strip()
        try:
            value = float(text)
        except ValueError:
            raise KlineFormatError(origin, line_no, f"{COLUMNS[index]} {text!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise KlineFormatError(origin, line_no, f"{COLUMNS[index]} {text!r} must be finite and not negative")
        return value

    open_time, close_time = integer(0), integer(6)
    if open_time >= _MICROSECONDS:
        raise KlineFormatError(
            origin, line_no, f"open_time {open_time} looks like microseconds; kline files must use epoch milliseconds"
        )
    if close_time != open_time + step - 1:
        raise KlineFormatError(
            origin, line_no, f"close_time {close_time} is not open_time + {interval} - 1 ms ({open_time + step - 1})"
        )
    kline = Kline(
        open_time=open_time,
        open=number(1),
        high=number(2),
        low=number(3),
        close=number(4),
        volume=number(5),
        close_time=close_time,
        quote_volume=number(7),
        trades=integer(8),
        taker_buy_volume=number(9),
        taker_buy_quote_volume=number(10),
        symbol=symbol,
        interval=interval,
        source=source,
    )
    if kline.low <= 0:
        raise KlineFormatError(origin, line_no, f"low {kline.low} must be above 0")
    if not kline.low <= min(kline.open, kline.close) <= max(kline.open, kline.close) <= kline.high:
        raise KlineFormatError(
            origin,
            line_no,
            f"prices out of order: need low <= open, close <= high, got "
            f"open {kline.open} high {kline.high} low {kline.low} close {kline.close}",
        )
    return kline


def read_klines(path: str | Path, *, symbol: str | None = None, interval: str | None = None) -> Iterator[Kline]:
    """Every bar of a kline file in file order, validated; lazily, so 72,000 bars need no list.

    Symbol and interval come from the file name unless given (then they must agree with it when the
    name follows the pattern). Missing files and unusable names fail here, before iteration starts.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"kline file {file} does not exist")
    named_symbol: str | None = None
    named_interval: str | None = None
    try:
        named_symbol, named_interval = parse_kline_filename(file.name)
    except DataError:
        if symbol is None or interval is None:
            raise
    for given, named, what in ((symbol, named_symbol, "symbol"), (interval, named_interval, "interval")):
        if given is not None and named is not None and given != named:
            raise DataError(f"{file.name}: {what} {given!r} given but the file name says {named!r}")
    final_symbol = symbol or named_symbol
    final_interval = interval or named_interval
    assert final_symbol is not None and final_interval is not None
    interval_ms(final_interval)
    return _read(file, final_symbol, final_interval)


def _read(file: Path, symbol: str, interval: str) -> Iterator[Kline]:
    with file.open(encoding="utf-8", newline="") as handle:
        yield from parse_kline_lines(
            handle, origin=str(file), symbol=symbol, interval=interval, source=f"replay:{file.name}"
        )


def write_klines(path: str | Path, rows: Iterable[Kline]) -> int:
    """Write bars in the archive layout (no header) and return how many.

    The file appears only when complete, and only if it would read back: bars of one symbol and
    interval, in strictly increasing open_time. Anything else raises ``DataError`` and writes nothing.
    """
    file = Path(path)
    count = 0
    first: Kline | None = None
    previous: Kline | None = None
    with atomic_writer(file) as handle:
        for kline in rows:
            if first is None:
                first = kline
            elif (kline.symbol, kline.interval) != (first.symbol, first.interval):
                raise DataError(
                    f"{file.name}: one file holds one symbol and interval; got {kline.symbol} {kline.interval} "
                    f"after {first.symbol} {first.interval}"
                )
            if previous is not None and kline.open_time <= previous.open_time:
                raise DataError(
                    f"{file.name}: bars must be in strictly increasing open_time; "
                    f"{kline.open_time} follows {previous.open_time}"
                )
            handle.write(",".join(kline.to_row()) + "\n")
            previous = kline
            count += 1
    return count


def merge_by_time(iterables: Iterable[Iterable[Kline]]) -> Iterator[Kline]:
    """Bars of several symbols in the order the market finished them: by close_time, then symbol.

    A bar is only known at its close, and replay emits its tick then, so close_time is the causal
    order; for files of one interval it is the same as open_time order. Ties go to the symbol name,
    never to input order, so the same files always give the same sequence (DESIGN §4.9).
    """
    return heapq.merge(*iterables, key=lambda k: (k.close_time, k.symbol, k.open_time))
