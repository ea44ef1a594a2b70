"""Batches committed strictly in order, two at a time, on two connections.

A batch's commit is mostly the database's work, on one server process per connection,
and with one transaction at a time that process idles while the worker does the
batch's bookkeeping round trips and takes the next batch, while the server's other
cores idle throughout. So each batch commits in a thread of its own, on a connection
of its own, up to ``depth`` at once: batch N+1 writes its rows while batch N is still
writing or committing. Measured on the benchmark (2 cores shared by the database, the
worker and its reader process): 0.81 and 0.90 of the time of one batch at a time
(medians of two runs of 8 alternating pairs). Letting batch N+1 write only once batch
N had written its rows made it slower (1.08): the overlap that pays is the two
servers' row writes.

Order is what keeps a checkpoint truthful, so it is kept strictly. A batch writes its
rows, then waits for the batch before it to commit, and only then records its
bookkeeping and checkpoint and commits. If the batch before did not commit, it rolls
back (:class:`Abandoned`) and the caller reads it again from the last committed
checkpoint, exactly as after a crash.

Why two such transactions cannot deadlock: batch N+1 writes at once only when all its
keys sort after batch N's (consecutive batches of a partition always do), so their row
writes take no common lock; otherwise it first waits until batch N has written its
rows. After its rows, batch N takes locks only in bookkeeping tables, which batch N+1
touches only once batch N has committed. Should a server still make batch N wait for
batch N+1 (SQL Server escalating row locks to a table lock, say), batch N+1 gives up
waiting after ``wait_s`` and rolls back, and batch N goes on.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from typing import Generic, TypeVar

T = TypeVar("T")


class Abandoned(Exception):
    """Rolled back because the batch before did not commit."""


class Turn:
    """A batch's place in line, handed to its commit."""

    def __init__(self, previous: Turn | None, keys: tuple[str, str] | None, wait_s: float) -> None:
        self._previous = previous
        self.keys = keys  # the batch's lowest and highest key
        self._wait_s = wait_s
        self._written = threading.Event()
        self.outcome: Future[None] | None = None

    def wait_to_write(self) -> None:
        """Block until no row of the batch before may still be waiting to be written."""
        previous = self._previous
        if previous is None:
            return
        if previous.keys is not None and self.keys is not None and previous.keys[1] < self.keys[0]:
            return  # every key of this batch sorts after every key of that one
        if not previous._written.wait(self._wait_s):
            raise Abandoned(f"the batch before did not write its rows within {self._wait_s:g} s")

    def rows_written(self) -> None:
        """Let a batch after this one with keys in common write its rows."""
        self._written.set()

    def wait_for_previous(self) -> None:
        """Block until the batch before has committed; :class:`Abandoned` if it did not."""
        if self._previous is None:
            return
        assert self._previous.outcome is not None  # set when it was submitted
        try:
            self._previous.outcome.result(self._wait_s)
        except TimeoutError:
            raise Abandoned(f"the batch before did not commit within {self._wait_s:g} s") from None
        except Exception as exc:
            raise Abandoned(f"the batch before did not commit ({type(exc).__name__})") from None


class InOrderCommits(Generic[T]):
    """Up to ``depth`` commits in flight, their outcomes taken oldest first.

    A commit is called with its :class:`Turn`: it calls ``wait_to_write`` before it
    starts its transaction, ``rows_written`` once its rows are written, and
    ``wait_for_previous`` before anything else.
    """

    def __init__(self, depth: int, *, name: str, wait_s: float = 60.0) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.depth, self.wait_s = depth, wait_s
        self._threads = ThreadPoolExecutor(max_workers=depth, thread_name_prefix=name)
        self._in_flight: deque[tuple[T, Turn]] = deque()

    @property
    def room(self) -> bool:
        return len(self._in_flight) < self.depth

    @property
    def busy(self) -> bool:
        return bool(self._in_flight)

    def submit(
        self, batch: T, commit: Callable[[Turn], None], *, keys: tuple[str, str] | None
    ) -> None:
        """Start committing ``batch`` (lowest and highest key ``keys``) with ``commit``."""
        previous = self._in_flight[-1][1] if self._in_flight else None
        turn = Turn(previous, keys, self.wait_s)
        turn.outcome = self._threads.submit(_run, commit, turn)
        self._in_flight.append((batch, turn))

    def next_committed(self) -> T:
        """The oldest batch once committed; raises what its commit raised."""
        batch, turn = self._in_flight.popleft()
        assert turn.outcome is not None
        turn.outcome.result()
        return batch

    def drain(self) -> None:
        """Wait for the batches still in flight, whatever becomes of them.

        Called once the oldest failed: the others then roll back.
        """
        while self._in_flight:
            with suppress(Exception):
                self.next_committed()

    def close(self) -> None:
        self.drain()
        self._threads.shutdown()


def _run(commit: Callable[[Turn], None], turn: Turn) -> None:
    try:
        commit(turn)
    finally:
        turn.rows_written()  # also when it failed before writing: the next one may go on
        turn._previous = None  # no chain of every batch's turn kept alive
