"""Counts the requests this process sends to Redis, for the benchmarks' round trips per order.

The benchmarks put this directory first on ``PYTHONPATH`` and set ``BENCH_REDIS_SEND_DIR`` for the
component processes they start; Python imports ``sitecustomize`` at start-up, so every component
process counts without any change to its code. Outside a benchmark (the variable unset) it does nothing.

What is counted: calls of redis-py's ``send_packed_command``, sync and asyncio. redis-py sends one
command, or one whole pipeline (MULTI/EXEC or not), with one such call and then reads the replies, so
one call is one round trip of that process to Redis. A health-check PING is its own call and counts.

Where: ``$BENCH_REDIS_SEND_DIR/<pid>``, 8 bytes, the count as a little-endian unsigned 64-bit integer,
in a shared memory map the benchmark reads whenever it likes (no flush, no signal). An increment is
one item store in the map, so the counting costs well under a microsecond per round trip.
"""

from __future__ import annotations

import itertools
import mmap
import os


def _install(directory: str) -> None:
    path = os.path.join(directory, str(os.getpid()))
    with open(path, "wb") as f:
        f.write(b"\0" * 8)
    with open(path, "r+b") as f:
        shared = mmap.mmap(f.fileno(), 8)
    slot = memoryview(shared).cast("Q")
    counter = itertools.count(1)  # next() is atomic under the GIL; threads never lose a count

    import redis.asyncio.connection as async_connection
    import redis.connection as sync_connection

    sync_send = sync_connection.AbstractConnection.send_packed_command
    async_send = async_connection.AbstractConnection.send_packed_command

    def counted_send(self, command, check_health=True):
        slot[0] = next(counter)
        return sync_send(self, command, check_health)

    async def counted_async_send(self, command, check_health=True):
        slot[0] = next(counter)
        return await async_send(self, command, check_health)

    sync_connection.AbstractConnection.send_packed_command = counted_send
    async_connection.AbstractConnection.send_packed_command = counted_async_send


if os.environ.get("BENCH_REDIS_SEND_DIR"):
    _install(os.environ["BENCH_REDIS_SEND_DIR"])
