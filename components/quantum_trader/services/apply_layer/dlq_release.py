"""Releasing what the governor holds for approvals that went to apply-layer's DLQ.

An approval that goes to the DLQ (undecodable or invalid, or delivered ``max_deliveries`` times)
gets no result, so position-state never releases what the governor reserved for it. apply-layer
follows its DLQ in a second consumer group (``apply-layer.release``, looked at every
``DLQ_RELEASE_SECONDS``) and releases the reservation, the entry lock and the exit lock of the plan
when the plan is identified and no order can exist for it (the rule: :mod:`quantum_trader.execution.dead_letters`).
A kept reservation is counted (``dead_letter_reservation_kept``) and logged; an entry that names no
plan is counted as ``dead_letter_unidentified``.
"""

from __future__ import annotations

import redis

from quantum_trader.bus.codec import text, text_dict
from quantum_trader.bus.step import Step, StepOutcome, StepRunner
from quantum_trader.contracts.registry import DLQ_SUFFIX
from quantum_trader.execution.dead_letters import dead_lettered_plan, release_for
from quantum_trader.runtime.service import Service

APPROVALS = "apply.approved"
DLQ_RELEASE_SECONDS = 1.0
"""how often apply-layer looks at its DLQ for reservations to release"""
DLQ_RELEASE_BATCH = 100


class DeadLetterRelease:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.ctx = service.ctx
        self.group = f"{service.ctx.name}.release"
        self._steps: StepRunner | None = None
        """made with the group, on the first look"""
        self._next_look = 0.0

    def look_when_due(self, now: float) -> None:
        """Release what is due, at most every ``DLQ_RELEASE_SECONDS``; a Redis error waits for the next look."""
        if now < self._next_look:
            return
        self._next_look = now + DLQ_RELEASE_SECONDS
        try:
            self.release_dead_lettered()
        except redis.RedisError as error:
            self.ctx.log.warning("dead-lettered approvals not looked at", extra={"error": str(error)})

    def _runner(self, dlq: str) -> StepRunner:
        if self._steps is None:
            try:
                self.ctx.client.xgroup_create(dlq, self.group, id="0", mkstream=True)
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise
            retention = self.ctx.policy.streams
            self._steps = StepRunner(
                self.ctx.client, self.ctx.keys, self.group, retention.max_len, retention.done_ttl_seconds
            )
        return self._steps

    def release_dead_lettered(self) -> int:
        """Release what the governor holds for dead-lettered approvals (module doc); returns how many.

        Each DLQ entry is handled once (its own exactly-once step, acked in the release group); one
        whose step conflicted (a lock moved meanwhile) stays pending and is looked at again.
        """
        client = self.ctx.client
        dlq = self.ctx.keys.dlq(APPROVALS)
        steps = self._runner(dlq)
        released = 0
        for start in ("0", ">"):  # what conflicted last time, then what is new
            reply = client.xreadgroup(self.group, self.ctx.pod, {dlq: start}, count=DLQ_RELEASE_BATCH)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    if fields:
                        released += self._release_one(steps, text(entry_id), text_dict(fields))
                    else:  # trimmed while pending
                        client.xack(dlq, self.group, entry_id)
        return released

    def _release_one(self, steps: StepRunner, entry_id: str, record: dict[str, str]) -> int:
        plan_id = dead_lettered_plan(record)
        step = Step()
        if plan_id is None:
            self.service.count("dead_letter_unidentified")
            self.ctx.log.warning("dead-lettered approval names no plan: nothing released", extra={"entry": entry_id})
        else:
            self._add_release(step, plan_id, entry_id)
        outcome = steps.run(
            step,
            message_id=f"dlq:{entry_id}",
            input_stream=APPROVALS + DLQ_SUFFIX,
            group=self.group,
            entry_id=entry_id,
        )
        if outcome is StepOutcome.CONFLICT:
            return 0  # stays pending: the next look reads it again
        if step.ops and outcome is StepOutcome.DONE:
            self.service.count("dead_letter_released")
            self.ctx.log.info("released the reservation of a dead-lettered approval", extra={"plan_id": plan_id})
            return 1
        return 0

    def _add_release(self, step: Step, plan_id: str, entry_id: str) -> None:
        """Add to ``step`` the writes that release what the governor holds for ``plan_id``, if anything."""
        keys = self.ctx.keys
        with self.ctx.client.pipeline(transaction=False) as pipe:
            pipe.exists(keys.in_flight(plan_id))
            pipe.hexists(keys.reservations, plan_id)
            pipe.hgetall(keys.entry_locks)
            pipe.hgetall(keys.exit_locks)
            marked, reserved, entry_locks, exit_locks = pipe.execute()
        release = release_for(
            plan_id,
            marked=bool(marked),
            reserved=bool(reserved),
            entry_locks=text_dict(entry_locks),
            exit_locks=text_dict(exit_locks),
        )
        if release is None:
            self.service.count("dead_letter_reservation_kept")
            self.ctx.log.warning(
                "dead-lettered approval may have been sent: its reservation is kept",
                extra={"plan_id": plan_id, "entry": entry_id},
            )
            return
        if release.reservation:
            step.tally("HDEL", keys.reservations, plan_id, totals=keys.reservations_totals)
        for locks_key, symbols in ((keys.entry_locks, release.entry_locks), (keys.exit_locks, release.exit_locks)):
            for symbol in symbols:
                step.guard(locks_key, symbol, plan_id)
                step.write("HDEL", locks_key, symbol)
