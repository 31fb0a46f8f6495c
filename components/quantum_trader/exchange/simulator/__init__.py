"""The paper exchange: a Binance USDⓈ-M futures REST simulator (DESIGN §7).

- :mod:`.engine` — pure matching engine (wallet, positions, fills, Binance's rejections);
- :mod:`.auth` — API key, HMAC signature and recvWindow checks;
- :mod:`.faults` — seeded latency / 5xx / 429 / withheld-answer injection;
- :mod:`.order_log` — every order request that reached the simulator, as JSON lines;
- :mod:`.server` — the aiohttp app, :func:`~.server.serve` and :func:`~.server.run_simulator_in_thread`;
- :mod:`.ticks` — :func:`~.ticks.follow_ticks`, prices from the ``market.tick`` stream.
"""
