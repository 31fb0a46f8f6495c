"""Orders through the executor path as real processes, on a redis-server of our own.

``python -m bench.pipeline [--quick] [--phases readstate,paced,burst] [--profile] [--wait-quiet S]
[--cold-leverage] [--paced-replicas N] [--burst-intents N] [--burst-replicas N,M]``

intent-bridge -> governor -> apply-layer -> exchange-sim -> position-state, each a ``qt component``
process started by the local Supervisor (``only=[...]``), exactly as ``qt run`` starts them. The bench
publishes one tick per symbol before anything else starts, starts the simulator and waits until it
knows every price, sets every symbol's leverage on the simulator to the intents' (the account as it
is once a symbol has traded; ``--cold-leverage`` skips this, so every order first sets leverage),
then starts the other components and waits for their ``/readyz``. It then XADDs ``TradeIntent``
messages on ``trade.intent``: each a BUY ENTRY on a symbol of its own (stop < entry < take), so every
intent becomes one approved plan and one order.

Phases (each pipeline phase on a fresh instance: empty Redis, new processes):

- ``readstate``: position-state's own per-result read (``read_state`` + ``settle``) against N open
  positions, in this process, with no other component running;
- ``paced``: intents at a fixed rate (25/s, 100/s, then 200/s); latency per order;
- ``burst``: every intent at once, apply-layer at 1, 2 and 4 replicas; orders/s per stage.

How many: ``maxOpenPositions`` counts open positions plus reservations, and positions are never
closed, so every intent of a phase needs a slot: the bench sets it to the schema's ceiling (100,000).
Paced phases send 250 intents at 25/s (10 s), 1,000 at 100/s (10 s) and 1,000 at 200/s (5 s); a
burst sends 1,000 (the allowlist's ceiling, one symbol per intent). The k-th order is settled with
k positions open: results are also reported by open-position count (the governor reads notional in
use from running totals, so that no longer grows the cost; ``bench.governor_flat_cost`` measures it
on its own). ``--quick`` sends 100 at 25/s and 200 in every other phase.

Timestamps: every stage's output is a stream entry whose id is the Redis server's clock in ms when
it was added (one host, one clock). End-to-end latency runs from the bench's wall clock just before
the intent's XADD (µs) to the ``position.snapshot`` entry id (ms, truncated: up to 1 ms low). Stage
latencies are differences of entry ids (±1 ms). Stage throughput is (n - 1) / (last - first) over the
ids of the stage's own outputs, so a stage that finishes early is not charged for the one after it.
CPU per order is the user+system time of the components and redis-server over the phase (psutil)
divided by the orders; the bench's own process is listed apart and not in the total.
Redis commands and round trips per order come from the server's own counters over the same window
(``RedisMeter``: ``INFO commandstats`` calls, commands inside scripts included, and
``total_reads_processed``).

Checks in every phase: every intent has exactly one plan, approval, result and snapshot; the
simulator's order log (GET /sim/orders) holds exactly one accepted order per intent and no other;
no governor rejection, no result other than FILLED, no DLQ entry, nothing pending in any group,
no handler error in any component's heartbeat counters.

Results: tables on stdout and ``bench/results/pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

from bench._util import (
    add_wait_quiet_option,
    machine,
    machine_busy_seconds,
    percentile,
    start_redis,
    summary,
    table,
    wait_for_quiet,
    write_results,
)
from quantum_trader.contracts.envelope import encode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import (
    ExecutionResult,
    PlanKind,
    PositionSide,
    Reservation,
    ResultStatus,
    Side,
    Tick,
    TradeIntent,
)
from quantum_trader.contracts.policy import parse_policy
from quantum_trader.exchange.client import ExchangeClient
from quantum_trader.exchange.order_ids import client_order_id
from quantum_trader.execution.sizing import entry_plan_id
from quantum_trader.local.supervisor import Supervisor

EXECUTOR = ["exchange-sim", "intent-bridge", "governor", "apply-layer", "position-state"]
STREAMS = ("trade.intent", "apply.plan", "apply.approved", "apply.result", "position.snapshot")
MESSAGE_ID = {  # the envelope id each stream gives the message of one plan
    "apply.plan": "{plan}",
    "apply.approved": "apr:{plan}",
    "apply.result": "res:{plan}",
    "position.snapshot": "snap:res:{plan}",
}
STAGES = {  # stage -> (the stream it reads, the stream it writes)
    "intent-bridge": ("trade.intent", "apply.plan"),
    "governor": ("apply.plan", "apply.approved"),
    "apply-layer + exchange-sim": ("apply.approved", "apply.result"),
    "position-state": ("apply.result", "position.snapshot"),
}
GROUPS = {
    "trade.intent": "intent-bridge",
    "apply.plan": "governor",
    "apply.approved": "apply-layer",
    "apply.result": "position-state",
    "market.tick": "exchange-sim",
}
PRICE = 100.0
LEVERAGE = 2
NOTIONAL = 20.0  # qty 0.2 at 100 USDT: above the simulator's 5 USDT minimum
MAX_OPEN = 100_000  # the policy schema's ceiling for maxOpenPositions
BURST = 1_000  # the policy's allowlist holds at most 1,000 symbols, and every intent needs a symbol of its own
PACED = ((25, 250), (100, 1_000), (200, 1_000))  # (intents/s, intents)
MAXLEN = 200_000


def policy(symbols: list[str], replicas: dict[str, int]) -> dict:
    """Every intent on a fresh symbol is approved: limits at (or far above) what a phase needs, no cooldown.

    ``replicas``: component -> replicas, for the components that run more than one.
    """
    return {
        "symbols": symbols,
        "risk": {
            "maxOpenPositions": MAX_OPEN,
            "maxNotionalPerTrade": 1_000,
            "maxTotalNotional": 10_000_000,
            "maxEntriesPerHour": 100_000,
            "maxEntriesPerFiveMinutes": 100_000,
            "cooldownSeconds": 0,
            "maxLeverage": 5,
        },
        "streams": {"maxLen": MAXLEN},
        "simulator": {"startingBalance": 1_000_000_000},
        "components": {component: {"replicas": n} for component, n in replicas.items()},
    }


def replicas_label(replicas: dict[str, int]) -> str:
    """``x2`` when only apply-layer has more than one replica, else e.g. ``apply-layer x2, governor x2``."""
    more = {component: n for component, n in sorted(replicas.items()) if n != 1}
    if set(more) <= {"apply-layer"}:
        return f"x{replicas.get('apply-layer', 1)}"
    return ", ".join(f"{component} x{n}" for component, n in more.items())


def symbols_for(count: int) -> list[str]:
    return [f"B{i:05d}USDT" for i in range(count)]


def intent(symbol: str, intent_id: str, t: int) -> TradeIntent:
    return TradeIntent(
        symbol=symbol,
        intent_id=intent_id,
        time=t,
        side=Side.BUY,
        confidence=0.9,
        entry_price=PRICE,
        stop_loss=PRICE * 0.9,
        take_profit=PRICE * 1.2,
        leverage=LEVERAGE,
        notional=NOTIONAL,
        strategy="bench",
        model_digest="bench",
    )


def id_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


# ---- the stack ----------------------------------------------------------------------------------


class BenchError(RuntimeError):
    pass


@dataclass
class Stack:
    supervisor: Supervisor
    r: redis.Redis
    keys: Keys

    def stream_key(self, name: str) -> str:
        return self.keys.stream(name)

    def sim(self, path: str) -> dict:
        with urllib.request.urlopen(self.supervisor.exchange_url + path, timeout=60) as answer:
            return json.loads(answer.read())

    def pids(self) -> dict[str, int]:
        pids = {pod: p.popen.pid for pod, p in self.supervisor.processes.items() if p.popen is not None}
        pids["redis-server"] = int(self.r.info("server")["process_id"])
        pids[INJECTOR] = os.getpid()
        return pids

    def check_alive(self) -> None:
        for pod, process in self.supervisor.processes.items():
            if process.popen is not None and process.popen.poll() is not None:
                raise BenchError(f"{pod} exited with {process.popen.returncode}: {log_tail(process.log_path)}")

    def wait(self, predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.05) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            self.check_alive()
            time.sleep(poll)
        raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def ready(port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


COLD_LEVERAGE = False
"""--cold-leverage: leave the simulator's leverage at its default, so every order (each on a new symbol)
first sets leverage, as the benchmark of commit 709a232 measured"""


@contextmanager
def running_stack(redis_url: str, workdir: Path, symbols: list[str], replicas: dict[str, int]) -> Iterator[Stack]:
    """A fresh instance: ticks first, the simulator until it knows every price, then the other components.

    Unless ``--cold-leverage``, every symbol's leverage is set on the simulator to the intents' before
    apply-layer starts, through the signed API: the account as it is once a symbol has traded at that
    leverage. apply-layer reads it at start (symbolConfig) and sends only the orders.

    The order matters: apply-layer publishes the exchange's filters (which intent-bridge sizes with)
    once, when it starts, and the simulator derives a symbol's filters from its first price.
    A start that fails (say a health port taken by another program between the supervisor picking it
    and the component binding it) is retried from scratch, twice.
    """
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for attempt in range(3):
            stack = _start(r, redis_url, workdir, symbols, replicas)
            try:
                _wait_started(stack, symbols)
                break
            except BenchError as error:
                stack.supervisor.stop()
                if attempt == 2:
                    raise
                print(f"stack start failed ({str(error).splitlines()[-1]}); starting again", flush=True)
        try:
            yield stack
        finally:
            stack.supervisor.stop()
    finally:
        r.close()


def _start(r: redis.Redis, redis_url: str, workdir: Path, symbols: list[str], replicas: dict[str, int]) -> Stack:
    instance = f"bench{int(time.time() * 1000) % 10**9}"
    r.flushall()
    spec = parse_policy(policy(symbols, replicas))
    supervisor = Supervisor(spec, redis_url, instance=instance, workdir=workdir / instance, only=EXECUTOR)
    supervisor.prepare()
    stack = Stack(supervisor, r, supervisor.keys)
    t = int(time.time() * 1000)
    with r.pipeline(transaction=False) as pipe:
        for symbol in symbols:
            tick = Tick(symbol=symbol, price=PRICE, bid=PRICE, ask=PRICE, volume=1.0, event_time=t, source="bench")
            pipe.xadd(stack.stream_key("market.tick"), encode(tick, id=f"tick:{symbol}"))
        pipe.execute()
    return stack


def _wait_started(stack: Stack, symbols: list[str]) -> None:
    supervisor = stack.supervisor
    supervisor.processes["exchange-sim-0"].start()

    def priced() -> bool:
        try:
            return len(stack.sim("/sim/state")["prices"]) >= len(symbols)
        except (urllib.error.URLError, OSError):
            return False

    stack.wait(priced, 60, "the simulator to know every price", poll=0.2)
    if not COLD_LEVERAGE:
        env = supervisor.processes["exchange-sim-0"].env
        account = ExchangeClient(env["BINANCE_API_KEY"], env["BINANCE_API_SECRET"], base_url=supervisor.exchange_url)
        try:
            for symbol in symbols:
                account.set_leverage(symbol, LEVERAGE)
        finally:
            account.close()
    for pod, process in supervisor.processes.items():
        if pod != "exchange-sim-0":
            process.start()
    for pod, process in supervisor.processes.items():
        port = process.env["QT_HEALTH_PORT"]
        stack.wait(lambda port=port: ready(port), 60, f"{pod} to be ready", poll=0.1)
    stack.wait(lambda: stack.r.hlen(stack.keys.exchange_filters) >= len(symbols), 30, "published exchange filters")


# ---- injection ----------------------------------------------------------------------------------


@dataclass
class Injected:
    intent_id: str
    symbol: str
    fields: dict[str, str]
    sent_wall_ms: float = 0.0
    """bench wall clock just before the XADD (ms, µs resolution)"""
    entry_id: str = ""


def make_intents(symbols: list[str], tag: str) -> list[Injected]:
    """Encoded before the clock starts, so the injector's own pydantic work is not in the window."""
    t = int(time.time() * 1000)
    out = []
    for i, symbol in enumerate(symbols):
        intent_id = f"{tag}-{i:05d}"
        out.append(Injected(intent_id, symbol, encode(intent(symbol, intent_id, t + i), id=intent_id)))
    return out


