"""harvest: proposes profit taking (PARTIAL_CLOSE at 2 R, CLOSE on a kill score) on ``harvest.proposal``.

Inputs ``market.tick`` and ``position.snapshot``. The rules and the score are in
:mod:`quantum_trader.exits.harvest`; proposals are not orders — heat-gate decides which become
EXIT plans, and the governor decides those (invariant 1).

State: ``state:harvest:<symbol>`` (hash ``rev`` + ``data`` JSON), written with the proposal in one
step and guarded on ``rev``: a restart keeps the peak R, the EMAs and which rules already fired,
so a proposal is never made twice for one position.
"""

from __future__ import annotations

import json

from quantum_trader.bus.codec import text_dict
from quantum_trader.bus.consumer import Delivery, Handler
from quantum_trader.bus.step import Step
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.messages import HarvestProposal, PositionSnapshot, Tick
from quantum_trader.exits import harvest
from quantum_trader.exits.harvest import HarvestSettings, HarvestState
from quantum_trader.exits.position import should_apply, view_of
from quantum_trader.runtime.service import ComponentContext, Service

COMPONENT = "harvest"




class Harvest(Service):
    def __init__(self, ctx: ComponentContext, *, settings: HarvestSettings | None = None) -> None:
        super().__init__(ctx)
        self.settings = settings or HarvestSettings()

    def handlers(self) -> dict[str, Handler]:
        return {"market.tick": self.on_tick, "position.snapshot": self.on_snapshot}

    def state_key(self, symbol: str) -> str:
        return self.ctx.keys.component_state(COMPONENT, symbol)

    def load(self, symbol: str) -> tuple[HarvestState, str | None]:
        fields = text_dict(self.ctx.client.hgetall(self.state_key(symbol)))
        data = fields.get("data")
        # unparseable state raises: the message stays pending and ends in the DLQ with the reason,
        # rather than forgetting which proposals were already made
        return (HarvestState.from_json(json.loads(data)) if data else HarvestState()), fields.get("rev")

    def _write(self, step: Step, symbol: str, state: HarvestState, rev: str | None) -> Step:
        key = self.state_key(symbol)
        step.guard(key, "rev", rev)
        step.write("HSET", key, "rev", str(int(rev) + 1) if rev else "1", "data", json.dumps(state.to_json()))
        return step

    def on_snapshot(self, envelope: Envelope[PositionSnapshot], delivery: Delivery) -> Step | None:
        snapshot = envelope.message
        state, rev = self.load(snapshot.symbol)
        if not should_apply(state.last_opened_at, state.applied_version, snapshot):
            self.count("stale_snapshots")
            return None
        return self._write(Step(), snapshot.symbol, state.opened(view_of(snapshot), snapshot.version), rev)

    def on_tick(self, envelope: Envelope[Tick], delivery: Delivery) -> Step | None:
        tick = envelope.message
        state, rev = self.load(tick.symbol)
        if state.position is None:
            return None
        new, proposal = harvest.on_tick(state, tick, self.settings)
        if new == state:
            return None
        step = self._write(Step(), tick.symbol, new, rev)
        if proposal is not None:
            message = HarvestProposal(
                symbol=tick.symbol,
                proposal_id=harvest.proposal_id(tick.symbol, state.position.opened_at, proposal.rule),
                time=tick.event_time,
                action=proposal.action,
                fraction=proposal.fraction,
                r_multiple=proposal.r_multiple,
                kill_score=proposal.kill_score,
                price=tick.price,
                reasons=proposal.reasons,
            )
            step.emit("harvest.proposal", message, id=message.proposal_id, corr=envelope.corr)
            self.count(f"proposals_{proposal.rule}")
            self.ctx.log.info(
                "harvest proposed",
                extra={
                    "symbol": tick.symbol,
                    "proposal_id": message.proposal_id,
                    "action": proposal.action.value,
                    "r_multiple": round(proposal.r_multiple, 3),
                    "kill_score": round(proposal.kill_score, 3),
                },
            )
        return step


def build(ctx: ComponentContext) -> Service:
    return Harvest(ctx)
