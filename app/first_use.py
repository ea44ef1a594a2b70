"""Migrated when first used: the read API enqueues the migration job of a client it serves.

The Runtastic design (``../shared/seeds/``): the one access path, seeing a user not
migrated yet, starts an asynchronous job for that user, so the active users are
migrated first and a final sweep takes the rest. Here, with ``CUTOVER_FIRST_USE_JOBS``
on, every read notes its client with :meth:`FirstUse.served`; a background thread then
reads that client's ledger entry and, unless it is ``verified``, publishes the client's
job (:func:`backfill.jobs.enqueue`, reason ``first-use``), which a ``cutover jobs run``
worker copies and verifies.

Off the request path: ``served`` is a dictionary look-up and, at most once per client
per window, a put on a bounded queue (full: the client is dropped for now, counted, and
noted again by a later read). The response never waits for the ledger, the SQL store or
Pub/Sub, and nothing they do can fail it.

Deduplicated: in this process a client is looked at again only after
``CUTOVER_FIRST_USE_JOBS_WINDOW_S`` (sooner, :data:`RETRY_S`, after a failed attempt);
across every API process and the sweep, the job table lets one publish per client per
window through (a compare-and-set on its row, see :func:`backfill.jobs.claim_enqueue`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from typing import Any

from prometheus_client import Counter

from core.redaction import redact
from core.settings import Settings
from stores.runtime import Runtime

log = logging.getLogger(__name__)

#: Seconds before a client whose enqueue failed (store or Pub/Sub down) is tried again.
RETRY_S = 30.0
#: Clients waiting for the background thread; beyond it they are dropped (and counted).
QUEUE_SIZE = 1024
#: Clients remembered per process (least recently served forgotten first).
MEMORY = 100_000

FIRST_USE = Counter(
    "cutover_first_use_jobs",
    "Clients the read API looked at for a first-use migration job, by result",
    ["entity", "result"],  # published | skipped | dropped | failed
)


class FirstUse:
    """One per app (per process); does nothing unless the setting is on."""

    def __init__(self, runtime: Runtime | None, options: Settings | None) -> None:
        self.runtime = runtime
        self.enabled = bool(
            runtime is not None
            and options is not None
            and options.first_use_jobs
            and runtime.cfg.jobs is not None
        )
        self.window = options.first_use_jobs_window_s if options is not None else 0.0
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._pending = 0  # clients queued or being looked at (under _lock)
        self._publisher: Any = None

    @classmethod
    def off(cls) -> FirstUse:
        return cls(None, None)

    @classmethod
    def for_app(cls, runtime: Runtime, options: Settings) -> FirstUse:
        """The app's instance; the jobs' progress also goes on its ``/metrics``."""
        if runtime.cfg.jobs is not None:
            from backfill.jobs_metrics import watch

            watch(runtime)
        return cls(runtime, options)

    # -- the request path ----------------------------------------------------------------
    def served(self, entity: str, client: str) -> None:
        """A read served ``client``: look at it in the background, once per window."""
        if not self.enabled:
            return
        key = (entity, client)
        now = time.monotonic()
        with self._lock:
            due = self._seen.get(key)
            if due is not None and due > now:
                self._seen.move_to_end(key)
                return
            self._seen[key] = now + self.window
            self._seen.move_to_end(key)
            if len(self._seen) > MEMORY:
                self._seen.popitem(last=False)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="first-use", daemon=True)
                self._thread.start()
            self._pending += 1
        try:
            self._queue.put_nowait(key)
        except queue.Full:
            self._forget(key)
            self._done()
            FIRST_USE.labels(entity, "dropped").inc()

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1

    def _forget(self, key: tuple[str, str], retry_in: float = 0.0) -> None:
        with self._lock:
            if retry_in:
                self._seen[key] = time.monotonic() + retry_in
            else:
                self._seen.pop(key, None)

    # -- the background thread -----------------------------------------------------------
    def _loop(self) -> None:
        while True:
            key = self._queue.get()
            if key is None:
                return
            try:
                self._enqueue(*key)
            finally:
                self._done()

    def _enqueue(self, entity: str, client: str) -> None:
        from backfill.jobs import enqueue

        assert self.runtime is not None
        try:
            if self._publisher is None:
                from core import pubsub

                self._publisher = pubsub.publisher(self.runtime.settings, ordering=False)
            done = enqueue(
                self.runtime,
                entity,
                [client],
                reason="first-use",
                window_s=self.window,
                publisher=self._publisher,
            )
        except Exception as exc:  # a store or Pub/Sub down: a later read tries again
            self._forget((entity, client), RETRY_S)
            FIRST_USE.labels(entity, "failed").inc()
            log.warning(
                "first-use job for %s/%s not enqueued: %s", entity, client, redact(str(exc))
            )
            return
        FIRST_USE.labels(entity, "published" if done.published else "skipped").inc()

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every client noted so far has been looked at (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._pending == 0:
                    return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=5)
            self._thread.join(10)
            self._thread = None
