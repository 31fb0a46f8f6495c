"""exit-brain: watches every open position's stop-loss and take-profit locally and plans exits.

Inputs ``market.tick`` and ``position.snapshot``; outputs EXIT plans on ``apply.plan`` (the governor
decides them, invariant 1) and ``exit.shadow`` records of what the advanced logic would have done.
The rules are in :mod:`quantum_trader.exits.rules`, the per-symbol state machine in
:mod:`quantum_trader.exits.brain`; this module reads state and turns their answers into steps.

State: ``state:exit-brain:<symbol>`` (hash ``rev`` + ``data`` JSON), written in the same step as the
outputs it caused and guarded on ``rev``, so a restart keeps watching every position and two
replicas handling ticks of one symbol cannot overwrite each other (the loser recomputes).
``state:exit-brain:index`` is the set of symbols with an open position (for the idle flatten).
The state is also exit-brain's verdict on each bar, which heat-gate reads before it turns a harvest
proposal into an exit (``exits.heat.defer_to_exit_brain``): ``evaluated_at`` (the market time of the
last tick evaluated for the watched trade) and ``pending_plan`` (the exit it has in flight). It is
written on every tick of a watched position, in the same step as the plan the tick caused.

The kill switch is read with the state on every message (fail closed: a missing control key is
scope ``all``). The ExitRollout comes from the ``rollout`` hash, refreshed every few seconds; each
absent field falls back to the policy's ``exits``; an unreadable one puts every symbol in SHADOW.
"""

from __future__ import annotations

import json
import time

from quantum_trader.bus.codec import text, text_dict
from quantum_trader.bus.consumer import Delivery, Handler
from quantum_trader.bus.control import ControlState, parse_control
from quantum_trader.bus.step import Step, StepOutcome, StepRunner
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.messages import PositionSide, PositionSnapshot, Tick
from quantum_trader.exits import brain
from quantum_trader.exits.brain import BrainState, RecordedTrade, TickOutcome
from quantum_trader.exits.rollout import ALL_SHADOW, RolloutConfig, RolloutError, parse_rollout_hash
from quantum_trader.exits.rules import ExitControl, RuleSettings
from quantum_trader.runtime.service import ComponentContext, Service

COMPONENT = "exit-brain"
INDEX = "index"  # lower-case: can never be a symbol (symbols are upper-case)
ROLLOUT_REFRESH_SECONDS = 5.0
IDLE_FLATTEN_EVERY_SECONDS = 1.0




def recorded_trade(raw: list[bytes | str | None]) -> RecordedTrade | None:
    """``position:<symbol>``'s side, qty and opened_at; None when absent or unreadable (nothing assumed)."""
    side, qty, opened_at = (text(value) for value in raw)
    if side is None or qty is None or opened_at is None:
        return None
    try:
        return RecordedTrade(PositionSide(side), float(qty), int(opened_at))
    except ValueError:
        return None


def rollout_fallback(ctx: ComponentContext) -> RolloutConfig:
    spec = ctx.policy.exits
    return RolloutConfig(
        mode=spec.mode,
        percent=spec.rollout_percent,
        pinned_live=tuple(spec.pinned_live),
        pinned_shadow=tuple(spec.pinned_shadow),
        source="policy",
    )


def exit_control(control: ControlState, rollout: RolloutConfig, symbol: str) -> ExitControl:
    return ExitControl(
        rollout_live=rollout.is_live(symbol),
        advanced_exits_shadow=control.advanced_exits_shadow,
        blocks_exits=control.blocks_exits,
        flatten=control.flatten,
    )


