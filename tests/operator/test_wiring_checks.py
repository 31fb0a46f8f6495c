"""Wiring gate and consumer-group clean-up (DESIGN §3, §6 "a consumer reading execution.result")."""

from __future__ import annotations

import pytest

from quantum_trader.contracts.registry import COMPONENTS, components_for_mode
from quantum_trader_operator.wiring import (
    REASON_STREAMS_WIRED,
    REASON_UNKNOWN_COMPONENTS,
    REASON_UNPRODUCED_STREAMS,
    WIRING_REASONS,
    groups_to_delete,
    wiring_condition,
)

PAPER = components_for_mode("paper")
LIVE = components_for_mode("live")


def without(*names: str) -> list[str]:
    return [c for c in PAPER if c not in names]


CASES = [
    ("paper", PAPER, "True", REASON_STREAMS_WIRED, []),
    ("live", LIVE, "True", REASON_STREAMS_WIRED, []),
    # dropping a pure consumer leaves its input produced-but-unconsumed: allowed, and said
    ("no harvest", without("harvest", "heat-gate"), "True", REASON_STREAMS_WIRED, []),
    ("no market data", without("market-data"), "False", REASON_UNPRODUCED_STREAMS, ["market.tick"]),
    ("no features", without("features"), "False", REASON_UNPRODUCED_STREAMS, ["features"]),
    (
        "no producer of positions",
        without("position-state", "reconciler"),
        "False",
        REASON_UNPRODUCED_STREAMS,
        ["position.snapshot"],
    ),
    ("typo", [*PAPER, "heatgate"], "False", REASON_UNKNOWN_COMPONENTS, ["heatgate"]),
    ("nothing", [], "True", REASON_STREAMS_WIRED, []),
]


@pytest.mark.parametrize(("name", "enabled", "status", "reason", "named"), CASES, ids=[c[0] for c in CASES])
def test_wiring_condition(name, enabled, status, reason, named):
    result = wiring_condition(enabled, observed_generation=4)
    assert (result.type, result.status, result.reason) == ("WiringValid", status, reason)
    assert result.observed_generation == 4
    for word in named:
        assert word in result.message


def test_every_wiring_reason_is_reachable():
    assert {wiring_condition(c[1]).reason for c in CASES} == WIRING_REASONS


def test_unproduced_message_names_the_stream_and_its_readers():
    result = wiring_condition(without("market-data"))
    assert result.message.startswith("no enabled component produces market.tick:")
    assert "read by features, exit-brain, harvest, exchange-sim" in result.message


def test_produced_but_unconsumed_is_mentioned_on_a_valid_wiring():
    result = wiring_condition(without("harvest", "heat-gate", "exit-brain"))
    assert result.status == "True"
    assert "produced but not consumed" in result.message


@pytest.mark.parametrize(
    ("existing", "enabled", "expected"),
    [
        ({}, PAPER, []),
        ({"market.tick": ["features", "exit-brain", "harvest", "exchange-sim"]}, PAPER, []),
        # live mode: the simulator's group on market.tick is left over from paper
        ({"market.tick": ["features", "exchange-sim"]}, LIVE, [("market.tick", "exchange-sim")]),
        (
            {
                "harvest.proposal": ["heat-gate"],
                "market.tick": ["harvest", "features"],
                "position.snapshot": ["harvest"],
            },
            without("harvest", "heat-gate"),
            [("harvest.proposal", "heat-gate"), ("market.tick", "harvest"), ("position.snapshot", "harvest")],
        ),
        # never a group that is not a registry component: a person's debugging group, another tool's
        ({"market.tick": ["debug-alice", "grafana", "Features"]}, [], []),
        # an enabled component's group on a stream it no longer reads is kept (it may still read it mid-rollout)
        ({"execution.result": ["position-state"]}, PAPER, []),
        ({"execution.result": ["position-state"]}, without("position-state"), [("execution.result", "position-state")]),
        ({"market.tick": ("features", "features")}, [], [("market.tick", "features")]),
    ],
)
def test_groups_to_delete(existing, enabled, expected):
    assert groups_to_delete(existing, enabled) == expected


def test_groups_to_delete_with_nothing_enabled_removes_every_registry_group_and_only_those():
    existing = {"s": [*COMPONENTS, "other"]}
    result = groups_to_delete(existing, [])
    assert result == sorted(("s", c) for c in COMPONENTS)
