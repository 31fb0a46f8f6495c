"""exchange-sim: the Binance USDⓈ-M futures REST simulator as a component (paper mode).

It serves on the port of QT_EXCHANGE_URL (the URL every client in the instance uses) and follows
``market.tick`` in its own consumer group for prices. Credentials are the instance's paper key pair.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlparse

from quantum_trader.exchange.simulator.server import SimulatorApp, serve
from quantum_trader.runtime.service import ComponentContext, Service
from quantum_trader.runtime.settings import SettingsError

DEFAULT_PORT = 8090


def listen_port(ctx: ComponentContext) -> int:
    if ctx.settings.exchange_url:
        port = urlparse(ctx.settings.exchange_url).port
        if port:
            return port
    return ctx.policy.simulator.port or DEFAULT_PORT


class ExchangeSim(Service):
    def __init__(self, ctx: ComponentContext) -> None:
        super().__init__(ctx)
        if not ctx.settings.api_key or not ctx.settings.api_secret:
            raise SettingsError("BINANCE_API_KEY and BINANCE_API_SECRET are required: the simulator verifies them")
        self.port = listen_port(ctx)
        self.host = os.environ.get("QT_SIM_HOST", "127.0.0.1" if ctx.settings.instance == "local" else "0.0.0.0")
        self.order_log = Path(os.environ.get("QT_SIM_ORDER_LOG") or Path(tempfile.gettempdir()) / "qt-sim-orders.jsonl")
        self.app: SimulatorApp | None = None
        self.url = ""
        self.error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="exchange-sim", daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        def started(url: str, app: SimulatorApp) -> None:
            self.url, self.app = url, app
            self._started.set()

        self._task = self._loop.create_task(
            serve(
                self.ctx.policy.simulator,
                self.host,
                self.port,
                symbols=self.ctx.policy.symbols,
                credentials={self.ctx.settings.api_key: self.ctx.settings.api_secret},
                order_log_path=self.order_log,
                redis_url=self.ctx.settings.redis_url,
                tick_stream=self.ctx.keys.stream("market.tick"),
                consumer=self.ctx.pod,
                started=started,
            )
        )
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException as error:  # reported by idle(): the process exits and is restarted
            self.error = error
        finally:
            self._started.set()

    def start(self) -> None:
        self._thread.start()
        self._started.wait(30)
        if self.error is not None:
            raise RuntimeError(f"exchange simulator failed to start: {self.error}")
        self.ctx.log.info("exchange simulator serving", extra={"url": self.url, "order_log": str(self.order_log)})

    def idle(self) -> float:
        if self.error is not None or not self._thread.is_alive():
            raise RuntimeError(f"exchange simulator stopped: {self.error}")
        if self.app is not None:
            # the status table's "processed" for the simulator is orders handled
            self.counters["orders"] = self.counters["processed"] = len(self.app.engine.orders())
        return 1.0

    def ready(self) -> tuple[bool, str]:
        return (self.app is not None and self.error is None, self.url or "starting")

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)


def build(ctx: ComponentContext) -> Service:
    return ExchangeSim(ctx)
