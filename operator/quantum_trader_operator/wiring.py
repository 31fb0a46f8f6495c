"""Wiring: every stream an enabled component reads has an enabled producer (DESIGN §3, §6 "execution.result").

``wiring_condition`` is the gate before a rollout: ``WiringValid=False`` stops it, because a consumer without a
producer idles forever while looking healthy. ``groups_to_delete`` is the clean-up of consumer groups left by
components that were disabled, so their lag does not pile up unseen (§3 "Message envelope and delivery").
Pure: the registry is the only source; no kopf, no kubernetes client, no Redis.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from quantum_trader.contracts.registry import COMPONENTS, WiringReport, check_wiring
from quantum_trader_operator.conditions import Condition, condition
from quantum_trader_operator.models import ConditionType

REASON_STREAMS_WIRED = "StreamsWired"
REASON_UNPRODUCED_STREAMS = "UnproducedStreams"
REASON_UNKNOWN_COMPONENTS = "UnknownComponents"
WIRING_REASONS = frozenset({REASON_STREAMS_WIRED, REASON_UNPRODUCED_STREAMS, REASON_UNKNOWN_COMPONENTS})


def condition_for_report(report: WiringReport, observed_generation: int | None = None) -> Condition:
    """``WiringValid`` from a wiring report. An unknown component is named first: it is a typo in the spec,
    and it is usually the reason another stream has no producer."""
    if report.unknown_components:
        return condition(
            ConditionType.WIRING_VALID,
            False,
            REASON_UNKNOWN_COMPONENTS,
            report.describe(),
            observed_generation,
        )
    if report.unproduced:
        streams = ", ".join(report.unproduced)
        return condition(
            ConditionType.WIRING_VALID,
            False,
            REASON_UNPRODUCED_STREAMS,
            f"no enabled component produces {streams}: {report.describe()}",
            observed_generation,
        )
    # Produced-but-unconsumed streams are allowed (a disabled consumer): say so, but do not stop the rollout.
    return condition(ConditionType.WIRING_VALID, True, REASON_STREAMS_WIRED, report.describe(), observed_generation)


def wiring_condition(enabled_components: Iterable[str], observed_generation: int | None = None) -> Condition:
    """``WiringValid`` for the enabled components: False names the streams nobody produces (the rollout stops)."""
    return condition_for_report(check_wiring(enabled_components), observed_generation)


def groups_to_delete(
    existing_groups: Mapping[str, Iterable[str]], enabled_components: Iterable[str]
) -> list[tuple[str, str]]:
    """``(stream, group)`` pairs to ``XGROUP DESTROY``: groups named after a registry component that is not enabled.

    A group whose name is not a registry component (a person's debugging group, another tool's) is never
    touched. Groups of *enabled* components are kept even on a stream their registry entry no longer reads:
    their pods may run another image's registry during a rollout, and destroying a group a live consumer
    reads loses its position. The handler should destroy only after the component's Deployment is gone.
    """
    enabled = set(enabled_components)
    stale = {
        (stream, group)
        for stream, groups in existing_groups.items()
        for group in groups
        if group in COMPONENTS and group not in enabled
    }
    return sorted(stale)
