"""The README and the examples state counts that come from the component registry: a test, not a reader,
notices when a component is added or a replica count changes and the docs still say the old number."""

from __future__ import annotations

import re

import yaml

from quantum_trader.contracts.policy import parse_policy
from quantum_trader.contracts.registry import COMPONENTS
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
EXAMPLE_POLICY = parse_policy(yaml.safe_load((REPO / "examples" / "policy.yaml").read_text()))


def pods_of_example_policy() -> int:
    """Kill-switch acks count pods: every enabled component's replicas."""
    return sum(
        EXAMPLE_POLICY.components[name].replicas if name in EXAMPLE_POLICY.components else 1
        for name in EXAMPLE_POLICY.enabled_components()
    )


def test_readme_ready_count_is_the_example_policys_component_count():
    (ready,) = re.findall(r"READY is `(\d+)/(\d+)`", README)
    assert ready == (str(len(EXAMPLE_POLICY.enabled_components())),) * 2
    assert len(EXAMPLE_POLICY.enabled_components()) == len(COMPONENTS)  # paper mode runs every registered one


def test_readme_kill_switch_ack_count_is_the_example_policys_pod_count():
    (acked,) = re.findall(r"\((\d+)/(\d+): governor runs (\d+)\)", README)
    pods = pods_of_example_policy()
    assert acked == (str(pods), str(pods), str(EXAMPLE_POLICY.components["governor"].replicas))


def test_killswitch_example_ack_count_is_the_example_policys_pod_count():
    text = (REPO / "examples" / "killswitch.yaml").read_text()
    (acked,) = re.findall(r"ACKED counts component pods: (\d+)/(\d+) for examples/policy.yaml", text)
    assert acked == (str(pods_of_example_policy()),) * 2
    assert f"({len(COMPONENTS)} components," in text


def test_the_example_policy_says_where_its_digest_comes_from():
    text = (REPO / "examples" / "policy.yaml").read_text()
    assert "placeholder" in text and "qt digest" in text
    assert re.search(r"^  image: \S+@sha256:[0-9a-f]{64}$", text, re.MULTILINE)


def test_readme_names_every_qt_command():
    from quantum_trader.cli import main

    for name in main.commands:
        assert f"`qt {name}" in README, name
