"""Where a batch's CPU work runs: in the worker's own thread, or in a child process.

Reading, parsing, mapping and serialising a batch is Python work; committing it is
mostly the database's. In one process they fight over the GIL, and pyodbc takes the
GIL back many times during one statement, so a busy mapping thread stalls every
commit: measured here, a 7 ms upsert took 250 ms next to a thread holding the GIL. So
a large copy gives each worker a child process that prepares batches N+1 and N+2
while the worker commits batch N. The child only reads the old store and computes;
every write, checkpoint and lease stays in the worker, so crash safety does not
change: a child that dies loses nothing but work it had not handed over.

Small copies prepare their batches in the worker's thread: starting a process costs
about 0.3 s of CPU, more than such a copy takes.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

from stores.mapping import Row
from stores.sql import PreparedRows, RowEncoder

from .documents import BadDoc, bad_document, map_documents
from .sources import Reader, Source

#: Estimated rows from which a run prepares its batches in child processes.
PROCESS_THRESHOLD = 50_000
#: Batches a reader process prepares ahead of the one being committed. Two, not one:
#: with one, any batch that reads slower than the last one commits leaves the
#: database idle, and any that commits slower leaves the reader idle.
AHEAD = 2
#: Socket room per batch (a 1,000-row batch of the benchmark's documents is ~190 kB).
_BATCH_BYTES_HINT = 1 << 20


@dataclass(frozen=True)
class ReadyBatch:
    """A batch read, mapped and serialised: everything its commit needs."""

    position: str | None  # where to resume after this batch
    exhausted: bool
    documents: int  # documents read and kept
    skipped: int  # documents read but of clients not selected
    rows: PreparedRows
    bad: list[BadDoc]
    counts: dict[str, int]  # rows per client
    last_key: str | None

    @property
    def read(self) -> int:
        return self.documents + self.skipped


def make_ready(reader: Reader, encoder: RowEncoder, limit: int) -> ReadyBatch:
    """Read the next batch from ``reader`` and prepare it for :meth:`SqlStore.apply`."""
    batch = reader.next_batch(limit)
    if batch.values is not None:  # mapped already, a block at a time
        values = batch.values
        return ReadyBatch(
            batch.position,
            batch.exhausted,
            len(values),
            batch.skipped,
            encoder.prepare_values(values),
            [],
            dict(Counter(v[1] for v in values)),
            values[-1][0] if values else None,
        )
    rows, bad, counts, last_key = map_documents(encoder.entity, batch.docs, batch.locate)
    prepared, unwritable = _prepare(encoder, rows)
    for b in unwritable:
        if b.client in counts:
            counts[b.client] -= 1
    return ReadyBatch(
        batch.position,
        batch.exhausted,
        len(batch.docs),
        batch.skipped,
        prepared,
        [*bad, *unwritable],
        {c: n for c, n in counts.items() if n},
        last_key,
    )


def _prepare(encoder: RowEncoder, rows: list[Row]) -> tuple[PreparedRows, list[BadDoc]]:
    """The rows as the upsert's batch, and a bad document per row that cannot be in it.

    Mapped rows are within the contract's limits, which keeps them serialisable; should
    one still fail to serialise, it alone is left out (each row is then tried on its
    own). A failure that is no single row's is raised.
    """
    try:
        return encoder.prepare(rows), []
    except Exception as exc:
        failed = exc
    good, bad = [], []
    for row in rows:
        try:
            encoder.prepare([row])
        except Exception as exc:
            reason = f"cannot be written ({type(exc).__name__}: {exc})"
            bad.append(bad_document(row.key, row.client_id, reason, "prepare"))
            continue
        good.append(row)
    if not bad or (not good and len(rows) > 1):
        raise failed
    return encoder.prepare(good), bad


class Producer(Protocol):
    """Prepares the batches of one partition at a time, one batch ahead at most."""

    def open(
        self, spec: dict[str, Any], position: str | None, clients: frozenset[str] | None
    ) -> None:
        """Start reading a partition at ``position`` (closing the previous one)."""
        ...

    def request(self) -> None:
        """Start preparing the next batch, to be collected by :meth:`take`."""
        ...

    def take(self) -> ReadyBatch:
        """The batch last requested; raises what reading it raised."""
        ...

    def close(self) -> None:
        """Stop for good and release the reader (and the child process, if any)."""
        ...


class InlineProducer:
    """Prepares each batch in the caller's thread when it is taken."""

    def __init__(self, source: Source, encoder: RowEncoder, limit: int) -> None:
        self.source, self.encoder, self.limit = source, encoder, limit
        self._reader: Reader | None = None

    def open(
        self, spec: dict[str, Any], position: str | None, clients: frozenset[str] | None
    ) -> None:
        self._close_reader()
        self._reader = self.source.open(self.encoder.entity, spec, position, clients)

    def request(self) -> None:
        return None

    def take(self) -> ReadyBatch:
        if self._reader is None:
            raise RuntimeError("no partition is open")
        return make_ready(self._reader, self.encoder, self.limit)

    def close(self) -> None:
        self._close_reader()

    def _close_reader(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()


class ProcessProducer:
    """Prepares batches in a child process, the next one while the caller commits.

    The child is a fresh interpreter (``python -m backfill._reader``) talking over a
    socket pair, not a ``multiprocessing`` child: forking a threaded process is unsafe,
    and ``spawn`` would re-run the caller's main script, which embedding programs do
    not always guard.

    The child needs about 0.3 s to start (an interpreter and its imports). Until it
    says it is ready, batches are prepared here, in the caller's thread, as
    :class:`InlineProducer` does; the child then opens the partition at the position
    after the last of them, so no document is read twice or skipped. With
    ``warm_up=False`` the first batch waits for the child instead (tests use it to
    make sure the child does the work).
    """

    def __init__(
        self,
        source: Source,
        encoder: RowEncoder,
        limit: int,
        *,
        name: str,
        warm_up: bool = True,
    ) -> None:
        self.name = name
        ours, theirs = socket.socketpair()
        # Room in the socket for the batches prepared ahead, so the child never waits to
        # hand one over (a Unix socket queues against the sender's buffer, which the
        # kernel caps at net.core.wmem_max).
        with suppress(OSError):
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, AHEAD * _BATCH_BYTES_HINT)
        path = os.pathsep.join(p for p in sys.path if p)
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "backfill._reader", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path},
            )
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self._outstanding = 0  # batches requested from the child and not yet received
        self._send((source, encoder, limit))
        self._ready = False  # the child has started and taken its setup
        self._inline = InlineProducer(source, encoder, limit) if warm_up else None
        #: The open partition and where the next batch starts, for handing it over.
        self._partition: tuple[dict[str, Any], str | None, frozenset[str] | None] | None = None
        self._child_has_partition = False
        #: Batches prepared here while the child was starting, and by the child.
        self.batches_inline = 0
        self.batches_in_child = 0

    def open(
        self, spec: dict[str, Any], position: str | None, clients: frozenset[str] | None
    ) -> None:
        self._drain()
        self._partition = (spec, position, clients)
        self._child_has_partition = False
        if self._child_is_ready():
            self._hand_over()
        else:
            assert self._inline is not None
            self._inline.open(spec, position, clients)

    def request(self) -> None:
        if not self._child_has_partition and self._child_is_ready():
            self._hand_over()
        if self._child_has_partition:
            self._ask_for(AHEAD)

    def take(self) -> ReadyBatch:
        if not self._child_has_partition and not self._child_is_ready():
            assert self._inline is not None and self._partition is not None
            batch = self._inline.take()
            spec, _, clients = self._partition
            self._partition = (spec, batch.position, clients)
            self.batches_inline += 1
            return batch
        if not self._child_has_partition:
            self._hand_over()
        self._ask_for(1)
        self._outstanding -= 1
        result: ReadyBatch = self._receive()
        self.batches_in_child += 1
        return result

    def close(self) -> None:
        if self._inline is not None:
            self._inline.close()
        with suppress(ReaderGone):
            self._drain()
            self._send(("exit",))
        try:
            self._child.wait(5)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
        self._conn.close()

    def _child_is_ready(self) -> bool:
        """Whether the child has said it is ready (waits for it only without warm-up)."""
        if not self._ready and (self._inline is None or self._conn.poll(0)):
            self._receive()  # its "ready"; ReaderGone if it died starting
            self._ready = True
            if self._inline is not None:
                self._inline.close()
                self._inline = None
        return self._ready

    def _ask_for(self, batches: int) -> None:
        """Have ``batches`` requested from the child and not yet received."""
        while self._outstanding < batches:
            self._send(("next",))
            self._outstanding += 1

    def _hand_over(self) -> None:
        """Open the current partition in the child, where the last batch here ended."""
        if self._partition is None:
            return
        self._send(("open", *self._partition))
        self._receive()
        self._child_has_partition = True

    def _drain(self) -> None:
        """Collect (and drop) the batches requested but not taken."""
        while self._outstanding:
            self._outstanding -= 1
            try:
                self._receive()
            except ReaderGone:
                raise
            except Exception:  # an error reading a batch nobody will use
                pass

    def _send(self, message: Any) -> None:
        try:
            self._conn.send(message)
        except OSError:
            raise self._gone() from None

    def _receive(self) -> Any:
        try:
            ok, value = self._conn.recv()
        except (EOFError, OSError):
            raise self._gone() from None
        if not ok:
            raise value
        return value

    def _gone(self) -> ReaderGone:
        with suppress(subprocess.TimeoutExpired):
            self._child.wait(1)
        return ReaderGone(
            f"the backfill's reader process ({self.name}, pid {self._child.pid}) ended "
            f"(exit code {self._child.returncode}); nothing is lost: run again to resume"
        )


