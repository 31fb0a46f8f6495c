"""A local stand-in for Binance's USDⓈ-M market data: the combined websocket stream and GET /fapi/v1/klines.

It speaks Binance's wire format (``{"stream": "btcusdt@kline_1m", "data": {"e": "kline", ...}}``,
``markPriceUpdate``, the 12-field REST rows) over real TCP, so market-data's python-binance client
runs unchanged against it. The test drives the market: ``advance`` closes bars, ``drop`` cuts every
connection and refuses new ones until ``restore``; bars closed meanwhile reach the client only by
backfill. ``silent`` keeps the connections open with nothing on them, as a stalled feed does. Like
Binance after a reconnect, a new connection first gets the last closed bar again.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence

from aiohttp import WSMsgType, web

from quantum_trader.data.klines import Kline, format_number
from quantum_trader.data.synthetic import synthetic_klines


def kline_payload(bar: Kline, closed: bool, event_time: int) -> dict:
    return {
        "e": "kline",
        "E": event_time,
        "s": bar.symbol,
        "k": {
            "t": bar.open_time, "T": bar.close_time, "s": bar.symbol, "i": bar.interval, "f": 1, "L": bar.trades,
            "o": format_number(bar.open), "c": format_number(bar.close), "h": format_number(bar.high),
            "l": format_number(bar.low), "v": format_number(bar.volume), "n": bar.trades, "x": closed,
            "q": format_number(bar.quote_volume), "V": format_number(bar.taker_buy_volume),
            "Q": format_number(bar.taker_buy_quote_volume), "B": "0",
        },
    }  # fmt: skip


def rest_row(bar: Kline) -> list:
    numbers = [format_number(v) for v in (bar.open, bar.high, bar.low, bar.close, bar.volume)]
    taker = [format_number(bar.taker_buy_volume), format_number(bar.taker_buy_quote_volume)]
    return [bar.open_time, *numbers, bar.close_time, format_number(bar.quote_volume), bar.trades, *taker, "0"]


class BinanceMarketServer:
    def __init__(self, symbols: Sequence[str], *, bars: int, closed: int, interval: str = "1m", seed: int = 5) -> None:
        self.interval = interval
        self.bars = {s: list(synthetic_klines(s, seed=seed, bars=bars, interval=interval)) for s in symbols}
        self.closed = dict.fromkeys(symbols, closed)
        """per symbol: bars[:closed] have closed, bars[closed] is the open bar"""
        self.down = False
        self.silent = False
        """connections stay open but carry nothing: a stalled feed"""
        self.connections: set[web.WebSocketResponse] = set()
        self.connects = 0
        self.rest_calls: list[dict[str, str]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    # --- driving it from the test thread ---------------------------------------------------------
    def start(self) -> BinanceMarketServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def advance(self, count: int = 1) -> None:
        """Close the open bar of every symbol ``count`` times, telling whoever is connected."""
        self._call(self._advance(count))

    def drop(self) -> None:
        """Close every connection and refuse new ones."""
        self.down = True
        self._call(self._close_all())

    def restore(self) -> None:
        self.down = False

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/"

    def _call(self, coroutine) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    # --- the server -------------------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/market/stream", self._stream)
        app.router.add_get("/stream", self._stream)
        app.router.add_get("/fapi/v1/klines", self._klines)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._heartbeat = self._loop.create_task(self._mark_prices())
        self._ready.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        self._heartbeat.cancel()
        await self._close_all()
        await self._runner.cleanup()

    def _open_bar(self, symbol: str) -> Kline:
        return self.bars[symbol][self.closed[symbol]]

    def _now(self, symbol: str) -> int:
        return self._open_bar(symbol).open_time + 1_000

    async def _send_all(self, payload: dict, stream: str) -> None:
        if self.silent:
            return
        text = json.dumps({"stream": stream, "data": payload})
        for ws in list(self.connections):
            if not ws.closed:
                await ws.send_str(text)

    async def _advance(self, count: int) -> None:
        for _ in range(count):
            for symbol in sorted(self.bars):
                bar = self._open_bar(symbol)
                stream = f"{symbol.lower()}@kline_{self.interval}"
                await self._send_all(kline_payload(bar, True, bar.close_time + 5), stream)
                self.closed[symbol] += 1
                await self._send_all(kline_payload(self._open_bar(symbol), False, self._now(symbol)), stream)

    async def _mark_prices(self) -> None:
        while True:
            for symbol in sorted(self.bars):
                payload = {"e": "markPriceUpdate", "E": self._now(symbol), "s": symbol,
                           "p": format_number(self._open_bar(symbol).open), "i": "0", "P": "0", "r": "0.0001",
                           "T": 0}  # fmt: skip
                await self._send_all(payload, f"{symbol.lower()}@markPrice@1s")
            await asyncio.sleep(0.2)

    async def _close_all(self) -> None:
        for ws in list(self.connections):
            await ws.close()
        self.connections.clear()

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            return web.Response(status=503, text="down")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connects += 1
        self.connections.add(ws)
        for symbol in sorted(self.bars):
            stream = f"{symbol.lower()}@kline_{self.interval}"
            last_closed = self.bars[symbol][self.closed[symbol] - 1]
            repeat = kline_payload(last_closed, True, self._now(symbol))
            await ws.send_str(json.dumps({"stream": stream, "data": repeat}))
            open_bar = kline_payload(self._open_bar(symbol), False, self._now(symbol))
            await ws.send_str(json.dumps({"stream": stream, "data": open_bar}))
        async for message in ws:
            if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
        self.connections.discard(ws)
        return ws

    async def _klines(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.rest_calls.append(query)
        symbol = query["symbol"]
        if symbol not in self.bars or query.get("interval") != self.interval:
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        start = int(query.get("startTime", 0))
        end = int(query.get("endTime", 2**62))
        limit = min(int(query.get("limit", 500)), 1500)
        closed = self.bars[symbol][: self.closed[symbol]]
        rows = [rest_row(b) for b in closed if start <= b.open_time <= end][:limit]
        return web.json_response(rows)
