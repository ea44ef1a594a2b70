"""Driver options the store adds to a DSN, and never over a user's own choice."""

from __future__ import annotations

from stores.sql import get_dialect


def test_postgresql_dsn_gets_transaction_level_rollback_and_no_comm_log() -> None:
    """psqlodbc's default wraps every statement in a SAVEPOINT (extra round trips);
    the store rolls back whole transactions, so it asks for that level instead."""
    dsn = get_dialect("postgresql").prepare_dsn("DRIVER={PostgreSQL Unicode};SERVER=h")
    assert dsn.endswith(";Protocol=7.4-1;CommLog=0")
    own = "DRIVER={PostgreSQL Unicode};protocol=7.4-2;SERVER=h"
    assert get_dialect("postgresql").prepare_dsn(own) == own + ";CommLog=0"


def test_sqlite_dsn_gets_64_bit_integers_and_wal() -> None:
    dsn = get_dialect("sqlite").prepare_dsn("Driver=SQLite3;Database=/x.db;BigInt=0")
    assert "BigInt=0" in dsn and "BigInt=1" not in dsn
    assert "JournalMode=WAL" in dsn and "Timeout=30000" in dsn


def test_mssql_dsn_is_left_alone() -> None:
    dsn = "DRIVER={ODBC Driver 18 for SQL Server};SERVER=h;Encrypt=yes"
    assert get_dialect("mssql").prepare_dsn(dsn) == dsn
