"""Which symbols run exit-brain's advanced exit logic live (DESIGN §5 ExitRollout, §4 invariant 8).

Pure and dependency-free (standard library only) so the operator can import it to compute the
ExitRollout status (live symbols, shadow symbols) with exactly the rule exit-brain applies.

The rule, in precedence order (the kill switch is applied by the caller, above all of this —
KILL > MODE > ROLLOUT > DEFAULT):

1. mode ``SHADOW``: nothing is live. The mode outranks the rollout, so a pinned-live symbol
   does not escape a SHADOW mode (DESIGN §4.8 hierarchy).
2. pinned shadow: never live. It wins over pinned live when a symbol is in both lists, because
   the conservative reading of a contradictory config is "not live".
3. pinned live: live.
4. otherwise live when ``stable_bucket(symbol) < percent``: 0 % puts nothing live, 100 % everything,
   and raising the percent only ever adds symbols (a bucket under 10 is also under 20).

``stable_bucket`` is sha256-based, never Python's ``hash()`` (salted per process), so every replica,
every restart and the operator agree on the split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

LIVE = "LIVE"
SHADOW = "SHADOW"
MODES = (SHADOW, LIVE)
BUCKETS = 100


class RolloutError(ValueError):
    """A rollout hash that cannot be interpreted; callers fall back to all-SHADOW (fail closed)."""


def normalize_symbol(symbol: str) -> str:
    """Symbols compare upper-case and trimmed, so ' btcusdt' in a pinned list still matches BTCUSDT."""
    return symbol.strip().upper()


def stable_bucket(symbol: str) -> int:
    """The symbol's bucket in 0..99: the first 8 bytes of sha256(symbol) modulo 100.

    64 bits modulo 100 has a negligible bias (< 1e-17), and the value depends only on the symbol's
    bytes, so it is the same in every process, replica and Python version.
    """
    digest = hashlib.sha256(normalize_symbol(symbol).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def _check_mode(mode: str) -> str:
    value = mode.strip().upper()
    if value not in MODES:
        raise RolloutError(f"rollout mode {mode!r} is not SHADOW or LIVE")
    return value


def _check_percent(percent: int) -> int:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise RolloutError(f"rollout percent {percent!r} is not an integer in 0..100")
    return percent


def is_live(
    symbol: str,
    mode: str,
    percent: int,
    pinned_live: Iterable[str] = (),
    pinned_shadow: Iterable[str] = (),
) -> bool:
    """True when ``symbol``'s advanced exits are live under this rollout (rule in the module docstring).

    Raises :class:`RolloutError` for a mode other than SHADOW/LIVE or a percent outside 0..100.
    """
    if _check_mode(mode) != LIVE:
        return False
    percent = _check_percent(percent)
    name = normalize_symbol(symbol)
    if name in {normalize_symbol(s) for s in pinned_shadow}:
        return False
    if name in {normalize_symbol(s) for s in pinned_live}:
        return True
    return stable_bucket(name) < percent


def split_symbols(
    symbols: Iterable[str],
    mode: str,
    percent: int,
    pinned_live: Iterable[str] = (),
    pinned_shadow: Iterable[str] = (),
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(live, shadow)``: every symbol in exactly one of them, input order kept, duplicates dropped."""
    live_pins = tuple(pinned_live)
    shadow_pins = tuple(pinned_shadow)
    live: list[str] = []
    shadow: list[str] = []
    for symbol in dict.fromkeys(symbols):
        (live if is_live(symbol, mode, percent, live_pins, shadow_pins) else shadow).append(symbol)
    return tuple(live), tuple(shadow)


def parse_symbol_list(text: str) -> tuple[str, ...]:
    """A comma list as stored in the ``rollout`` hash ('BTCUSDT, ETHUSDT'); empty items are dropped."""
    return tuple(dict.fromkeys(normalize_symbol(s) for s in text.split(",") if s.strip()))


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    """One ExitRollout as exit-brain applies it."""

    mode: str = SHADOW
    percent: int = 0
    pinned_live: tuple[str, ...] = ()
    pinned_shadow: tuple[str, ...] = ()
    source: str = field(default="default", compare=False)
    """where it came from (rollout hash, policy, fail-closed): for logs and status, not for equality"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", _check_mode(self.mode))
        _check_percent(self.percent)
        object.__setattr__(self, "pinned_live", tuple(normalize_symbol(s) for s in self.pinned_live))
        object.__setattr__(self, "pinned_shadow", tuple(normalize_symbol(s) for s in self.pinned_shadow))

    def is_live(self, symbol: str) -> bool:
        return is_live(symbol, self.mode, self.percent, self.pinned_live, self.pinned_shadow)

    def split(self, symbols: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return split_symbols(symbols, self.mode, self.percent, self.pinned_live, self.pinned_shadow)

    def to_hash(self) -> dict[str, str]:
        """The ``rollout`` hash fields the operator (or ``qt run``) writes."""
        return {
            "mode": self.mode,
            "percent": str(self.percent),
            "pinned_live": ",".join(self.pinned_live),
            "pinned_shadow": ",".join(self.pinned_shadow),
        }


ALL_SHADOW = RolloutConfig(source="fail-closed")
"""What an unreadable rollout means: advanced exits stay in SHADOW (the ExitSpec default)."""


def parse_rollout_hash(raw: Mapping[str, str] | None, fallback: RolloutConfig) -> RolloutConfig:
    """The rollout from the ``rollout`` hash; each absent field comes from ``fallback`` (the policy's exits).

    An empty or missing hash is ``fallback`` itself. A malformed field raises :class:`RolloutError`;
    the caller then uses :data:`ALL_SHADOW` rather than guessing (fail closed).
    """
    if not raw:
        return fallback
    mode = raw.get("mode")
    percent_text = raw.get("percent")
    try:
        percent = fallback.percent if percent_text is None or percent_text == "" else int(percent_text.strip())
    except ValueError:
        raise RolloutError(f"rollout percent {percent_text!r} is not an integer") from None
    live_text = raw.get("pinned_live")
    shadow_text = raw.get("pinned_shadow")
    return RolloutConfig(
        mode=mode or fallback.mode,
        percent=percent,
        pinned_live=fallback.pinned_live if live_text is None else parse_symbol_list(live_text),
        pinned_shadow=fallback.pinned_shadow if shadow_text is None else parse_symbol_list(shadow_text),
        source="rollout",
    )
