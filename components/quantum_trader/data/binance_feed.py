"""Live market data, the I/O part: python-binance's USDⓈ-M combined stream and its klines REST call.

``StreamFeed`` runs python-binance's ``BinanceSocketManager.futures_multiplex_socket`` in a thread
of its own (an asyncio loop) and hands every parsed message to the caller through a queue, so
market-data's loop never blocks on the network. python-binance reconnects a dropped socket by
itself (and reports the drop as ``{"e": "error"}``); when it gives up, this loop opens a new
socket after a backoff, for as long as the feed runs. The base URLs are python-binance's
production ones unless given (tests point them at a local server; nothing else changes).

``fetch_klines`` is the backfill: ``GET /fapi/v1/klines`` through python-binance's sync client,
paged by ``startTime`` until the range is covered.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from binance.async_client import AsyncClient
from binance.client import Client
from binance.ws.streams import BinanceSocketManager

from quantum_trader.data.klines import Kline, interval_ms
from quantum_trader.data.live import FeedDown, LiveDataError, StreamEvent, kline_from_rest, parse_stream_message

log = logging.getLogger(__name__)

REST_PAGE = 1500
"""the most bars /fapi/v1/klines returns in one call"""
RECONNECT_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)


class StreamFeed:
    """The combined kline + mark-price stream of some symbols, as events on ``events``."""

    def __init__(self, streams: Sequence[str], interval: str, *, stream_url: str | None = None) -> None:
        self.streams = list(streams)
        self.interval = interval
        self.stream_url = stream_url
        self.events: queue.Queue[tuple[int, StreamEvent]] = queue.Queue()
        """(arrival wall time ms, event)"""
        self.reconnects = 0
        self.malformed = 0
        self._stop = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="market-stream", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _put(self, event: StreamEvent) -> None:
        self.events.put((int(time.time() * 1000), event))

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._follow())
        finally:
            self._loop.close()

    async def _follow(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            client = AsyncClient()  # public market data: no key, and no ping (create() would ping)
            manager = BinanceSocketManager(client)
            if self.stream_url:
                manager.FSTREAM_URL = self.stream_url.rstrip("/") + "/"
            try:
                async with manager.futures_multiplex_socket(self.streams) as socket:
                    attempt = 0
                    while not self._stop.is_set():
                        try:
                            message = await asyncio.wait_for(socket.recv(), timeout=0.5)
                        except TimeoutError:
                            continue
                        self._handle(message)
            except Exception as error:  # the socket gave up or never opened: report, back off, open again
                self._put(FeedDown(f"{type(error).__name__}: {error}"))
            finally:
                await client.close_connection()
            if self._stop.is_set():
                return
            self.reconnects += 1
            await asyncio.sleep(RECONNECT_BACKOFF_SECONDS[min(attempt, len(RECONNECT_BACKOFF_SECONDS) - 1)])
            attempt += 1

    def _handle(self, message: Any) -> None:
        try:
            event = parse_stream_message(message, self.interval) if isinstance(message, dict) else None
        except LiveDataError as error:
            self.malformed += 1
            log.warning("malformed stream message dropped", extra={"error": str(error)})
            return
        if event is not None:
            if isinstance(event, FeedDown):
                self.reconnects += 1
            self._put(event)


class KlinesRest:
    """``GET /fapi/v1/klines`` (public, unsigned) through python-binance's sync client."""

    def __init__(self, rest_url: str | None = None, *, timeout: float = 10.0) -> None:
        self._client = Client(ping=False)
        if rest_url:
            self._client.FUTURES_URL = rest_url.rstrip("/") + "/fapi"
        self._client.REQUEST_TIMEOUT = timeout

    def fetch(self, symbol: str, interval: str, first_open: int, last_open: int) -> list[Kline]:
        """Every bar opening in ``[first_open, last_open]`` the exchange has, in order."""
        step = interval_ms(interval)
        bars: list[Kline] = []
        start = first_open
        while start <= last_open:
            rows = self._client.futures_klines(
                symbol=symbol, interval=interval, startTime=start, endTime=last_open + step - 1, limit=REST_PAGE
            )
            page = [kline_from_rest(row, symbol, interval) for row in rows]
            page = [bar for bar in page if first_open <= bar.open_time <= last_open]
            if not page:
                break
            bars.extend(page)
            start = page[-1].open_time + step
        return bars

    def close(self) -> None:
        self._client.close_connection()
