"""Runs a backtest: the policy's components as processes (the local supervisor of ``qt run``), the
exchange simulator, a Redis, and market-data replaying the files in lockstep at full speed.

Lockstep (``marketData.lockstep``) publishes the next bar only once everything the previous one
caused is done, so the orders, fills and the ledger depend on the data, the policy and the models,
never on how fast a process happened to be, and a component killed and restarted midway resumes
from its pending entries and done keys with the same outcome (DESIGN §4.9). The backtest is
over when market-data has published every bar and every stream is drained.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from quantum_trader.backtest.ledger import Mark, Outcome, ledger_document, outcome, summary
from quantum_trader.backtest.report import write_report
from quantum_trader.bus.drain import all_drained
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import MarketDataSource, Mode, PolicyError, PolicySpec
from quantum_trader.data.errors import DataError
from quantum_trader.data.klines import parse_kline_filename
from quantum_trader.data.replay import expand_files
from quantum_trader.data.source import market_ticks
from quantum_trader.local.redis_server import EmbeddedRedis, find_binary
from quantum_trader.local.supervisor import Supervisor

RECONCILE_ONCE_SECONDS = 86_400.0
"""The reconciler checks at start; after that the simulator and position-state cannot drift in lockstep."""
MAX_RESTARTS = 5
"""A component restarted this often is crash-looping: the backtest stops instead of waiting forever."""
POLL_SECONDS = 0.1
READ_CHUNK = 5_000


class BacktestFailed(RuntimeError):
    """The pipeline could not finish the replay (a component keeps crashing)."""


def backtest_policy(policy: PolicySpec, data: Sequence[str], *, skip_bars: int = 0, max_bars: int = 0) -> PolicySpec:
    """The policy as a backtest runs it: the files replayed in lockstep at full speed, their symbols
    as the allowlist, every stream long enough to keep the whole run, the reconciler at start only."""
    if policy.mode is not Mode.PAPER:
        raise PolicyError(f"a backtest trades on the exchange simulator: mode must be paper, not {policy.mode.value}")
    files = [str(f) for f in expand_files(data)]
    symbols = sorted({parse_kline_filename(Path(f).name)[0] for f in files})
    market = policy.market_data.model_copy(
        update={
            "source": MarketDataSource.REPLAY,
            "files": files,
            "speed": 0.0,
            "lockstep": True,
            "skip_bars": skip_bars or policy.market_data.skip_bars,
            "max_bars": max_bars or policy.market_data.max_bars,
        }
    )
    return policy.model_copy(
        update={
            "symbols": symbols,
            "market_data": market,
            "reconciler": policy.reconciler.model_copy(update={"interval_seconds": RECONCILE_ONCE_SECONDS}),
            "simulator": policy.simulator.model_copy(update={"port": 0}),
        }
    )


def replay_marks(policy: PolicySpec) -> list[Mark]:
    """Every tick market-data will publish, in its order (the same function decides both)."""
    return [Mark(t.event_time, t.symbol, t.price) for t in market_ticks(policy.market_data, policy.symbols)]


def read_stream(client: redis.Redis, key: str) -> Iterator[dict[str, Any]]:
    """Every entry's ``data`` as a dict, oldest first, in chunks."""
    start = "-"
    while True:
        entries = client.xrange(key, min=start, max="+", count=READ_CHUNK)
        for _, fields in entries:
            raw = fields.get("data") if isinstance(fields, dict) else None
            if raw:
                yield json.loads(raw)
        if len(entries) < READ_CHUNK:
            return
        start = "(" + entries[-1][0]


STARTUP_SECONDS = 60.0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except (urllib.error.URLError, OSError):
        return False


