"""Subscriptions that double-write: declare, add, sync, drop, and the handler workers.

* :mod:`.manage`: declared vs. server subscriptions; ``add``/``sync``/``drop`` (audited),
  with the legacy-drop guard (seam: :data:`.manage.old_store_readers`).
* :mod:`.worker`: :class:`~.worker.Worker`, streaming pull -> batch -> one transaction
  -> ack, usable in-process (``start``/``stop``) or as ``cutover subs run``.
* :mod:`.handler`: one batch through a sink (:mod:`.sinks`) with poison messages to the
  failure log (:mod:`.failures`) and counters (:mod:`.counters`) in the same transaction.
* :mod:`.metrics`: Prometheus counters and histograms; :mod:`.tables`: the SQL tables.
"""

from __future__ import annotations

from typing import Any

# Lazy: `cutover db init` imports .tables and the CLI imports .cli; neither should pay
# for google-cloud-pubsub's import unless a worker is really used.
_EXPORTS = {
    "BatchHandler": ".handler",
    "BatchOutcome": ".handler",
    "TABLES": ".tables",
    "Worker": ".worker",
    "WorkerMetrics": ".metrics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
