"""Errors of the exchange layer, independent of python-binance's exception classes.

Why our own: callers (apply-layer, reconciler) decide to retry, reject or query on two facts —
is it worth retrying, and might the request have taken effect anyway — and must not import
python-binance or requests to find out.
"""

from __future__ import annotations

# Binance codes that mean "try again later" rather than "this request is wrong".
DISCONNECTED = -1001
TOO_MANY_REQUESTS = -1003
TIMEOUT = -1007
SERVER_BUSY = -1008
UNKNOWN = -1000
RETRYABLE_CODES = frozenset({UNKNOWN, DISCONNECTED, TOO_MANY_REQUESTS, TIMEOUT, SERVER_BUSY})

ORDER_DOES_NOT_EXIST = -2013
INVALID_SYMBOL = -1121
INVALID_SIGNATURE = -1022
TIMESTAMP_OUTSIDE_RECV_WINDOW = -1021
DUPLICATE_CLIENT_ORDER_ID = -4116


class ExchangeError(Exception):
    """A request the exchange refused or did not answer.

    ``code`` is Binance's error code (timeouts -1007, connection failures -1001);
    ``retryable`` says the same request may succeed later; ``unknown_outcome`` says the
    request may have been executed although no answer said so (timeouts, connection drops,
    5xx) — an order must then be looked up by its client order id before any resubmission.
    """

    def __init__(
        self,
        code: int,
        message: str,
        *,
        retryable: bool,
        unknown_outcome: bool = False,
        http_status: int | None = None,
    ) -> None:
        super().__init__(f"exchange error {code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.unknown_outcome = unknown_outcome
        self.http_status = http_status

    def __repr__(self) -> str:
        return (
            f"ExchangeError(code={self.code}, message={self.message!r}, retryable={self.retryable}, "
            f"unknown_outcome={self.unknown_outcome}, http_status={self.http_status})"
        )


def answer_error(status: int, code: int, message: str) -> ExchangeError:
    """An HTTP error answer as an :class:`ExchangeError`: 5xx, 429 and Binance's transient codes are
    retryable; a 5xx or a -1007 may have been executed. ``code`` 0 (no Binance code) is -1000."""
    code = code or UNKNOWN
    server_side = status >= 500
    return ExchangeError(
        code,
        message or f"HTTP {status}",
        retryable=server_side or status == 429 or code in RETRYABLE_CODES,
        unknown_outcome=server_side or code == TIMEOUT,
        http_status=status,
    )


def outcome_unknown_error(code: int, message: str) -> ExchangeError:
    """A request whose effect is unknown: worth retrying, but an order is looked up before it is resent."""
    return ExchangeError(code, message, retryable=True, unknown_outcome=True)


def timeout_error(timeout: float) -> ExchangeError:
    """No answer in time: the request may have been executed."""
    return outcome_unknown_error(TIMEOUT, f"no answer within {timeout:g}s; the request may have been executed")


def disconnected_error(cause: str) -> ExchangeError:
    """The connection failed or dropped: the request may have been executed."""
    return outcome_unknown_error(
        DISCONNECTED, f"connection to the exchange failed ({cause}); the request may have been executed"
    )


def unreadable_error(message: str) -> ExchangeError:
    """A 2xx answer that is not JSON (python-binance: ``Invalid Response: <text>``): what it did is unknown."""
    return outcome_unknown_error(UNKNOWN, f"unreadable answer: {message[:200]}")


class ConditionalOrderRefused(Exception):
    """An order type other than MARKET, refused before any request (invariant 5).

    Not an :class:`ExchangeError`: the exchange never saw it. Stops and take-profits are
    watched locally by exit-brain and executed as reduceOnly MARKET orders.
    """

    def __init__(self, order_type: str) -> None:
        super().__init__(
            f"order type {order_type} refused: only MARKET orders are sent (stops and take-profits are watched locally)"
        )
        self.order_type = order_type
