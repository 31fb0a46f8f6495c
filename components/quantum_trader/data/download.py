"""``qt data download``: Binance's public USDⓈ-M futures kline archive, month by month, into one file.

data.binance.vision publishes one zip per symbol, interval and month, with a ``.CHECKSUM`` beside
it. Each month is fetched once, checked against its sha256, and kept in an archive folder, so a
longer range later only fetches the months it lacks. The months are then validated as klines and
concatenated, values copied as published (only the futures archive's header line is dropped),
into a file named like the shared ones: ``<SYMBOL>-<interval>-<first day>_<last day>.csv``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from quantum_trader.contracts.messages import SYMBOL_PATTERN
from quantum_trader.data.cache import atomic_writer, default_data_dir
from quantum_trader.data.errors import DataError
from quantum_trader.data.klines import interval_ms, is_header, kline_file_name, parse_kline_lines

BINANCE_FUTURES_MONTHLY = "https://data.binance.vision/data/futures/um/monthly/klines"
DOWNLOAD_TIMEOUT_SECONDS = 60.0

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def month_range(start: str, end: str) -> list[str]:
    """Every ``YYYY-MM`` from ``start`` to ``end``, both included."""
    first, last = _month(start, "start"), _month(end, "end")
    if first > last:
        raise DataError(f"start {start} is after end {end}")
    return [f"{m // 12:04d}-{m % 12 + 1:02d}" for m in range(first, last + 1)]


def archive_url(base_url: str, symbol: str, interval: str, month: str) -> str:
    """``<base>/<SYMBOL>/<interval>/<SYMBOL>-<interval>-<YYYY-MM>.zip``, the archive's layout."""
    return f"{base_url.rstrip('/')}/{symbol}/{interval}/{symbol}-{interval}-{month}.zip"


def download_klines(
    symbol: str,
    *,
    interval: str = "1h",
    start: str,
    end: str,
    out_dir: str | Path | None = None,
    base_url: str = BINANCE_FUTURES_MONTHLY,
    timeout: float = DOWNLOAD_TIMEOUT_SECONDS,
    verify_checksum: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Fetch the months ``start``..``end`` (``YYYY-MM``) of ``symbol`` and return the combined kline file.

    Zips go to ``<out_dir>/archive/<SYMBOL>/<interval>/`` and are reused on later calls; the
    combined file goes to ``out_dir`` (default ``$QT_DATA_DIR`` or ``~/.cache/quantum-trader/data``).
    ``log`` receives one line per month (downloaded or cached).
    """
    symbol = symbol.strip().upper()
    if not SYMBOL_PATTERN.fullmatch(symbol):
        raise DataError(f"symbol {symbol!r} must be 2-20 ASCII letters and digits, like BTCUSDT")
    interval_ms(interval)
    months = month_range(start, end)
    directory = Path(out_dir).expanduser() if out_dir is not None else default_data_dir()
    archive_dir = directory / "archive" / symbol / interval
    zips = []
    for month in months:
        url = archive_url(base_url, symbol, interval, month)
        target = archive_dir / url.rsplit("/", 1)[1]
        if target.is_file():
            _say(log, f"{symbol} {interval} {month}: cached")
        else:
            _fetch_month(url, target, timeout=timeout, verify_checksum=verify_checksum)
            _say(log, f"{symbol} {interval} {month}: downloaded")
        zips.append(target)
    lines, first_open, last_open = _combine(zips, symbol, interval)
    path = directory / kline_file_name(symbol, interval, first_open, last_open)
    with atomic_writer(path) as handle:
        for line in lines:
            handle.write(line + "\n")
    return path


def _fetch_month(url: str, target: Path, *, timeout: float, verify_checksum: bool) -> None:
    expected = None
    if verify_checksum:
        checksum_text = _get(url + ".CHECKSUM", timeout).decode("ascii", "replace").split()
        if not checksum_text or not re.fullmatch(r"[0-9a-fA-F]{64}", checksum_text[0]):
            raise DataError(f"{url}.CHECKSUM does not start with a sha256")
        expected = checksum_text[0].lower()
    data = _get(url, timeout)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise DataError(f"{url}: sha256 does not match its .CHECKSUM; download it again")
    with atomic_writer(target, "wb") as handle:
        handle.write(data)


def _get(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "quantum-trader"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        if error.code == 404:
            raise DataError(
                f"{url} is not in the archive (404): the month may not be published yet, "
                "or the symbol did not trade as a USDⓈ-M future then"
            ) from None
        raise DataError(f"{url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise DataError(f"cannot reach {url}: {error.reason}") from None
    except TimeoutError:
        raise DataError(f"{url}: no answer within {timeout:.0f} s") from None


def _combine(zips: Iterable[Path], symbol: str, interval: str) -> tuple[list[str], int, int]:
    """Validated data lines of all months in order (headers dropped) and the first and last open_time."""
    lines: list[str] = []
    first_open: int | None = None
    last_open: int | None = None
    for zip_path in zips:
        member, text = _read_zip(zip_path)
        raw = text.splitlines()
        origin = f"{zip_path.name}:{member}"
        klines = list(parse_kline_lines(raw, origin=origin, symbol=symbol, interval=interval, source=""))
        data = [line.strip() for line in raw if line.strip()]
        if data and is_header(data[0].split(",")):
            data = data[1:]
        if not klines:
            raise DataError(f"{origin} has no bars")
        assert len(data) == len(klines), f"{origin}: {len(data)} lines for {len(klines)} bars"
        if last_open is not None and klines[0].open_time <= last_open:
            raise DataError(f"{origin} starts at {klines[0].open_time}, not after the previous month's last bar")
        first_open = klines[0].open_time if first_open is None else first_open
        last_open = klines[-1].open_time
        lines.extend(data)
    if first_open is None or last_open is None:
        raise DataError("no months to combine")
    return lines, first_open, last_open


def _read_zip(path: Path) -> tuple[str, str]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if n.endswith(".csv")]
            if len(members) != 1:
                raise DataError(f"{path.name} holds {len(members)} CSV files, expected 1")
            return members[0], archive.read(members[0]).decode("utf-8")
    except zipfile.BadZipFile:
        broken = path.with_suffix(".zip.bad")
        shutil.move(path, broken)
        raise DataError(f"{path.name} is not a valid zip (moved to {broken.name}); run the download again") from None


def _month(text: str, what: str) -> int:
    match = _MONTH.match(text.strip())
    if match is None:
        raise DataError(f"{what} {text!r} must be a month like 2024-01")
    return int(match[1]) * 12 + int(match[2]) - 1


def _say(log: Callable[[str], None] | None, line: str) -> None:
    if log is not None:
        log(line)
