"""governor: the only source of approvals (DESIGN §3, §4.1-4.3; the lifecycle is docs/EXECUTION.md).

Every plan on ``apply.plan`` — entries, exits, harvests — gets exactly one decision on
``governor.decision`` and, when approved, exactly one Approval on ``apply.approved``.

Why the whole decision is one Lua script (``governor.lua``) and not a read-decide-write in
Python: the limits are counts shared by every replica (open positions + reservations, total
notional, per-symbol rates, one entry and one exit in flight per symbol). Reading them, deciding
and reserving must be indivisible or two replicas both see "9 of 10" and both approve. The same
script is also the stage step — it checks and sets ``done:governor:<message id>`` and XACKs — so
a redelivered plan is acked without a second decision, and a crash can never leave a reservation
without its approval or an approval without its reservation.

This module only prepares the script's arguments: the Approval and the decision are encoded here
(pydantic, the one JSON encoder of the project); the script adds the reason code of a rejection.
The decision's envelope is built once, with the approved data; a rejection keeps the envelope and
gets its data from the rejection JSON around the reason slot. The policy's part of the arguments
is the same for every plan and encoded once per policy.

The plans of one batch are decided in one pipeline of script calls (:class:`Prepared`): each call is
still one atomic decision, in the batch's order, so a pipeline decides exactly as calls one by one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import redis

from quantum_trader.bus.consumer import Delivery, Handler, Prepared, no_done_precheck
from quantum_trader.bus.step import StepOutcome, lua_with_tally
from quantum_trader.contracts.envelope import Envelope, encode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import (
    Approval,
    GovernorDecision,
    Message,
    Plan,
    PlanKind,
    PositionSide,
    Reservation,
    Side,
)
from quantum_trader.contracts.policy import StreamRetention
from quantum_trader.risk.limits import FIVE_MINUTES_MS, HOUR_MS, NOTIONAL_TOLERANCE, RATE_TRIM_MS, Limits
from quantum_trader.runtime.service import ComponentContext, Service

log = logging.getLogger(__name__)

STAGE = "governor"
PLAN_STREAM = "apply.plan"
APPROVED_STREAM = "apply.approved"
DECISION_STREAM = "governor.decision"
APPROVED = "approved"
DUPLICATE = "duplicate"

_REASON_SLOT = "@reason@"
_REASONS_FIELD = '"reasons":['


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the script did with one plan message."""

    decided: bool
    """False: the message was already decided (redelivery); the script only acked it"""
    reason: str
    """``approved``, a rejection code (``risk.limits.Reason``), or ``duplicate``"""

    @property
    def approved(self) -> bool:
        return self.decided and self.reason == APPROVED


def approval_id(plan_id: str) -> str:
    return "apr:" + plan_id


def decision_id(plan_id: str) -> str:
    return "dec:" + plan_id


def reservation_for(plan: Plan) -> Reservation:
    """An entry holds a slot and its notional; an exit holds the symbol's one exit lock."""
    if plan.kind is PlanKind.ENTRY:
        return Reservation(slot=True, notional=plan.reference_notional, exit_lock=False)
    return Reservation(slot=False, notional=0.0, exit_lock=True)


def approval_for(plan: Plan, now_ms: int, limits: Limits) -> Approval:
    """The approval the script adds if it approves: it expires with the message (invariant 4)."""
    return Approval(
        approval_id=approval_id(plan.plan_id),
        plan=plan,
        reservation=reservation_for(plan),
        approved_at=now_ms,
        expires_at=now_ms + limits.approval_ttl_ms,
    )


def decision_for(plan: Plan, now_ms: int, *, approved: bool, reasons: tuple[str, ...] = ()) -> GovernorDecision:
    return GovernorDecision(
        symbol=plan.symbol,
        plan_id=plan.plan_id,
        kind=plan.kind,
        source=plan.source,
        approved=approved,
        approval_id=approval_id(plan.plan_id) if approved else "",
        reasons=reasons,
        time=now_ms,
    )


def _flat(message: Message, id: str, corr: str) -> list[str]:
    flat: list[str] = []
    for name, value in encode(message, id=id, corr=corr).items():
        flat.extend((name, value))
    return flat


