"""The event contract: valid events round-trip; malformed ones say exactly why."""

from __future__ import annotations

import json

import pytest

from core.events import Event, EventError, event_schema, parse_event

VALID = {
    "event_id": "e-1",
    "entity": "orders",
    "op": "upsert",
    "id": "o-1",
    "client_id": "acme",
    "version": 3,
    "occurred_at": "2024-05-01T10:00:00.123Z",
    "data": {"status": "paid"},
}


def test_valid_event_round_trips() -> None:
    event = parse_event(json.dumps(VALID).encode())
    assert event.ordering_key == "orders:o-1"
    assert event.attributes == {"entity": "orders", "client_id": "acme", "op": "upsert"}
    assert parse_event(event.to_json_bytes()) == event


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (json.dumps({**VALID, "version": "3"}).encode(), "version"),
        (json.dumps({**VALID, "version": -1}).encode(), "version"),
        (json.dumps({**VALID, "version": True}).encode(), "version"),
        (json.dumps({**VALID, "op": "merge"}).encode(), "op"),
        (json.dumps({**VALID, "occurred_at": "yesterday"}).encode(), "RFC 3339"),
        (json.dumps({**VALID, "occurred_at": "2024-05-01T10:00:00"}).encode(), "UTC offset"),
        (json.dumps({k: v for k, v in VALID.items() if k != "client_id"}).encode(), "client_id"),
        (json.dumps({**VALID, "surprise": 1}).encode(), "surprise"),
        (json.dumps({**VALID, "data": [1]}).encode(), "data"),
    ],
)
def test_malformed_events_are_rejected_with_the_reason(raw: bytes, expected: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(raw)
    assert expected in str(info.value)


def test_schema_describes_every_field() -> None:
    schema = event_schema()
    assert set(schema["required"]) >= {"event_id", "entity", "op", "id", "client_id", "version"}
    assert schema["properties"]["occurred_at"]["format"] == "date-time"
    assert Event.model_fields.keys() == schema["properties"].keys()
