"""The simulator's order log: every order request that reached it, one JSON object per line.

Why: tests and benchmarks prove invariants from the exchange's side — "exactly one order for
a plan", "no request at all for a STOP plan" — which no client-side counter can prove.
Entries never contain the API key or the signature.

Fields: ``seq`` (1, 2, ...), ``time`` (server wall ms), ``method``, ``path``, ``symbol``,
``side``, ``type``, ``quantity``, ``reduceOnly``, ``clientOrderId``, ``outcome``
(``accepted`` | ``rejected`` | ``fault``), ``fault`` (null | ``error`` | ``rate_limit`` |
``timeout``: accepted, answer withheld), ``status`` (HTTP), ``code`` and ``msg`` (Binance error,
null when accepted), ``orderId``, ``executedQty``, ``avgPrice`` (accepted orders).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

_LOGGED_PARAMS = ("symbol", "side", "type", "quantity", "reduceOnly", "newClientOrderId", "positionSide")


class OrderLog:
    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: list[dict[str, Any]] = []
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
        """Append one entry (and flush it to the file) and return it."""
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
            self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
            self._file.flush()
        return entry

    def entries(self, client_order_id: str | None = None) -> list[dict[str, Any]]:
        if client_order_id is None:
            return list(self._entries)
        return [e for e in self._entries if e["clientOrderId"] == client_order_id]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_order_log(path: Path | str) -> list[dict[str, Any]]:
    """Every entry of an order log file (for tests and reports)."""
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