def inject_paced(stack: Stack, intents: list[Injected], rate: float) -> float:
    """One XADD every 1/rate s on a fixed schedule (a late send is not followed by a bunch)."""
    key = stack.stream_key("trade.intent")
    start = time.perf_counter()
    for i, record in enumerate(intents):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        record.sent_wall_ms = time.time() * 1000
        record.entry_id = stack.r.xadd(key, record.fields, maxlen=MAXLEN, approximate=True)
    return time.perf_counter() - start


def inject_burst(stack: Stack, intents: list[Injected]) -> float:
    """Every intent at once: pipelined XADDs in chunks of 500."""
    key = stack.stream_key("trade.intent")
    start = time.perf_counter()
    for first in range(0, len(intents), 500):
        chunk = intents[first : first + 500]
        sent = time.time() * 1000
        with stack.r.pipeline(transaction=False) as pipe:
            for record in chunk:
                pipe.xadd(key, record.fields, maxlen=MAXLEN, approximate=True)
            ids = pipe.execute()
        for record, entry_id in zip(chunk, ids, strict=True):
            record.sent_wall_ms, record.entry_id = sent, entry_id
    return time.perf_counter() - start


def wait_done(stack: Stack, count: int, timeout: float) -> float:
    """Until ``count`` snapshots exist; returns when (perf_counter)."""
    key = stack.stream_key("position.snapshot")
    stack.wait(lambda: stack.r.xlen(key) >= count, timeout, f"{count} position snapshots", poll=0.05)
    return time.perf_counter()


