"""Runs every enabled component as its own process, the way the operator's pods run them (DESIGN §8):
``qt component <name>`` with its settings in the environment. Crashed components are restarted with
backoff and counted, as a Deployment would. A stop goes in reverse dependency order: the producers
first, so nothing new reaches a component after it stopped, and the exchange last, so every order in
flight gets its answer. Each component finishes and acks the entry in hand before it exits."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis

from quantum_trader.bus.control import Scope, write_control
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.policy import PolicySpec, dump_policy
from quantum_trader.contracts.registry import check_wiring
from quantum_trader.local.ledger import Crash
from quantum_trader.local.orphans import die_with_parent
from quantum_trader.local.redis_server import free_port

log = logging.getLogger(__name__)

# The exchange comes first so apply-layer and reconciler find it; the executor path before the
# producers so nothing queues without a reader.
START_ORDER = (
    "exchange-sim",
    "position-state",
    "apply-layer",
    "governor",
    "reconciler",
    "exit-brain",
    "heat-gate",
    "harvest",
    "intent-bridge",
    "ai-engine",
    "features",
    "market-data",
)


ORDER_LOG_FILE = "exchange-orders.jsonl"
"""every order request the simulator answered in this run, one JSON line each"""


class WiringError(ValueError):
    pass


PASSED_THROUGH = ("QT_MARKET_", "QT_APPLY_IN_FLIGHT")
"""the caller's QT_* settings that reach the components as they are: ``QT_MARKET_STREAM_URL``,
``QT_MARKET_REST_URL`` and ``QT_MARKET_STALE_SECONDS`` point market-data's live feed elsewhere (README
"Market data"); ``QT_APPLY_IN_FLIGHT`` is how many orders one apply-layer process has in flight"""


def inherited_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment as every component starts with it: its QT_* settings left out, since the
    supervisor sets its own (a QT_INSTANCE or QT_REDIS_URL of another stack would point a component at it),
    except the ones in :data:`PASSED_THROUGH`."""
    return {k: v for k, v in environ.items() if not k.startswith("QT_") or k.startswith(PASSED_THROUGH)}


FORCED_KILL = "killed (forced stop)"


def describe_stop(code: int, *, forced: bool = False, timed_out_after: float | None = None) -> str:
    """How a process ended on a stop. Dying of the SIGTERM itself means it was still importing (a
    component handles SIGTERM from before it reads anything): it held nothing, so that stop is clean.
    A SIGKILL the stop itself sent is named as such (a second Ctrl-C, or no exit within the timeout),
    not as a crash."""
    if code == 0:
        return "stopped"
    if code == -signal.SIGTERM:
        return "stopped (while starting)"
    if code == -signal.SIGKILL and forced:
        return FORCED_KILL
    if code == -signal.SIGKILL and timed_out_after is not None:
        return f"killed (not stopped within {timed_out_after:.0f}s)"
    return describe_exit(code)


def clean_stop(code: int) -> bool:
    return code in (0, -signal.SIGTERM)


def stop_stages(components: list[str]) -> list[list[str]]:
    """The stop order: stages stopped one after the other, the components of one stage together.

    A component stops only after every producer of its inputs stopped before it (in the reverse of
    the start order, which breaks the one cycle, exits feeding back into the executor path), so
    nothing new reaches a component after it stopped. The exchange goes last: apply-layer and the
    reconciler talk to it, and an order in flight gets its answer.
    """
    from quantum_trader.contracts.registry import COMPONENTS

    order = [c for c in reversed(START_ORDER) if c in components] + [c for c in components if c not in START_ORDER]
    stage: dict[str, int] = {}
    for name in order:
        spec = COMPONENTS.get(name)
        producers = [
            stage[other]
            for other in stage
            if spec is not None and any(s in COMPONENTS[other].outputs for s in spec.inputs)
        ]
        stage[name] = 1 + max(producers) if producers else 0
    if "exchange-sim" in stage:
        stage["exchange-sim"] = 1 + max((v for k, v in stage.items() if k != "exchange-sim"), default=-1)
    stages: list[list[str]] = [[] for _ in range(max(stage.values(), default=-1) + 1)]
    for name in order:
        stages[stage[name]].append(name)
    return [s for s in stages if s]


