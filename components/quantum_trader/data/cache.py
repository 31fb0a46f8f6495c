"""Where fetched data lives, and writes that never leave a half-written file behind.

A cache is trusted by existence (a later run returns a file that is present), so a file must
appear under its final name only when it is complete: everything is written beside it and renamed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def default_data_dir() -> Path:
    """``$QT_DATA_DIR``, else ``~/.cache/quantum-trader/data``: one place for every fetched file."""
    configured = os.environ.get("QT_DATA_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "quantum-trader" / "data"


@contextmanager
def atomic_writer(path: Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        # "x": created with the process umask (unlike mkstemp's 0600), and never over another file.
        if "b" in mode:
            handle = tmp.open(mode.replace("w", "x"))
        else:
            handle = tmp.open(mode.replace("w", "x"), encoding="utf-8", newline="")
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
