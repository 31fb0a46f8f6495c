"""Redis replies as text: one place to turn bytes (clients without decode_responses) into str."""

from __future__ import annotations

from collections.abc import Mapping
from typing import overload


@overload
def text(value: bytes | str) -> str: ...
@overload
def text(value: None) -> None: ...
def text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def text_dict(raw: Mapping) -> dict[str, str]:
    """A hash reply with str keys and values."""
    return {text(k): text(v) for k, v in raw.items()}