def describe_exit(code: int) -> str:
    """How a process ended, as the status table shows it: a signal is a crash, a code an exit."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"crashed ({name})"
    return f"exited ({code})"


def state_dir() -> Path:
    base = os.environ.get("QT_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME", os.path.expanduser("~/.local/state")), "quantum-trader"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_file() -> Path:
    return state_dir() / "run.json"


@dataclass
class Process:
    component: str
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    state: str = "starting"
    last_end: str = ""
    """how the previous process of this pod ended while the stack ran (``crashed (SIGKILL)``)"""

    def start(self) -> None:
        log_file = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "quantum_trader.cli", "component", self.component],
            env=self.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log_file.close()
        self.state = "running"


@dataclass
class Supervisor:
    policy: PolicySpec
    redis_url: str
    instance: str = "local"
    workdir: Path = field(default_factory=lambda: state_dir() / "run")
    processes: dict[str, Process] = field(default_factory=dict)
    exchange_url: str = ""
    only: list[str] | None = None
    """run just these components, with the caller producing the missing streams (tests, benchmarks)"""

    crashes: list[Crash] = field(default_factory=list)
    """every exit of a component while the stack ran, in order"""

    def __post_init__(self) -> None:
        self.keys = Keys(self.instance)
        self.started_at = time.time()
        self._run_info: dict = {}
        enabled = self.policy.enabled_components() if self.only is None else self.only
        self.components = [c for c in START_ORDER if c in enabled]
        if self.only is None:
            report = check_wiring(self.components)
            if not report.valid:
                raise WiringError(report.describe())
        self.workdir.mkdir(parents=True, exist_ok=True)

    def prepare(self) -> None:
        """Config file, fresh control key (released by ``qt run``), rollout hash, run file."""
        config_path = self.workdir / "config.yaml"
        config_path.write_text(dump_policy(self.policy))
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        write_control(client, self.keys, engaged=False, scope=Scope.ENTRIES, reason="qt run start", engaged_by="qt run")
        exits = self.policy.exits
        client.hset(
            self.keys.rollout,
            mapping={
                "mode": exits.mode,
                "percent": str(exits.rollout_percent),
                "pinned_live": ",".join(exits.pinned_live),
                "pinned_shadow": ",".join(exits.pinned_shadow),
            },
        )
        client.close()
        sim_port = self.policy.simulator.port or free_port()
        self.exchange_url = f"http://127.0.0.1:{sim_port}" if self.policy.mode.value == "paper" else ""
        # Paper mode: a throwaway key pair shared by the simulator and the clients, never written anywhere.
        api_key = os.environ.get("BINANCE_API_KEY") or secrets.token_hex(32)
        api_secret = os.environ.get("BINANCE_API_SECRET") or secrets.token_hex(32)
        base_env = inherited_environment(os.environ)
        base_env.update(
            QT_INSTANCE=self.instance,
            QT_REDIS_URL=self.redis_url,
            QT_CONFIG=str(config_path),
            BINANCE_API_KEY=api_key,
            BINANCE_API_SECRET=api_secret,
            PYTHONUNBUFFERED="1",
        )
        if self.exchange_url:
            base_env["QT_EXCHANGE_URL"] = self.exchange_url
            base_env["QT_SIM_ORDER_LOG"] = os.environ.get("QT_SIM_ORDER_LOG") or str(self.fresh_order_log())
        self._ports: set[int] = {sim_port}
        for component in self.components:
            settings = self.policy.components.get(component)
            replicas = settings.replicas if settings is not None else 1
            for index in range(max(replicas, 1)):
                env = dict(base_env)
                pod = f"{component}-{index}"
                env.update(
                    QT_COMPONENT=component,
                    QT_POD=pod,
                    QT_HEALTH_PORT=str(self.new_port()),
                    QT_METRICS_PORT=str(self.new_port()),
                )
                log_path = self.workdir / f"{pod}.log"
                log_path.write_bytes(b"")  # this run's log only; restarts within the run append
                self.processes[pod] = Process(component, env, log_path)
        self._run_info = {
            "pid": os.getpid(),
            "redis_url": self.redis_url,
            "instance": self.instance,
            "components": self.components,
            "starting_equity": self.policy.simulator.starting_balance,
            "exchange_url": self.exchange_url,
            "workdir": str(self.workdir),
        }
        self._write_run_file()

    def fresh_order_log(self) -> Path:
        """The simulator's order log in the work directory, emptied: it holds this run's orders only, as
        the component logs hold this run's lines (the simulator appends, so a restart within the run keeps
        what came before it)."""
        path = self.workdir / ORDER_LOG_FILE
        path.write_bytes(b"")
        return path

    def _write_run_file(self) -> None:
        """run.json: how ``qt status`` and ``qt killswitch`` find this stack, and each process's state."""
        info = dict(self._run_info, processes=self.process_states())
        temporary = run_file().with_suffix(".tmp")
        temporary.write_text(json.dumps(info, indent=2))
        temporary.replace(run_file())

    def new_port(self) -> int:
        """A free loopback port not handed out before in this run."""
        while True:
            port = free_port()
            if port not in self._ports:
                self._ports.add(port)
                return port

    def start(self) -> None:
        for process in self.processes.values():
            process.start()
            if process.component == "exchange-sim":
                self._wait_for_exchange()

    def _wait_for_exchange(self, timeout: float = 20.0) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        process = self.processes["exchange-sim-0"]
        while time.monotonic() < deadline:
            if process.popen is not None and process.popen.poll() is not None:
                return  # the supervision loop reports and restarts it
            try:
                with urllib.request.urlopen(f"{self.exchange_url}/fapi/v1/ping", timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)

    def supervise_once(self) -> None:
        """Restart exited components with exponential backoff (1 s doubling to 30 s)."""
        now = time.monotonic()
        changed = False
        for pod, process in self.processes.items():
            popen = process.popen
            if popen is None:
                if now >= process.next_start:
                    # fresh ports: the old ones may have been taken meanwhile by anything on this machine
                    process.env.update(QT_HEALTH_PORT=str(self.new_port()), QT_METRICS_PORT=str(self.new_port()))
                    process.start()
                    changed = True
                continue
            code = popen.poll()
            if code is None:
                continue
            process.restarts += 1
            process.state = process.last_end = describe_exit(code)
            process.popen = None
            process.next_start = now + min(30.0, 2.0 ** min(process.restarts - 1, 5))
            self.crashes.append(Crash(pod, process.state, round(time.time() - self.started_at, 1)))
            delay = process.next_start - now
            print(f"qt: {pod} {process.state}; restarting it in {delay:.0f}s", file=sys.stderr, flush=True)
            changed = True
        if changed and self._run_info:
            self._write_run_file()

    def process_states(self) -> dict[str, tuple[str, int, str]]:
        """component -> (state of its worst replica, restarts of all replicas, how the last one ended)"""
        states: dict[str, tuple[str, int, str]] = {}
        for process in self.processes.values():
            state, restarts, last_end = states.get(process.component, ("running", 0, ""))
            if process.state != "running":
                state = process.state
            states[process.component] = (state, restarts + process.restarts, process.last_end or last_end)
        return states

    def pods(self, component: str) -> list[Process]:
        return [p for p in self.processes.values() if p.component == component]

    def stop(
        self,
        timeout: float = 15.0,
        *,
        force: threading.Event | None = None,
    ) -> dict[str, int]:
        """Stop every component in reverse dependency order (``stop_stages``): SIGTERM to a stage (each
        finishes and acks its entry in hand, then exits 0), SIGKILL after ``timeout``, then the next
        stage. Once ``force`` is set, whatever still runs is killed at once. Returns pod -> exit code,
        in stop order."""
        codes: dict[str, int] = {}
        forced = force if force is not None else threading.Event()
        for stage in stop_stages(self.components):
            pods = [(pod, p) for name in stage for pod, p in self.processes.items() if p.component == name and p.popen]
            for _, process in pods:
                if process.popen is not None and process.popen.poll() is None:
                    process.popen.send_signal(signal.SIGKILL if forced.is_set() else signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for pod, process in pods:
                popen = process.popen
                if popen is None:
                    continue
                timed_out = False
                while popen.poll() is None:
                    if time.monotonic() >= deadline or forced.is_set():
                        timed_out = not forced.is_set()
                        popen.kill()
                        popen.wait()
                        break
                    time.sleep(0.02)
                codes[pod] = popen.returncode
                process.state = describe_stop(
                    popen.returncode, forced=forced.is_set(), timed_out_after=timeout if timed_out else None
                )
        try:
            current = json.loads(run_file().read_text())
            if current.get("pid") == os.getpid():
                run_file().unlink()
        except (OSError, ValueError):
            pass
        return codes
