"""Every Redis key of an instance (DESIGN §3): ``quantum:{<instance>}:...``.

The braces are a Redis Cluster hash tag, so every multi-key script of one instance runs on one slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_INSTANCE = re.compile(r"^[a-z0-9]([a-z0-9.\-]*[a-z0-9])?$")


def validate_instance(instance: str) -> str:
    if not _INSTANCE.match(instance):
        raise ValueError(
            f"instance {instance!r} must be lower-case letters, digits, '.' and '-' ('<namespace>.<policy>' or 'local')"
        )
    return instance


@dataclass(frozen=True, slots=True)
class Keys:
    instance: str

    def __post_init__(self) -> None:
        validate_instance(self.instance)

    @property
    def prefix(self) -> str:
        return f"quantum:{{{self.instance}}}:"

    def stream(self, name: str) -> str:
        return f"{self.prefix}stream:{name}"

    def dlq(self, name: str) -> str:
        return f"{self.prefix}stream:{name}.dlq"

    @property
    def control(self) -> str:
        """hash: state, scope, flatten, reason, generation, engaged_by, updated_at"""
        return f"{self.prefix}control"

    @property
    def halts(self) -> str:
        """hash: source -> reason. Automatic entries halts raised by components (the reconciler)."""
        return f"{self.prefix}halts"

    @property
    def ack(self) -> str:
        """hash: <component>/<pod> -> kill-switch generation applied"""
        return f"{self.prefix}ack"

    @property
    def rollout(self) -> str:
        """hash: mode, percent, pinned_live, pinned_shadow (ExitRollout, written by operator or qt run)"""
        return f"{self.prefix}rollout"

    def heartbeat(self, component: str, pod: str) -> str:
        return f"{self.prefix}heartbeat:{component}:{pod}"

    def heartbeat_pattern(self) -> str:
        return f"{self.prefix}heartbeat:*"

    def position(self, symbol: str) -> str:
        return f"{self.prefix}position:{symbol}"

    @property
    def open_positions(self) -> str:
        """hash: symbol -> entry notional of every open position (position-state and reconciler)"""
        return f"{self.prefix}positions:open"

    @property
    def open_positions_totals(self) -> str:
        """hash: ``sum`` and ``count`` of ``positions:open``, kept by every script that writes it"""
        return f"{self.prefix}positions:open:totals"

    @property
    def portfolio_heat(self) -> str:
        return f"{self.prefix}portfolio:heat"

    @property
    def portfolio_risk(self) -> str:
        """hash: symbol -> open risk to the stop (position-state, updated in each settlement step)"""
        return f"{self.prefix}portfolio:risk"

    @property
    def portfolio_risk_total(self) -> str:
        """hash: ``open_risk`` (running sum of ``portfolio:risk``), ``state`` (``ok`` or ``unreadable:<symbol>``)"""
        return f"{self.prefix}portfolio:risk-total"

    @property
    def reservations(self) -> str:
        """hash: plan_id -> reserved notional of a pending ENTRY (governor writes, position-state releases)"""
        return f"{self.prefix}governor:reservations"

    @property
    def reservations_totals(self) -> str:
        """hash: ``sum`` and ``count`` of ``governor:reservations``, kept by every script that writes it"""
        return f"{self.prefix}governor:reservations:totals"

    @property
    def entry_locks(self) -> str:
        """hash: symbol -> plan_id of the one pending entry (governor writes, position-state releases)"""
        return f"{self.prefix}governor:entry-locks"

    @property
    def exit_locks(self) -> str:
        """hash: symbol -> plan_id of the one exit in flight"""
        return f"{self.prefix}governor:exit-locks"

    def rate(self, symbol: str) -> str:
        """sorted set of approved entry plan ids scored by plan time (ms)"""
        return f"{self.prefix}governor:rate:{symbol}"

    @property
    def cooldowns(self) -> str:
        """hash: symbol -> market time (ms) of the last close"""
        return f"{self.prefix}governor:cooldowns"

    @property
    def last_prices(self) -> str:
        """hash: symbol -> last tick JSON (exchange-sim and exit-brain read marks from their own streams)"""
        return f"{self.prefix}prices"

    def done(self, stage: str, message_id: str) -> str:
        return f"{self.prefix}done:{stage}:{message_id}"

    @property
    def ledger_equity(self) -> str:
        """hash: realized_pnl, fees, trades, wins (position-state)"""
        return f"{self.prefix}ledger"

    def component_state(self, component: str, name: str) -> str:
        """a component's own persisted state (exit-brain, harvest) so restarts keep watching"""
        return f"{self.prefix}state:{component}:{name}"

    @property
    def exchange_filters(self) -> str:
        """hash: symbol -> exchangeInfo symbol entry JSON (apply-layer publishes; intent-bridge sizes with it)"""
        return f"{self.prefix}exchange:filters"

    def in_flight(self, plan_id: str) -> str:
        """apply-layer's marker, set before an order is sent: a redelivery queries before resubmitting"""
        return f"{self.prefix}apply:inflight:{plan_id}"
