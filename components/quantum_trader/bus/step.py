"""The exactly-once stage step: done-key + state writes + outputs + XACK in one Lua script (a batch of steps too).

What a step costs inside Redis, and why the done keys stay one string key per message:

- The done key is checked and set by one ``SET done:<stage>:<id> 1 EX ttl NX`` (two commands before:
  EXISTS, then SET). A step whose guard then fails, or whose write fails, deletes it again in the
  same script; scripts are atomic, so no reader ever sees the key without the step's effects.
- A batch of steps (:meth:`StepRunner.run_many`) is one script call and one XACK per input stream
  instead of a call and an XACK per step; every step in it is checked, applied and marked exactly as
  on its own, so duplicates, conflicts and failures are decided per step.
- The done keys are not folded into one hash or set per batch or stage: other code finds a message's
  marker by its name alone (apply-layer's and position-state's first reads, ``governor.lua``, DESIGN
  §3's ``done:<stage>:<id>``), which a per-batch hash cannot give, and a single key holding every
  message has no per-member TTL, so it would grow or need a sweep (more writes, not fewer).
- XACK's answer and the pending list are not used in place of the done key. They tell whether one
  stream *entry* was acked, not whether one *message* was applied: the same message arrives as a
  second entry when it is published twice (a source outside a step, a producer's retry), and only
  the done key, named by the message id, turns that copy into a duplicate. And an XACK sent before
  the writes would lose the message if a write then failed; sent after them, it decides nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources

import redis

from quantum_trader.contracts.envelope import encode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import Message


@dataclass(frozen=True, slots=True)
class Output:
    """A message to add to a stream (logical name, e.g. ``apply.plan``)."""

    stream: str
    message: Message
    id: str
    corr: str = ""


@dataclass(frozen=True, slots=True)
class Guard:
    """Optimistic check: the step applies only if ``HGET key field`` equals ``expected`` (None: absent)."""

    key: str
    field: str
    expected: str | None


WRITE_COMMANDS = frozenset(
    {"HSET", "HDEL", "DEL", "SET", "ZADD", "ZREM", "HINCRBY", "HINCRBYFLOAT", "EXPIRE", "SADD", "SREM", "PEXPIRE"}
)


@dataclass(slots=True)
class Step:
    """What a handler wants done for one input message, applied atomically with marking it done."""

    outputs: list[Output] = field(default_factory=list)
    ops: list[list[str]] = field(default_factory=list)
    guards: list[Guard] = field(default_factory=list)

    def emit(self, stream: str, message: Message, id: str, corr: str = "") -> Step:
        self.outputs.append(Output(stream, message, id, corr))
        return self

    def write(self, command: str, *args: object) -> Step:
        if command not in WRITE_COMMANDS:
            raise ValueError(f"{command} is not an allowed state write")
        self.ops.append([command, *(_arg(a) for a in args)])
        return self

    def tally(self, command: str, key: str, field_name: str, value: float | None = None, *, totals: str) -> Step:
        """HSET or HDEL one field of a hash of numbers whose ``sum`` and ``count`` ``totals`` keeps.

        The script reads the field's old value and moves the totals by the difference in the same
        atomic step, so the totals stay exact under any concurrency (``tally.lua``, run by ``stage.lua``).
        """
        if command == "HSET":
            if value is None:
                raise ValueError("a tallied HSET needs a value")
            self.ops.append(["TALLY", totals, "HSET", key, field_name, _arg(float(value))])
        elif command == "HDEL":
            self.ops.append(["TALLY", totals, "HDEL", key, field_name])
        else:
            raise ValueError(f"{command} is not a tallied write (HSET or HDEL)")
        return self

    def guard(self, key: str, field_name: str, expected: str | None) -> Step:
        self.guards.append(Guard(key, field_name, expected))
        return self


def _arg(value: object) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def lua_with_tally(script: str) -> str:
    """``script`` with ``tally.lua`` (the running totals' one write function) defined before it."""
    return resources.files(__package__).joinpath("tally.lua").read_text() + "\n" + script


class StepOutcome(Enum):
    DONE = 1
    DUPLICATE = 0
    CONFLICT = -1


class StepRunner:
    """Runs steps for one stage. ``stage`` names the done keys: ``done:<stage>:<message id>``."""

    def __init__(self, client: redis.Redis, keys: Keys, stage: str, max_len: int, done_ttl_seconds: int):
        self._client = client
        self._keys = keys
        self._stage = stage
        self._max_len = max_len
        self._ttl = done_ttl_seconds
        self._script = client.register_script(
            lua_with_tally(resources.files(__package__).joinpath("stage.lua").read_text())
        )
        self._loaded = False

    def payload(self, step: Step, group: str, entry_id: str) -> str:
        outputs = []
        for out in step.outputs:
            fields = encode(out.message, id=out.id, corr=out.corr)
            flat: list[str] = []
            for k, v in fields.items():
                flat.extend((k, v))
            outputs.append([self._keys.stream(out.stream), str(self._max_len), flat])
        return json.dumps(
            {
                "ttl": self._ttl,
                "group": group,
                "entry_id": entry_id,
                "guards": [[g.key, g.field, g.expected] for g in step.guards],
                "ops": step.ops,
                "outputs": outputs,
            }
        )

    def run(
        self, step: Step, *, message_id: str, input_stream: str = "", group: str = "", entry_id: str = ""
    ) -> StepOutcome:
        """Apply ``step`` for input ``message_id`` once; ack ``entry_id`` of ``input_stream`` in the same script."""
        done_key = self._keys.done(self._stage, message_id)
        stream_key = self._keys.stream(input_stream) if input_stream else done_key
        result = self._script(keys=[done_key, stream_key], args=[self.payload(step, group, entry_id)])
        return StepOutcome(int(result))

    def run_many(self, steps: list[tuple[Step, str, str, str, str]]) -> list[StepOutcome | Exception]:
        """Apply several steps in one script call: ``(step, message_id, input_stream, group, entry_id)`` each.

        The steps are applied in order, each exactly as :meth:`run` would apply it on its own (its done
        key checked and set, its guards, writes and outputs), and the whole batch is one atomic script:
        a process killed around the call leaves every step either applied or not, never half of the
        batch. The acks are one XACK per input stream. Outcomes come back in order; a step whose write
        failed comes back as its exception (it is not marked done nor acked; the others are unaffected).
        """
        if not steps:
            return []
        keys, payload = self.batch_call(steps)
        try:
            reply = self._script(keys=keys, args=[payload])  # loads the script on a NOSCRIPT
        except redis.exceptions.ResponseError as error:  # the call failed, or the write of its one step
            return [error] * len(steps)
        return self.batch_outcomes(reply, len(steps))

    @property
    def sha(self) -> str:
        """The stage script's SHA1 (after :meth:`ensure_loaded`), for a caller that sends the call itself."""
        return self._script.sha

    def ensure_loaded(self) -> None:
        """Load the script once: a pipeline cannot load it on the first miss (every call of it would fail)."""
        if not self._loaded:
            self._script.sha = self._client.script_load(self._script.script)
            self._loaded = True

    def batch_call(self, steps: list[tuple[Step, str, str, str, str]]) -> tuple[list[str], str]:
        """The keys and the argument of one script call that applies ``steps`` (see :meth:`run_many`).

        One step is sent in the one-step form: measured paced (one message per wake-up), the batch
        form's extra tables and protected calls cost a one-step call about a tenth more script time.
        """
        keys: list[str] = []
        payloads: list[str] = []
        for step, message_id, input_stream, group, entry_id in steps:
            done_key = self._keys.done(self._stage, message_id)
            keys.append(done_key)
            keys.append(self._keys.stream(input_stream) if input_stream else done_key)
            payloads.append(self.payload(step, group, entry_id))
        if len(payloads) == 1:
            return keys, payloads[0]
        return keys, "[" + ",".join(payloads) + "]"

    def queue_batch(self, pipe: redis.client.Pipeline, steps: list[tuple[Step, str, str, str, str]]) -> None:
        """Add one script call applying ``steps`` to ``pipe`` (after :meth:`ensure_loaded`).

        Its reply is read back with :meth:`batch_outcomes`.
        """
        keys, payload = self.batch_call(steps)
        pipe.evalsha(self._script.sha, len(keys), *keys, payload)

    @staticmethod
    def batch_outcomes(reply: object, count: int) -> list[StepOutcome | Exception]:
        """The outcomes of a batch call of ``count`` steps from its reply (an exception fails every step)."""
        if isinstance(reply, Exception):
            return [reply] * count
        if count == 1 and isinstance(reply, int):  # the one-step form (see batch_call)
            return [StepOutcome(reply)]
        if not isinstance(reply, list) or len(reply) != count:
            error = redis.exceptions.ResponseError(f"a batch of {count} steps answered {reply!r:.200}")
            return [error] * count
        outcomes: list[StepOutcome | Exception] = []
        for one in reply:
            if isinstance(one, int):
                outcomes.append(StepOutcome(one))
            else:
                message = one.decode("utf-8", "replace") if isinstance(one, bytes) else str(one)
                outcomes.append(redis.exceptions.ResponseError(message.removeprefix("ERR ")))
        return outcomes

    def queue(self, pipe: redis.client.Pipeline, steps: list[tuple[Step, str, str, str, str]]) -> None:
        """Add one script call per step to ``pipe`` (after :meth:`ensure_loaded`); :meth:`outcomes` reads the replies.

        Each call is a step on its own; :meth:`queue_batch` applies them all in one call instead.
        """
        for step, message_id, input_stream, group, entry_id in steps:
            done_key = self._keys.done(self._stage, message_id)
            stream_key = self._keys.stream(input_stream) if input_stream else done_key
            pipe.evalsha(self._script.sha, 2, done_key, stream_key, self.payload(step, group, entry_id))

    @staticmethod
    def outcomes(replies: list) -> list[StepOutcome | Exception]:
        return [r if isinstance(r, Exception) else StepOutcome(int(r)) for r in replies]
