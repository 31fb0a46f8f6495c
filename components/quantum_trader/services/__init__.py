"""One module per component. ``factory(name)`` imports only the component asked for."""

from __future__ import annotations

from importlib import import_module

from quantum_trader.runtime.runner import ServiceFactory

MODULES = {
    "market-data": "market_data",
    "features": "features",
    "ai-engine": "ai_engine",
    "intent-bridge": "intent_bridge",
    "governor": "governor",
    "apply-layer": "apply_layer",
    "position-state": "position_state",
    "reconciler": "reconciler",
    "exit-brain": "exit_brain",
    "harvest": "harvest",
    "heat-gate": "heat_gate",
    "exchange-sim": "exchange_sim",
}


def factory(component: str) -> ServiceFactory:
    """The ``build(ctx) -> Service`` function of a component's module."""
    module = import_module(f"{__name__}.{MODULES[component]}")
    return module.build
