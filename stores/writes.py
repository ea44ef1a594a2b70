"""What both stores' version-guarded writes share: the winner per key and the result.

The RethinkDB store and the SQL store each apply the one rule (a stored row changes
only when the incoming ``(version, deleted)`` is greater) in their own query language;
before that, a batch is reduced to its winning row per key here, and both answer with
a :class:`WriteResult`, so every writer counts applied and stale rows alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class WriteResult:
    applied: int = 0
    stale: int = 0

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(self.applied + other.applied, self.stale + other.stale)


def newest(
    rows: Iterable[R],
    *,
    key: Callable[[R], str] = attrgetter("key"),
    rank: Callable[[R], Any] = attrgetter("rank"),
) -> list[R]:
    """One row per key: the one that would win (highest ``(version, deleted)``).

    Rows are :class:`~stores.mapping.Row` objects by default; ``key`` and ``rank`` read
    them in another shape (the value lists of the SQL store's batch encoder).
    """
    best: dict[str, R] = {}
    for row in rows:
        k = key(row)
        held = best.get(k)
        if held is None or rank(row) > rank(held):
            best[k] = row
    return list(best.values())
