"""The one clock every module reads: aware UTC time.

A module of its own, apart from the event model, so that code which only needs the
time (the store, the backfill's reader process) does not import pydantic's models.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now_utc() -> datetime:
    return datetime.now(UTC)
