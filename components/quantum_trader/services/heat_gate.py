"""heat-gate: harvest proposals -> EXIT plans on ``apply.plan``, gated by portfolio heat, failing closed.

The rule and every hold reason are in :mod:`quantum_trader.exits.heat`. A held proposal makes no
plan, but it is never lost silently: the hold is counted per reason (``hold_<reason>`` in the
service's counters, which the heartbeat carries), logged with the proposal id and the detail, and
the message is acked (the step marks it done, so a redelivery does not count it twice).
"""

from __future__ import annotations

from collections.abc import Callable

from quantum_trader.bus.codec import text_dict
from quantum_trader.bus.consumer import Delivery, Handler
from quantum_trader.bus.control import parse_control
from quantum_trader.bus.step import Step
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.messages import HarvestProposal
from quantum_trader.exits import heat
from quantum_trader.exits.heat import GateSettings, Hold
from quantum_trader.runtime.service import ComponentContext, Service


class HeatGate(Service):
    def __init__(
        self,
        ctx: ComponentContext,
        *,
        settings: GateSettings | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(ctx)
        self.settings = settings or GateSettings(max_portfolio_heat=ctx.policy.risk.max_portfolio_heat)
        self.clock = clock or ctx.now_ms
        for reason in heat.HOLD_REASONS:
            self.counters[f"hold_{reason}"] = 0  # present from the start: a dashboard sees zeros, not gaps
        self.counters["passed"] = 0

    def handlers(self) -> dict[str, Handler]:
        return {"harvest.proposal": self.on_proposal}

    def on_proposal(self, envelope: Envelope[HarvestProposal], delivery: Delivery) -> Step | None:
        proposal = envelope.message
        keys = self.ctx.keys
        with self.ctx.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.portfolio_heat)
            pipe.hgetall(keys.position(proposal.symbol))
            pipe.hgetall(keys.control)
            pipe.hgetall(keys.halts)
            raw_heat, raw_position, raw_control, raw_halts = pipe.execute()
        control = parse_control(text_dict(raw_control), text_dict(raw_halts))
        position_fields = text_dict(raw_position)
        try:
            decision = heat.evaluate(
                proposal,
                text_dict(raw_heat),
                position_fields,
                self.clock(),
                self.settings,
                kill_switch_hold=control.advanced_exits_shadow,
            )
        except Hold as hold:
            self.count(f"hold_{hold.reason}")
            self.ctx.log.warning(
                "harvest proposal held",
                extra={
                    "symbol": proposal.symbol,
                    "proposal_id": proposal.proposal_id,
                    "action": proposal.action.value,
                    "hold_reason": hold.reason,
                    "detail": hold.detail,
                },
            )
            return None  # an empty step: marked done and acked, nothing emitted
        plan = heat.build_plan(proposal, decision, envelope.corr)
        self.count("passed")
        self.ctx.log.info(
            "harvest plan",
            extra={
                "symbol": proposal.symbol,
                "plan_id": plan.plan_id,
                "qty": plan.qty,
                "utilization": round(decision.utilization, 4),
                "reason_codes": list(plan.reason_codes),
            },
        )
        return Step().emit("apply.plan", plan, id=plan.plan_id, corr=envelope.corr)


def build(ctx: ComponentContext) -> Service:
    return HeatGate(ctx)
