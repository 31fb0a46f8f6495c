"""Binance SIGNED request building, exactly as python-binance 1.0.37 does it. Pure.

Why our own copy of the rule: the order path sends its requests without python-binance/requests
(see :mod:`quantum_trader.exchange.transport`), and the exchange must see byte-for-byte what
python-binance would have sent — the same parameters in the same order, the same signature. The
unit tests compare every function here with python-binance's own ``_get_request_kwargs`` for the
same inputs.

python-binance's rule (``BaseClient._order_params``, ``_generate_signature``):
- parameters whose value is None are dropped; the others become ``str(value)``;
- ``timestamp`` (ms, with the client's offset) and, when set, ``recvWindow`` are added;
- the pairs are sorted by name;
- the signed payload is ``name=value`` joined by ``&``, every value as is except ``symbol``, which
  is percent-quoted; the signature is the hex HMAC-SHA256 of that payload under the API secret,
  appended last;
- a GET sends the same text as its query string; a POST sends the pairs form-encoded as its body
  (what requests does with a list of pairs), so its values are ``quote_plus``-encoded on the wire;
- ``batchOrders`` (``futures_place_batch_order``) is the exception: the list is encoded first (its
  Python ``str`` with double quotes, ``quote_plus``-encoded), signed in that form, and the body is
  the signed text as is.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from urllib.parse import quote, quote_plus, urlencode

Pairs = list[tuple[str, str]]


def _payload(pairs: Sequence[tuple[str, str]]) -> str:
    return "&".join(f"{name}={quote(value) if name == 'symbol' else value}" for name, value in pairs)


def signature(payload: str, secret: str) -> str:
    """The hex HMAC-SHA256 of ``payload`` under ``secret`` (hex needs no URI encoding)."""
    return hmac.new(secret.encode("utf-8"), payload.encode("utf-8"), hashlib.sha256).hexdigest()


def signed_pairs(params: Mapping[str, object], secret: str, timestamp_ms: int, recv_window: int | None) -> Pairs:
    """The request's parameters as python-binance sends them: sorted, with timestamp, recvWindow and
    the signature last."""
    data = {name: value for name, value in params.items() if value is not None}
    data["timestamp"] = int(timestamp_ms)
    if recv_window:
        data["recvWindow"] = int(recv_window)
    pairs = sorted(((name, str(value)) for name, value in data.items()), key=lambda pair: pair[0])
    pairs.append(("signature", signature(_payload(pairs), secret)))
    return pairs


def query_string(pairs: Sequence[tuple[str, str]]) -> str:
    """A GET's query string for ``pairs`` (python-binance joins them itself, ``symbol`` quoted)."""
    return _payload(pairs)


def form_body(pairs: Sequence[tuple[str, str]]) -> str:
    """A POST's body for ``pairs``: form-encoded, as requests encodes a list of pairs."""
    return urlencode(list(pairs), doseq=True)


def batch_orders_value(orders: Sequence[Mapping[str, str]]) -> str:
    """The ``batchOrders`` parameter as python-binance encodes it before signing (string values only)."""
    return quote_plus(str([dict(order) for order in orders])).replace("%27", "%22")


def batch_orders_body(
    orders: Sequence[Mapping[str, str]], secret: str, timestamp_ms: int, recv_window: int | None
) -> str:
    """The body of ``POST /fapi/v1/batchOrders`` for ``orders``, byte for byte python-binance's."""
    return _payload(signed_pairs({"batchOrders": batch_orders_value(orders)}, secret, timestamp_ms, recv_window))
