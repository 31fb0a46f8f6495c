"""The simulator's order log: every order request that reached it, one JSON object per line.

Why: tests and benchmarks prove invariants from the exchange's side — "exactly one order for
a plan", "no request at all for a STOP plan" — which no client-side counter can prove.
Entries never contain the API key or the signature.

Fields: ``seq`` (1, 2, ...), ``time`` (server wall ms), ``method``, ``path``, ``symbol``,
``side``, ``type``, ``quantity``, ``reduceOnly``, ``clientOrderId``, ``outcome``
(``accepted`` | ``rejected`` | ``fault``), ``fault`` (null | ``error`` | ``rate_limit`` |
``timeout``: accepted, answer withheld), ``status`` (HTTP), ``code`` and ``msg`` (Binance error,
null when accepted), ``orderId``, ``executedQty``, ``avgPrice`` (accepted orders).

Writing policy. The file gets the entries in batches: :meth:`OrderLog.record` keeps an entry in memory
(where ``GET /sim/orders`` reads it at once), and the server awaits :meth:`OrderLog.written` before it
answers, which writes every entry recorded in the same event-loop iteration with one ``write`` and
one ``flush`` (so concurrent orders share them) — an order's answer never goes out before its line is
in the file, as with a flush per line. The file is never fsynced: what it proves (what the simulator
saw during a run) must survive the simulator process being killed, which the OS page cache does;
it need not survive the machine, and an fsync per batch would put a disk wait in every order's
answer. :meth:`flush` (and :meth:`close`) write whatever is still held, for callers outside an event loop.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, TextIO

_LOGGED_PARAMS = ("symbol", "side", "type", "quantity", "reduceOnly", "newClientOrderId", "positionSide")


class OrderLog:
    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: list[dict[str, Any]] = []
        self._unwritten: list[str] = []
        self._batch: asyncio.Future[None] | None = None
        """resolved once the batch of the current event-loop iteration is in the file"""
        self._file: TextIO | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")

    def record(
        self,
        *,
        time: int,
        method: str,
        path: str,
        params: dict[str, str],
        outcome: str,
        status: int,
        code: int | None = None,
        msg: str | None = None,
        fault: str | None = None,
        order: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one entry and return it; it reaches the file with its batch (:meth:`written`)."""
        picked = {k: params.get(k) for k in _LOGGED_PARAMS}
        entry: dict[str, Any] = {
            "seq": len(self._entries) + 1,
            "time": time,
            "method": method,
            "path": path,
            "symbol": picked["symbol"],
            "side": picked["side"],
            "type": picked["type"],
            "quantity": picked["quantity"],
            "reduceOnly": picked["reduceOnly"],
            "clientOrderId": picked["newClientOrderId"],
            "outcome": outcome,
            "fault": fault,
            "status": status,
            "code": code,
            "msg": msg,
            "orderId": order.get("orderId") if order else None,
            "executedQty": order.get("executedQty") if order else None,
            "avgPrice": order.get("avgPrice") if order else None,
        }
        self._entries.append(entry)
        if self._file is not None:
            self._unwritten.append(json.dumps(entry, separators=(",", ":")) + "\n")
        return entry

    async def written(self) -> None:
        """Wait until every entry recorded so far is in the file: one write for the whole event-loop
        iteration's entries, at its end."""
        if not self._unwritten:
            return
        if self._batch is None:
            loop = asyncio.get_running_loop()
            self._batch = loop.create_future()
            loop.call_soon(self._write_batch)
        await asyncio.shield(self._batch)  # a cancelled waiter must not cancel the others' batch

    def _write_batch(self) -> None:
        batch, self._batch = self._batch, None
        self.flush()
        if batch is not None and not batch.done():
            batch.set_result(None)

    def flush(self) -> None:
        """Write (and flush to the OS) every entry not in the file yet."""
        if self._file is not None and self._unwritten:
            self._file.write("".join(self._unwritten))
            self._file.flush()
        self._unwritten.clear()

    def entries(self, client_order_id: str | None = None) -> list[dict[str, Any]]:
        if client_order_id is None:
            return list(self._entries)
        return [e for e in self._entries if e["clientOrderId"] == client_order_id]

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None


def read_order_log(path: Path | str) -> list[dict[str, Any]]:
    """Every entry of an order log file (for tests and reports)."""
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
