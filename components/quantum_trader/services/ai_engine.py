"""ai-engine: ``features`` -> ``trade.intent``.

The default model is the transparent ``baseline-trend`` strategy (``ml.baseline``); every intent
names the model digest that made it, so drift checks and audits can tell models apart.
"""

from __future__ import annotations

from quantum_trader.bus.consumer import Delivery, Handler
from quantum_trader.bus.step import Step
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.messages import FeatureVector
from quantum_trader.ml.baseline import StrategyState, decide, model_digest
from quantum_trader.runtime.service import ComponentContext, Service
from quantum_trader.runtime.state import load_state, save_state


class AiEngine(Service):
    def __init__(self, ctx: ComponentContext) -> None:
        super().__init__(ctx)
        self.model_digest = model_digest(ctx.policy.strategy)

    def handlers(self) -> dict[str, Handler]:
        return {"features": self.on_features}

    def ready(self) -> tuple[bool, str]:
        return True, f"model {self.model_digest}"

    def on_features(self, envelope: Envelope[FeatureVector], delivery: Delivery) -> Step:
        vector = envelope.message
        key = self.ctx.keys.component_state("ai-engine", vector.symbol)
        stored = load_state(self.ctx.client, key)
        state = StrategyState.from_dict(stored.data) if stored.data else StrategyState()
        intent = decide(vector, state, self.ctx.policy.strategy)
        step = save_state(Step(), key, stored, state.to_dict())
        if intent is not None:
            self.count("intents")
            step.emit("trade.intent", intent, id=intent.intent_id, corr=envelope.corr)
        return step


def build(ctx: ComponentContext) -> Service:
    return AiEngine(ctx)
