"""ai-engine: ``features`` -> ``trade.intent``, from the model the policy names.

- ``spec.model.name: baseline-trend``: the transparent EMA-crossover rule (``ml.baseline``).
- any other name: the artifact ``models/<name>/`` (``research.artifact``), loaded only if its digest is
  ``spec.model.digest``. A missing, unpinned, modified or mismatching artifact stops the process at start
  with one line and a non-zero exit (fail closed); before exiting it writes one heartbeat with the digest
  it found on disk, so the operator's ``ModelConsistent`` condition says what differs.

The learned path runs the xgboost + torch ensemble (``ml.ensemble``) with the policy's weights,
threshold and ATR multiples. Every intent carries the model digest and the feature hash it read; a
vector of another feature definition is held (no intent, counted), never fed to the model.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import redis

from quantum_trader.bus.consumer import Delivery, Handler, independent_steps, no_done_precheck
from quantum_trader.bus.heartbeat import HeartbeatRecord, write_heartbeat
from quantum_trader.bus.step import Step
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.messages import FeatureVector, TradeIntent
from quantum_trader.ml import baseline, ensemble
from quantum_trader.research.artifact import BASELINE, ArtifactError, LoadedArtifact, load_artifact
from quantum_trader.runtime import metrics
from quantum_trader.runtime.service import ComponentContext, Service
from quantum_trader.runtime.settings import SettingsError
from quantum_trader.runtime.state import HeldStates

if TYPE_CHECKING:  # torch and xgboost load only when a learned model is named
    from quantum_trader.ml.models import RowPredictor


class AiEngine(Service):
    def __init__(self, ctx: ComponentContext) -> None:
        super().__init__(ctx)
        self.artifact: LoadedArtifact | None = None
        self.predictor: RowPredictor | None = None
        self._warned_mismatch = False
        self._inference_seconds = metrics.INFERENCE.labels(ctx.name)  # looked up once, not on every bar
        self.baseline_states: HeldStates[baseline.StrategyState] = HeldStates(ctx.client)
        self.ensemble_states: HeldStates[ensemble.EnsembleState] = HeldStates(ctx.client)
        model = ctx.policy.model
        if model.name == BASELINE:
            self.model_digest = baseline.model_digest(ctx.policy.strategy)
            return
        try:
            self.artifact = load_artifact(model.name, model.digest)
        except ArtifactError as error:
            self._report_refusal(error.observed_digest)
            raise SettingsError(str(error)) from None
        import torch

        from quantum_trader.ml.models import RowPredictor

        torch.set_num_threads(1)  # one vector at a time: threads only add latency, and results stay bit-stable
        self.model_digest = self.artifact.digest
        self.predictor = RowPredictor(self.artifact.ensemble)  # Ensemble.probabilities' arithmetic, per bar

    def _report_refusal(self, observed: str) -> None:
        """One heartbeat saying which model is on disk, so drift checks can name the difference."""
        now = int(time.time() * 1000)
        record = HeartbeatRecord(
            component=self.ctx.name,
            pod=self.ctx.pod,
            time_ms=now,
            started_ms=now,
            state="failed",
            code_version=self.ctx.settings.code_version,
            image_digest=self.ctx.settings.image_digest,
            model_digest=observed,
            control_generation=0,
            counters={},
            groups={},
        )
        with contextlib.suppress(redis.RedisError):  # the refusal is what matters; Redis may be down too
            write_heartbeat(self.ctx.client, self.ctx.keys, record)

    def handlers(self) -> dict[str, Handler]:
        return {"features": self.on_features}

    def ready(self) -> tuple[bool, str]:
        return True, f"model {self.model_digest}"

    def start(self) -> None:
        self._update_age()

    def idle(self) -> float | None:
        self._update_age()
        return None

    def _update_age(self) -> None:
        if self.artifact is not None:
            age = time.time() - self.artifact.trained_until_ms / 1000
            metrics.MODEL_AGE.labels(self.ctx.name).set(age)

    @no_done_precheck  # its only effect is its step, which finds the done key and only acks
    @independent_steps  # per symbol, each step's guard expects the seq the one before it writes (HeldStates)
    def on_features(self, envelope: Envelope[FeatureVector], delivery: Delivery) -> Step:
        vector = envelope.message
        key = self.ctx.keys.component_state("ai-engine", vector.symbol)
        if self.artifact is None:
            state, stored = self.baseline_states.checkout(
                key, lambda s: _newer(s, vector), lambda d: baseline.StrategyState.from_dict(d or {})
            )
            intent = baseline.decide(vector, state, self.ctx.policy.strategy)
            step = self.baseline_states.save(Step(), key, stored, state, state.to_dict())
        else:
            if vector.feature_hash != self.artifact.feature_hash:
                self.count("held_feature_mismatch")
                if not self._warned_mismatch:
                    self._warned_mismatch = True
                    self.ctx.log.warning(
                        "vector of another feature definition held",
                        extra={
                            "got": f"{vector.feature_set} {vector.feature_hash}",
                            "model": self.artifact.feature_hash,
                        },
                    )
                return Step()
            ensemble_state, stored = self.ensemble_states.checkout(
                key, lambda s: _newer(s, vector), lambda d: ensemble.EnsembleState.from_dict(d or {})
            )
            started = time.perf_counter()
            intent = self.infer(vector, ensemble_state)
            self._inference_seconds.observe(time.perf_counter() - started)
            step = self.ensemble_states.save(Step(), key, stored, ensemble_state, ensemble_state.to_dict())
        if intent is not None:
            self.count("intents")
            step.emit("trade.intent", intent, id=intent.intent_id, corr=envelope.corr)
        return step

    def infer(self, vector: FeatureVector, state: ensemble.EnsembleState) -> TradeIntent | None:
        """Both models on one vector, combined with the policy's weights, then the ensemble's rule."""
        assert self.artifact is not None
        model = self.ctx.policy.model
        assert self.predictor is not None
        p_xgb, p_torch = self.predictor.probabilities(vector.values)
        probabilities = ensemble.combine(p_xgb[0], p_torch[0], model)
        return ensemble.decide(
            vector, probabilities, state, model, self.ctx.policy.strategy, model_digest=self.model_digest
        )


def _newer(state: baseline.StrategyState | ensemble.EnsembleState, vector: FeatureVector) -> bool:
    """Whether ``vector`` comes after every vector folded into ``state`` (else it is read back: see HeldStates)."""
    return state.last_time is None or vector.time > state.last_time


def build(ctx: ComponentContext) -> Service:
    return AiEngine(ctx)
