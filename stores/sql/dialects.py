"""SQL dialects: T-SQL for production, PostgreSQL and SQLite as stand-ins.

Everything that differs between the three lives here: identifier quoting, column
types, how values are bound through their ODBC drivers, limits per statement, paging,
and the version-guarded upsert. Callers build statements only through a dialect, so
the T-SQL that runs in production is the same text the golden tests check offline.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core.config import IDENTIFIER, ColumnType
from stores import jsontext

if TYPE_CHECKING:  # settings import pydantic-settings: not needed to build SQL
    from core.settings import Dialect as DialectName

#: Types of the project's own bookkeeping tables (checkpoints, ledger, audit, ...).
InternalType = str  # "key" | "text" | "int" | "float" | "bool" | "datetime"


@dataclass(frozen=True)
class Dialect:
    name: DialectName
    max_params: int
    max_rows: int

    # -- identifiers -----------------------------------------------------------------
    def quote(self, identifier: str) -> str:
        """Quote an identifier after checking it, so no name can inject SQL."""
        if not IDENTIFIER.match(identifier):
            raise ValueError(f"invalid SQL identifier {identifier!r}")
        return f"[{identifier}]" if self.name == "mssql" else f'"{identifier}"'

    # -- types -----------------------------------------------------------------------
    def key_type(self, length: int) -> str:
        """Keys sort by code point in every store: binary collations."""
        if self.name == "mssql":
            return f"NVARCHAR({length}) COLLATE Latin1_General_100_BIN2"
        if self.name == "postgresql":
            return f'VARCHAR({length}) COLLATE "C"'
        return "TEXT"

    def column_type(self, kind: ColumnType | InternalType, max_length: int | None = None) -> str:
        kind = str(kind)
        if kind == "key":
            return self.key_type(max_length or 255)
        if kind in ("string", "text", "json"):
            if self.name == "mssql":
                return (
                    f"NVARCHAR({max_length})"
                    if max_length and kind == "string"
                    else "NVARCHAR(MAX)"
                )
            if self.name == "postgresql":
                return f"VARCHAR({max_length})" if max_length and kind == "string" else "TEXT"
            return "TEXT"
        return _SCALAR_TYPES[self.name][kind]

    # -- values ----------------------------------------------------------------------
    def to_db(self, kind: ColumnType | InternalType, value: Any) -> Any:
        """A Python value as the driver should bind it."""
        if value is None:
            return None
        kind = str(kind)
        if kind == "json":
            return _json_text(value)
        if kind == "datetime":
            naive = _naive_utc(value)
            # sqliteodbc keeps only milliseconds of a bound datetime: bind ISO text.
            return (
                naive.isoformat(sep=" ", timespec="microseconds")
                if self.name == "sqlite"
                else naive
            )
        if kind == "bool":
            return int(value) if self.name == "sqlite" else bool(value)
        return value

    def from_db(self, kind: ColumnType | InternalType, value: Any) -> Any:
        """A fetched value back as the Python value the mapping uses."""
        if value is None:
            return None
        kind = str(kind)
        if kind == "json":
            return json.loads(value)
        if kind == "datetime":
            if isinstance(value, str):
                value = datetime.fromisoformat(value)
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if kind == "bool":
            return value not in (0, "0", False, "f", "false")
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        return value

    def prepare_dsn(self, dsn: str) -> str:
        """Add driver options the store relies on when the DSN does not set them.

        sqliteodbc truncates 64-bit integers to 32 bits unless ``BigInt=1``; WAL and a
        busy timeout let a reader and a writer process share the file.

        psqlodbc by default wraps every statement in a SAVEPOINT so that an error undoes
        only that statement: two extra round trips per statement, for nothing here,
        because the store rolls back the whole transaction on any error.
        ``Protocol=7.4-1`` turns that off. ``CommLog=0`` stops Debian's packaged driver
        from leaving a log file in /tmp per process.
        """
        extra = _DSN_DEFAULTS.get(self.name)
        if not extra:
            return dsn
        present = {p.split("=", 1)[0].strip().lower() for p in dsn.split(";") if "=" in p}
        missing = [f"{k}={v}" for k, v in extra.items() if k.lower() not in present]
        return ";".join([dsn.rstrip(";"), *missing]) if missing else dsn

    def placeholder(self, kind: ColumnType | InternalType) -> str:
        """A parameter marker; T-SQL casts it so NULLs in a VALUES list keep their type."""
        if self.name != "mssql":
            return "?"
        kind = str(kind)
        sql_type = "NVARCHAR(900)" if kind == "key" else self.column_type(kind)
        return f"CAST(? AS {sql_type})"

    # -- statements ------------------------------------------------------------------
    def limit(self, sql: str, n: int) -> str:
        """Append a row limit to a SELECT that has an ORDER BY."""
        if self.name == "mssql":
            return f"{sql} OFFSET 0 ROWS FETCH NEXT {int(n)} ROWS ONLY"
        return f"{sql} LIMIT {int(n)}"

    def delete_some(
        self, table: str, key: Sequence[str], cond: str, params: Sequence[Any], n: int
    ) -> tuple[str, list[Any]]:
        """A DELETE of at most ``n`` rows matching ``cond`` (a WHERE condition with ``?``
        markers for ``params``), as (statement, parameters): callers delete a large set
        in short transactions, one such statement each, until fewer than ``n`` go.

        T-SQL has ``DELETE TOP (n)``. PostgreSQL has no DELETE limit and SQLite only
        when compiled for it, so they delete the rows whose primary key ``key`` is among
        ``n`` matching ones; ``cond`` is checked again on the rows deleted, so a row
        changed meanwhile by another transaction (PostgreSQL re-reads it) is left alone
        when it no longer matches.
        """
        q = self.quote
        if self.name == "mssql":
            return f"DELETE TOP ({int(n)}) FROM {q(table)} WHERE {cond}", list(params)
        keys = ", ".join(q(k) for k in key)
        picked = f"SELECT {keys} FROM {q(table)} WHERE {cond} LIMIT {int(n)}"
        return (
            f"DELETE FROM {q(table)} WHERE {cond} AND ({keys}) IN ({picked})",
            [*params, *params],
        )

    def json_converter(self, kind: ColumnType | InternalType) -> Callable[[Any], Any] | None:
        """How a non-null value of ``kind`` travels in the JSON batch of :meth:`upsert`;
        None when it travels as it is.

        Strings, numbers and booleans travel as they are, and so do datetimes to
        PostgreSQL: the batch is written with :func:`stores.jsontext.dumps_with_times`
        (ISO 8601 with the offset, in C) and the server reads them as ``timestamptz``
        at UTC. SQL Server and SQLite get naive UTC text with six fraction digits (the
        form SQLite stores and compares, and the one ``DATETIME2`` reads for certain).
        JSON columns travel as their stored text.
        """
        kind = str(kind)
        if kind == "json":
            return _json_text
        if kind == "datetime" and self.name != "postgresql":
            sep = " " if self.name == "sqlite" else "T"

            def naive_utc_text(value: datetime) -> str:
                if value.tzinfo is UTC:  # what the mapping gives: skip making a naive copy
                    return value.isoformat(sep=sep, timespec="microseconds")[:-6]  # "+00:00"
                return _naive_utc(value).isoformat(sep=sep, timespec="microseconds")

            return naive_utc_text
        return None

    def upsert(
        self,
        table: str,
        columns: list[tuple[str, ColumnType | InternalType]],
        *,
        key: str,
        version: str,
        deleted: str,
        stamp: str,
    ) -> str:
        """A version-guarded, set-based upsert of a batch: two parameters, whatever its size.

        The first parameter is the write time, which goes to column ``stamp`` of every
        row. The second is the batch as JSON: an array with one array per row, holding
        the other columns' values in ``columns`` order (see :meth:`json_converter`),
        unpacked by the server (``OPENJSON ... WITH``, ``jsonb_array_elements``,
        ``json_each``).

        Why so: binding costs the driver microseconds per parameter, and SQL Server's
        2,100-parameter limit no longer caps the rows per statement. Positional rows
        rather than objects, and the time bound once rather than per row: the server
        parses no key names and one timestamp per statement, which measured on
        PostgreSQL cut a batch's cost from about 15 to 11 us per row.

        A stored row is replaced only when the incoming ``(version, deleted)`` is greater:
        a newer version wins, and at equal versions a delete beats an upsert, so any
        order and any duplication of the same events ends in the same state.
        """
        q = self.quote
        names = [q(c) for c, _ in columns]
        newer = "{t}.{v} < {s}.{v} OR ({t}.{v} = {s}.{v} AND {t}.{d} < {s}.{d})"
        source = self._batch_source(columns, stamp)
        if self.name == "mssql":
            sets = ", ".join(f"t.{n} = s.{n}" for n in names if n != q(key))
            cond = newer.format(t="t", s="s", v=q(version), d=q(deleted))
            return (
                f"MERGE INTO {q(table)} WITH (HOLDLOCK) AS t\n"
                f"USING ({source}) AS s\n"
                f"ON t.{q(key)} = s.{q(key)}\n"
                f"WHEN MATCHED AND ({cond}) THEN\n"
                f"  UPDATE SET {sets}\n"
                f"WHEN NOT MATCHED BY TARGET THEN\n"
                f"  INSERT ({', '.join(names)}) VALUES ({', '.join('s.' + n for n in names)});"
            )
        sets = ", ".join(f"{n} = excluded.{n}" for n in names if n != q(key))
        cond = newer.format(t=q(table), s="excluded", v=q(version), d=q(deleted))
        return (
            f"INSERT INTO {q(table)} ({', '.join(names)})\n"
            f"{source}\n"
            f"ON CONFLICT ({q(key)}) DO UPDATE SET {sets}\n"
            f"WHERE {cond}"
        )

    def increment_upsert(
        self,
        table: str,
        keys: list[tuple[str, ColumnType | InternalType]],
        counters: list[str],
        *,
        stamp: str,
    ) -> str:
        """Add a batch of counts to the rows of their keys (a row missing is inserted).

        Parameters as for :meth:`upsert`: the write time (to column ``stamp``), then the
        batch as JSON, one array per row holding the ``keys`` values, then the
        ``counters`` (integers), in that order. Keys must be unique within a batch.

        Each row's counters become ``stored + given`` in one statement, so increments
        from any number of processes add up, none lost, whatever the interleaving:
        SQL Server's ``MERGE ... WITH (HOLDLOCK)`` holds the key range from the match
        to the insert (without it two sessions may both miss and both insert);
        PostgreSQL's and SQLite's ``ON CONFLICT ... DO UPDATE`` update the row a
        concurrent insert created (SQLite also serialises writers). Callers send keys in
        one order (sorted), so two batches lock their rows in the same order.
        """
        q = self.quote
        columns = [*keys, *((c, "int") for c in counters), (stamp, "datetime")]
        names = [q(c) for c, _ in columns]
        key_names = [q(c) for c, _ in keys]
        source = self._batch_source(columns, stamp)
        if self.name == "mssql":
            sets = ", ".join(
                [
                    *(f"t.{q(c)} = t.{q(c)} + s.{q(c)}" for c in counters),
                    f"t.{q(stamp)} = s.{q(stamp)}",
                ]
            )
            return (
                f"MERGE INTO {q(table)} WITH (HOLDLOCK) AS t\n"
                f"USING ({source}) AS s\n"
                f"ON {' AND '.join(f't.{k} = s.{k}' for k in key_names)}\n"
                f"WHEN MATCHED THEN\n"
                f"  UPDATE SET {sets}\n"
                f"WHEN NOT MATCHED BY TARGET THEN\n"
                f"  INSERT ({', '.join(names)}) VALUES ({', '.join('s.' + n for n in names)});"
            )
        sets = ", ".join(
            [
                *(f"{q(c)} = {q(table)}.{q(c)} + excluded.{q(c)}" for c in counters),
                f"{q(stamp)} = excluded.{q(stamp)}",
            ]
        )
        return (
            f"INSERT INTO {q(table)} ({', '.join(names)})\n"
            f"{source}\n"
            f"ON CONFLICT ({', '.join(key_names)}) DO UPDATE SET {sets}"
        )

    def _batch_source(
        self, columns: list[tuple[str, ColumnType | InternalType]], stamp: str
    ) -> str:
        """The ``SELECT`` of a JSON batch's rows, one value per column of ``columns``.

        Column ``stamp`` is the first parameter (the write time, the same for every
        row); every other column is read from the second parameter, the batch: an array
        of arrays holding those columns' values in ``columns`` order (see
        :meth:`json_converter`), unpacked by the server (``OPENJSON ... WITH``,
        ``jsonb_array_elements``, ``json_each``).
        """
        q = self.quote
        carried = [(c, k) for c, k in columns if c != stamp]  # in the JSON, in this order
        at = {c: i for i, (c, _) in enumerate(carried)}
        time_param = f"CAST(? AS {self.column_type('datetime')})"
        if self.name == "mssql":
            shape = ",\n    ".join(
                f"{q(c)} {'NVARCHAR(900)' if str(k) == 'key' else self.column_type(k)} '$[{i}]'"
                for i, (c, k) in enumerate(carried)
            )
            picks = ", ".join(
                f"{time_param} AS {q(c)}" if c == stamp else f"j.{q(c)}" for c, _ in columns
            )
            return f"SELECT {picks}\nFROM OPENJSON(?) WITH (\n    {shape}\n) AS j"
        if self.name == "postgresql":
            # jsonb: an array element by index is a direct lookup (json would re-parse).
            picks = ", ".join(
                time_param if c == stamp else _pg_pick(at[c], str(k)) for c, k in columns
            )
            return f"SELECT {picks}\nFROM jsonb_array_elements(CAST(? AS jsonb)) AS r"
        # SQLite: WHERE true resolves the parser's ON CONFLICT / join ambiguity
        picks = ", ".join(
            "?" if c == stamp else f"json_extract(value, '$[{at[c]}]')" for c, _ in columns
        )
        return f"SELECT {picks}\nFROM json_each(?) WHERE true"


def _pg_pick(at: int, kind: str) -> str:
    """A column's value from element ``at`` of a batch row (a jsonb array)."""
    value = f"CAST(r->>{at} AS {_PG_CASTS[kind]})"
    return f"({value} AT TIME ZONE 'UTC')" if kind == "datetime" else value


