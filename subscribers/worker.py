"""The handler worker: streaming pull -> batches -> one transaction each -> ack.

Per subscription, google-cloud-pubsub's streaming pull (with the declared flow control)
hands messages to a callback that only queues them; a batcher thread groups them by
size or latency and decodes them; a committer thread applies each batch in one
transaction through :class:`~subscribers.handler.BatchHandler` and acks its messages
only after the commit (decoding the next batch overlaps the previous commit). A store
error nacks the whole batch (Pub/Sub redelivers it) and the committer backs off before
trying the next one: the worker never stops for a store outage and needs no restart
when the store returns. A store that refuses the login (an error marked not
``retryable``) is the exception: retrying cannot help, so the worker stops at once with
the reason and exit code 1, having nacked the batch. Nothing one message does stops it
either: the handler turns
whatever a message causes, while it is decoded or written, into one failure-log entry
and applies the rest of its batch (see :mod:`subscribers.handler`).

Stopping (``stop()``, SIGTERM, SIGINT): new deliveries are nacked at once, the batch in
hand is finished, committed and acked, messages still queued are nacked, and only then
is the stream closed, so every ack and nack reaches the server before exit. A killed
worker (SIGKILL, power loss) acks nothing it did not commit: Pub/Sub redelivers the
rest once their ack deadline passes, and the version rules make the re-apply harmless.
That is also why several workers on one subscription, on one machine or many, are safe.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.scheduler import Scheduler
from prometheus_client import CollectorRegistry

from core import pubsub
from core.clock import now_utc
from core.redaction import redact
from stores.runtime import Runtime

from .handler import BatchHandler
from .metrics import WorkerMetrics

log = logging.getLogger("cutover.subscribers")

_POLL_S = 0.05


class _InlineScheduler(Scheduler):
    """Runs the message callback on the client's own thread instead of a thread pool.

    The callback only queues the message (or nacks it while closing: a queue put to the
    client's dispatcher), so it never blocks; skipping the default pool's per-message
    future and thread hand-off saves about a third of the worker's CPU per message.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()

    @property
    def queue(self) -> queue.Queue[Any]:
        return self._queue

    def schedule(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        callback(*args, **kwargs)

    def shutdown(self, await_msg_callbacks: bool = False) -> list[Any]:
        return []  # nothing is ever pending: every callback ran when it was scheduled


class _Runner:
    """One subscription's stream, queue, batcher thread and committer thread."""

    def __init__(self, worker: Worker, name: str) -> None:
        self.worker = worker
        self.handler = BatchHandler(worker.runtime, name)
        self.sub = self.handler.subscription
        self.labels = {"subscription": self.sub.name}
        self._received = worker.metrics.received.labels(**self.labels)  # hot path: cached
        self.queue: queue.SimpleQueue[tuple[float, Any]] = queue.SimpleQueue()
        self._gate = threading.Lock()
        self._closed = False
        self.future: Any = None
        self.thread: threading.Thread | None = None
        self.committer: threading.Thread | None = None
        self._decoded: queue.Queue[tuple[list[tuple[float, Any]], Any] | None] = queue.Queue(1)
        self.error: str | None = None

    # -- Pub/Sub side ------------------------------------------------------------------
    def start(self, client: pubsub_v1.SubscriberClient) -> None:
        self.committer = threading.Thread(
            target=self._commit_loop, name=f"committer-{self.sub.name}", daemon=True
        )
        self.committer.start()
        self.thread = threading.Thread(
            target=self._batch_loop, name=f"batcher-{self.sub.name}", daemon=True
        )
        self.thread.start()
        flow = pubsub_v1.types.FlowControl(
            max_messages=self.sub.max_outstanding_messages,
            max_bytes=self.sub.max_outstanding_bytes,
        )
        path = pubsub.subscription_path(self.worker.runtime.settings, self.sub.name)
        self.future = client.subscribe(
            path,
            self._on_message,
            flow_control=flow,
            scheduler=_InlineScheduler(),
            await_callbacks_on_shutdown=True,
        )
        self.future.add_done_callback(self._on_stream_done)

    def _on_message(self, message: Any) -> None:
        """Runs on the client's thread (inline scheduler): queue it, or nack it when closing."""
        with self._gate:
            if not self._closed:
                self.queue.put((time.monotonic(), message))
                self._received.inc()
                return
        message.nack()

    def _on_stream_done(self, future: Any) -> None:
        if self.worker.stopping.is_set():
            return
        try:
            exc = future.exception(timeout=0)
        except Exception as err:  # cancelled
            exc = err
        self.error = f"{self.sub.name}: the stream ended: {redact(str(exc))}"
        if "not found" in str(exc).lower():
            self.error += f" (does the subscription exist? cutover subs add {self.sub.name})"
        log.error("%s", self.error)
        self.worker.stopping.set()

    # -- batching ----------------------------------------------------------------------
    def _collect(self) -> list[tuple[float, Any]]:
        """Up to batch_size messages, waiting at most max_batch_latency after the first."""
        stopping = self.worker.stopping
        try:
            first = self.queue.get(timeout=_POLL_S)
        except queue.Empty:
            return []
        batch = [first]
        deadline = first[0] + self.sub.max_batch_latency_ms / 1000
        while len(batch) < self.sub.batch_size:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stopping.is_set():
                break
            try:
                batch.append(self.queue.get(timeout=min(remaining, _POLL_S)))
            except queue.Empty:
                continue
        return batch

    def _batch_loop(self) -> None:
        """Stage 1: collect and decode batches, hand them to the committer.

        Decoding (CPU) of the next batch overlaps the commit (database round trips) of
        the previous one; the hand-off holds one batch, so at most two are in hand.
        """
        w = self.worker
        try:
            while not w.stopping.is_set():
                batch = self._collect()
                if batch:
                    items = self.handler.decode([m for _, m in batch])
                    self._handoff((batch, items))
        except BaseException as exc:
            self._crashed("batcher", exc)
        finally:
            self._handoff(None)

    def _handoff(self, work: tuple[list[tuple[float, Any]], Any] | None) -> None:
        while True:
            try:
                self._decoded.put(work, timeout=_POLL_S)
                return
            except queue.Full:
                if self.committer is None or not self.committer.is_alive():
                    for _, message in work[0] if work else []:
                        message.nack()
                    return

    def _commit_loop(self) -> None:
        """Stage 2: one transaction per batch, then ack; on any failure nack and back off."""
        w = self.worker
        backoff = w.min_backoff_s
        try:
            while True:
                work = self._decoded.get()
                if work is None:
                    return
                batch, items = work
                try:
                    outcome = self.handler.commit(items)
                except Exception as exc:  # any failure: redeliver, back off
                    for _, message in batch:
                        message.nack()
                    w.metrics.nacked_batches.labels(**self.labels).inc()
                    if not getattr(exc, "retryable", True):
                        self._refused(exc)
                        return
                    log.warning(
                        "%s: batch of %d nacked for redelivery, retrying in %.1fs: %s: %s",
                        self.sub.name,
                        len(batch),
                        backoff,
                        type(exc).__name__,
                        redact(str(exc)),
                        exc_info=not _expected(exc),
                    )
                    w.stopping.wait(backoff)
                    backoff = min(backoff * 2, w.max_backoff_s)
                    continue
                backoff = w.min_backoff_s
                for _, message in batch:
                    message.ack()
                try:
                    self._observe(outcome, batch)
                except Exception:  # the metrics of one batch are not worth the worker
                    log.exception("%s: metrics of a committed batch not recorded", self.sub.name)
        except BaseException as exc:
            self._crashed("committer", exc)
        finally:
            self._drain_decoded()
            self._close()

    def _drain_decoded(self) -> None:
        while True:
            try:
                work = self._decoded.get_nowait()
            except queue.Empty:
                return
            for _, message in work[0] if work else []:
                message.nack()

    def _refused(self, exc: BaseException) -> None:
        """A store refused us for good (a rejected login): waiting cannot help, so the
        worker stops at once and says why; the batch was nacked, so nothing is lost."""
        self.error = (
            f"{self.sub.name}: {redact(str(exc))}; not retried: fix the store's "
            "credentials in the settings and start the worker again"
        )
        log.error("%s", self.error)
        self.worker.stopping.set()

    def _crashed(self, stage: str, exc: BaseException) -> None:
        self.error = f"{self.sub.name}: {stage} crashed: {type(exc).__name__}: {exc}"
        log.exception("%s", self.error)
        self.worker.stopping.set()

    def _observe(self, outcome: Any, batch: list[tuple[float, Any]]) -> None:
        m, labels = self.worker.metrics, self.labels
        m.applied.labels(**labels).inc(outcome.applied)
        m.stale.labels(**labels).inc(outcome.stale)
        m.failed.labels(**labels).inc(outcome.failed)
        m.batch_size.labels(**labels).observe(len(batch))
        m.batch_latency.labels(**labels).observe(time.monotonic() - batch[0][0])
        now = now_utc()
        lag = m.event_lag.labels(**labels)
        for occurred in outcome.occurred:
            lag.observe((now - occurred).total_seconds())

    def _close(self) -> None:
        """Refuse further deliveries and hand back whatever is still queued."""
        with self._gate:
            self._closed = True
        while True:
            try:
                _, message = self.queue.get_nowait()
            except queue.Empty:
                return
            message.nack()


def _expected(exc: BaseException) -> bool:
    from stores.rethink import RethinkUnavailable
    from stores.sql import StoreUnavailable

    return isinstance(exc, StoreUnavailable | RethinkUnavailable)


class Worker:
    """Handlers for one or more subscriptions in this process.

    In-process use (tests, the demo)::

        worker = Worker(runtime, ["orders-sqlstore"])
        worker.start()
        ...
        worker.stop()

    ``run()`` is the console entry: it installs SIGTERM/SIGINT handlers, runs until a
    signal or a fatal stream error, stops cleanly and returns the exit code.
    """

    def __init__(
        self,
        runtime: Runtime,
        names: Sequence[str],
        *,
        registry: CollectorRegistry | None = None,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        log_every_s: float = 10.0,
    ) -> None:
        if not names:
            raise ValueError("name at least one subscription")
        self.runtime = runtime
        self.metrics = WorkerMetrics(registry)
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.log_every_s = log_every_s
        self.stopping = threading.Event()
        self.runners = [_Runner(self, name) for name in dict.fromkeys(names)]
        self._client: pubsub_v1.SubscriberClient | None = None
        self._reporter: threading.Thread | None = None
        self._stopped = False

    @property
    def names(self) -> list[str]:
        return [r.sub.name for r in self.runners]

    @property
    def error(self) -> str | None:
        """Why the worker stopped by itself (a stream or batcher died), else None."""
        errors = [r.error for r in self.runners if r.error]
        return "; ".join(errors) or None

    def start(self) -> None:
        self._client = pubsub.subscriber(self.runtime.settings)
        for runner in self.runners:
            runner.start(self._client)
        self._reporter = threading.Thread(target=self._report, name="subs-report", daemon=True)
        self._reporter.start()
        log.info("pulling %s", ", ".join(self.names))

    def stop(self, timeout: float = 60.0) -> None:
        """Finish and ack the batches in hand, nack the rest, close the streams."""
        if self._stopped:
            return
        self.stopping.set()
        for runner in self.runners:
            for thread in (runner.thread, runner.committer):
                if thread is not None:
                    thread.join(timeout)
        for runner in self.runners:
            if runner.future is not None:
                runner.future.cancel()
        for runner in self.runners:
            if runner.future is not None:
                with contextlib.suppress(Exception):  # cancelled or already failed
                    runner.future.result(timeout=timeout)
        if self._client is not None:
            self._client.close()
        self._stopped = True
        self._log_totals("stopped")

    def totals(self, name: str) -> dict[str, int]:
        m = self.metrics
        return {
            key: int(m.value(metric, name))
            for key, metric in (
                ("received", "cutover_subs_messages_received"),
                ("applied", "cutover_subs_events_applied"),
                ("stale", "cutover_subs_events_stale"),
                ("failed", "cutover_subs_events_failed"),
                ("nacked_batches", "cutover_subs_batches_nacked"),
            )
        }

    def _log_totals(self, prefix: str) -> None:
        for name in self.names:
            t = self.totals(name)
            log.info(
                "%s %s: %d received, %d applied, %d stale, %d failed, %d batches nacked",
                prefix,
                name,
                t["received"],
                t["applied"],
                t["stale"],
                t["failed"],
                t["nacked_batches"],
            )

    def _report(self) -> None:
        """Plain periodic progress lines (the worker runs unattended, often not on a TTY)."""
        while not self.stopping.wait(self.log_every_s):
            self._log_totals("progress")

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0) or a fatal stream error (exit 1)."""
        previous = {}

        def request_stop(signum: int, _frame: Any) -> None:
            log.info("received %s: finishing the batch in hand", signal.Signals(signum).name)
            self.stopping.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, request_stop)
        try:
            self.start()
            while not self.stopping.wait(0.5):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1 if self.error else 0
