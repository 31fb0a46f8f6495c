"""Binance's request authentication, as the simulator enforces it.

Why the simulator checks signatures at all: paper mode must exercise the same code path as
live — a client that signs wrongly, sends a stale timestamp or the wrong key must fail here the
way it would fail at Binance (-1022, -1021, -2015), not first in production.

Signed payload (Binance SIGNED endpoints): ``totalParams`` = the query string followed by the
request body, without the ``signature`` parameter; HMAC-SHA256 with the API secret, hex.
python-binance signs ``key=value`` pairs with values unencoded (except ``symbol``) while
``requests`` form-encodes a POST body, so the decoded form of the payload is accepted as well.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qsl, unquote_plus

from quantum_trader.exchange.simulator.engine import SimRejection

DEFAULT_RECV_WINDOW = 5000
MAX_RECV_WINDOW = 60_000
FUTURE_TOLERANCE_MS = 1000


class HttpRejection(SimRejection):
    """A rejection with the HTTP status Binance answers it with."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(code, message)
        self.status = status


def mandatory(name: str) -> HttpRejection:
    return HttpRejection(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def parse_params(raw_query: str, raw_body: str) -> dict[str, str]:
    """Query and form body parameters together; a parameter sent twice is refused (-1101)."""
    params: dict[str, str] = {}
    for part in (raw_query, raw_body):
        for key, value in parse_qsl(part, keep_blank_values=True):
            if key in params:
                raise HttpRejection(400, -1101, f"Duplicate values for parameter '{key}'.")
            params[key] = value
    return params


def _without_signature(raw: str) -> tuple[str, str | None]:
    kept, signature = [], None
    for piece in raw.split("&") if raw else ():
        if piece.startswith("signature="):
            signature = unquote_plus(piece.removeprefix("signature="))
        else:
            kept.append(piece)
    return "&".join(kept), signature


def verify_signed(
    raw_query: str,
    raw_body: str,
    api_key: str | None,
    credentials: Mapping[str, str],
    now_ms: int,
    params: dict[str, str] | None = None,
) -> dict[str, str]:
    """Check API key, signature and timestamp of a SIGNED request; returns its parameters.

    ``params``: the request's parameters as :func:`parse_params` already read them (the order route
    reads them first, to log even a refused order); None reads them here. Raises
    :class:`HttpRejection`: -2014/-2015 (401) for a missing or unknown key, -1022 (400) for a wrong
    signature, -1021 (400) for a timestamp outside ``recvWindow``.
    """
    if not api_key:
        raise HttpRejection(401, -2014, "API-key format invalid.")
    secret = credentials.get(api_key)
    if secret is None:
        raise HttpRejection(401, -2015, "Invalid API-key, IP, or permissions for action.")
    if params is None:
        params = parse_params(raw_query, raw_body)
    query, query_signature = _without_signature(raw_query)
    body, body_signature = _without_signature(raw_body)
    signature = body_signature or query_signature
    if not signature:
        raise mandatory("signature")
    payload = query + body
    decoded = unquote_plus(payload)
    # python-binance signs a GET's query as sent, a POST's body before requests form-encodes it
    candidates = (payload,) if decoded == payload else (payload, decoded)
    key = secret.encode("utf-8")
    wanted = signature.lower()
    if not any(
        hmac.compare_digest(hmac.new(key, c.encode("utf-8"), hashlib.sha256).hexdigest(), wanted) for c in candidates
    ):
        raise HttpRejection(400, -1022, "Signature for this request is not valid.")
    check_timestamp(params, now_ms)
    params.pop("signature", None)
    return params


def check_timestamp(params: Mapping[str, str], now_ms: int) -> None:
    """Binance's rule: ``timestamp < serverTime + 1000`` and ``serverTime - timestamp <= recvWindow``."""
    raw = params.get("timestamp", "")
    if not raw.isdigit():
        raise mandatory("timestamp")
    window_raw = params.get("recvWindow", str(DEFAULT_RECV_WINDOW))
    if not window_raw.isdigit():
        raise mandatory("recvWindow")
    window = int(window_raw)
    if window > MAX_RECV_WINDOW:
        raise HttpRejection(400, -1131, f"recvWindow must be less than {MAX_RECV_WINDOW}.")
    stamp = int(raw)
    if not (stamp < now_ms + FUTURE_TOLERANCE_MS and now_ms - stamp <= window):
        raise HttpRejection(400, -1021, "Timestamp for this request is outside of the recvWindow.")
