"""What the components read, pure: the ConfigMap's runtime config and its hash, and the ``rollout`` hash.

``config_data`` is what pods read through QT_CONFIG; its hash on every pod template rolls the pods when it
changes. ExitRollouts are deliberately not in it: they travel through the ``rollout`` Redis hash
(:func:`rollout_config`), so a rollout step restarts nothing; :func:`exit_rollout_status` is the
ExitRollout's status, by exit-brain's own rule.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from quantum_trader.contracts.control import ControlState
from quantum_trader.contracts.policy import ComponentSettings, PolicySpec, dump_policy
from quantum_trader.exits.rollout import SHADOW, RolloutConfig
from quantum_trader_operator import naming as n
from quantum_trader_operator.models import ExitRolloutSpec, exit_rollout_spec
from quantum_trader_operator.validation import checked_spec


def config_hash(data: Mapping[str, str]) -> str:
    """``sha256:<hex>`` of a ConfigMap's data: the pod-template annotation that rolls pods on a config change.

    Canonical JSON (sorted keys), so the hash depends on the content only, not on dict order.
    """
    text = json.dumps(dict(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _as_exit_rollout(exit_rollout: Mapping[str, Any] | ExitRolloutSpec | None) -> ExitRolloutSpec | None:
    """The spec of an ExitRollout given as an object, a bare spec mapping, or a model."""
    if exit_rollout is None or isinstance(exit_rollout, ExitRolloutSpec):
        return exit_rollout
    return exit_rollout_spec(exit_rollout if "spec" in exit_rollout else {"spec": exit_rollout})


def runtime_spec(spec: PolicySpec) -> PolicySpec:
    """The policy as components read it from QT_CONFIG: the spec, minus what only Kubernetes uses.

    ``components`` keeps only the disabled ones (components need ``enabled`` for the wiring they expect);
    replicas and resources live on the Deployments. Were they in the config, scaling one component would
    change the config hash and restart every pod of the policy (with entries halted for the rollout).
    """
    disabled = {name: ComponentSettings(enabled=False) for name, own in spec.components.items() if not own.enabled}
    return spec.model_copy(update={"components": disabled})


def matching_rollout(policy: str, exit_rollout: Mapping[str, Any] | ExitRolloutSpec | None) -> ExitRolloutSpec | None:
    rollout = _as_exit_rollout(exit_rollout)
    if rollout is not None and rollout.policy_ref.name != policy:
        raise ValueError(f"ExitRollout targets policy {rollout.policy_ref.name!r}, not {policy!r}")
    return rollout


def config_data(policy_cr: Mapping[str, Any]) -> dict[str, str]:
    """The ConfigMap's data: ``config.yaml`` = ``dump_policy(runtime_spec(spec))``, every default resolved.

    The ExitRollout is deliberately not in it: exit-brain reads the ``rollout`` hash every few seconds
    (:func:`rollout_config` is what the handler writes there), so a rollout step changes no pod; in the
    ConfigMap it would change the config hash and restart every component for each step of a ramp.
    The policy's own ``exits`` stay as exit-brain's fallback when the hash is missing.

    It holds Secret *references* (exchangeSecretRef, redis.passwordSecretRef) because the components
    validate the same PolicySpec (live mode needs exchangeSecretRef); never a credential value.
    """
    return spec_config_data(checked_spec(policy_cr))


def spec_config_data(spec: PolicySpec) -> dict[str, str]:
    """:func:`config_data` of a spec already parsed and found valid (``validation.check_policy``)."""
    return {n.CONFIG_KEY: dump_policy(runtime_spec(spec))}


def rollout_config(spec: PolicySpec, exit_rollout: Mapping[str, Any] | ExitRolloutSpec | None = None) -> RolloutConfig:
    """The rollout the handler writes to the instance's ``rollout`` hash (``RolloutConfig.to_hash()``).

    The ExitRollout when there is one (it outranks the policy's ``exits``), else the policy's ``exits``.
    exit-brain re-reads the hash every few seconds, so no pod restarts for a rollout step.
    """
    rollout = _as_exit_rollout(exit_rollout)
    if rollout is None:  # no ExitRollout: the policy's own exits settings
        exits = spec.exits
        return RolloutConfig(
            mode=exits.mode,
            percent=exits.rollout_percent,
            pinned_live=tuple(exits.pinned_live),
            pinned_shadow=tuple(exits.pinned_shadow),
            source="policy",
        )
    return _from_exit_rollout(rollout)


def _from_exit_rollout(rollout: ExitRolloutSpec) -> RolloutConfig:
    return RolloutConfig(
        mode=rollout.mode,
        percent=rollout.percent,
        pinned_live=tuple(rollout.pinned_live),
        pinned_shadow=tuple(rollout.pinned_shadow),
        source="exitrollout",
    )


def exit_rollout_status(
    spec: Mapping[str, Any] | ExitRolloutSpec,
    symbols: Iterable[str],
    *,
    control: ControlState | None = None,
) -> dict[str, Any]:
    """The ExitRollout's status: ``{liveSymbols, shadowSymbols, effectiveMode, live}`` (DESIGN §5).

    ``spec`` is the ExitRollout (object, bare spec or model). The split is exits/rollout.py's stable-hash
    rule, the one exit-brain applies. ``control`` is the kill switch as components read it (None: released);
    one whose scope shadows advanced exits (``Scope.shadows_advanced_exits``: exits, all) outranks the rollout
    (KILL > MODE > ROLLOUT) and puts every symbol in SHADOW.
    """
    rollout = _as_exit_rollout(spec)
    assert rollout is not None
    config = _from_exit_rollout(rollout)
    names = list(dict.fromkeys(symbols))
    if control is not None and control.advanced_exits_shadow:
        live: tuple[str, ...] = ()
        shadow = tuple(names)
        effective = SHADOW
    else:
        live, shadow = config.split(names)
        effective = config.mode
    return {
        "liveSymbols": list(live),
        "shadowSymbols": list(shadow),
        "effectiveMode": effective,
        "live": f"{len(live)}/{len(names)}",
    }
