"""Client order ids derived from plan ids (DESIGN §3, "Message envelope and delivery").

Why derived and not random: the apply layer may see an approval twice (redelivery, crash and
restart, another replica). Because the id is a pure function of ``plan_id``, every attempt for a
plan carries the same ``newClientOrderId``; the exchange refuses a duplicate (-4116) and the order
can be looked up by that id before any resubmission — at most one order per plan.
"""

from __future__ import annotations

import hashlib
import re

PREFIX = "qt-"
"""Marks orders this system sent (32 hex digits follow: 35 characters in all)."""

MAX_LENGTH = 36
"""Binance's limit on ``newClientOrderId``."""

_ALLOWED = re.compile(r"^[.A-Za-z0-9:/_-]{1,36}$")


def client_order_id(plan_id: str) -> str:
    """``"qt-"`` + the first 32 hex digits of sha256(plan_id): stable across processes and hosts."""
    if not plan_id:
        raise ValueError("a client order id needs a non-empty plan_id")
    return PREFIX + hashlib.sha256(plan_id.encode("utf-8")).hexdigest()[:32]


def is_valid_client_order_id(value: str) -> bool:
    """Whether Binance accepts ``value`` as ``newClientOrderId`` (1-36 of ``[.A-Za-z0-9:/_-]``)."""
    return bool(_ALLOWED.match(value))
