"""Backfill and verification: copy the old RethinkDB history, then prove both stores agree.

* :mod:`backfill.runner` copies an entity batch by batch through the shared
  version-guarded write path, with a checkpoint in the same transaction;
* :mod:`backfill.partitions` shares the work between workers and machines by leases;
* :mod:`backfill.verify` compares both stores per client and can repair;
* :mod:`backfill.ledger` is the per-client ledger the cutover gate reads
  (:func:`backfill.ledger.client_status`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ledger import LedgerEntry, client_status, entries

__all__ = ["LedgerEntry", "client_status", "entries"]


def __getattr__(name: str) -> Any:
    """The ledger's API, imported when first used: the backfill's reader process
    imports this package and needs none of it."""
    if name in __all__:
        from . import ledger

        return getattr(ledger, name)
    raise AttributeError(f"module 'backfill' has no attribute {name!r}")
