"""Which approvals of a read batch go out together in ``POST /fapi/v1/batchOrders`` (pure; the sending is
``services/apply_layer/batch.py``).

Only a symbol's first approval of the batch, when it is a first delivery, is a candidate: a symbol's
later approvals wait for its first one (one order per symbol in flight), and a redelivery is looked
up before anything is sent. A candidate goes in the batch when the gateway's decision on it is a
plain ``Send`` with no leverage to set first. Every other approval is left to the one-by-one path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from quantum_trader.contracts.messages import Plan
from quantum_trader.exchange.errors import ExchangeError
from quantum_trader.exchange.models import OrderResult

T = TypeVar("T")


def batch_candidates(approvals: Sequence[tuple[str, int]]) -> list[int]:
    """The positions of the candidates among ``(symbol, deliveries)`` of a read batch, in order."""
    seen: set[str] = set()
    chosen = []
    for position, (symbol, deliveries) in enumerate(approvals):
        if symbol in seen:
            continue
        seen.add(symbol)
        if deliveries == 1:
            chosen.append(position)
    return chosen


def sets_leverage(plan: Plan, current: int | None, reduce_only: bool) -> bool:
    """Whether the plan's order sets the symbol's leverage first: an order that adds risk, with another
    leverage than the symbol has (``current``; None: not known, so it is set)."""
    return plan.leverage != current and not reduce_only


def in_groups(items: Sequence[T], size: int) -> list[list[T]]:
    """``items`` cut into groups of at most ``size``, in order."""
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def settled(answer: OrderResult | ExchangeError) -> bool:
    """Whether an order's answer stands: a fill, or the exchange's refusal of that order alone. An error
    that is retryable or of unknown outcome does not: the order is looked up before anything is resent."""
    return not (isinstance(answer, ExchangeError) and (answer.retryable or answer.unknown_outcome))