def _post_json(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise BacktestFailed(f"timed out after {STARTUP_SECONDS:.0f} s waiting for {what}")
        time.sleep(0.05)


def restarts_by_component(supervisor: Supervisor) -> dict[str, int]:
    counts: dict[str, int] = {}
    for process in supervisor.processes.values():
        if process.restarts:
            counts[process.component] = counts.get(process.component, 0) + process.restarts
    return dict(sorted(counts.items()))


ProgressHook = Callable[[int, int, Supervisor], None]
"""Called with (bars published, bars in total, the supervisor) on every poll."""


@dataclass
class BacktestResult:
    outcome: Outcome
    headline: dict[str, Any]
    run: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


@contextmanager
def _state_dir(path: Path) -> Iterator[None]:
    """The supervisor's run file goes here, so a backtest never touches the file of a running ``qt run``."""
    previous = os.environ.get("QT_STATE_DIR")
    os.environ["QT_STATE_DIR"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("QT_STATE_DIR", None)
        else:
            os.environ["QT_STATE_DIR"] = previous


class Backtest:
    def __init__(
        self,
        policy: PolicySpec,
        out: Path,
        *,
        redis_url: str | None = None,
        redis_kind: str = "embedded",
    ) -> None:
        self.policy = policy
        self.out = Path(out)
        self.redis_url = redis_url
        self.redis_kind = redis_kind
        self.marks = replay_marks(policy)
        self.total = len(self.marks)
        if not self.total:
            raise DataError("nothing to replay: the files hold no bar after --skip-bars")
        self.instance = "backtest" if redis_url is None else f"bt-{uuid.uuid4().hex[:10]}"
        self.keys = Keys(self.instance)
        self.replay_seconds = 0.0
        """from the first bar published to the last bar's effects drained (start-up and stop excluded)"""

    def run(self, progress: ProgressHook | None = None) -> BacktestResult:
        """Replay everything through the stack, then write the report into ``out``."""
        policy = self.policy.model_copy(
            update={
                "streams": self.policy.streams.model_copy(
                    update={"max_len": max(self.policy.streams.max_len, 2 * self.total + 1_000)}
                )
            }
        )
        self.out.mkdir(parents=True, exist_ok=True)
        logs = self.out / "logs"
        server = None
        url = self.redis_url
        if url is None:
            server = EmbeddedRedis(find_binary(self.redis_kind)).start()
            url = server.url
        client = redis.Redis.from_url(url, decode_responses=True)
        started = time.monotonic()
        try:
            with _state_dir(logs / "state"):
                supervisor = Supervisor(policy, url, instance=self.instance, workdir=logs)
                supervisor.prepare()
                try:
                    self._start(client, supervisor)
                    self._wait(client, supervisor, progress)
                finally:
                    supervisor.stop()
            elapsed = time.monotonic() - started
            restarts = restarts_by_component(supervisor)
            return self._report(client, policy, elapsed, restarts)
        finally:
            client.close()
            if server is not None:
                server.stop()

    def _start(self, client: redis.Redis, supervisor: Supervisor) -> None:
        """The exchange, then its first prices, then the other components, and market-data last, once
        the symbols' filters are published.

        Why the order: the simulator derives a symbol's lot filters from its first price and apply-layer
        publishes them on an interval, so bars replayed before that would be skipped by intent-bridge
        for missing filters, or not, depending on timing. Priced with each symbol's first bar before
        anything else runs, every symbol is tradable from the first bar on every run.
        """
        first_prices: dict[str, Mark] = {}
        for mark in self.marks:
            first_prices.setdefault(mark.symbol, mark)
        exchange = [p for p in supervisor.processes.values() if p.component == "exchange-sim"]
        feed = [p for p in supervisor.processes.values() if p.component == "market-data"]
        rest = [p for p in supervisor.processes.values() if p not in exchange and p not in feed]
        for process in exchange:
            process.start()
        if exchange:
            _wait_until(lambda: _answers(f"{supervisor.exchange_url}/fapi/v1/ping"), "the exchange simulator to listen")
            for mark in first_prices.values():
                _post_json(
                    f"{supervisor.exchange_url}/sim/price",
                    {"symbol": mark.symbol, "price": mark.price, "time": mark.time},
                )
        for process in rest:
            process.start()
        if exchange and any(p.component == "apply-layer" for p in rest):
            _wait_until(
                lambda: set(first_prices) <= set(client.hkeys(self.keys.exchange_filters)),
                "apply-layer to publish every symbol's filters",
            )
        for process in feed:
            process.start()

    def _wait(self, client: redis.Redis, supervisor: Supervisor, progress: ProgressHook | None) -> None:
        progress_key = self.keys.component_state("market-data", "progress")
        first_bar: float | None = None
        while True:
            supervisor.supervise_once()
            for pod, process in supervisor.processes.items():
                if process.restarts > MAX_RESTARTS:
                    raise BacktestFailed(
                        f"{pod} exited {process.restarts} times ({process.state}); see {process.log_path}"
                    )
            published = int(client.hget(progress_key, "published") or 0)
            if published and first_bar is None:
                first_bar = time.monotonic()
            if progress is not None:
                progress(published, self.total, supervisor)
            if published >= self.total and all_drained(client, self.keys):
                self.replay_seconds = time.monotonic() - (first_bar or time.monotonic())
                return
            time.sleep(POLL_SECONDS)

    def _report(
        self, client: redis.Redis, policy: PolicySpec, elapsed: float, restarts: dict[str, int]
    ) -> BacktestResult:
        keys = self.keys
        result = outcome(
            read_stream(client, keys.stream("apply.result")),
            read_stream(client, keys.stream("trade.closed")),
            read_stream(client, keys.stream("governor.decision")),
            self.marks,
            policy.simulator.starting_balance,
        )
        totals = client.hgetall(keys.ledger_equity)
        headline = summary(result, bars=self.total, symbols=policy.symbols)
        run = {
            "elapsed_seconds": round(elapsed, 3),
            "replay_seconds": round(self.replay_seconds, 3),
            "bars_per_second": round(self.total / self.replay_seconds, 1) if self.replay_seconds > 0 else 0.0,
            "restarts": restarts,
            "model": policy.model.name,
            "taker_fee": policy.simulator.taker_fee,
            "slippage_bps": policy.simulator.slippage_bps,
            "files": [Path(f).name for f in policy.market_data.files],
        }
        files = write_report(self.out, result, headline, run, ledger_document(result, totals))
        return BacktestResult(result, headline, run, files)
