"""The per-client jobs' progress as Prometheus metrics (``/metrics``).

The figures are those of ``cutover jobs status`` (:func:`backfill.jobs.status`), read
from the SQL store when Prometheus scrapes, at most once per :data:`CACHE_S` seconds
per process, so they are the same on every API process and job worker:

* ``cutover_jobs{entity,state}``: jobs per state (queued, running, retrying, done, failed);
* ``cutover_jobs_stale_leases{entity}``: running jobs whose lease expired;
* ``cutover_jobs_not_migrated{entity}``: clients in the ledger not verified yet;
* ``cutover_jobs_rows_per_second{entity}``, ``cutover_jobs_per_second{entity}``: the
  rate of the last 10 minutes; ``cutover_jobs_eta_seconds{entity}`` at that rate.

The subscription's backlog is not among them: only Google's Cloud Monitoring reports
it, and a scrape should not call it (``cutover jobs status`` shows it).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from core.redaction import redact
from stores.runtime import Runtime

from .jobs import STATES, JobsStatus, status

log = logging.getLogger("cutover.jobs")

#: Seconds a scrape's figures are reused.
CACHE_S = 10.0


class JobsCollector(Collector):
    """Reads the job figures of the runtime last given to :func:`watch`."""

    def __init__(self) -> None:
        self._runtime: weakref.ref[Runtime] | None = None
        self._lock = threading.Lock()
        self._cached: tuple[float, list[JobsStatus]] = (0.0, [])

    def watch(self, runtime: Runtime) -> None:
        with self._lock:
            self._runtime = weakref.ref(runtime)
            self._cached = (0.0, [])

    def _figures(self) -> list[JobsStatus]:
        with self._lock:
            runtime = self._runtime() if self._runtime is not None else None
            at, figures = self._cached
            if runtime is None or runtime.cfg.jobs is None:
                return []
            if time.monotonic() - at < CACHE_S:
                return figures
            try:
                figures = [status(runtime.sql, name) for name in runtime.cfg.entities]
            except Exception as exc:  # a scrape never fails because the store is down
                log.warning("job metrics unavailable: %s", redact(str(exc)))
                figures = []
            self._cached = (time.monotonic(), figures)
            return figures

    def collect(self) -> Iterator[Any]:
        figures = self._figures()
        states = GaugeMetricFamily(
            "cutover_jobs", "Per-client migration jobs by state", labels=["entity", "state"]
        )
        gauges = {
            name: GaugeMetricFamily(f"cutover_jobs_{name}", text, labels=["entity"])
            for name, text in (
                ("stale_leases", "Running jobs whose lease expired (worker gone?)"),
                ("not_migrated", "Clients in the ledger not verified yet"),
                ("rows_per_second", "Rows copied per second by jobs (last 10 minutes)"),
                ("per_second", "Jobs finished per second (last 10 minutes)"),
                ("eta_seconds", "Seconds until the queued and running jobs are done"),
            )
        }
        for st in figures:
            for state in STATES:
                states.add_metric([st.entity, state], st.states.get(state, 0))
            gauges["stale_leases"].add_metric([st.entity], st.stale)
            gauges["not_migrated"].add_metric([st.entity], st.not_migrated)
            gauges["rows_per_second"].add_metric([st.entity], st.rows_per_s)
            gauges["per_second"].add_metric([st.entity], st.jobs_per_s)
            if st.eta_s is not None:
                gauges["eta_seconds"].add_metric([st.entity], st.eta_s)
        yield states
        yield from gauges.values()


_collector: JobsCollector | None = None
_registered = threading.Lock()


def watch(runtime: Runtime) -> JobsCollector:
    """Report ``runtime``'s jobs on the default registry (registered once per process)."""
    global _collector
    with _registered:
        if _collector is None:
            _collector = JobsCollector()
            REGISTRY.register(_collector)
    _collector.watch(runtime)
    return _collector
