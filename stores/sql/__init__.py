"""The SQL Server store (and its stand-ins) behind one batch write path."""

from . import bookkeeping
from ._cursors import StatementCursors
from .dialects import DIALECTS, Dialect, get_dialect
from .schema import Col, Table, entity_table
from .store import (
    PreparedRows,
    RowEncoder,
    SqlStore,
    StoreAuthFailed,
    StoreUnavailable,
    WriteResult,
    is_auth_failure,
    is_transient,
    newest,
)

__all__ = [
    "DIALECTS",
    "Col",
    "Dialect",
    "PreparedRows",
    "RowEncoder",
    "SqlStore",
    "StatementCursors",
    "StoreAuthFailed",
    "StoreUnavailable",
    "Table",
    "WriteResult",
    "bookkeeping",
    "entity_table",
    "get_dialect",
    "is_auth_failure",
    "is_transient",
    "newest",
]
