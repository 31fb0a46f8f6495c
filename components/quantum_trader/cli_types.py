"""The click parameter types of the ``qt`` commands: each refuses a bad value with one line naming the flag.

Apart from cli.py so that commands other modules define (``qt backtest``, ``qt train``) use the same types
without importing the command group that imports them.
"""

from __future__ import annotations

import re
from typing import Any

import click

from quantum_trader.contracts.messages import SYMBOL_PATTERN
from quantum_trader.runtime.settings import http_url_problem


class RedisUrl(click.ParamType):
    name = "URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from urllib.parse import urlsplit

        text = str(value)
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as error:
            self.fail(f"{text!r} is not a Redis URL ({error})", param, ctx)
        if parts.scheme == "unix" and parts.path:
            return text
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            self.fail(f"{text!r} is not a Redis URL (redis://HOST:PORT/DB, rediss://... or unix://PATH)", param, ctx)
        if port == 0:
            self.fail(f"{text!r} has port 0", param, ctx)
        return text


class HttpUrl(click.ParamType):
    name = "URL"

    def __init__(self, allow_empty: bool = False) -> None:
        self.allow_empty = allow_empty

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not text and self.allow_empty:
            return text
        problem = http_url_problem(text)
        if problem:
            self.fail(problem, param, ctx)
        return text


class Speed(click.ParamType):
    """``max`` (as fast as the pipeline takes it) or a positive speed-up over real time."""

    name = "N|max"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        import math

        if isinstance(value, float):
            return value
        text = str(value).strip().lower()
        if text == "max":
            return 0.0  # the policy's marketData.speed 0: no pacing
        try:
            speed = float(text)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor 'max'", param, ctx)
        if not math.isfinite(speed) or speed <= 0:
            self.fail(f"{value!r} must be a positive speed-up (or 'max')", param, ctx)
        return speed


class Pattern(click.ParamType):
    def __init__(self, pattern: str | re.Pattern[str], name: str, example: str) -> None:
        self.pattern = re.compile(pattern)
        self.name = name
        self.example = example

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not self.pattern.fullmatch(text):
            self.fail(f"{text!r} is not {self.example}", param, ctx)
        return text


POSITIVE_SECONDS = click.FloatRange(min=0, min_open=True)
INSTANCE = Pattern(
    r"[a-z0-9]([a-z0-9.\-]*[a-z0-9])?", "INSTANCE", "an instance id (lower-case letters, digits, '.', '-')"
)
SYMBOL = Pattern(SYMBOL_PATTERN, "SYMBOL", "a symbol (2-20 capital letters and digits, like BTCUSDT)")
"""contracts' one symbol rule: a symbol the command takes is one every message accepts"""
MONTH = Pattern(r"\d{4}-(0[1-9]|1[0-2])", "YYYY-MM", "a month as YYYY-MM")
