"""Exchange adapters: the only code that talks to Binance USDⓈ-M futures, and the paper simulator.

- :mod:`.client` — :class:`~.client.ExchangeClient`, python-binance wrapped: MARKET orders only
  (every other type refused before any request, invariant 5), order lookup by client order id,
  positions, account, filters, leverage; errors mapped to :class:`~.errors.ExchangeError` with
  ``retryable`` and ``unknown_outcome``; never shows the API key or secret (invariant 10).
- :mod:`.filters` — pure lot-size / tick / min-notional arithmetic in Decimal.
- :mod:`.order_ids` — client order ids derived from plan ids (at most one order per plan).
- :mod:`.models`, :mod:`.errors` — what the client returns and raises.
- :mod:`.simulator` — the paper exchange speaking the same REST API (``exchange-sim``).

Pure logic (filters, order ids, the simulator's engine) is kept apart from I/O (client, server).
"""
