"""The kill switch as components read it: fail closed, scope hierarchy."""

from __future__ import annotations

import pytest

from quantum_trader.bus.control import Scope, parse_control


def released(generation: int = 3) -> dict[str, str]:
    return {"state": "released", "generation": str(generation), "scope": "", "flatten": "0"}


def engaged(scope: str, flatten: bool = False) -> dict[str, str]:
    return {
        "state": "engaged",
        "generation": "4",
        "scope": scope,
        "flatten": "1" if flatten else "0",
        "reason": "test",
        "engaged_by": "person",
    }


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {},
        {"state": "weird", "generation": "1"},
        {"state": "released"},
        {"state": "released", "generation": "x"},
        {"generation": "1"},
    ],
)
def test_missing_or_unreadable_control_means_halted(raw):
    state = parse_control(raw)
    assert state.blocks_entries and state.blocks_exits


@pytest.mark.parametrize(
    ("raw", "entries", "exits", "shadow"),
    [
        (released(), False, False, False),
        (engaged("entries"), True, False, False),
        (engaged("exits"), False, False, True),
        (engaged("all"), True, True, True),
        (engaged("entries", flatten=True), True, False, False),
    ],
)
def test_scopes(raw, entries, exits, shadow):
    state = parse_control(raw)
    assert (state.blocks_entries, state.blocks_exits, state.advanced_exits_shadow) == (entries, exits, shadow)


def test_an_automatic_halt_blocks_entries_even_when_released():
    state = parse_control(released(), {"reconciler": "drift on BTCUSDT"})
    assert state.blocks_entries and not state.blocks_exits
    assert "reconciler: drift on BTCUSDT" in state.describe()


def test_generation_and_scope_are_read():
    state = parse_control(engaged("all"))
    assert state.generation == 4 and state.scope is Scope.ALL and state.engaged_by == "person"
