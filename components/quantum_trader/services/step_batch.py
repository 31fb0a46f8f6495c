"""Several stage steps in one atomic script: position-state's batch of results in one round trip.

Why not the bus's pipelined steps (``independent_steps``): position-state computes a batch's steps on
the state the previous steps of the batch leave (two results for one symbol, the heat's running sum),
so a step may only apply if every step before it did. In a pipeline a step whose predecessor
conflicted could still pass its guards (a predicted version the reconciler happens to write too) and
apply on a state it was not computed on. Here the steps run in one script, in order, and the first
one that does not do what was expected stops the batch: the rest come back as not tried and are
recomputed by their handler on what is really there.

Each step is the bus's own stage step (``bus/stage.lua`` run as a function, with the keys and
arguments :meth:`StepRunner.queue` gives it), so exactly-once, guards, tallies, outputs and acks are
the bus's; the batch only adds the order and the stop.

This belongs in the bus; it is here because bus/ had another owner when it was written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from enum import Enum
from importlib import resources

import redis

from quantum_trader.bus.step import Step, StepOutcome, StepRunner, lua_with_tally

log = logging.getLogger(__name__)

_STAGE_MARKER = "--@STAGE_STEP@"


class BatchOutcome(Enum):
    """What the batch script did with one step."""

    DONE = 1
    DUPLICATE = 0
    CONFLICT = -1
    NOT_TRIED = -2
    """an earlier step of the batch did not do what was expected: this one was not run"""
    FAILED = -3
    """the step raised inside the script (logged by redis-server): as a failed stage step"""

    @property
    def step_outcome(self) -> StepOutcome | None:
        """The consumer's outcome, or None when the step must be recomputed on its own."""
        return {BatchOutcome.DONE: StepOutcome.DONE, BatchOutcome.DUPLICATE: StepOutcome.DUPLICATE}.get(self)


@dataclass(frozen=True, slots=True)
class BatchStep:
    """One step of a batch: the step, what its stage step is called with, and the outcome it must have."""

    step: Step
    message_id: str
    input_stream: str
    group: str
    entry_id: str
    expected: StepOutcome = StepOutcome.DONE
    """DUPLICATE for a message already known done (its step only acks): the batch goes on after it"""


class _StageCalls:
    """Stands in for a pipeline: collects the stage-script calls ``StepRunner.queue`` would send.

    So each step gets exactly the keys and arguments the bus gives its own stage script.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    def evalsha(self, sha: str, key_count: int, *keys_and_args: str) -> None:
        self.calls.append((list(keys_and_args[:key_count]), list(keys_and_args[key_count:])))


def batch_script_source() -> str:
    """``tally.lua`` + ``step_batch.lua`` with ``stage.lua`` as the function ``stage_step(KEYS, ARGV)``."""
    stage = resources.files("quantum_trader.bus").joinpath("stage.lua").read_text()
    batch = resources.files(__package__).joinpath("step_batch.lua").read_text()
    if batch.count(_STAGE_MARKER) != 1:
        raise ValueError("step_batch.lua must hold the stage marker exactly once")
    return lua_with_tally(batch.replace(_STAGE_MARKER, f"local function stage_step(KEYS, ARGV)\n{stage}\nend"))


class StepBatch:
    """Runs batches of stage steps for one stage (the consumer group), each batch one script call."""

    def __init__(self, client: redis.Redis, runner: StepRunner) -> None:
        self._client = client
        self._runner = runner
        self._script = client.register_script(batch_script_source())

    def run(self, steps: list[BatchStep]) -> list[BatchOutcome]:
        """Apply ``steps`` in order in one script; one outcome each (see :class:`BatchOutcome`)."""
        if not steps:
            return []
        recorder = _StageCalls()
        self._runner.queue(
            recorder,  # type: ignore[arg-type]
            [(s.step, s.message_id, s.input_stream, s.group, s.entry_id) for s in steps],
        )
        keys: list[str] = []
        args: list[str] = []
        layout = []
        for (step_keys, step_args), batch_step in zip(recorder.calls, steps, strict=True):
            keys.extend(step_keys)
            args.extend(step_args)
            layout.append([len(step_keys), len(step_args), batch_step.expected.value])
        replies = self._script(keys=keys, args=[json.dumps(layout), *args])
        outcomes = [BatchOutcome(int(r)) for r in replies]
        if len(outcomes) != len(steps):
            raise RuntimeError(f"the batch script answered {len(outcomes)} outcomes for {len(steps)} steps")
        return outcomes
