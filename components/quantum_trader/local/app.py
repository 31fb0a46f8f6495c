"""``qt run``: start Redis, check wiring, start every component, show the live table until a stop, then
stop in order and print the closing summary from the run's ledger.

The stop is orderly on SIGINT (Ctrl-C), SIGTERM and SIGHUP alike: components in reverse dependency
order, each finishing its entry in hand, then the ledger is read and kept, then Redis. A second
signal forces the stop: whatever still runs is killed, and the summary says so.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
from pydantic import ValidationError

from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import (
    MarketDataSource,
    PolicyError,
    PolicySpec,
    describe_validation_error,
    load_policy,
)
from quantum_trader.data.errors import DataError
from quantum_trader.local.ledger import LEDGER_FILE, read_ledger, render_summary, summarize, write_ledger
from quantum_trader.local.redis_server import EmbeddedRedis, RedisStartError, find_binary
from quantum_trader.local.status import StackStatus, build_status, gather, render, render_text
from quantum_trader.local.supervisor import FORCED_KILL, Supervisor, clean_stop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    policy_file: str | None = None
    redis_url: str | None = None
    redis_kind: str = "embedded"
    duration: float | None = None
    """seconds until an orderly stop; None: until a signal"""
    live_table: bool = False
    data: Sequence[str] = field(default_factory=tuple)
    """kline files (paths or globs) to replay instead of the policy's market data"""
    speed: float | None = None
    """replay speed-up over real time; 0 as fast as the pipeline takes it; None: the policy's"""


def replay_symbols(files: Sequence[str]) -> tuple[list[str], list[str]]:
    """The files a ``--data`` list names (globs expanded) and their symbols, one file per symbol."""
    from quantum_trader.data.klines import parse_kline_filename
    from quantum_trader.data.replay import expand_files

    try:
        paths = expand_files(files)
    except DataError as error:
        raise DataError(f"--data: {error}") from None
    by_symbol: dict[str, Path] = {}
    for path in paths:
        try:
            symbol, _ = parse_kline_filename(path.name)
        except (DataError, ValueError) as error:
            raise DataError(f"--data: {path.name} is not named like a kline file ({error})") from None
        if symbol in by_symbol:
            both = f"{by_symbol[symbol].name}, {path.name}"
            raise DataError(f"--data: two files for {symbol} ({both}); give one per symbol")
        by_symbol[symbol] = path
    return [str(p) for p in by_symbol.values()], list(by_symbol)


def apply_run_options(policy: PolicySpec, data: Sequence[str], speed: float | None) -> PolicySpec:
    """The policy with ``--data`` and ``--speed`` in its own fields (``marketData.files``/``speed``), so
    market-data paces the replay exactly as it paces any policy's: there is one pacing path, not two.

    ``--data`` replays those files and trades their symbols (the allowlist becomes the files' symbols).
    """
    market = policy.market_data
    update: dict = {}
    symbols = None
    if data:
        files, symbols = replay_symbols(data)
        update.update(source=MarketDataSource.REPLAY, files=files)
    if speed is not None:
        if market.source is MarketDataSource.LIVE and not data:
            raise PolicyError("--speed paces a replay, and this policy's marketData.source is live")
        update["speed"] = speed
        if speed == 0:
            # as fast as the pipeline takes it means each bar once the last one's consequences are done:
            # free-running, the simulator follows ticks months ahead of the strategy and fills every order
            # at a price the strategy never saw
            update["lockstep"] = True
    if not update:
        return policy
    changes: dict = {"market_data": market.model_copy(update=update)}
    if symbols is not None:
        changes["symbols"] = symbols
    # validated again as a whole: a symbol the policy's own rules refuse is refused here too
    try:
        return PolicySpec.model_validate({**policy.model_dump(), **changes})
    except ValidationError as error:
        raise PolicyError(f"--data/--speed: {describe_validation_error(error)}") from None


def resolve_market_data(policy: PolicySpec, *, trade_sample_symbols: bool = False) -> PolicySpec:
    """A replay policy without files replays the real sample fetched through PyPI (``qt data sample``).

    ``trade_sample_symbols``: no policy file was given, so the defaults' allowlist is nobody's choice and
    the sample's own symbol is traded (as ``--data`` trades its files' symbols); the defaults' unpaced
    replay (speed 0) runs in lockstep, as ``--speed max`` does, so orders fill at the prices they were
    planned on."""
    market = policy.market_data
    if market.source is not MarketDataSource.REPLAY or market.files:
        return policy
    from quantum_trader.data.sample import fetch_sample

    path = fetch_sample()
    print(f"qt: replaying real sample data {path}", file=sys.stderr)
    market_update: dict = {"files": [str(path)]}
    update: dict = {}
    if trade_sample_symbols:
        update["symbols"] = replay_symbols([str(path)])[1]
        if market.speed == 0:
            market_update["lockstep"] = True
    update["market_data"] = market.model_copy(update=market_update)
    return policy.model_copy(update=update)


