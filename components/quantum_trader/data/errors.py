"""Errors of the data package: one line a user can act on, raised instead of tracebacks from deep I/O."""

from __future__ import annotations


class DataError(ValueError):
    """A data request or file that cannot be used; the message is one line and says what to change."""


class KlineFormatError(DataError):
    """A kline file line that breaks the Binance kline format; names the file and the line number."""

    def __init__(self, origin: str, line_no: int, problem: str) -> None:
        self.origin = origin
        self.line_no = line_no
        self.problem = problem
        super().__init__(f"{origin}:{line_no}: {problem}")
