"""features: ``market.tick`` -> ``features`` (feature set core-v1, see ``ml.features``)."""

from __future__ import annotations

from quantum_trader.bus.consumer import Delivery, Handler
from quantum_trader.bus.step import Step
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.messages import Tick
from quantum_trader.ml.features import FeatureState
from quantum_trader.runtime.service import ComponentContext, Service
from quantum_trader.runtime.state import load_state, save_state


class Features(Service):
    def handlers(self) -> dict[str, Handler]:
        return {"market.tick": self.on_tick}

    def on_tick(self, envelope: Envelope[Tick], delivery: Delivery) -> Step:
        tick = envelope.message
        key = self.ctx.keys.component_state("features", tick.symbol)
        stored = load_state(self.ctx.client, key)
        spec = self.ctx.policy.strategy
        state = FeatureState.from_dict(stored.data) if stored.data else FeatureState.from_spec(tick.symbol, spec)
        if not state.matches(spec):  # lengths changed in the policy: start the windows again
            state = FeatureState.from_spec(tick.symbol, spec)
        vector = state.update(tick)
        step = save_state(Step(), key, stored, state.to_dict())
        if vector is not None:
            self.count("vectors")
            step.emit("features", vector, id=f"fv:{tick.symbol}:{vector.time}", corr=envelope.corr)
        return step


def build(ctx: ComponentContext) -> Service:
    return Features(ctx)
