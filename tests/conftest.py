"""Shared fixtures: a real redis-server per test session, a clean instance per test, the shared klines."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

REPO = Path(__file__).resolve().parent.parent
SHARED_KLINES = Path(os.environ.get("QT_SHARED_KLINES", REPO.parent / "shared" / "data" / "klines"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        pytest.fail("redis-server is not installed: `make test` installs it (apt-get install redis-server)")
    return found


def start_redis_server(workdir: Path, *, password: str | None = None) -> tuple[subprocess.Popen, str]:
    """A real redis-server on a free loopback port, answering (with ``password``: only after AUTH); returns the
    process (the caller terminates it) and its URL, which never holds the password."""
    port = free_port()
    auth = ["--requirepass", password] if password is not None else []
    process = subprocess.Popen(
        [_redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--maxclients", "2000", *auth],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, password=password)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    client.close()
    return process, url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port for the whole test session; yields its URL."""
    process, url = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    return redis_server


@pytest.fixture
def instance() -> str:
    """A fresh instance id per test: keys of different tests never meet."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def r(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def shared_klines() -> Path:
    if not SHARED_KLINES.is_dir():
        pytest.skip(f"real klines not found at {SHARED_KLINES} (the project's shared/ folder is absent)")
    return SHARED_KLINES