# ---- CPU ----------------------------------------------------------------------------------------


INJECTOR = "bench (injector)"
"""this process: it sends the intents and polls for the snapshots; its CPU is reported, not in the total"""


class CpuMeter:
    """user+system CPU seconds of every process of the phase, between ``start`` and ``stop``.

    ``cpu_ms_per_order_total`` and ``cores_busy`` are the path's processes (the components and
    redis-server); the bench's own process is listed on its own in ``cpu_ms_per_order``.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.before: dict[str, float] = {}
        self.wall = 0.0

    def _times(self) -> dict[str, float]:
        out = {}
        for name, process in self.processes.items():
            try:
                t = process.cpu_times()
                out[name] = t.user + t.system
            except psutil.Error:
                out[name] = float("nan")
        return out

    def start(self) -> CpuMeter:
        self.machine_before = machine_busy_seconds()
        self.before = self._times()
        self.wall = time.perf_counter()
        self.samples: list[float] = []
        self._stop = threading.Event()
        psutil.cpu_percent(percpu=False)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        """Whole-machine CPU busy share every 0.25 s: how close to both cores the phase ran."""
        while not self._stop.wait(0.25):
            self.samples.append(psutil.cpu_percent(percpu=False))

    def stop(self, orders: int) -> dict:
        after = self._times()
        wall = time.perf_counter() - self.wall
        self._stop.set()
        self._thread.join()
        busy = self.samples or [float("nan")]
        per_component: dict[str, float] = {}
        for name, seconds in after.items():
            component = name.rsplit("-", 1)[0] if name[-1].isdigit() else name
            per_component[component] = per_component.get(component, 0.0) + seconds - self.before[name]
        ours = sum(per_component.values())
        total = ours - per_component.get(INJECTOR, 0.0)  # the path's processes: the bench's own CPU apart
        machine_busy = machine_busy_seconds() - self.machine_before
        return {
            "other_processes_cores": round(max(0.0, machine_busy - ours) / wall, 2),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            "wall_s": round(wall, 3),
            "cpu_s_total": round(total, 3),
            "cores_busy": round(total / wall, 2),
            "machine_busy_pct": {
                "mean": round(sum(busy) / len(busy), 1),
                "max": max(busy),
                "share_of_time_above_90pct": round(sum(b > 90 for b in busy) / len(busy), 2),
            },
            "cpu_ms_per_order": {
                k: round(1000 * v / orders, 3) for k, v in sorted(per_component.items(), key=lambda item: -item[1])
            },
            "cpu_ms_per_order_total": round(1000 * total / orders, 3),
        }


class RedisMeter:
    """Redis commands and round trips per order between ``start`` and ``stop``, from the server's counters.

    Commands are the sum of ``INFO commandstats`` calls, commands run inside scripts included (EVALSHA
    counts once itself, plus each command its script calls). Round trips are ``total_reads_processed``:
    one read event per request or pipeline that arrived, about one per round trip of a client. Both
    include the bench's own polling (an XLEN every 50 ms) and the components' heartbeats and control
    reads, which is why the idle share is reported too.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def _read(self) -> tuple[dict[str, int], int, dict[str, int]]:
        stats = self.client.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        usec = {name.removeprefix("cmdstat_"): int(v["usec"]) for name, v in stats.items()}
        return calls, int(self.client.info("stats")["total_reads_processed"]), usec

    def start(self) -> RedisMeter:
        self.calls, self.reads, self.usec = self._read()
        return self

    def stop(self, orders: int) -> dict:
        calls, reads, usec_now = self._read()
        delta = {k: n - self.calls.get(k, 0) for k, n in calls.items() if n - self.calls.get(k, 0) > 0}
        for name in ("info",):  # this meter's own
            delta.pop(name, None)
        total = sum(delta.values())
        top = sorted(delta.items(), key=lambda item: -item[1])[:12]
        usec = {k: v - self.usec.get(k, 0) for k, v in usec_now.items() if v - self.usec.get(k, 0) > 0}
        usec.pop("info", None)
        usec_total = sum(usec.values()) or 1
        busiest = sorted(usec.items(), key=lambda item: -item[1])[:8]
        return {
            "commands_per_order": round(total / orders, 1),
            "round_trips_per_order": round((reads - self.reads - 2) / orders, 1),
            "top_commands_per_order": {k: round(n / orders, 2) for k, n in top},
            "command_usec_per_order": round(sum(usec.values()) / orders, 1),
            "command_time_share_pct": {k: round(100 * v / usec_total, 1) for k, v in busiest},
        }