def split_rejection(data: str) -> tuple[str, str]:
    """``data`` (a rejection's JSON with the reason slot) around the slot: ``before + code + after``.

    The slot is found as the ``reasons`` field itself, which cannot occur inside a string value
    (JSON escapes the quotes there), so a plan id that happens to contain the slot text is harmless.
    """
    marker = f'{_REASONS_FIELD}"{_REASON_SLOT}"]'
    if data.count(marker) != 1:
        raise ValueError("the rejection JSON must hold the reason slot exactly once")
    index = data.index(marker)
    return data[: index + len(_REASONS_FIELD) + 1], data[index + len(marker) - 2 :]


def closed_side(plan: Plan) -> str:
    """The position side a plan's order side closes (an exit is refused against the other side)."""
    return PositionSide.LONG.value if plan.side is Side.SELL else PositionSide.SHORT.value


@lru_cache(maxsize=8)
def policy_fields(limits: Limits, retention: StreamRetention) -> str:
    """The part of ARGV[1] that is the same for every plan: the policy's numbers, as JSON members."""
    fields = {
        "ttl": str(retention.done_ttl_seconds),
        "maxlen": str(retention.max_len),
        "max_leverage": str(limits.max_leverage),
        "max_per_trade": repr(float(limits.max_notional_per_trade)),
        "max_total": repr(float(limits.max_total_notional)),
        "max_open": str(limits.max_open_positions),
        "per_hour": str(limits.max_entries_per_hour),
        "per_5m": str(limits.max_entries_per_five_minutes),
        "cooldown_ms": str(limits.cooldown_ms),
        "hour_ms": str(HOUR_MS),
        "five_ms": str(FIVE_MINUTES_MS),
        "trim_ms": str(RATE_TRIM_MS),
        "tolerance": repr(NOTIONAL_TOLERANCE),
    }
    return json.dumps(fields)[1:-1]


def script_payload(
    envelope: Envelope[Plan],
    limits: Limits,
    retention: StreamRetention,
    *,
    group: str,
    entry_id: str,
    now_ms: int,
) -> str:
    """ARGV[1] of ``governor.lua`` for one plan message (pure; every number as a string)."""
    plan = envelope.message
    corr = envelope.corr
    rejected = decision_for(plan, now_ms, approved=False, reasons=(_REASON_SLOT,))
    before, after = split_rejection(rejected.model_dump_json())
    payload = {
        "group": group,
        "entry_id": entry_id,
        "kind": plan.kind.value,
        "symbol": plan.symbol,
        "plan_id": plan.plan_id,
        "time": str(plan.time),
        "notional": repr(float(plan.reference_notional)),
        "leverage": str(plan.leverage),
        "allowlisted": "1" if plan.symbol in limits.allowlist else "0",
        "closes": closed_side(plan),
        "opened_at": "" if plan.position_opened_at is None else str(plan.position_opened_at),
        "approval": _flat(approval_for(plan, now_ms, limits), approval_id(plan.plan_id), corr),
        "decision": _flat(decision_for(plan, now_ms, approved=True), decision_id(plan.plan_id), corr),
        "reject_before": before,
        "reject_after": after,
    }
    return "{" + policy_fields(limits, retention) + ", " + json.dumps(payload)[1:]


