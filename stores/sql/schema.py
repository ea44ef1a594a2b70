"""Table definitions and idempotent schema creation and upgrade.

Entity tables come from the declarative config; the project's bookkeeping tables
(checkpoints, ledger, failure log, audit) are declared with the same :class:`Table`
type, so one piece of code creates and upgrades both in every dialect. Each table's
definition is recorded in ``cutover_schema`` with a version that grows when the
definition changes; upgrades only ever add columns and indexes (never drop), so an
older worker still running during a deploy keeps working.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from core.clock import now_utc
from core.config import SYSTEM_COLUMNS, Entity
from core.limits import MAX_CLIENT_ID_CHARS

from ._cursors import StatementCursors
from .dialects import Dialect


@dataclass(frozen=True)
class Col:
    name: str
    kind: str  # a ColumnType value or "key" / "text"
    max_length: int | None = None
    nullable: bool = True


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Col, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def col(self, name: str) -> Col:
        return next(c for c in self.columns if c.name == name)

    @property
    def fingerprint(self) -> str:
        body = json.dumps(
            [self.columns.__repr__(), self.primary_key, self.indexes], sort_keys=True
        ).encode()
        return hashlib.sha256(body).hexdigest()[:16]


DELETED, UPDATED_AT = SYSTEM_COLUMNS


def entity_table(entity: Entity) -> Table:
    """The SQL table of an entity: key, client, version, tombstone flag, timestamps, columns."""
    columns = (
        Col(entity.key, "key", entity.key_max_length, nullable=False),
        Col(entity.client, "key", MAX_CLIENT_ID_CHARS, nullable=False),
        Col(entity.version, "int", nullable=False),
        Col(DELETED, "bool", nullable=False),
        Col(UPDATED_AT, "datetime", nullable=False),
        *(Col(c.name, c.type.value, c.max_length, c.nullable) for c in entity.columns),
    )
    index = (f"ix_{entity.sql_table}_client_key"[:120], (entity.client, entity.key))
    return Table(entity.sql_table, columns, (entity.key,), (index,))


def entity_value_columns(entity: Entity, table: Table) -> list[Col]:
    """The table's mapped columns (everything but key, client, version and system)."""
    fixed = {entity.key, entity.client, entity.version, *SYSTEM_COLUMNS}
    return [c for c in table.columns if c.name not in fixed]


SCHEMA_TABLE = Table(
    "cutover_schema",
    (
        Col("table_name", "key", 128, nullable=False),
        Col("version", "int", nullable=False),
        Col("fingerprint", "key", 64, nullable=False),
        Col("updated_at", "datetime", nullable=False),
    ),
    ("table_name",),
)


def _column_ddl(dialect: Dialect, col: Col) -> str:
    null = "NOT NULL" if col.nullable is False else "NULL"
    return f"{dialect.quote(col.name)} {dialect.column_type(col.kind, col.max_length)} {null}"


def create_table_sql(dialect: Dialect, table: Table) -> list[str]:
    """Statements that create the table and its indexes when missing."""
    q = dialect.quote
    body = ",\n  ".join(
        [_column_ddl(dialect, c) for c in table.columns]
        + [f"PRIMARY KEY ({', '.join(q(c) for c in table.primary_key)})"]
    )
    statements = []
    if dialect.name == "mssql":
        statements.append(
            f"IF OBJECT_ID(N'{table.name}', N'U') IS NULL\n"
            f"CREATE TABLE {q(table.name)} (\n  {body}\n)"
        )
    else:
        statements.append(f"CREATE TABLE IF NOT EXISTS {q(table.name)} (\n  {body}\n)")
    for name, cols in table.indexes:
        columns = ", ".join(q(c) for c in cols)
        if dialect.name == "mssql":
            statements.append(
                f"IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'{name}' "
                f"AND object_id = OBJECT_ID(N'{table.name}'))\n"
                f"CREATE INDEX {q(name)} ON {q(table.name)} ({columns})"
            )
        else:
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {q(name)} ON {q(table.name)} ({columns})"
            )
    return statements


def add_column_sql(dialect: Dialect, table: Table, col: Col) -> str:
    """Add a column to an existing table; always nullable so existing rows stay valid."""
    add = "ADD" if dialect.name == "mssql" else "ADD COLUMN"
    relaxed = Col(col.name, col.kind, col.max_length, nullable=True)
    return f"ALTER TABLE {dialect.quote(table.name)} {add} {_column_ddl(dialect, relaxed)}"


def existing_columns(cursor: StatementCursors, dialect: Dialect, table: Table) -> set[str]:
    cursor.execute(f"SELECT * FROM {dialect.quote(table.name)} WHERE 1 = 0")
    return {d[0].lower() for d in cursor.description}


def ensure_tables(cursor: StatementCursors, dialect: Dialect, tables: Iterable[Table]) -> list[str]:
    """Create or upgrade tables; returns what changed, for the caller to report."""
    changes: list[str] = []
    for statement in create_table_sql(dialect, SCHEMA_TABLE):
        cursor.execute(statement)
    for table in tables:
        known = _recorded(cursor, dialect, table.name)
        if known and known[1] == table.fingerprint:
            continue
        for statement in create_table_sql(dialect, table):
            cursor.execute(statement)
        have = existing_columns(cursor, dialect, table)
        for col in table.columns:
            if col.name.lower() not in have:
                cursor.execute(add_column_sql(dialect, table, col))
                changes.append(f"{table.name}: added column {col.name}")
        version = (known[0] + 1) if known else 1
        _record(cursor, dialect, table, version, update=known is not None)
        changes.append(f"{table.name}: schema version {version}")
    return changes


def _recorded(cursor: StatementCursors, dialect: Dialect, name: str) -> tuple[int, str] | None:
    q = dialect.quote
    cursor.execute(
        f"SELECT {q('version')}, {q('fingerprint')} FROM {q('cutover_schema')} "
        f"WHERE {q('table_name')} = ?",
        name,
    )
    row = cursor.fetchone()
    return (int(row[0]), row[1]) if row else None


def _record(
    cursor: StatementCursors, dialect: Dialect, table: Table, version: int, *, update: bool
) -> None:
    q = dialect.quote
    now = dialect.to_db("datetime", now_utc())
    v = dialect.to_db("int", version)
    if update:
        cursor.execute(
            f"UPDATE {q('cutover_schema')} SET {q('version')} = ?, {q('fingerprint')} = ?, "
            f"{q('updated_at')} = ? WHERE {q('table_name')} = ?",
            v,
            table.fingerprint,
            now,
            table.name,
        )
    else:
        cursor.execute(
            f"INSERT INTO {q('cutover_schema')} ({q('table_name')}, {q('version')}, "
            f"{q('fingerprint')}, {q('updated_at')}) VALUES (?, ?, ?, ?)",
            table.name,
            v,
            table.fingerprint,
            now,
        )
