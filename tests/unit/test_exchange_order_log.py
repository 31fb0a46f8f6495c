"""The simulator's order log: entries reach the file in batches, each before its order's answer (order_log.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from quantum_trader.exchange.simulator.order_log import OrderLog, read_order_log


def record(log: OrderLog, coid: str) -> None:
    log.record(
        time=1, method="POST", path="/fapi/v1/order", params={"newClientOrderId": coid}, outcome="accepted", status=200
    )


class CountingLog(OrderLog):
    writes = 0

    def flush(self) -> None:
        if self._unwritten:
            CountingLog.writes += 1
        super().flush()


def test_orders_of_one_loop_iteration_share_one_write_and_each_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    log = CountingLog(path)
    seen_in_file: list[list[str]] = []

    async def order(coid: str) -> None:
        record(log, coid)
        await log.written()
        seen_in_file.append([e["clientOrderId"] for e in read_order_log(path)])  # "the answer goes out" here

    async def burst() -> None:
        await asyncio.gather(*(order(f"c{i}") for i in range(5)))
        await order("late")

    asyncio.run(burst())
    assert CountingLog.writes == 2, "five concurrent orders in one write, the late one in its own"
    assert all(f"c{i}" in seen for i, seen in enumerate(seen_in_file[:5])), "no answer before its line"
    assert [e["seq"] for e in read_order_log(path)] == [1, 2, 3, 4, 5, 6]
    assert [e["clientOrderId"] for e in log.entries()] == ["c0", "c1", "c2", "c3", "c4", "late"]


def test_a_cancelled_waiter_does_not_lose_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    log = OrderLog(path)

    async def run() -> None:
        record(log, "a")
        waiter = asyncio.ensure_future(log.written())
        await asyncio.sleep(0)
        waiter.cancel()
        record(log, "b")
        await log.written()

    asyncio.run(run())
    assert [e["clientOrderId"] for e in read_order_log(path)] == ["a", "b"]


def test_entries_still_held_are_written_at_close(tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    log = OrderLog(path)
    record(log, "x")
    assert read_order_log(path) == [], "held until its batch is written"
    log.close()
    assert [e["clientOrderId"] for e in read_order_log(path)] == ["x"]
