"""apply-layer's pure rules: which plan a dead-lettered approval names, and the in-flight setting."""

from __future__ import annotations

import pytest

from quantum_trader.services.apply_layer import DEFAULT_IN_FLIGHT, MAX_IN_FLIGHT, dead_lettered_plan, in_flight_setting


@pytest.mark.parametrize(
    ("record", "plan"),
    [
        ({"orig.id": "apr:plan-7", "orig.data": "{not json"}, "plan-7"),
        ({"orig.id": "apr:a:b/c", "reason": "delivered 6 times"}, "a:b/c"),
        ({"orig.id": "plan-7"}, None),  # not the governor's approval id
        ({"orig.id": "apr:"}, None),
        ({"orig.id.b64": "/w=="}, None),  # an id that was not UTF-8 is kept as base64: no plan
        ({"orig.id": "apr:bad\x00id"}, None),
        ({"orig.id": "apr:" + "x" * 201}, None),
        ({}, None),
    ],
)
def test_the_plan_of_a_dead_lettered_approval(record: dict, plan: str | None) -> None:
    assert dead_lettered_plan(record) == plan


def test_the_in_flight_setting() -> None:
    assert in_flight_setting(None) == in_flight_setting("") == DEFAULT_IN_FLIGHT
    assert in_flight_setting("1") == 1
    assert in_flight_setting(str(MAX_IN_FLIGHT)) == MAX_IN_FLIGHT
    for bad in ("0", str(MAX_IN_FLIGHT + 1), "-2", "two", "1.5"):
        with pytest.raises(ValueError, match="QT_APPLY_IN_FLIGHT"):
            in_flight_setting(bad)
