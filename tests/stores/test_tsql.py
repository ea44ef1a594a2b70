"""The T-SQL that production runs, checked offline (no SQL Server exists here).

Three independent checks: golden files (any change to generated T-SQL is reviewed
as a diff: regenerate with UPDATE_GOLDEN=1), sqlfluff's T-SQL parser (syntax),
and SQLAlchemy's mssql dialect (type names). None proves the T-SQL runs: that is
tests/stores/test_mssql.py, which runs when CUTOVER_TEST_MSSQL_DSN names a server.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import pytest
import sqlfluff
from sqlalchemy import BigInteger, Boolean, Float, Unicode, UnicodeText
from sqlalchemy.dialects import mssql
from sqlalchemy.dialects.mssql import DATETIME2

from core.config import ColumnType, Config
from flags.evidence import COUNTERS
from flags.tables import EVIDENCE
from stores.sql import SqlStore, entity_table, get_dialect
from stores.sql.schema import SCHEMA_TABLE, add_column_sql, create_table_sql

GOLDEN = Path(__file__).parent.parent / "golden"
TSQL = get_dialect("mssql")


def _statements(config: Config) -> dict[str, str]:
    orders = config.entity("orders")
    table = entity_table(orders)
    store = SqlStore("DRIVER={none}", "mssql", config)  # never connects: builds SQL only
    page, _ = store.page_sql(orders, "acme", after="o-9", limit=500)
    return {
        "create_orders": "\nGO\n".join(create_table_sql(TSQL, table)),
        "create_schema_table": "\nGO\n".join(create_table_sql(TSQL, SCHEMA_TABLE)),
        "add_column": add_column_sql(TSQL, table, table.col("status")),
        "upsert_orders": TSQL.upsert(
            table.name,
            [(c.name, c.kind) for c in table.columns],
            key=orders.key,
            version=orders.version,
            deleted="_deleted",
            stamp="_updated_at",
        ),
        "page_orders": page,
        "create_shadow_evidence": "\nGO\n".join(create_table_sql(TSQL, EVIDENCE)),
        "increment_shadow_evidence": TSQL.increment_upsert(
            EVIDENCE.name,
            [(n, EVIDENCE.col(n).kind) for n in EVIDENCE.primary_key],
            list(COUNTERS),
            stamp="updated_at",
        ),
    }


STATEMENTS = [
    "create_orders",
    "create_schema_table",
    "add_column",
    "upsert_orders",
    "page_orders",
    "create_shadow_evidence",
    "increment_shadow_evidence",
]


def _named_params(sql: str) -> str:
    """sqlfluff does not know ODBC '?' markers; T-SQL's own are @names."""
    n = itertools.count(1)
    return re.sub(r"\?", lambda _: f"@p{next(n)}", sql)


@pytest.mark.parametrize("name", STATEMENTS)
def test_generated_tsql_matches_golden_file(config: Config, name: str) -> None:
    sql = _statements(config)[name].strip() + "\n"
    path = GOLDEN / f"mssql_{name}.sql"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(sql, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 and review it"
    assert sql == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", STATEMENTS)
def test_generated_tsql_parses_as_tsql(config: Config, name: str) -> None:
    for batch in _statements(config)[name].split("\nGO\n"):
        sqlfluff.parse(_named_params(batch) + "\n", dialect="tsql")  # raises when unparsable


def test_the_parser_check_can_fail() -> None:
    with pytest.raises(sqlfluff.api.APIParsingError):
        sqlfluff.parse("MERGE INTO [t] USING WHEN MATCHED THEN UPDATE SET\n", dialect="tsql")


def test_upsert_binds_two_parameters_whatever_the_batch(config: Config) -> None:
    """SQL Server caps a statement at 2,100 parameters: the batch travels as one JSON."""
    sql = _statements(config)["upsert_orders"]
    assert sql.count("?") == 2  # the write time, then the batch
    assert sql.index("CAST(? AS DATETIME2(6))") < sql.index("OPENJSON(?)")
    assert "WITH (HOLDLOCK)" in sql


def test_evidence_increment_adds_to_stored_counts_under_a_range_lock(config: Config) -> None:
    """Two parameters (time, batch); every counter becomes stored + given; the key range
    stays locked from the match to the insert (HOLDLOCK), so concurrent first counts of
    one key cannot both insert."""
    sql = _statements(config)["increment_shadow_evidence"]
    assert sql.count("?") == 2
    assert "MERGE INTO [cutover_shadow_evidence] WITH (HOLDLOCK) AS t" in sql
    for counter in COUNTERS:
        assert f"t.[{counter}] = t.[{counter}] + s.[{counter}]" in sql
    on = sql.split("\nON ", 1)[1].split("\n", 1)[0]
    assert on == " AND ".join(f"t.[{k}] = s.[{k}]" for k in EVIDENCE.primary_key)


@pytest.mark.parametrize(
    ("kind", "sa_type"),
    [
        (ColumnType.INT, BigInteger()),
        (ColumnType.FLOAT, Float(precision=53)),
        (ColumnType.BOOL, Boolean()),
        (ColumnType.DATETIME, DATETIME2(precision=6)),
        (ColumnType.JSON, UnicodeText()),
        (ColumnType.STRING, UnicodeText()),
    ],
)
def test_column_types_agree_with_sqlalchemy_mssql(kind: ColumnType, sa_type: object) -> None:
    dialect = mssql.dialect(deprecate_large_types=True)
    expected = sa_type.compile(dialect=dialect).upper()  # type: ignore[attr-defined]
    expected = expected.replace("FLOAT(53)", "FLOAT")  # FLOAT defaults to 53 bits in T-SQL
    assert TSQL.column_type(kind) == expected


def test_bounded_string_is_nvarchar_like_sqlalchemy() -> None:
    dialect = mssql.dialect(deprecate_large_types=True)
    assert TSQL.column_type(ColumnType.STRING, 32) == Unicode(32).compile(dialect=dialect)
