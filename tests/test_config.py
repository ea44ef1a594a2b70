"""The declarative file fails at load with the file, the field and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ColumnType, ConfigError, load_config, parse_config

GOOD = """
[entities.orders]
rethinkdb_db = "app"
rethinkdb_table = "orders"
sql_table = "orders"
[entities.orders.columns]
status = { type = "string", max_length = 10 }
amount = "float"

[subscriptions.orders-sql]
topic = "orders"
entity = "orders"
sink = "sqlstore"
"""


def test_good_config_parses_entities_and_subscriptions() -> None:
    config = parse_config(GOOD)
    orders = config.entity("orders")
    assert orders.topic == "orders"  # defaults to the entity name
    assert [(c.name, c.type) for c in orders.columns] == [
        ("status", ColumnType.STRING),
        ("amount", ColumnType.FLOAT),
    ]
    assert config.subscription("orders-sql").batch_size == 500


def test_project_config_loads() -> None:
    config = load_config(Path(__file__).parent.parent / "cutover.toml")
    assert {"orders", "customers"} <= set(config.entities)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace('amount = "float"', 'amount = "money"'), "entities.orders.columns[1].type"),
        (GOOD.replace('sql_table = "orders"', 'sql_table = "orders; drop table x"'), "sql_table"),
        (GOOD.replace('entity = "orders"\n', 'entity = "invoices"\n'), "unknown entity 'invoices'"),
        (GOOD.replace('sink = "sqlstore"', 'sink = "kafka"'), "subscriptions.orders-sql.sink"),
        (GOOD.replace('amount = "float"', '_deleted = "bool"'), "reserved"),
        (GOOD.replace("max_length = 10", "max_length = -1"), "max_length"),
        (GOOD + "\n[entities.orders.extra]\n", "entities.orders"),
        (
            GOOD.replace("[entities.orders]", "[entities.orders]\nunknown_field = 1"),
            "unknown_field",
        ),
        ("[entities", "not valid TOML"),
        ("[bogus]\n", "unknown top-level section"),
    ],
)
def test_invalid_config_names_file_field_and_problem(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="cutover.toml")
    message = str(info.value)
    assert message.startswith("cutover.toml")
    assert expected in message


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.toml")


def test_unknown_entity_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown entity 'invoices' \(known: orders\)"):
        parse_config(GOOD).entity("invoices")
