"""Redis replies as text: one place to turn bytes (clients without decode_responses) into str.

Never raises: bytes that are not valid UTF-8 show as U+FFFD. A reply can hold bytes anyone wrote
(a stream entry's fields, a hash a person edited), and a consumer that raises while turning them
into text crash-loops on them. Stream entries are validated by ``contracts.envelope.decode``, which
refuses invalid UTF-8 with a reason, and their DLQ records keep such bytes as base64.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import overload


@overload
def text(value: bytes | str) -> str: ...
@overload
def text(value: None) -> None: ...
def text(value: bytes | str | None) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def text_dict(raw: Mapping) -> dict[str, str]:
    """A hash reply with str keys and values."""
    return {text(k): text(v) for k, v in raw.items()}
