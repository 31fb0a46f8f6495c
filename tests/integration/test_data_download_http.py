"""``download_klines`` against a local http.server laid out like data.binance.vision (never the internet)."""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import threading
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from quantum_trader.data.download import download_klines
from quantum_trader.data.errors import DataError, KlineFormatError
from quantum_trader.data.klines import COLUMNS, read_klines
from quantum_trader.data.synthetic import synthetic_klines

SYMBOL = "TESTUSDT"
PREFIX = "data/futures/um/monthly/klines"


class Archive:
    """A folder served over HTTP in the archive's layout, recording every path requested."""

    def __init__(self, root: Path, url: str, requests: list[str]) -> None:
        self.root = root
        self.base_url = f"{url}/{PREFIX}"
        self.requests = requests
        self.rows: dict[str, list[str]] = {}

    def add_month(self, month: str, *, header: bool, checksum: str | None = None, extra: str = "") -> None:
        year, number = map(int, month.split("-"))
        start = datetime(year, number, 1, tzinfo=UTC)
        end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
        hours = int((end - start).total_seconds() // 3600)
        klines = synthetic_klines(
            SYMBOL,
            seed=number,
            bars=hours,
            interval="1h",
            start_time_ms=int(start.timestamp() * 1000),
            start_price=100.0 + number,
        )
        rows = [",".join(k.to_row()) for k in klines]
        self.rows[month] = rows
        text = (",".join(COLUMNS) + "\n" if header else "") + "\n".join(rows) + "\n" + extra
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"{SYMBOL}-1h-{month}.csv", text)
        data = buffer.getvalue()
        folder = self.root / PREFIX / SYMBOL / "1h"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{SYMBOL}-1h-{month}.zip"
        (folder / name).write_bytes(data)
        digest = checksum or hashlib.sha256(data).hexdigest()
        (folder / f"{name}.CHECKSUM").write_text(f"{digest}  {name}\n")


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Archive(root, f"http://127.0.0.1:{server.server_address[1]}", requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_months_are_fetched_verified_and_concatenated(tmp_path: Path, archive: Archive) -> None:
    archive.add_month("2024-01", header=True)
    archive.add_month("2024-02", header=False)
    archive.add_month("2024-03", header=True)
    dest = tmp_path / "data"
    log: list[str] = []
    path = download_klines(
        SYMBOL, interval="1h", start="2024-01", end="2024-03", out_dir=dest, base_url=archive.base_url, log=log.append
    )
    assert path == dest / f"{SYMBOL}-1h-2024-01-01_2024-03-31.csv"
    expected = archive.rows["2024-01"] + archive.rows["2024-02"] + archive.rows["2024-03"]
    assert path.read_text().splitlines() == expected  # values as published, headers dropped
    klines = list(read_klines(path))
    assert len(klines) == (31 + 29 + 31) * 24
    assert all(b.open_time - a.open_time == 3_600_000 for a, b in itertools.pairwise(klines))
    assert log == [f"{SYMBOL} 1h 2024-0{m}: downloaded" for m in (1, 2, 3)]
    assert len(archive.requests) == 6  # three zips, three checksums

    archive.add_month("2024-04", header=True)
    archive.requests.clear()
    log.clear()
    longer = download_klines(
        SYMBOL, start="2024-01", end="2024-04", out_dir=dest, base_url=archive.base_url, log=log.append
    )
    assert longer.name == f"{SYMBOL}-1h-2024-01-01_2024-04-30.csv"
    assert archive.requests == [
        f"/{PREFIX}/{SYMBOL}/1h/{SYMBOL}-1h-2024-04.zip.CHECKSUM",
        f"/{PREFIX}/{SYMBOL}/1h/{SYMBOL}-1h-2024-04.zip",
    ]
    assert log[:3] == [f"{SYMBOL} 1h 2024-0{m}: cached" for m in (1, 2, 3)]
    assert len(list(read_klines(longer))) == (31 + 29 + 31 + 30) * 24


def test_a_missing_month_says_404(tmp_path: Path, archive: Archive) -> None:
    archive.add_month("2024-01", header=True)
    with pytest.raises(DataError, match=r"TESTUSDT-1h-2024-02\.zip\.CHECKSUM is not in the archive \(404\)"):
        download_klines(SYMBOL, start="2024-01", end="2024-02", out_dir=tmp_path / "d", base_url=archive.base_url)
    with pytest.raises(DataError, match=r"TESTUSDT-1h-2024-02\.zip is not in the archive \(404\)"):
        download_klines(
            SYMBOL,
            start="2024-02",
            end="2024-02",
            out_dir=tmp_path / "d",
            base_url=archive.base_url,
            verify_checksum=False,
        )


def test_a_checksum_mismatch_caches_nothing(tmp_path: Path, archive: Archive) -> None:
    archive.add_month("2024-01", header=True, checksum="ab" * 32)
    dest = tmp_path / "d"
    with pytest.raises(DataError, match=r"sha256 does not match its \.CHECKSUM"):
        download_klines(SYMBOL, start="2024-01", end="2024-01", out_dir=dest, base_url=archive.base_url)
    assert [p for p in dest.rglob("*") if p.is_file()] == []


def test_a_bad_row_in_a_month_names_zip_member_and_line(tmp_path: Path, archive: Archive) -> None:
    archive.add_month("2024-01", header=True, extra="1706745600000,1,2,3\n")
    with pytest.raises(KlineFormatError) as caught:
        download_klines(SYMBOL, start="2024-01", end="2024-01", out_dir=tmp_path / "d", base_url=archive.base_url)
    assert str(caught.value).startswith(f"{SYMBOL}-1h-2024-01.zip:{SYMBOL}-1h-2024-01.csv:746: expected 12")