SEND_COUNTER_DIR = Path(__file__).resolve().parent / "redis_sends"
"""holds the ``sitecustomize`` that makes every component process count its requests to Redis"""


class SendMeter:
    """Round trips to Redis per order, counted in each component process (``bench/redis_sends``).

    ``send_dir`` is ``$BENCH_REDIS_SEND_DIR``: one 8-byte counter per pid, written by the process. A
    process that has no counter file (the sitecustomize was not loaded) is reported as missing, never
    as zero. Heartbeats, control reads and blocking reads while a consumer is idle are in the counts;
    ``idle_per_s`` (measured before the phase's first intent) says how much that is.
    """

    def __init__(self, send_dir: Path, pids: dict[str, int]) -> None:
        self.send_dir = send_dir
        self.pids = {pod: pid for pod, pid in pids.items() if pod not in ("redis-server", INJECTOR)}

    def _read(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for pod, pid in self.pids.items():
            try:
                out[pod] = int.from_bytes((self.send_dir / str(pid)).read_bytes()[:8], "little")
            except OSError:
                out[pod] = None
        return out

    def idle(self, seconds: float = 1.0) -> dict[str, float]:
        """Round trips per second of each component while nothing is sent (heartbeats, idle polls)."""
        before, t0 = self._read(), time.perf_counter()
        time.sleep(seconds)
        after, wall = self._read(), time.perf_counter() - t0
        return {
            pod: round((after[pod] - before[pod]) / wall, 1)
            for pod in self.pids
            if after[pod] is not None and before[pod] is not None
        }

    def start(self) -> SendMeter:
        self.idle_per_s = self.idle()
        self.before = self._read()
        self.t0 = time.perf_counter()
        return self

    def stop(self, orders: int) -> dict:
        after, wall = self._read(), time.perf_counter() - self.t0
        missing = sorted(pod for pod in self.pids if after[pod] is None or self.before[pod] is None)
        per_component: dict[str, int] = {}
        idle: dict[str, float] = {}
        for pod in self.pids:
            if pod in missing:
                continue
            component = pod.rsplit("-", 1)[0]
            per_component[component] = per_component.get(component, 0) + after[pod] - self.before[pod]
            idle[component] = idle.get(component, 0.0) + self.idle_per_s.get(pod, 0.0)
        total = sum(per_component.values())
        idle_total = sum(idle.values()) * wall
        return {
            "round_trips_per_order": round(total / orders, 2) if not missing else None,
            "per_component": {k: round(v / orders, 2) for k, v in sorted(per_component.items(), key=lambda i: -i[1])},
            "idle_round_trips_per_s": {k: round(v, 1) for k, v in idle.items()},
            "idle_rate_times_window_per_order": round(idle_total / orders, 2),
            "missing_counters": missing,
        }


class MeasuredWindow:
    """CPU of every process, Redis's counters and each component's round trips over one phase."""

    def __init__(self, stack: Stack) -> None:
        pids = stack.pids()
        send_dir = os.environ.get("BENCH_REDIS_SEND_DIR")
        self.sends = SendMeter(Path(send_dir), pids) if send_dir else None
        self.cpu = CpuMeter(pids)
        self.redis = RedisMeter(stack.r)

    def start(self) -> MeasuredWindow:
        if self.sends:
            self.sends.start()
        self.cpu.start()
        self.redis.start()
        return self

    def stop(self, orders: int) -> dict:
        out = {"cpu": self.cpu.stop(orders), "redis": self.redis.stop(orders)}
        if self.sends:
            out["redis_sends"] = self.sends.stop(orders)
        return out


# ---- collection and checks ----------------------------------------------------------------------


def by_message_id(stack: Stack, name: str) -> dict[str, list[tuple[str, dict]]]:
    out: dict[str, list[tuple[str, dict]]] = {}
    for entry_id, fields in stack.r.xrange(stack.stream_key(name)):
        out.setdefault(fields["id"], []).append((entry_id, fields))
    return out


def component_counters(stack: Stack) -> dict[str, dict]:
    out = {}
    for pod, process in stack.supervisor.processes.items():
        raw = stack.r.hget(stack.keys.heartbeat(process.component, pod), "counters")
        counters = json.loads(raw) if raw else {}
        out[pod] = {k: counters.get(k, 0) for k in ("processed", "duplicates", "errors", "dead_lettered", "reclaimed")}
    return out


def collect(stack: Stack, injected: list[Injected]) -> dict:
    """Each order's timestamps from the stream entry ids, and the correctness checks."""
    time.sleep(2.5)  # a heartbeat with the final counters (every 2 s); a late duplicate would show by now
    streams = {name: by_message_id(stack, name) for name in STREAMS[1:]}
    rows, problems = [], []
    for record in injected:
        plan_id = entry_plan_id(record.intent_id)
        row: dict[str, float] = {"sent": record.sent_wall_ms, "trade.intent": id_ms(record.entry_id)}
        for name in STREAMS[1:]:
            entries = streams[name].get(MESSAGE_ID[name].format(plan=plan_id), [])
            if len(entries) != 1:
                problems.append(f"{record.symbol}: {len(entries)} entries on {name}")
                break
            row[name] = id_ms(entries[0][0])
        else:
            rows.append(row)
    decisions = [json.loads(f["data"]) for _, f in stack.r.xrange(stack.stream_key("governor.decision"))]
    rejected = [d for d in decisions if not d["approved"]]
    results = [json.loads(f["data"]) for entries in streams["apply.result"].values() for _, f in entries]
    not_filled = [x for x in results if x["status"] != "FILLED"]
    orders = stack.sim("/sim/orders")["orders"]
    accepted: dict[str, int] = {}
    for order in orders:
        if order["outcome"] == "accepted":
            accepted[order["clientOrderId"]] = accepted.get(order["clientOrderId"], 0) + 1
    expected = {client_order_id(entry_plan_id(record.intent_id)) for record in injected}
    once = sum(1 for coid in expected if accepted.get(coid) == 1)
    unexpected = sum(n for coid, n in accepted.items() if coid not in expected)
    unexpected += sum(n - 1 for coid, n in accepted.items() if coid in expected and n > 1)
    dlq = {name: stack.r.xlen(stack.keys.dlq(name)) for name in GROUPS}
    pending = {}
    for name, group in GROUPS.items():
        for info in stack.r.xinfo_groups(stack.stream_key(name)):
            if info["name"] == group:
                pending[name] = int(info["pending"])
    counters = component_counters(stack)
    errors = sum(c["errors"] + c["dead_lettered"] for c in counters.values())
    if len(decisions) != len(injected) or rejected:
        problems.append(f"{len(decisions)} decisions, {len(rejected)} rejections, e.g. {rejected[:1]}")
    if not_filled:
        problems.append(f"{len(not_filled)} results not FILLED, e.g. {not_filled[0]}")
    if once != len(expected) or unexpected:
        problems.append(f"{once}/{len(expected)} intents with exactly one accepted order; {unexpected} other orders")
    if any(dlq.values()):
        problems.append(f"DLQ entries: {dlq}")
    if any(pending.values()):
        problems.append(f"pending entries: {pending}")
    if errors:
        problems.append(f"handler errors or dead letters in heartbeats: {counters}")
    return {
        "rows": rows,
        "correctness": {
            "ok": not problems,
            "intents": len(injected),
            "complete_chains": len(rows),
            "orders_exactly_once": once,
            "other_orders": unexpected,
            "order_requests_logged": len(orders),
            "governor_rejections": len(rejected),
            "results_not_filled": len(not_filled),
            "dlq_entries": sum(dlq.values()),
            "pending_entries": sum(pending.values()),
            "component_counters": counters,
            "problems": problems[:10],
        },
    }


# ---- reports ------------------------------------------------------------------------------------


def latency_report(rows: list[dict]) -> dict:
    def spans(a: str, b: str) -> list[float]:
        return [row[b] - row[a] for row in rows]

    return {
        "end_to_end_ms": summary(spans("sent", "position.snapshot"), 2),
        "plan_to_snapshot_ms": summary(spans("apply.plan", "position.snapshot"), 2),
        "stages_ms": {stage: summary(spans(a, b), 2) for stage, (a, b) in STAGES.items()},
    }


def throughput_report(rows: list[dict]) -> dict:
    def rate(stamps: list[float]) -> dict:
        span = (max(stamps) - min(stamps)) / 1000
        return {"span_s": round(span, 3), "per_s": round((len(stamps) - 1) / span, 1) if span else None}

    out = {"injection": rate([row["trade.intent"] for row in rows])}
    for stage, (_, written) in STAGES.items():
        out[stage] = rate([row[written] for row in rows])
    first = min(row["trade.intent"] for row in rows)
    last = max(row["position.snapshot"] for row in rows)
    span = (last - first) / 1000
    out["end_to_end"] = {"span_s": round(span, 3), "per_s": round(len(rows) / span, 1)}
    return out


def by_open_positions(rows: list[dict], buckets: int = 4) -> list[dict]:
    """By how many positions were open when the result was settled (the k-th snapshot had k before it)."""
    ordered = sorted(rows, key=lambda row: row["position.snapshot"])
    size = max(2, -(-len(ordered) // buckets))
    out = []
    for first in range(0, len(ordered), size):
        part = ordered[first : first + size]
        span = (part[-1]["position.snapshot"] - part[0]["position.snapshot"]) / 1000
        out.append(
            {
                "open_positions": f"{first}-{first + len(part) - 1}",
                "position_state_ms_p50": percentile([r["position.snapshot"] - r["apply.result"] for r in part], 50),
                "end_to_end_ms_p50": round(percentile([r["position.snapshot"] - r["sent"] for r in part], 50), 1),
                "end_to_end_ms_p99": round(percentile([r["position.snapshot"] - r["sent"] for r in part], 99), 1),
                "snapshots_per_s": round((len(part) - 1) / span, 1) if span else None,
            }
        )
    return out


# ---- phases -------------------------------------------------------------------------------------


def paced_phase(
    redis_url: str, workdir: Path, rate: float, seconds: float, replicas: dict[str, int] | None = None
) -> dict:
    replicas = replicas or {}
    count = int(rate * seconds)
    symbols = symbols_for(count)
    with running_stack(redis_url, workdir, symbols, replicas) as stack:
        intents = make_intents(symbols, f"p{int(rate)}")
        window = MeasuredWindow(stack).start()
        elapsed = inject_paced(stack, intents, rate)
        wait_done(stack, count, 300)
        reports = window.stop(count)
        collected = collect(stack, intents)
    rows = collected["rows"]
    if not rows:
        raise BenchError(f"no complete order: {collected['correctness']}")
    label = replicas_label(replicas)
    return {
        "phase": f"paced {rate:g}/s" + (f" {label}" if label != "x1" else ""),
        "kind": "paced",
        "rate_per_s": rate,
        "intents": count,
        "apply_layer_replicas": replicas.get("apply-layer", 1),
        "replicas": replicas,
        "injected_in_s": round(elapsed, 3),
        "achieved_rate_per_s": round(count / elapsed, 1),
        "latency": latency_report(rows),
        "by_open_positions": by_open_positions(rows),
        "throughput": throughput_report(rows),
        **reports,
        "correctness": collected["correctness"],
    }


def burst_phase(
    redis_url: str, workdir: Path, count: int, replicas: dict[str, int] | None = None, profile: bool = False
) -> dict:
    replicas = replicas or {}
    symbols = symbols_for(count)
    label = replicas_label(replicas)
    with running_stack(redis_url, workdir, symbols, replicas) as stack:
        intents = make_intents(symbols, "s" + "".join(ch for ch in label if ch.isalnum())[:12])
        spies = start_profilers(stack, workdir) if profile else {}
        window = MeasuredWindow(stack).start()
        elapsed = inject_burst(stack, intents)
        wait_done(stack, count, 300)
        reports = window.stop(count)
        profiles = stop_profilers(spies) if profile else {}
        collected = collect(stack, intents)
    rows = collected["rows"]
    if not rows:
        raise BenchError(f"no complete order: {collected['correctness']}")
    return {
        "phase": f"burst {label}" + (" (profiled)" if profile else ""),
        "kind": "profile" if profile else "burst",
        "intents": count,
        "apply_layer_replicas": replicas.get("apply-layer", 1),
        "replicas": replicas,
        "injected_in_s": round(elapsed, 3),
        "throughput": throughput_report(rows),
        "by_open_positions": by_open_positions(rows),
        "latency": latency_report(rows),
        **reports,
        "correctness": collected["correctness"],
        **({"profile": profiles} if profile else {}),
    }


# ---- position-state's per-result read, alone ---------------------------------------------------


def read_state_cost(redis_url: str, sizes: tuple[int, ...], calls: int = 40) -> list[dict]:
    """What position-state's handler costs per result with N positions open, without any other process.

    The real ``read_state`` (position hash, locks, ledger and the running heat totals) and the real
    ``settle`` (pure, heat included) on N real position hashes and their heat totals (as position-state's
    refresh writes them), with the client the runner makes. Imported here, not at the top: the other
    phases (and ``bench.order_path``) run against any commit's components, whatever position-state's
    internals are called there.
    """
    from quantum_trader.risk.positions import Position
    from quantum_trader.risk.settlement import settle
    from quantum_trader.runtime.runner import connect
    from quantum_trader.services.position_state import RISK_OK, read_state

    client = connect(redis_url)
    keys = Keys("readstate")
    result = ExecutionResult(
        symbol="NEWUSDT",
        plan_id="p",
        approval_id="a",
        client_order_id="c",
        status=ResultStatus.FILLED,
        kind=PlanKind.ENTRY,
        side=Side.BUY,
        reduce_only=False,
        filled_qty=0.2,
        avg_price=PRICE,
        fee=0.008,
        time=1,
        reservation=Reservation(slot=True, notional=NOTIONAL, exit_lock=False),
        stop_loss=PRICE * 0.9,
        take_profit=PRICE * 1.2,
        leverage=2,
        source="bench",
    )
    out = []
    try:
        for n in sizes:
            client.flushall()
            with client.pipeline(transaction=False) as pipe:
                for i in range(n):
                    symbol = f"R{i:05d}USDT"
                    position = Position(
                        symbol=symbol,
                        side=PositionSide.LONG,
                        qty=0.2,
                        entry_price=PRICE,
                        stop_loss=PRICE * 0.9,
                        take_profit=PRICE * 1.2,
                        opened_at=1,
                        mark_price=PRICE,
                        version=1,
                        updated_at=1,
                    )
                    pipe.hset(keys.position(symbol), mapping=position.to_hash())
                    pipe.hset(keys.open_positions, symbol, NOTIONAL)
                    pipe.hset(keys.portfolio_risk, symbol, repr(position.open_risk()))
                pipe.hset(
                    keys.portfolio_risk_total, mapping={"open_risk": repr(n * 0.2 * PRICE * 0.1), "state": RISK_OK}
                )
                pipe.execute()
            read_state(client, keys, result.symbol)  # warm
            wall = cpu = settle_cpu = 0.0
            for _ in range(calls):
                w0, c0 = time.perf_counter(), time.process_time()
                state = read_state(client, keys, result.symbol)
                c1 = time.process_time()
                settle(state.view, result, 10_000.0)
                settle_cpu += time.process_time() - c1
                wall += time.perf_counter() - w0
                cpu += c1 - c0
            out.append(
                {
                    "open_positions": n,
                    "read_state_wall_ms": round(1000 * (wall - settle_cpu) / calls, 3),
                    "read_state_cpu_ms": round(1000 * cpu / calls, 3),
                    "settle_cpu_ms": round(1000 * settle_cpu / calls, 3),
                    "max_results_per_s": round(calls / wall, 1),
                }
            )
    finally:
        client.flushall()
        client.close()
    return out


# ---- profiling (py-spy, optional) ---------------------------------------------------------------


PROFILE_HZ = 1000
"""samples per second: a 1,000-order burst costs intent-bridge about 0.2 s of CPU, 200 samples at 1 kHz"""


def start_profilers(stack: Stack, workdir: Path) -> dict[str, tuple[subprocess.Popen, Path]]:
    """``py-spy record`` on every component process: ``PROFILE_HZ``, raw collapsed stacks, ``--gil`` (a sample only
    when a thread holds the GIL, so time blocked in a socket read, which releases it, is not counted)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise BenchError("--profile needs py-spy: .venv/bin/pip install -e '.[bench]'")
    spies = {}
    for pod, process in stack.supervisor.processes.items():
        assert process.popen is not None
        out = workdir / f"{pod}.collapsed"
        command = [
            spy,
            "record",
            "--pid",
            str(process.popen.pid),
            "--rate",
            str(PROFILE_HZ),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
            "--gil",  # only the thread holding the GIL: Python running, not a thread blocked in recv()
        ]
        spies[pod] = (subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out)
    time.sleep(1.0)  # attached
    return spies


def stop_profilers(spies: dict[str, tuple[subprocess.Popen, Path]], top: int = 14) -> dict[str, dict]:
    for popen, _ in spies.values():
        popen.send_signal(signal.SIGINT)
    summaries = {}
    for pod, (popen, out) in spies.items():
        try:
            popen.wait(30)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
        summaries[pod] = summarize_collapsed(out, top) if out.exists() else {"error": "no profile written"}
    return summaries


ENTRY_FRAMES = (
    "<frozen runpy>:",
    "threading.py:",
    "cli.py:",
    "runner.py:ComponentRunner.run",
    "runner.py:run",
    "core.py:main",
    "core.py:invoke",
    "core.py:__call__",
    "base_events.py:run_",
    "base_events.py:_run_once",
    "events.py:_run",
    "exchange_sim.py:",
)
"""frames every sample of a process runs under (interpreter start, click, the event loop, a thread's start)"""


def summarize_collapsed(path: Path, top: int) -> dict:
    """Share of samples per function: inclusive (our code only, below the consumer loop), inclusive (any code,
    libraries' included, below the process's entry frames), and self (any code)."""
    inclusive: dict[str, int] = {}
    anywhere: dict[str, int] = {}  # any code's functions, libraries' included
    own: dict[str, int] = {}
    total = 0
    loop = {
        "runner.py:ComponentRunner.run",
        "consumer.py:StreamConsumer.poll_once",
        "consumer.py:StreamConsumer._read",
        "cli.py:component",
        "cli.py:<module>",
        "exchange_sim.py:ExchangeSim._serve",
    }
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        ours = {frame_name(f) for f in frames if "quantum_trader" in f} - loop
        for name in ours:
            inclusive[name] = inclusive.get(name, 0) + count
        for name in {frame_name(f) for f in frames} - loop:
            if not name.startswith(ENTRY_FRAMES):
                anywhere[name] = anywhere.get(name, 0) + count
        if frames:
            name = frame_name(frames[-1])
            own[name] = own.get(name, 0) + count

    def ranked(counts: dict[str, int], limit: int = top) -> list[list]:
        best = sorted(counts.items(), key=lambda item: -item[1])[:limit]
        return [[name, round(100 * n / total, 1)] for name, n in best]

    return {
        "samples": total,
        "inclusive_pct": ranked(inclusive),
        "inclusive_any_code_pct": ranked(anywhere, 2 * top),
        "self_pct": ranked(own),
    }


def frame_name(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``module.py:func``."""
    func, _, where = frame.partition(" (")
    return f"{Path(where.rsplit(':', 1)[0].rstrip(')')).name}:{func}"


# ---- main ---------------------------------------------------------------------------------------


def bench_environment() -> Path:
    """A work directory for one bench run, and the environment every component process inherits.

    State and the simulator's order log go to the work directory (never the user's run.json), and the
    components count their Redis round trips (``bench/redis_sends``): its directory first on
    ``PYTHONPATH``, ahead of whatever ``PYTHONPATH`` already names (say another checkout's components).
    """
    workdir = Path(tempfile.mkdtemp(prefix="qt-bench-"))
    os.environ["QT_STATE_DIR"] = str(workdir / "state")
    os.environ["QT_SIM_ORDER_LOG"] = str(workdir / "orders.jsonl")
    sends = workdir / "redis-sends"
    sends.mkdir()
    os.environ["BENCH_REDIS_SEND_DIR"] = str(sends)
    path = [str(SEND_COUNTER_DIR), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(path)
    return workdir


def print_tables(phases: list[dict]) -> None:
    rows = []
    for p in phases:
        lat = p["latency"]["end_to_end_ms"]
        executor = p["latency"]["plan_to_snapshot_ms"]
        ok = "yes" if p["correctness"]["ok"] else "NO"
        rows.append(
            [
                p["phase"],
                p["intents"],
                p["throughput"]["end_to_end"]["per_s"],
                lat["p50"],
                lat["p90"],
                lat["p99"],
                lat["max"],
                executor["p50"],
                executor["p99"],
                ok,
            ]
        )
    print(
        table(
            ["phase", "orders", "orders/s", "e2e p50 ms", "p90", "p99", "max", "plan->snap p50", "p99", "checks"], rows
        )
    )
    print()
    stage_rows = []
    for p in phases:
        t = p["throughput"]
        stage_rows.append(
            [
                p["phase"],
                t["injection"]["per_s"],
                *(t[s]["per_s"] for s in STAGES),
                p["cpu"]["cores_busy"],
                p["cpu"]["cpu_ms_per_order_total"],
                p["cpu"]["other_processes_cores"],
            ]
        )
    print(
        table(
            ["phase (stage: orders/s)", "injected", *STAGES, "cores busy", "CPU ms/order", "others' cores"], stage_rows
        )
    )
    print()
    for p in phases:
        buckets = "  ".join(
            f"{b['open_positions']}: {b['snapshots_per_s']}/s e2e p50 {b['end_to_end_ms_p50']} ms"
            for b in p["by_open_positions"]
        )
        print(f"{p['phase']} by open positions -> {buckets}")
        print(f"{p['phase']} CPU ms per order: {p['cpu']['cpu_ms_per_order']}")
        if "redis" in p:
            r = p["redis"]
            print(
                f"{p['phase']} Redis per order: {r['commands_per_order']} commands, {r['round_trips_per_order']}"
                f" round trips; {r['top_commands_per_order']}"
            )
        if not p["correctness"]["ok"]:
            print(f"{p['phase']} CHECKS FAILED: {p['correctness']['problems']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 intents per phase, replicas 1 and 2 (< 1 minute)")
    parser.add_argument(
        "--phases", default="readstate,paced,burst", help="comma list of readstate, paced, burst (default: all three)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="an extra burst (1 replica) under py-spy; its numbers are not the measured ones",
    )
    add_wait_quiet_option(parser)
    parser.add_argument(
        "--paced-replicas",
        type=int,
        default=1,
        metavar="N",
        help="apply-layer replicas in the paced phases (default 1)",
    )
    parser.add_argument(
        "--burst-intents",
        type=int,
        default=None,
        metavar="N",
        help="intents per burst (default 1,000, with --quick 200; the allowlist holds at most 1,000 symbols)",
    )
    parser.add_argument(
        "--burst-replicas",
        default=None,
        metavar="N,M",
        help="apply-layer replicas of the burst phases (default 1,2,4; with --quick 1,2)",
    )
    parser.add_argument(
        "--cold-leverage",
        action="store_true",
        help="do not set the symbols' leverage before a phase: every order sets it first",
    )
    parser.add_argument(
        "--output",
        default=None,
        metavar="NAME",
        help="results file bench/results/NAME.json (default: pipeline, or pipeline-quick)",
    )
    args = parser.parse_args(argv)
    global COLD_LEVERAGE
    COLD_LEVERAGE = args.cold_leverage
    wanted = {p.strip() for p in args.phases.split(",") if p.strip()}
    count = args.burst_intents or (200 if args.quick else BURST)
    paced = ((25, 100), (100, count), (200, count)) if args.quick else PACED
    replicas = (1, 2) if args.quick else (1, 2, 4)
    if args.burst_replicas:
        replicas = tuple(int(n) for n in args.burst_replicas.split(","))
    workdir = bench_environment()
    server = start_redis()
    started = time.monotonic()
    phases: list[dict] = []
    read_cost: list[dict] = []

    def run(phase: Callable[[], dict]) -> None:
        quiet = wait_for_quiet(args.wait_quiet)
        result = phase()
        result["machine_before"] = quiet
        phases.append(result)
        cpu = result["cpu"]
        print(
            f"[{time.monotonic() - started:5.1f}s] {result['phase']}: {result['throughput']['end_to_end']['per_s']}"
            f" orders/s, checks {'ok' if result['correctness']['ok'] else 'FAILED'}, other processes used"
            f" {cpu['other_processes_cores']} cores",
            flush=True,
        )

    try:
        if "readstate" in wanted:
            wait_for_quiet(args.wait_quiet)
            read_cost = read_state_cost(server.url, (0, 100, 500) if args.quick else (0, 10, 100, 1000, 5000))
            print(f"[{time.monotonic() - started:5.1f}s] read_state cost measured", flush=True)
        if "paced" in wanted:
            for rate, n in paced:
                run(
                    lambda rate=rate, n=n: paced_phase(
                        server.url, workdir, rate, n / rate, {"apply-layer": args.paced_replicas}
                    )
                )
        if "burst" in wanted:
            for k in replicas:
                run(lambda k=k: burst_phase(server.url, workdir, count, {"apply-layer": k}))
        if args.profile:
            run(lambda: burst_phase(server.url, workdir, count, {}, profile=True))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    if read_cost:
        print("position-state's read_state + settle per result, alone (no other process):")
        print(table(list(read_cost[0]), [list(row.values()) for row in read_cost]))
        print()
    if phases:
        print_tables(phases)
    path = write_results(
        args.output or ("pipeline-quick" if args.quick else "pipeline"),
        {
            "benchmark": "pipeline",
            "quick": args.quick,
            "cold_leverage": args.cold_leverage,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "runtime_s": round(time.monotonic() - started, 1),
            "machine": machine(),
            "method": __doc__,
            "read_state_cost": read_cost,
            "phases": phases,
        },
    )
    print(f"\n{time.monotonic() - started:.0f}s; wrote {path}")
    return 0 if all(p["correctness"]["ok"] for p in phases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