class ReaderGone(RuntimeError):
    """The reader process died; every checkpoint committed so far is intact."""


def serve(fd: int) -> None:
    """The child's main: take the setup, then answer open/next/exit until told to exit.

    Also ends when the parent is gone (its end of the socket closes), so a killed
    backfill leaves no reader behind.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    conn = Connection(fd)
    try:
        source, encoder, limit = conn.recv()
        producer = InlineProducer(source, encoder, limit)
        conn.send((True, "ready"))
    except (EOFError, OSError):
        return
    with long_lived_heap_frozen():
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "exit":
                break
            try:
                if kind == "open":
                    producer.open(*message[1:])
                    reply: Any = None
                else:
                    reply = producer.take()
            except BaseException as exc:  # handed to the parent, which decides
                conn.send((False, _portable(exc)))
                continue
            try:
                conn.send((True, reply))
            except OSError:
                break
    producer.close()


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else one carrying its text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


_gc_lock = threading.Lock()
_gc_users = 0
_gc_saved: tuple[int, int, int] = gc.get_threshold()
#: First-generation threshold while copying (CPython's default is 700 allocations).
_GC_YOUNG_THRESHOLD = 20_000


@contextmanager
def long_lived_heap_frozen() -> Iterator[None]:
    """Keep CPython's cycle collector off the long-lived heap while copying.

    A copy allocates and frees millions of small objects (documents, rows), and each
    full collection re-scans every long-lived object (modules, clients, config).
    Measured on the benchmark: 32 -> 27 us per row with the heap frozen, 25 with rarer
    young collections. ``gc.freeze`` only moves what exists now out of the collector's
    reach; it is undone when the last concurrent user in the process is done.
    """
    global _gc_users, _gc_saved
    with _gc_lock:
        if _gc_users == 0:
            gc.freeze()
            _gc_saved = gc.get_threshold()
            gc.set_threshold(_GC_YOUNG_THRESHOLD, *_gc_saved[1:])
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0:
                gc.set_threshold(*_gc_saved)
                gc.unfreeze()


def producer_for(
    source: Source,
    encoder: RowEncoder,
    limit: int,
    *,
    in_process: bool,
    name: str,
    warm_up: bool = True,
) -> Producer:
    """A child-process producer for large copies, else one in the caller's thread."""
    if in_process:
        return InlineProducer(source, encoder, limit)
    return ProcessProducer(source, encoder, limit, name=name, warm_up=warm_up)


__all__ = [
    "PROCESS_THRESHOLD",
    "InlineProducer",
    "ProcessProducer",
    "Producer",
    "ReaderGone",
    "ReadyBatch",
    "long_lived_heap_frozen",
    "make_ready",
    "producer_for",
]
