"""The stream entry envelope (DESIGN §3): fields ``type``, ``v``, ``id``, ``corr``, ``symbol``, ``data``.

``encode`` turns a message into the flat string fields XADD takes; ``decode`` validates an entry
and raises :class:`InvalidMessage` with a reason a DLQ entry can carry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import ValidationError

from quantum_trader.contracts.messages import ALL_MESSAGES, Message

M = TypeVar("M", bound=Message)

MESSAGE_TYPES: dict[str, type[Message]] = {m.MESSAGE_TYPE: m for m in ALL_MESSAGES}


class InvalidMessage(ValueError):
    """A stream entry that cannot be turned into the message its stream carries."""


@dataclass(frozen=True, slots=True)
class Envelope(Generic[M]):
    id: str
    corr: str
    message: M

    @property
    def symbol(self) -> str:
        return getattr(self.message, "symbol", "")


def encode(message: Message, *, id: str, corr: str = "") -> dict[str, str]:
    if not id:
        raise ValueError("a message needs an id")
    return {
        "type": message.MESSAGE_TYPE,
        "v": str(message.SCHEMA_VERSION),
        "id": id,
        "corr": corr or id,
        "symbol": getattr(message, "symbol", ""),
        "data": message.model_dump_json(),
    }


def _text(fields: dict, name: str) -> str:
    value = fields.get(name, fields.get(name.encode()))
    if value is None:
        raise InvalidMessage(f"missing envelope field {name!r}")
    return value.decode() if isinstance(value, bytes) else str(value)


def decode(fields: dict, expected: type[M]) -> Envelope[M]:
    """Validate a raw stream entry as an ``expected`` message."""
    kind = _text(fields, "type")
    if kind != expected.MESSAGE_TYPE:
        raise InvalidMessage(f"type {kind!r} where {expected.MESSAGE_TYPE!r} was expected")
    version_text = _text(fields, "v")
    try:
        version = int(version_text)
    except ValueError:
        raise InvalidMessage(f"schema version {version_text!r} is not a number") from None
    if version > expected.SCHEMA_VERSION:
        raise InvalidMessage(f"schema version {version} is newer than {expected.SCHEMA_VERSION}")
    message_id = _text(fields, "id")
    if not message_id:
        raise InvalidMessage("empty message id")
    corr = _text(fields, "corr")
    data = _text(fields, "data")
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as error:
        raise InvalidMessage(f"data is not JSON: {error.msg} at {error.pos}") from None
    try:
        message = expected.model_validate(payload)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in error.errors())
        raise InvalidMessage(f"invalid {expected.MESSAGE_TYPE}: {problems}") from None
    return Envelope(id=message_id, corr=corr, message=message)