def replay_without_allowed_symbols(policy: PolicySpec) -> str | None:
    """Why a replay would trade nothing: none of its files' symbols is in the allowlist (every tick would be
    dead-lettered at the edge). None when some file's symbol is allowed, or a file's name does not say."""
    from quantum_trader.data.klines import parse_kline_filename
    from quantum_trader.data.replay import expand_files

    market = policy.market_data
    if market.source is not MarketDataSource.REPLAY or not market.files:
        return None
    try:
        symbols = {parse_kline_filename(path.name)[0] for path in expand_files(market.files)}
    except (DataError, ValueError):
        return None  # a missing file or an unconventional name is market-data's to report
    if not symbols or symbols & set(policy.symbols):
        return None
    return (
        f"none of the replayed files' symbols ({', '.join(sorted(symbols))}) is in the policy's symbols "
        f"({', '.join(policy.symbols)}): nothing would trade; add them to symbols, or use --data"
    )


def model_refusal(policy: PolicySpec) -> str | None:
    """Why ai-engine would refuse the policy's model (unpinned, missing, modified, another digest), told
    before anything starts: ai-engine fails closed on it, and under ``qt run`` that is a component exiting
    and restarted for the whole run while nothing trades. None for the baseline or a model that matches."""
    from quantum_trader.research.artifact import BASELINE, ArtifactError, models_dir, observed_digest

    model = policy.model
    if model.name == BASELINE:
        return None
    if not model.digest:
        return f"model {model.name}: the policy pins no digest (model.digest); an unpinned model is refused"
    try:
        digest, _, _ = observed_digest(models_dir() / model.name, model.name)
    except ArtifactError as error:
        return str(error)
    if digest != model.digest:
        return f"model {model.name}: the artifact's digest is {digest}, the policy pins {model.digest}"
    return None


def unreadable_replay_file(policy: PolicySpec) -> str | None:
    """Why a replayed file cannot be replayed: it is empty, not text, or its first bar does not parse. Only
    the first bar is read (the files may be long); None when each file starts with a bar. Without this,
    market-data would exit on the file and be restarted for as long as the run lasts."""
    import contextlib

    from quantum_trader.data.klines import parse_kline_filename, read_klines
    from quantum_trader.data.replay import expand_files

    market = policy.market_data
    if market.source is not MarketDataSource.REPLAY or not market.files:
        return None
    try:
        paths = expand_files(market.files)
    except DataError as error:
        return str(error)
    for path in paths:
        try:
            parse_kline_filename(path.name)
        except (DataError, ValueError):
            continue  # a name that does not say its symbol: market-data reads it with the policy's, and reports
        try:
            with contextlib.closing(read_klines(path)) as bars:
                if next(bars, None) is None:
                    return f"{path} holds no bars"
        except UnicodeDecodeError:
            return f"{path} is not a text kline file"
        except OSError as error:
            return f"cannot read {path}: {error.strerror or error}"
        except (DataError, ValueError) as error:
            return str(error).splitlines()[0]
    return None