def _naive_utc(value: datetime) -> datetime:
    """The UTC wall time the tables store (columns carry no zone)."""
    if value.tzinfo is not UTC:  # the mapping already made most of them UTC
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None)


def _json_text(value: Any) -> str:
    """A JSON column's stored text: compact, keys sorted, so equal values store equal."""
    return jsontext.dumps(value, sort_keys=True)


_DSN_DEFAULTS: dict[str, dict[str, str]] = {
    "sqlite": {"BigInt": "1", "JournalMode": "WAL", "Timeout": "30000"},
    "postgresql": {"Protocol": "7.4-1", "CommLog": "0"},
}

#: PostgreSQL casts of the text a batch holds per column kind (the insert narrows them).
_PG_CASTS = {
    "key": "text",
    "string": "text",
    "text": "text",
    "json": "text",
    "int": "bigint",
    "float": "double precision",
    "bool": "boolean",
    "datetime": "timestamptz",  # with its offset: read at UTC (see json_converter)
}

_SCALAR_TYPES: dict[str, dict[str, str]] = {
    "mssql": {
        "int": "BIGINT",
        "float": "FLOAT",
        "bool": "BIT",
        "datetime": "DATETIME2(6)",
    },
    "postgresql": {
        "int": "BIGINT",
        "float": "DOUBLE PRECISION",
        "bool": "BOOLEAN",
        "datetime": "TIMESTAMP(6)",
    },
    "sqlite": {"int": "INTEGER", "float": "REAL", "bool": "INTEGER", "datetime": "TEXT"},
}

DIALECTS: dict[str, Dialect] = {
    # SQL Server: 2,100 parameters per statement, 1,000 rows per VALUES list.
    "mssql": Dialect("mssql", max_params=2000, max_rows=1000),
    "postgresql": Dialect("postgresql", max_params=30000, max_rows=1000),
    # SQLite's default SQLITE_MAX_VARIABLE_NUMBER is 32766 since 3.32.
    "sqlite": Dialect("sqlite", max_params=30000, max_rows=1000),
}


def get_dialect(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown SQL dialect {name!r} (known: {', '.join(DIALECTS)})") from None
