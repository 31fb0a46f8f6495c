"""Signed requests on a kept-alive connection, without requests: the order path's HTTP.

Why: python-binance's ``Client._request`` costs most of apply-layer's CPU per order — requests'
``Session.prepare_request`` (setting merges, hooks, cookie jar), ``HTTPAdapter.send`` and urllib3's
pool, for one request to one host that never changes. This sends the same bytes (the parameters,
signature and headers python-binance sends; :mod:`quantum_trader.exchange.signing`) with
``http.client`` on one connection per thread, and maps the answer exactly as
``ExchangeClient._call`` maps python-binance's exceptions:

- a non-2xx answer: Binance's ``code`` and ``msg`` from its JSON (no JSON: code 0, python-binance's
  ``Invalid JSON error message from Binance: <text>``), through :func:`errors.answer_error`;
- an empty 2xx answer is ``{}``; a 2xx answer that is not JSON is -1000 with unknown outcome;
- no answer within the timeout (connect or read): -1007, unknown outcome;
- a refused, reset or dropped connection, or a malformed HTTP answer: -1001, unknown outcome.

A kept connection the server closed while idle is found before it is used (its socket reads as
ready: urllib3 does the same check) and opened again; a request is never sent twice — a connection
lost during a request is -1001 and the caller looks the order up, as with requests.
"""

from __future__ import annotations

import http.client
import json
import select
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from quantum_trader.exchange.errors import answer_error, disconnected_error, timeout_error, unreadable_error
from quantum_trader.exchange.signing import batch_orders_body, form_body, query_string, signed_pairs

USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/56.0.2924.87 Safari/537.36"
"""python-binance's session header, so the exchange sees the same client either way"""
FORM = "application/x-www-form-urlencoded"


class SignedTransport:
    """SIGNED requests to one base URL (say ``https://fapi.binance.com/fapi``), one connection per thread.

    ``offset_ms`` gives the client's timestamp offset (after a ``sync_time``), read per request.
    ``verify`` is requests' ``verify`` setting: True, False or a CA bundle path.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        api_secret: str,
        *,
        timeout: float,
        recv_window: int | None,
        offset_ms: Callable[[], int],
        verify: bool | str = True,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._secret = api_secret
        self._timeout = float(timeout)
        self._recv_window = recv_window
        self._offset_ms = offset_ms
        self._context = self._ssl_context(verify) if self._https else None
        self._headers = {"Accept": "application/json", "User-Agent": USER_AGENT, "X-MBX-APIKEY": api_key}
        self._local = threading.local()
        self._count_lock = threading.Lock()
        self.requests = 0
        """requests attempted (all threads)"""

    def __repr__(self) -> str:  # never the key or secret
        scheme = "https" if self._https else "http"
        return f"SignedTransport({scheme}://{self._host}:{self._port}{self._prefix}, timeout={self._timeout})"

    @staticmethod
    def _ssl_context(verify: bool | str) -> ssl.SSLContext:
        if verify is False:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        if isinstance(verify, str):
            return ssl.create_default_context(cafile=verify)
        import certifi  # what requests verifies against by default

        return ssl.create_default_context(cafile=certifi.where())

    # ---- requests ----------------------------------------------------------------------------

    def call(self, method: str, path: str, params: Mapping[str, object]) -> Any:
        """``GET`` or ``POST`` ``path`` (under the base URL, say ``/v1/order``), signed; the decoded answer.

        Raises :class:`~quantum_trader.exchange.errors.ExchangeError` as described in the module doc.
        """
        pairs = signed_pairs(params, self._secret, self._timestamp(), self._recv_window)
        if method == "POST":
            return self._send("POST", self._prefix + path, form_body(pairs))
        return self._send(method, f"{self._prefix}{path}?{query_string(pairs)}", None)

    def batch_orders(self, orders: Sequence[Mapping[str, str]]) -> Any:
        """``POST /v1/batchOrders`` with ``orders`` (string values), signed as python-binance signs it."""
        body = batch_orders_body(orders, self._secret, self._timestamp(), self._recv_window)
        return self._send("POST", self._prefix + "/v1/batchOrders", body)

    def _timestamp(self) -> int:
        return int(time.time() * 1000 + self._offset_ms())

    def _send(self, method: str, url: str, body: str | None) -> Any:
        headers = dict(self._headers)
        # python-binance's: a form for POST, its session's default for the others
        headers["Content-Type"] = FORM if method == "POST" else "application/json"
        with self._count_lock:
            self.requests += 1
        connection = self._connection()
        try:
            connection.request(method, url, body=body, headers=headers)
            answer = connection.getresponse()
            status = answer.status
            text = answer.read().decode("utf-8", errors="replace")
        except TimeoutError:
            self._drop()
            raise timeout_error(self._timeout) from None
        except (OSError, http.client.HTTPException) as error:
            self._drop()
            raise disconnected_error(type(error).__name__) from None
        if answer.will_close:
            self._drop()
        return decode_answer(status, text)

    def close(self) -> None:
        """Close this thread's connection (other threads' close when their thread ends)."""
        self._drop()

    # ---- the kept connection -----------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is not None and _dropped(connection):
            self._drop()
            connection = None
        if connection is None:
            if self._https:
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._context
                )
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.connection = connection
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            connection.close()


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """An idle kept connection whose socket is readable was closed by the server (or is out of step)."""
    sock = connection.sock
    if sock is None:
        return False  # not connected yet: request() connects
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def decode_answer(status: int, text: str) -> Any:
    """An answer's status and text as python-binance's ``_handle_response`` reads them, mapped to our errors."""
    if not 200 <= status < 300:
        try:
            body = json.loads(text)
        except ValueError:
            raise answer_error(status, 0, f"Invalid JSON error message from Binance: {text}") from None
        code, message = (body.get("code"), body.get("msg")) if isinstance(body, dict) else (0, None)
        raise answer_error(status, int(code or 0), str(message or ""))
    if text == "":
        return {}
    try:
        return json.loads(text)
    except ValueError:
        raise unreadable_error(f"Invalid Response: {text}") from None