def check_reachable(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as error:
        raise RedisStartError(f"--redis-url: cannot reach Redis at {redis_url}: {error}") from None
    finally:
        client.close()


class StopSignals:
    """The first SIGINT/SIGTERM/SIGHUP asks for an orderly stop; the second forces it."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.force = threading.Event()
        self.first = ""
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, self._on_signal)

    def _on_signal(self, number: int, _frame: object) -> None:
        name = signal.Signals(number).name
        if not self.stop.is_set():
            self.first = name  # announced by the main loop once the live table is gone (it would hide it)
            self.stop.set()
        elif not self.force.is_set():
            self.force.set()
            print(f"\nqt: {name} again: forcing the stop, killing what still runs", file=sys.stderr, flush=True)


def run_local(options: RunOptions) -> int:
    policy = load_policy(options.policy_file) if options.policy_file else PolicySpec()
    policy = apply_run_options(policy, options.data, options.speed)
    if policy.mode.value != "paper":
        print("qt: error: `qt run` runs paper mode only; set mode: paper", file=sys.stderr)
        return 2
    refusal = model_refusal(policy)
    if refusal:
        raise PolicyError(refusal)
    if options.redis_url is not None:
        check_reachable(options.redis_url)
    policy = resolve_market_data(policy, trade_sample_symbols=not options.policy_file and not options.data)
    unreadable = unreadable_replay_file(policy)
    if unreadable:
        raise DataError(f"{'--data' if options.data else 'marketData.files'}: {unreadable}")
    problem = replay_without_allowed_symbols(policy)
    if problem:
        raise PolicyError(problem)
    signals = StopSignals()
    server = None
    redis_url = options.redis_url
    if redis_url is None:
        server = EmbeddedRedis(find_binary(options.redis_kind)).start()
        redis_url = server.url
    supervisor = Supervisor(policy, redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(supervisor.instance)
    started = time.monotonic()
    ended_at = time.time()
    final = None
    try:
        supervisor.prepare()
        supervisor.start()
        print(
            f"qt: stack running on {redis_url} (instance {supervisor.instance}); logs in {supervisor.workdir}; "
            "Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        _watch(supervisor, client, keys, policy, options, signals, started)
        ended_at = time.time()
        final = _snapshot(supervisor, client, keys, policy)
    finally:
        if signals.first:
            print(f"qt: {signals.first}: stopping in order (press Ctrl-C again to force)", file=sys.stderr, flush=True)
        else:
            signals.stop.set()  # ended by --duration or by an error: the same orderly stop, a signal forces it
        print("qt: stopping the components in reverse dependency order ...", file=sys.stderr, flush=True)
        codes = supervisor.stop(force=signals.force)
        _report_stopped(codes, supervisor)
        if final is not None:
            final = _final_table(final, supervisor, client, keys, policy)
        try:
            ledger = read_ledger(
                client,
                keys,
                started_at=supervisor.started_at,
                ended_at=ended_at,
                starting_equity=policy.simulator.starting_balance,
                crashes=supervisor.crashes,
                workdir=supervisor.workdir,
            )
            write_ledger(ledger, supervisor.workdir / LEDGER_FILE)
        finally:
            client.close()
            if server is not None:
                server.stop()
                print("qt: stopped redis", file=sys.stderr, flush=True)
    if final is not None:
        print(render_text(final), flush=True)
    print(render_summary(ledger, summarize(ledger), forced=signals.force.is_set()), flush=True)
    # a component that did not stop cleanly on an orderly stop makes the run fail; a forced stop was asked for
    clean = signals.force.is_set() or all(clean_stop(code) for code in codes.values())
    return 0 if clean else 1


def with_process_states(status: StackStatus, processes: dict[str, tuple[str, int, str]]) -> StackStatus:
    """The last live table with each row's state replaced by how its process ended (``stopped``,
    ``exited (1)``, ...): the counts as they were, the states as they are."""
    rows = [
        dataclasses.replace(row, state=processes[row.component][0]) if row.component in processes else row
        for row in status.rows
    ]
    return dataclasses.replace(status, rows=rows)


def _final_table(
    last: StackStatus, supervisor: Supervisor, client: redis.Redis, keys: Keys, policy: PolicySpec
) -> StackStatus:
    """The table once every component stopped: each wrote a last heartbeat with its final counts as it
    stopped, so the counts agree with the closing summary (the last live table is seconds older and misses
    what the stop drained). A Redis that no longer answers leaves the last live table, with the end states."""
    try:
        return _snapshot(supervisor, client, keys, policy)
    except redis.RedisError:
        return with_process_states(last, supervisor.process_states())


def _snapshot(supervisor: Supervisor, client: redis.Redis, keys: Keys, policy: PolicySpec):
    observed = gather(
        client, keys, supervisor.components, policy.simulator.starting_balance, supervisor.process_states()
    )
    return build_status(observed)


def _watch(
    supervisor: Supervisor,
    client: redis.Redis,
    keys: Keys,
    policy: PolicySpec,
    options: RunOptions,
    signals: StopSignals,
    started: float,
) -> None:
    def finished() -> bool:
        return signals.stop.is_set() or (
            options.duration is not None and time.monotonic() - started >= options.duration
        )

    if options.live_table:
        from rich.live import Live

        with Live(render(_snapshot(supervisor, client, keys, policy)), refresh_per_second=2, screen=False) as live:
            while not finished():
                supervisor.supervise_once()
                live.update(render(_snapshot(supervisor, client, keys, policy)))
                signals.stop.wait(0.25)
        return
    last_print = 0.0
    while not finished():
        supervisor.supervise_once()
        if time.monotonic() - last_print >= 5:
            last_print = time.monotonic()
            print(render_text(_snapshot(supervisor, client, keys, policy)), flush=True)
        signals.stop.wait(0.25)


def stop_outcome(codes: dict[str, int], states: dict[str, str]) -> str:
    """One phrase on how the stop went: ``all exited 0``, or who did not and how."""
    killed = [pod for pod in codes if states[pod] == FORCED_KILL]
    failed = [f"{pod} {states[pod]}" for pod, code in codes.items() if not clean_stop(code) and pod not in killed]
    early = [pod for pod, code in codes.items() if code != 0 and clean_stop(code)]
    parts = []
    if killed:
        parts.append("killed by the forced stop: " + ", ".join(killed))
    if failed:
        parts.append("not clean: " + ", ".join(failed))
    if early:
        parts.append(", ".join(early) + " stopped while still starting")
    return "; ".join(parts) or "all exited 0"


def _report_stopped(codes: dict[str, int], supervisor: Supervisor) -> None:
    states = {pod: process.state for pod, process in supervisor.processes.items()}
    order = ", ".join(codes)
    print(f"qt: stopped {len(codes)} components ({order}): {stop_outcome(codes, states)}", file=sys.stderr, flush=True)
