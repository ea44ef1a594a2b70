"""One bounded thread pool per store, with a deadline per read: a hung store costs only
the reads that need it.

The store drivers block, so reads run in threads; Starlette's one shared pool would let
reads of a frozen RethinkDB take every thread and starve reads of the SQL store. Here
each store has threads of its own (``read_sql_pool_size``, ``read_rethinkdb_pool_size``)
and the request waits on the event loop, never in a thread:

* a read that has not finished within its store's deadline (``read_sql_timeout_s``,
  ``read_rethinkdb_timeout_s``, time waiting for a thread included) answers 503
  :class:`ReadRefused` ``StoreTimeout``; its thread is abandoned, not killed, and is
  counted as busy until the driver returns (the RethinkDB store sets a socket deadline
  of the same length, so its threads come back; a frozen SQL server keeps them until
  it answers);
* a read that finds its store's threads and queue (``read_queue_size``) all taken
  answers 503 ``StoreBusy`` at once, so a hung store never builds an unbounded queue.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge

from core.settings import Settings

from .reads import StoreName

T = TypeVar("T")

#: The name of each store in responses (``"store"``) and metrics.
STORE_LABEL: dict[StoreName, str] = {"old": "rethinkdb", "new": "sql"}
_TITLE = {"old": "RethinkDB", "new": "the SQL store"}

REFUSED = Counter(
    "cutover_read_refused_total",
    "Reads answered 503 without the store's answer: deadline passed or pool full",
    ["store", "error"],
)
BUSY = Gauge(
    "cutover_read_busy",
    "Reads of a store running or waiting for a thread (abandoned ones included)",
    ["store"],
)


class ReadRefused(Exception):
    """A read the service gave up on (answered 503 with ``error`` and ``reason``)."""

    def __init__(self, store: StoreName, error: str, reason: str) -> None:
        super().__init__(reason)
        self.store = store
        self.error = error
        self.reason = reason


class ReadPool:
    """The threads of one store's reads, a bound on waiting reads, and the deadline."""

    def __init__(self, store: StoreName, threads: int, queue: int, timeout_s: float) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self._limit = threads + queue
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=f"read-{store}")
        self._busy = 0
        self._lock = threading.Lock()
        self._gauge = BUSY.labels(STORE_LABEL[store])

    @property
    def busy(self) -> int:
        return self._busy

    def _take(self) -> None:
        with self._lock:
            if self._busy >= self._limit:
                raise self._refuse(
                    "StoreBusy",
                    f"{_TITLE[self.store]} is not keeping up: {self._busy} reads in flight",
                )
            self._busy += 1
            self._gauge.set(self._busy)

    def _release(self, _: object) -> None:
        with self._lock:
            self._busy -= 1
            self._gauge.set(self._busy)

    def _refuse(self, error: str, reason: str) -> ReadRefused:
        REFUSED.labels(STORE_LABEL[self.store], error).inc()
        return ReadRefused(self.store, error, reason)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in one of this store's threads, within the deadline."""
        self._take()
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            future.cancel()  # dropped if still queued; a running read is abandoned
            raise self._refuse(
                "StoreTimeout", f"{_TITLE[self.store]} did not answer within {self.timeout_s:g} s"
            ) from None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class ReadPools:
    """The two stores' pools, by store name (``old``: RethinkDB, ``new``: SQL)."""

    def __init__(self, options: Settings) -> None:
        self.pools: dict[StoreName, ReadPool] = {
            "old": ReadPool(
                "old",
                options.read_rethinkdb_pool_size,
                options.read_queue_size,
                options.read_rethinkdb_timeout_s,
            ),
            "new": ReadPool(
                "new",
                options.read_sql_pool_size,
                options.read_queue_size,
                options.read_sql_timeout_s,
            ),
        }

    def __getitem__(self, store: StoreName) -> ReadPool:
        return self.pools[store]

    async def run(self, store: StoreName, fn: Callable[..., T], *args: Any) -> T:
        return await self.pools[store].run(fn, *args)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