class GovernorScript:
    """``governor.lua`` bound to one instance's keys and policy."""

    def __init__(self, client: redis.Redis, keys: Keys, limits: Limits, retention: StreamRetention) -> None:
        self.client = client
        self.keys = keys
        self.limits = limits
        self.retention = retention
        self._script = client.register_script(
            lua_with_tally(resources.files(__package__).joinpath("governor.lua").read_text())
        )
        self._loaded = False

    def script_keys(self, message_id: str, symbol: str) -> list[str]:
        k = self.keys
        return [
            k.done(STAGE, message_id),
            k.stream(PLAN_STREAM),
            k.control,
            k.halts,
            k.reservations,
            k.entry_locks,
            k.exit_locks,
            k.open_positions,
            k.rate(symbol),
            k.cooldowns,
            k.stream(APPROVED_STREAM),
            k.stream(DECISION_STREAM),
            k.open_positions_totals,
            k.reservations_totals,
            k.position(symbol),
        ]

    def decide(self, envelope: Envelope[Plan], *, group: str, entry_id: str, now_ms: int) -> Verdict:
        """Decide ``envelope``'s plan once: reserve, emit, mark done and ack in one script run."""
        payload = script_payload(envelope, self.limits, self.retention, group=group, entry_id=entry_id, now_ms=now_ms)
        return verdict_of(self._script(keys=self.script_keys(envelope.id, envelope.message.symbol), args=[payload]))

    def decide_many(
        self, envelopes: list[Envelope[Plan]], entry_ids: list[str], *, group: str, now_ms: int
    ) -> list[Verdict | Exception]:
        """Decide several plans in one round trip, in order: one script run each, as :meth:`decide`.

        A call whose script failed comes back as its exception (that plan was not decided).
        """
        calls = []
        for envelope, entry_id in zip(envelopes, entry_ids, strict=True):
            payload = script_payload(
                envelope, self.limits, self.retention, group=group, entry_id=entry_id, now_ms=now_ms
            )
            calls.append((self.script_keys(envelope.id, envelope.message.symbol), payload))
        if self._script.sha is None or not self._loaded:  # a pipeline cannot load it on a miss
            self._script.sha = self.client.script_load(self._script.script)
            self._loaded = True
        for attempt in range(2):
            with self.client.pipeline(transaction=False) as pipe:
                for keys, payload in calls:
                    pipe.evalsha(self._script.sha, len(keys), *keys, payload)
                replies = pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                self._script.sha = self.client.script_load(self._script.script)  # a restarted or new server
                continue
            break
        return [r if isinstance(r, Exception) else verdict_of(r) for r in replies]


def verdict_of(reply: list) -> Verdict:
    decided, reason = reply
    return Verdict(decided=int(decided) == 1, reason=reason.decode() if isinstance(reason, bytes) else reason)


class GovernorService(Service):
    """Consumes ``apply.plan``; the script does the stage step itself, so the handler returns no Step.

    The handler returns the script's outcome, so the consumer neither steps again nor miscounts.
    """

    def __init__(self, ctx: ComponentContext) -> None:
        super().__init__(ctx)
        self.limits = Limits.from_policy(ctx.policy)
        self.script = GovernorScript(ctx.client, ctx.keys, self.limits, ctx.policy.streams)
        self._decided: dict[str, tuple[str, Verdict]] = {}
        """entry id -> (message id, verdict) of the current batch, decided together by ``decide_batch``"""

    def handlers(self) -> dict[str, Handler]:
        return {PLAN_STREAM: Prepared(self.on_plan, self.decide_batch)}

    def decide_batch(self, envelopes: list[Envelope[Plan]], deliveries: list[Delivery]) -> None:
        """Decide the batch's plans in one pipeline; ``on_plan`` then reports each verdict."""
        self._decided = {}
        entry_ids = [d.entry_id for d in deliveries]
        verdicts = self.script.decide_many(envelopes, entry_ids, group=self.ctx.name, now_ms=self.ctx.now_ms())
        for envelope, entry_id, verdict in zip(envelopes, entry_ids, verdicts, strict=True):
            if isinstance(verdict, Verdict):  # a failed call is decided again by on_plan, on its own
                self._decided[entry_id] = (envelope.id, verdict)

    @no_done_precheck  # governor.lua checks the done key first and only acks a plan already decided
    def on_plan(self, envelope: Envelope[Plan], delivery: Delivery) -> StepOutcome:
        batched = self._decided.pop(delivery.entry_id, None)
        if batched is not None and batched[0] == envelope.id:
            verdict = batched[1]
        else:
            verdict = self.script.decide(
                envelope, group=self.ctx.name, entry_id=delivery.entry_id, now_ms=self.ctx.now_ms()
            )
        plan = envelope.message
        if not verdict.decided:
            self.count("plans_duplicate")
            return StepOutcome.DUPLICATE
        self.count("plans_decided")
        if verdict.approved:
            self.count("plans_approved")
            log.debug(  # per plan on the hot path: the counter and governor.decision say it already
                "approved",
                extra={"plan_id": plan.plan_id, "symbol": plan.symbol, "kind": plan.kind.value, "source": plan.source},
            )
        else:
            self.count("plans_rejected")
            self.count(f"rejected_{verdict.reason}")
            log.info(
                "rejected",
                extra={
                    "plan_id": plan.plan_id,
                    "symbol": plan.symbol,
                    "kind": plan.kind.value,
                    "reason": verdict.reason,
                },
            )
        return StepOutcome.DONE


def build(ctx: ComponentContext) -> Service:
    return GovernorService(ctx)
