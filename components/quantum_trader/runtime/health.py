"""``/healthz`` (loop alive) and ``/readyz`` (Redis reachable, groups exist, model loaded) on QT_HEALTH_PORT."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Check = Callable[[], tuple[bool, str]]


class HealthServer:
    def __init__(self, port: int, alive: Check, ready: Check, host: str = "0.0.0.0") -> None:
        checks = {"/healthz": alive, "/readyz": ready}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                check = checks.get(self.path.split("?")[0])
                if check is None:
                    self.send_error(404)
                    return
                try:
                    ok, detail = check()
                except Exception as error:  # a failing check is an unhealthy answer, not a crash
                    ok, detail = False, f"{type(error).__name__}: {error}"
                body = json.dumps({"ok": ok, "detail": detail}).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
