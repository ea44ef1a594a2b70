"""Prometheus metrics of the handler workers.

Kept on a registry the caller owns (a fresh one by default), so several workers in one
process (tests, the demo) never clash over the global registry; ``cutover subs run
--metrics-port`` serves the worker's registry over HTTP.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_LABELS = ("subscription",)


class WorkerMetrics:
    """Counters and histograms labelled by subscription."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "cutover_subs_messages_received",
            "Messages handed to the worker by Pub/Sub.",
            _LABELS,
            registry=r,
        )
        self.applied = Counter(
            "cutover_subs_events_applied", "Events that changed the store.", _LABELS, registry=r
        )
        self.stale = Counter(
            "cutover_subs_events_stale",
            "Events skipped by the version rules (duplicate or older than the stored row).",
            _LABELS,
            registry=r,
        )
        self.failed = Counter(
            "cutover_subs_events_failed",
            "Poison messages written to the failure log.",
            _LABELS,
            registry=r,
        )
        self.nacked_batches = Counter(
            "cutover_subs_batches_nacked",
            "Batches nacked for redelivery because the store failed.",
            _LABELS,
            registry=r,
        )
        self.batch_size = Histogram(
            "cutover_subs_batch_size",
            "Messages per committed batch.",
            _LABELS,
            registry=r,
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
        )
        self.batch_latency = Histogram(
            "cutover_subs_batch_latency_seconds",
            "From the batch's first message received to the batch acked.",
            _LABELS,
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.event_lag = Histogram(
            "cutover_subs_event_lag_seconds",
            "Commit time minus the event's occurred_at.",
            _LABELS,
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600, 86400),
        )

    def value(self, name: str, subscription: str) -> float:
        """A counter's current value (tests, the worker's periodic log line)."""
        sample = self.registry.get_sample_value(f"{name}_total", {"subscription": subscription})
        return sample or 0.0
