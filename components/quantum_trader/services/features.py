"""features: ``market.tick`` -> ``features``, in the feature set the policy's model reads.

``baseline-trend`` reads ``core-v1`` (``ml.features``); a learned model reads the set its artifact's
manifest names (today ``market-v1``, ``ml.market_features``). A model whose feature set this build
cannot compute stops the component at start (fail closed), never a vector of the wrong kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quantum_trader.bus.consumer import Delivery, Handler, independent_steps, no_done_precheck
from quantum_trader.bus.step import Step
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.messages import Tick
from quantum_trader.ml import features as core
from quantum_trader.ml import market_features as market
from quantum_trader.research.artifact import ArtifactError, feature_set_for
from quantum_trader.runtime.service import ComponentContext, Service
from quantum_trader.runtime.settings import SettingsError
from quantum_trader.runtime.state import HeldStates

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
        self.core_states: HeldStates[core.FeatureState] = HeldStates(ctx.client)
        self.market_states: HeldStates[market.MarketFeatureState] = HeldStates(ctx.client)

    def handlers(self) -> dict[str, Handler]:
        return {"market.tick": self.on_tick}

    def ready(self) -> tuple[bool, str]:
        return True, f"feature set {self.feature_set}"

    @no_done_precheck  # its only effect is its step, which finds the done key and only acks
    @independent_steps  # per symbol, each step's guard expects the seq the one before it writes (HeldStates)
    def on_tick(self, envelope: Envelope[Tick], delivery: Delivery) -> Step:
        tick = envelope.message
        key = self.ctx.keys.component_state("features", tick.symbol)
        if self.feature_set == market.FEATURE_SET:
            state, stored = self.market_states.checkout(key, lambda s: _newer(s, tick), self._market_restore(tick))
            vector = state.update(tick)
            step = self.market_states.save(Step(), key, stored, state, state.to_dict())
        else:
            core_state, stored = self.core_states.checkout(key, lambda s: _newer(s, tick), self._core_restore(tick))
            vector = core_state.update(tick)
            step = self.core_states.save(Step(), key, stored, core_state, core_state.to_dict())
        if vector is not None:
            self.count("vectors")
            step.emit("features", vector, id=f"fv:{tick.symbol}:{vector.time}", corr=envelope.corr)
        return step

    def _core_restore(self, tick: Tick) -> Callable[[dict[str, Any] | None], core.FeatureState]:
        spec = self.ctx.policy.strategy

        def restore(stored: dict[str, Any] | None) -> core.FeatureState:
            state = None
            if stored and stored.get("feature_set") == core.FEATURE_SET:
                state = core.FeatureState.from_dict(stored)
            if state is None or not state.matches(spec):  # another set, or lengths changed: start the windows again
                state = core.FeatureState.from_spec(tick.symbol, spec)
            return state

        return restore

    @staticmethod
    def _market_restore(tick: Tick) -> Callable[[dict[str, Any] | None], market.MarketFeatureState]:
        def restore(stored: dict[str, Any] | None) -> market.MarketFeatureState:
            if stored and stored.get("feature_hash") == market.FEATURE_HASH:
                return market.MarketFeatureState.from_dict(stored)
            return market.MarketFeatureState(tick.symbol)  # nothing yet, or another definition's: start again

        return restore


def _newer(state: core.FeatureState | market.MarketFeatureState, tick: Tick) -> bool:
    """Whether ``tick`` comes after every tick folded into ``state`` (else the state is read back: see HeldStates)."""
    return state.last_time is None or tick.event_time > state.last_time


def build(ctx: ComponentContext) -> Service:
    return Features(ctx)
