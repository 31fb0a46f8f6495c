"""heat-gate: harvest proposals -> EXIT plans on ``apply.plan``, gated by portfolio heat, failing closed.

The rule and every hold reason are in :mod:`quantum_trader.exits.heat`. A held proposal makes no
plan, but it is never lost silently: the hold is counted per reason (``hold_<reason>`` in the
service's counters, which the heartbeat carries), logged with the proposal id and the detail, and
the message is acked (the step marks it done, so a redelivery does not count it twice).

With exit-brain running, a proposal waits for exit-brain's verdict on its bar (``exits.heat``:
the two controllers must not race for one trade's exit). The wait is in the handler, for up to
``verdict_wait_seconds``: the message stays unacked meanwhile, so a lockstep replay does not publish
the next bar before it is decided. Past that (exit-brain down or behind), the handler raises: the
proposal stays pending, is reclaimed and tried again, and after ``maxDeliveries`` it is
dead-lettered with the reason — waiting, never passing. An orderly stop ends the wait the same way.

While it waits, only exit-brain's state is polled (one HGETALL every ``VERDICT_POLL_SECONDS``): the
other inputs read with the first look (heat, position, kill switch) are judged again with each new
state of exit-brain, in memory. Once that judgement no longer waits, every input is read again and
the proposal is decided on them, so the decision stands on inputs read together with the verdict, as
when there was no wait (a kill switch engaged meanwhile holds it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from quantum_trader.bus.codec import text_dict
from quantum_trader.bus.consumer import Delivery, Handler
from quantum_trader.bus.control import parse_control
from quantum_trader.bus.step import Step
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.messages import HarvestProposal
from quantum_trader.contracts.policy import MarketDataSource, PolicySpec
from quantum_trader.exits import heat
from quantum_trader.exits.heat import GateDecision, GateInputs, GateSettings, HeatClock, Hold, VerdictPending
from quantum_trader.runtime.service import ComponentContext, Service

EXIT_BRAIN = "exit-brain"
VERDICT_WAIT_SECONDS = 2.0
VERDICT_POLL_SECONDS = 0.002


def heat_clock(policy: PolicySpec) -> HeatClock:
    """Market time in replays (replay and synthetic data), so they decide the same at any speed."""
    return HeatClock.WALL if policy.market_data.source is MarketDataSource.LIVE else HeatClock.MARKET


class HeatGate(Service):
    def __init__(
        self,
        ctx: ComponentContext,
        *,
        settings: GateSettings | None = None,
        clock: Callable[[], int] | None = None,
        defers_to_exit_brain: bool | None = None,
        verdict_wait_seconds: float = VERDICT_WAIT_SECONDS,
    ) -> None:
        super().__init__(ctx)
        self.settings = settings or GateSettings(
            max_portfolio_heat=ctx.policy.risk.max_portfolio_heat, clock=heat_clock(ctx.policy)
        )
        self.clock = clock or ctx.now_ms
        if defers_to_exit_brain is None:
            defers_to_exit_brain = EXIT_BRAIN in ctx.policy.enabled_components()
        self.defers_to_exit_brain = defers_to_exit_brain
        self.verdict_wait_seconds = verdict_wait_seconds
        for reason in heat.HOLD_REASONS:
            self.counters[f"hold_{reason}"] = 0  # present from the start: a dashboard sees zeros, not gaps
        self.counters["passed"] = 0
        self.counters["verdict_waits"] = 0

    def handlers(self) -> dict[str, Handler]:
        return {"harvest.proposal": self.on_proposal}

    def read_inputs(self, proposal: HarvestProposal) -> GateInputs:
        """Every input of the gate for ``proposal``, in one round trip."""
        keys = self.ctx.keys
        with self.ctx.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.portfolio_heat)
            pipe.hgetall(keys.position(proposal.symbol))
            pipe.hgetall(keys.control)
            pipe.hgetall(keys.halts)
            pipe.hgetall(keys.component_state(EXIT_BRAIN, proposal.symbol))
            raw_heat, raw_position, raw_control, raw_halts, raw_brain = pipe.execute()
        control = parse_control(text_dict(raw_control), text_dict(raw_halts))
        return GateInputs(
            heat=text_dict(raw_heat),
            position=text_dict(raw_position),
            kill_switch_hold=control.advanced_exits_shadow,
            exit_brain=text_dict(raw_brain),
        )

    def read_exit_brain(self, symbol: str) -> dict[str, str]:
        """exit-brain's state for ``symbol``: the one input a wait for its verdict polls."""
        return text_dict(self.ctx.client.hgetall(self.ctx.keys.component_state(EXIT_BRAIN, symbol)))

    def evaluate(self, proposal: HarvestProposal, inputs: GateInputs) -> GateDecision:
        """The gate's decision on ``inputs``; raises Hold, or VerdictPending to wait."""
        now = proposal.time if self.settings.clock is HeatClock.MARKET else self.clock()
        return heat.evaluate(
            proposal,
            inputs.heat,
            inputs.position,
            now,
            self.settings,
            kill_switch_hold=inputs.kill_switch_hold,
            exit_brain=inputs.exit_brain,
            defers_to_exit_brain=self.defers_to_exit_brain,
        )

    def decide_after_verdict(self, proposal: HarvestProposal) -> GateDecision:
        """The gate's decision on freshly read inputs, once exit-brain has judged the proposal's bar (see the
        module doc); raises Hold, or VerdictPending when no verdict came in ``verdict_wait_seconds``."""
        deadline = time.monotonic() + self.verdict_wait_seconds
        while True:
            inputs = self.read_inputs(proposal)
            try:
                return self.evaluate(proposal, inputs)
            except VerdictPending as pending:
                waiting: VerdictPending | None = pending
            if time.monotonic() < deadline:
                waiting = self.await_verdict(proposal, inputs, deadline)
            if waiting is not None:
                self.count("verdict_waits")
                self.ctx.log.warning(
                    "harvest proposal waits for exit-brain",
                    extra={"symbol": proposal.symbol, "proposal_id": proposal.proposal_id, "detail": str(waiting)},
                )
                raise waiting

    def await_verdict(self, proposal: HarvestProposal, inputs: GateInputs, deadline: float) -> VerdictPending | None:
        """Poll exit-brain's state alone until the proposal, judged on ``inputs`` with that state, no longer
        waits: None then (a pass or a hold: decide on fresh inputs), the last VerdictPending at ``deadline``.
        An orderly stop raises VerdictPending: the proposal is left pending."""
        while True:
            if self.ctx.stop.wait(VERDICT_POLL_SECONDS):
                raise VerdictPending("stopping before exit-brain's verdict")
            try:
                self.evaluate(proposal, replace(inputs, exit_brain=self.read_exit_brain(proposal.symbol)))
            except VerdictPending as pending:
                if time.monotonic() >= deadline:
                    return pending
            except Hold:
                return None  # decided: a hold, to be confirmed on fresh inputs
            else:
                return None  # decided: a pass, to be confirmed on fresh inputs

    def on_proposal(self, envelope: Envelope[HarvestProposal], delivery: Delivery) -> Step | None:
        proposal = envelope.message
        try:
            decision = self.decide_after_verdict(proposal)
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
