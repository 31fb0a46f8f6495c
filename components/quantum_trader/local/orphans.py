"""Children of ``qt run`` never outlive it."""

from __future__ import annotations

import signal


def die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the supervisor dies, however it dies (Linux prctl).

    Components run in their own session so a terminal's Ctrl-C reaches only ``qt run``, which stops
    them in order; this makes sure a killed ``qt run`` never leaves a trading stack running unwatched.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: stop() still stops them on every orderly exit
        pass
