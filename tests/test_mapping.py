"""Mapping is strict: a wrong type is an error naming entity, key and field."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.config import Config
from core.events import Event
from stores.mapping import (
    MappingError,
    Row,
    differing_fields,
    document_from_row,
    row_from_document,
    row_from_event,
)


def _doc(**over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "id": "o-1",
        "client_id": "acme",
        "version": 2,
        "status": "paid",
        "amount": 3,
        "quantity": 1,
        "paid": True,
        "placed_at": "2024-01-01T00:00:00Z",
        "meta": {"b": 1, "a": 2},
    }
    doc.update(over)
    return doc


def test_document_maps_to_typed_row_and_back(config: Config) -> None:
    orders = config.entity("orders")
    row = row_from_document(orders, _doc())
    assert row.values["amount"] == 3.0 and isinstance(row.values["amount"], float)
    assert row.values["placed_at"] == datetime(2024, 1, 1, tzinfo=UTC)
    again = row_from_document(orders, document_from_row(orders, row))
    assert again == row


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"id": None}, "key field 'id'"),
        ({"client_id": 5}, "client field"),
        ({"version": "2"}, "version field"),
        ({"version": -3}, "version field"),
        ({"quantity": "many"}, "field 'quantity' expected an integer"),
        ({"quantity": True}, "field 'quantity' expected an integer"),
        ({"paid": 1}, "field 'paid' expected true or false"),
        ({"amount": float("nan")}, "NaN"),
        ({"status": "x" * 40}, "longer than 32"),
        ({"placed_at": "soon"}, "RFC 3339"),
        ({"meta": {"a": [1.0, float("nan")]}}, "field 'meta' is not JSON-serialisable"),
        ({"meta": {"at": datetime(2024, 1, 1)}}, "field 'meta' is not JSON-serialisable"),
    ],
)
def test_bad_documents_are_rejected_naming_the_field(
    config: Config, over: dict[str, object], expected: str
) -> None:
    with pytest.raises(MappingError) as info:
        row_from_document(config.entity("orders"), _doc(**over))
    assert expected in str(info.value)


def test_delete_event_is_a_tombstone_without_values(config: Config) -> None:
    orders = config.entity("orders")
    event = Event(
        event_id="e",
        entity="orders",
        op="delete",
        id="o-1",
        client_id="acme",
        version=9,
        occurred_at=datetime(2024, 1, 1, tzinfo=UTC),
    )
    row = row_from_event(orders, event)
    assert row.deleted and row.version == 9
    assert set(row.values.values()) == {None}


def test_event_for_another_entity_is_rejected(config: Config) -> None:
    event = Event(
        event_id="e",
        entity="customers",
        op="delete",
        id="c",
        client_id="acme",
        version=1,
        occurred_at=datetime(2024, 1, 1, tzinfo=UTC),
    )
    with pytest.raises(MappingError, match="is for 'customers', not 'orders'"):
        row_from_event(config.entity("orders"), event)


def test_canonical_comparison(config: Config) -> None:
    orders = config.entity("orders")
    base = row_from_document(orders, _doc())
    same = Row(
        base.key,
        base.client_id,
        base.version,
        False,
        {
            **base.values,
            "amount": 3.0 + 1e-12,  # float tolerance
            "placed_at": datetime(2024, 1, 1, 0, 0, 0, 400, tzinfo=UTC),  # below RethinkDB's ms
            "meta": {"a": 2, "b": 1.0},  # key order and 1 vs 1.0
        },
    )
    assert differing_fields(orders, base, same) == []
    other = Row(base.key, "globex", base.version, False, {**base.values, "status": "new"})
    assert differing_fields(orders, base, other) == ["client_id", "status"]
