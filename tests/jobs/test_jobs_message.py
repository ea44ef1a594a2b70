"""The job message: what a job worker accepts, and why it refuses the rest (no servers).

A valid job survives the trip to bytes and back unchanged; anything else a topic might
carry (hostile JSON text, other kinds and versions, unknown entities, odd client ids)
is refused with :class:`JobMessageError` and its reason, never another exception, so a
bad message costs one failure-log entry and nothing more.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hostile import as_bytes, garbage_bodies, json_texts, texts
from hypothesis import given
from hypothesis import strategies as st

from backfill.jobs import KIND, VERSION, Job, JobMessageError, parse_job, sweep_order
from core.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG: Config = load_config(ROOT / "cutover.toml")

_clients = st.text(min_size=1, max_size=255).filter(
    lambda c: "\x00" not in c and not any(0xD800 <= ord(ch) <= 0xDFFF for ch in c)
)
_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(
    entity=st.sampled_from(sorted(CONFIG.entities)),
    client=_clients,
    reason=st.sampled_from(["first-use", "sweep", "cli", "replay"]),
    at=_times,
)
def test_a_job_survives_the_trip_through_a_message(
    entity: str, client: str, reason: str, at: datetime
) -> None:
    job = Job(entity, client, reason, at)
    assert parse_job(job.to_bytes(), CONFIG) == job
    assert job.attributes == {"kind": KIND, "entity": entity, "client": client}


def _body(**fields: object) -> bytes:
    base: dict[str, object] = {
        "kind": KIND,
        "v": VERSION,
        "entity": "orders",
        "client": "acme",
        "reason": "cli",
        "enqueued_at": "2024-05-01T10:00:00Z",
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not a UTF-8 JSON job message"),
        (b"\xff\xfe", "not a UTF-8 JSON job message"),
        (b"[1, 2]", "a job message is a JSON object"),
        (_body(kind="cutover.event"), "not a job message"),
        (_body(v=2), "version 2 is not supported"),
        (_body(entity="nope"), "unknown entity 'nope'"),
        (_body(client=""), "client must be a string"),
        (_body(client="a\u0000b"), "client id holds a NUL"),
        (_body(client=7), "client must be a string"),
        (_body(enqueued_at="yesterday"), "enqueued_at is not an ISO 8601 time"),
        (_body(enqueued_at=...), "enqueued_at must be an ISO 8601 time"),
    ],
)
def test_a_bad_job_message_is_refused_with_its_reason(body: bytes, reason: str) -> None:
    with pytest.raises(JobMessageError, match=reason):
        parse_job(body, CONFIG)


def test_fields_a_reader_does_not_know_are_ignored_within_a_version() -> None:
    job = parse_job(_body(priority=3, note="later"), CONFIG)
    assert (job.entity, job.client) == ("orders", "acme")
    assert job.enqueued_at == datetime(2024, 5, 1, 10, tzinfo=UTC)


@given(body=st.one_of(garbage_bodies, json_texts().map(as_bytes), texts.map(as_bytes)))
def test_hostile_bodies_are_refused_or_parsed_never_crash(body: bytes) -> None:
    try:
        job = parse_job(body, CONFIG)
    except JobMessageError:
        return
    assert job.entity in CONFIG.entities  # only a real job message gets through


@given(
    sizes=st.dictionaries(st.text(min_size=1, max_size=4), st.integers(0, 50), max_size=12),
    first=st.lists(st.text(min_size=1, max_size=4), max_size=5),
)
def test_the_sweep_order_puts_the_listed_first_then_the_busiest(
    sizes: dict[str, int], first: list[str]
) -> None:
    order = sweep_order(sizes, first=first, counts=sizes)
    assert sorted(order) == sorted(sizes)  # every candidate once, nothing else
    head = [c for c in dict.fromkeys(first) if c in sizes]
    assert order[: len(head)] == head
    rest = order[len(head) :]
    assert [sizes[c] for c in rest] == sorted((sizes[c] for c in rest), reverse=True)


def test_an_enqueued_at_without_offset_is_utc() -> None:
    job = parse_job(_body(enqueued_at="2024-05-01T10:00:00"), CONFIG)
    assert job.enqueued_at.utcoffset() == timedelta(0)
