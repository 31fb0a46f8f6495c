"""features: ``market.tick`` -> ``features``, in the feature set the policy's model reads.

``baseline-trend`` reads ``core-v1`` (``ml.features``); a learned model reads the set its artifact's
manifest names (today ``market-v1``, ``ml.market_features``). A model whose feature set this build
cannot compute stops the component at start (fail closed), never a vector of the wrong kind.
"""

from __future__ import annotations

from typing import Any

from quantum_trader.bus.consumer import Delivery, Handler
from quantum_trader.bus.step import Step
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.messages import FeatureVector, Tick
from quantum_trader.ml import features as core
from quantum_trader.ml import market_features as market
from quantum_trader.research.artifact import ArtifactError, feature_set_for
from quantum_trader.runtime.service import ComponentContext, Service
from quantum_trader.runtime.settings import SettingsError
from quantum_trader.runtime.state import load_state, save_state

FEATURE_SETS = (core.FEATURE_SET, market.FEATURE_SET)


class Features(Service):
    def __init__(self, ctx: ComponentContext) -> None:
        super().__init__(ctx)
        try:
            self.feature_set = feature_set_for(ctx.policy.model.name)
        except ArtifactError as error:
            raise SettingsError(str(error)) from None
        if self.feature_set not in FEATURE_SETS:
            raise SettingsError(
                f"model {ctx.policy.model.name} reads feature set {self.feature_set!r}; "
                f"this build computes {', '.join(FEATURE_SETS)}"
            )

    def handlers(self) -> dict[str, Handler]:
        return {"market.tick": self.on_tick}

    def ready(self) -> tuple[bool, str]:
        return True, f"feature set {self.feature_set}"

    def on_tick(self, envelope: Envelope[Tick], delivery: Delivery) -> Step:
        tick = envelope.message
        key = self.ctx.keys.component_state("features", tick.symbol)
        stored = load_state(self.ctx.client, key)
        if self.feature_set == market.FEATURE_SET:
            vector, data = self._market(tick, stored.data)
        else:
            vector, data = self._core(tick, stored.data)
        step = save_state(Step(), key, stored, data)
        if vector is not None:
            self.count("vectors")
            step.emit("features", vector, id=f"fv:{tick.symbol}:{vector.time}", corr=envelope.corr)
        return step

    def _core(self, tick: Tick, stored: dict[str, Any]) -> tuple[FeatureVector | None, dict[str, Any]]:
        spec = self.ctx.policy.strategy
        state = None
        if stored and stored.get("feature_set") == core.FEATURE_SET:
            state = core.FeatureState.from_dict(stored)
        if state is None or not state.matches(spec):  # another set, or lengths changed: start the windows again
            state = core.FeatureState.from_spec(tick.symbol, spec)
        return state.update(tick), state.to_dict()

    def _market(self, tick: Tick, stored: dict[str, Any]) -> tuple[FeatureVector | None, dict[str, Any]]:
        if stored and stored.get("feature_hash") == market.FEATURE_HASH:
            state = market.MarketFeatureState.from_dict(stored)
        else:  # nothing yet, or another definition's state: start the windows again
            state = market.MarketFeatureState(tick.symbol)
        return state.update(tick), state.to_dict()


def build(ctx: ComponentContext) -> Service:
    return Features(ctx)
