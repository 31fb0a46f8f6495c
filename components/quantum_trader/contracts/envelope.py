"""The stream entry envelope (DESIGN §3): fields ``type``, ``v``, ``id``, ``corr``, ``symbol``, ``data``.

``encode`` turns a message into the flat string fields XADD takes; ``decode`` validates an entry
and raises :class:`InvalidMessage` with a reason a DLQ entry can carry — for every way an entry can
be wrong, never another exception: a consumer that crashes on an entry crash-loops on it, since the
entry stays pending. ``dead_letter_record`` keeps the original entry in a DLQ record, bytes included.

``data`` is validated by pydantic's JSON parser in strict mode: ``true`` is not a number, ``"1"`` is
not a price, ``NaN`` and ``Infinity`` are not finite, an integer of thousands of digits and nesting
beyond the parser's recursion limit are refused as invalid JSON instead of raising ``ValueError`` or
``RecursionError`` in ``json.loads``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from quantum_trader.contracts.messages import ALL_MESSAGES, Message

M = TypeVar("M", bound=Message)

MESSAGE_TYPES: dict[str, type[Message]] = {m.MESSAGE_TYPE: m for m in ALL_MESSAGES}

MAX_ID_LENGTH = 256
"""ids name done keys and order ids; the longest the components make is well under 200"""
MAX_REASON_LENGTH = 1000


class InvalidMessage(ValueError):
    """A stream entry that cannot be turned into the message its stream carries."""


def symbol_of(message: Message) -> str:
    """The symbol a message is about ("" for none): an approval is about its plan's symbol."""
    symbol = getattr(message, "symbol", None)
    if symbol is None:
        plan = getattr(message, "plan", None)
        symbol = getattr(plan, "symbol", "")
    return symbol


@dataclass(frozen=True, slots=True)
class Envelope(Generic[M]):
    id: str
    corr: str
    message: M

    @property
    def symbol(self) -> str:
        return symbol_of(self.message)


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


def _field(fields: Mapping[Any, Any], name: str) -> Any:
    value = fields.get(name)
    return fields.get(name.encode()) if value is None else value


def _text(fields: Mapping[Any, Any], name: str) -> str:
    value = _field(fields, name)
    if value is None:
        raise InvalidMessage(f"missing envelope field {name!r}")
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError as error:
            raise InvalidMessage(f"envelope field {name!r} is not valid UTF-8 (byte {error.start})") from None
    return str(value)


def _identifier(fields: Mapping[Any, Any], name: str, *, required: bool) -> str:
    value = _text(fields, name)
    if not value and required:
        raise InvalidMessage(f"empty message {name}")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidMessage(f"message {name} is {len(value)} characters (max {MAX_ID_LENGTH})")
    if not value.isascii() or not value.isprintable() or " " in value:
        raise InvalidMessage(f"message {name} {value[:40]!r} must be printable ASCII without spaces")
    return value


def _version(fields: Mapping[Any, Any], expected: type[Message]) -> None:
    text = _text(fields, "v")
    known = sorted(expected.SCHEMA_VERSIONS)
    # compared as text: int() would read "01", " 1", "1_0" and Arabic-Indic digits as versions
    if text in {str(v) for v in known}:
        return
    if text.isascii() and text.isdigit() and int(text) > known[-1]:
        raise InvalidMessage(f"schema version {text} is newer than {known[-1]}")
    raise InvalidMessage(f"schema version {text[:40]!r} of {expected.MESSAGE_TYPE} is unknown (known: {known})")


def _problems(error: ValidationError, kind: str) -> str:
    errors = error.errors(include_url=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return "data is not JSON: " + "; ".join(e["msg"].removeprefix("Invalid JSON: ") for e in errors)
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errors)
    return f"invalid {kind}: {problems}"


def decode(fields: Mapping[Any, Any], expected: type[M]) -> Envelope[M]:
    """Validate a raw stream entry as an ``expected`` message; any problem is an :class:`InvalidMessage`."""
    try:
        return _decode(fields, expected)
    except InvalidMessage:
        raise
    except Exception as error:  # whatever else input can provoke, it is a reason, never a crash
        raise InvalidMessage(f"entry cannot be decoded: {type(error).__name__}: {error}"[:MAX_REASON_LENGTH]) from None


def _decode(fields: Mapping[Any, Any], expected: type[M]) -> Envelope[M]:
    kind = _text(fields, "type")
    if kind != expected.MESSAGE_TYPE:
        raise InvalidMessage(f"type {kind[:60]!r} where {expected.MESSAGE_TYPE!r} was expected")
    _version(fields, expected)
    message_id = _identifier(fields, "id", required=True)
    corr = _identifier(fields, "corr", required=False)
    envelope_symbol = _text(fields, "symbol")
    data = _field(fields, "data")
    if data is None:
        raise InvalidMessage("missing envelope field 'data'")
    if isinstance(data, bytes):
        try:
            data = data.decode()
        except UnicodeDecodeError as error:
            raise InvalidMessage(f"data is not valid UTF-8 (byte {error.start})") from None
    try:
        message = expected.model_validate_json(data, strict=True)
    except ValidationError as error:
        raise InvalidMessage(_problems(error, expected.MESSAGE_TYPE)[:MAX_REASON_LENGTH]) from None
    own_symbol = getattr(message, "symbol", "")
    if envelope_symbol != own_symbol:
        raise InvalidMessage(f"envelope symbol {envelope_symbol[:40]!r} but the message is about {own_symbol!r}")
    return Envelope(id=message_id, corr=corr, message=message)


def _readable(value: Any) -> tuple[str, bool]:
    """``value`` as text, and whether it had to be base64 because it is not valid UTF-8."""
    if not isinstance(value, bytes):
        return str(value), False
    try:
        return value.decode(), False
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii"), True


def original_fields(fields: Mapping[Any, Any]) -> dict[str, str]:
    """The entry's fields as ``orig.<name>``: nothing is lost, not even bytes that are not UTF-8.

    A value that is not valid UTF-8 is kept as base64 under ``orig.<name>.b64``; a name that is not
    is kept as ``b64:<base64 of the name>``.
    """
    record: dict[str, str] = {}
    for raw_name, raw_value in fields.items():
        name, name_encoded = _readable(raw_name)
        if name_encoded:
            name = "b64:" + name
        value, value_encoded = _readable(raw_value)
        record[f"orig.{name}.b64" if value_encoded else f"orig.{name}"] = value
    return record


def dead_letter_record(
    *, reason: str, stream: str, entry_id: str, group: str, deliveries: int, fields: Mapping[Any, Any], time_ms: int
) -> dict[str, str]:
    """The fields of a ``<stream>.dlq`` entry: why, where from, and the original entry."""
    return {
        "reason": reason[:MAX_REASON_LENGTH] or "unknown",
        "stream": stream,
        "entry_id": entry_id,
        "group": group,
        "deliveries": str(deliveries),
        "time": str(time_ms),
        **original_fields(fields),
    }
