"""The exchange client a component's settings ask for: the simulator in paper mode, Binance otherwise.

apply-layer sends orders with it and the reconciler reads positions with it; both build it here, so the
mode, the credentials rule and the timeouts are decided once.
"""

from __future__ import annotations

from quantum_trader.contracts.policy import PolicySpec
from quantum_trader.exchange.client import ExchangeClient
from quantum_trader.runtime.settings import Settings, SettingsError


def exchange_client(policy: PolicySpec, settings: Settings) -> ExchangeClient:
    """The client for the policy's mode. Paper needs QT_EXCHANGE_URL; every mode needs credentials."""
    if not settings.api_key or not settings.api_secret:
        raise SettingsError("BINANCE_API_KEY and BINANCE_API_SECRET are required (from a Secret)")
    mode = policy.mode.value
    options = {
        "timeout": policy.exchange.request_timeout_seconds,
        "recv_window": policy.exchange.recv_window_ms,
    }
    if mode == "paper":
        if not settings.exchange_url:
            raise SettingsError("QT_EXCHANGE_URL is required in paper mode (the exchange simulator)")
        return ExchangeClient(settings.api_key, settings.api_secret, base_url=settings.exchange_url, **options)
    return ExchangeClient(
        settings.api_key, settings.api_secret, testnet=mode == "testnet", live=mode == "live", **options
    )