class ExitBrain(Service):
    def __init__(
        self,
        ctx: ComponentContext,
        *,
        rules: RuleSettings | None = None,
        rollout_refresh_seconds: float = ROLLOUT_REFRESH_SECONDS,
        retry_after_ticks: int = brain.RETRY_AFTER_TICKS,
    ) -> None:
        super().__init__(ctx)
        self.rules = rules or RuleSettings(max_hold_minutes=ctx.policy.exits.max_hold_minutes)
        self.fallback = rollout_fallback(ctx)
        self.rollout_refresh_seconds = rollout_refresh_seconds
        self.retry_after_ticks = retry_after_ticks
        self._rollout: RolloutConfig | None = None
        self._rollout_read_at = 0.0
        self._last_idle_flatten = 0.0
        self._control: ControlState | None = None
        self.steps = StepRunner(
            ctx.client, ctx.keys, COMPONENT, ctx.policy.streams.max_len, ctx.policy.streams.done_ttl_seconds
        )

    def handlers(self) -> dict[str, Handler]:
        return {"market.tick": self.on_tick, "position.snapshot": self.on_snapshot}

    # --- state and config -----------------------------------------------------------------------
    def state_key(self, symbol: str) -> str:
        return self.ctx.keys.component_state(COMPONENT, symbol)

    @property
    def index_key(self) -> str:
        return self.ctx.keys.component_state(COMPONENT, INDEX)

    def load(self, symbol: str) -> tuple[BrainState, str | None, ControlState]:
        """The symbol's state, its ``rev`` (None: never written) and the kill switch, in one round trip."""
        state, rev, control, _ = self.load_with_record(symbol)
        return state, rev, control

    def load_with_record(self, symbol: str) -> tuple[BrainState, str | None, ControlState, RecordedTrade | None]:
        """:meth:`load` plus the position as position-state recorded it, in the same round trip."""
        with self.ctx.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.state_key(symbol))
            pipe.hgetall(self.ctx.keys.control)
            pipe.hgetall(self.ctx.keys.halts)
            pipe.hmget(self.ctx.keys.position(symbol), "side", "qty", "opened_at")
            raw_state, raw_control, raw_halts, raw_position = pipe.execute()
        state_fields = text_dict(raw_state)
        control = parse_control(text_dict(raw_control), text_dict(raw_halts))
        rev = state_fields.get("rev")
        data = state_fields.get("data")
        # a state we cannot parse must not be silently reset (that would forget an open position):
        # the exception leaves the message pending and, after N deliveries, in the DLQ with the reason
        state = BrainState.from_json(json.loads(data)) if data else BrainState()
        return state, rev, control, recorded_trade(raw_position)

    def rollout(self) -> RolloutConfig:
        now = time.monotonic()
        if self._rollout is not None and now - self._rollout_read_at < self.rollout_refresh_seconds:
            return self._rollout
        raw = text_dict(self.ctx.client.hgetall(self.ctx.keys.rollout))
        try:
            config = parse_rollout_hash(raw, self.fallback)
        except RolloutError as error:
            self.count("rollout_unreadable")
            self.ctx.log.warning("rollout unreadable: advanced exits in SHADOW", extra={"error": str(error)})
            config = ALL_SHADOW
        if config != self._rollout:
            self.ctx.log.info(
                "exit rollout applied",
                extra={"rollout": config.to_hash(), "rollout_source": config.source},
            )
        self._rollout = config
        self._rollout_read_at = now
        return config

    def _write(self, step: Step, symbol: str, state: BrainState, rev: str | None) -> Step:
        next_rev = str(int(rev) + 1) if rev else "1"
        step.guard(self.state_key(symbol), "rev", rev)
        step.write("HSET", self.state_key(symbol), "rev", next_rev, "data", json.dumps(state.to_json()))
        if state.position is None:
            step.write("SREM", self.index_key, symbol)
        else:
            step.write("SADD", self.index_key, symbol)
        return step

    # --- handlers -------------------------------------------------------------------------------
    def on_snapshot(self, envelope: Envelope[PositionSnapshot], delivery: Delivery) -> Step | None:
        snapshot = envelope.message
        state, rev, _ = self.load(snapshot.symbol)
        new = brain.apply_snapshot(state, snapshot)
        if new is None:
            self.count("stale_snapshots")
            self.ctx.log.info(
                "stale snapshot ignored",
                extra={"symbol": snapshot.symbol, "version": snapshot.version, "applied": state.applied_version},
            )
            return None
        if new.position is not None and (state.position is None or not new.position.same_position(state.position)):
            self.ctx.log.info(
                "watching position",
                extra={
                    "symbol": snapshot.symbol,
                    "side": new.position.side.value,
                    "qty": new.position.qty,
                    "stop_loss": new.position.stop_loss,
                    "take_profit": new.position.take_profit,
                },
            )
        return self._write(Step(), snapshot.symbol, new, rev)

    def on_tick(self, envelope: Envelope[Tick], delivery: Delivery) -> Step | None:
        tick = envelope.message
        state, rev, control, recorded = self.load_with_record(tick.symbol)
        if state.position is None:
            return None
        if tick.event_time < state.last_time:
            self.count("stale_ticks")
        gate = exit_control(control, self.rollout(), tick.symbol)
        outcome = brain.on_tick(state, tick, self.rules, gate, self.retry_after_ticks, recorded)
        if outcome.closed:
            self.count("exits_for_closed_trade")
        return self._step_for(outcome, tick, rev, envelope.corr)

    def _step_for(self, outcome: TickOutcome, tick: Tick, rev: str | None, corr: str) -> Step | None:
        if not outcome.changed:
            return None
        position = outcome.state.position
        assert position is not None  # changed outcomes only come from a watched position
        step = self._write(Step(), tick.symbol, outcome.state, rev)
        for record in outcome.shadow:
            step.emit(
                "exit.shadow",
                brain.shadow_message(position, record, tick),
                id=brain.shadow_id(position, record, tick.event_time),
                corr=corr,
            )
            self.count("shadow_records")
        if outcome.suppressed:
            self.count("exits_waiting")
        if outcome.exit is not None:
            plan = brain.exit_plan(position, outcome.exit, outcome.plan_id, tick.price, tick.event_time, corr)
            step.emit("apply.plan", plan, id=plan.plan_id, corr=corr)
            self.count(f"exits_{outcome.exit.reason}")
            self.ctx.log.info(
                "exit planned",
                extra={
                    "symbol": tick.symbol,
                    "plan_id": plan.plan_id,
                    "reason": outcome.exit.reason,
                    "qty": plan.qty,
                    "price": tick.price,
                    "exit_level": outcome.exit.level,  # not "level": that is the log line's own field
                },
            )
        return step

    # --- flatten without ticks ------------------------------------------------------------------
    def on_control(self, state: ControlState) -> None:
        self._control = state
        if state.flatten:
            self._last_idle_flatten = 0.0  # act on a new flatten at once

    def idle(self) -> float | None:
        control = self._control
        if control is None or not control.flatten or control.blocks_exits:
            return None
        if time.monotonic() - self._last_idle_flatten < IDLE_FLATTEN_EVERY_SECONDS:
            return None
        self._last_idle_flatten = time.monotonic()
        self.flatten_all(control)
        return None

    def flatten_all(self, control: ControlState) -> int:
        """Plan an exit for every watched position not yet flattened in this generation; returns plans made."""
        made = 0
        for symbol in sorted(text(s) for s in self.ctx.client.smembers(self.index_key)):
            state, rev, fresh = self.load(symbol)
            if fresh.generation != control.generation or not fresh.flatten:
                break  # the kill switch changed under us: the runner will call on_control again
            outcome = brain.idle_flatten(state, control.generation, exit_control(fresh, self.rollout(), symbol))
            if outcome.exit is None or outcome.state.position is None:
                continue
            position = outcome.state.position
            price = state.last_price or position.entry_price
            step = self._write(Step(), symbol, outcome.state, rev)
            plan = brain.exit_plan(
                position, outcome.exit, outcome.plan_id, price, state.last_time or position.opened_at
            )
            step.emit("apply.plan", plan, id=plan.plan_id)
            result = self.steps.run(step, message_id=f"idle-flatten:{plan.plan_id}")
            if result is StepOutcome.DONE:
                made += 1
                self.count("exits_flatten")
                self.ctx.log.info("flatten planned without a tick", extra={"symbol": symbol, "plan_id": plan.plan_id})
        return made


def build(ctx: ComponentContext) -> Service:
    return ExitBrain(ctx)
