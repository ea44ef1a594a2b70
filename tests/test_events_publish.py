"""`cutover events publish --file`: a file's lines are read as the worker reads bodies.

Lines end at b"\\n" only, so an event whose strings hold U+2028, U+2029, U+0085 (raw
in the file: the wire format does not escape them) is one event, never two broken
halves; a file that is not UTF-8 is refused with the line and the byte offset, and
nothing of it is published.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import pubsub
from core.eventfile import parse_lines
from core.events import Event, EventError, parse_event
from core.settings import Settings
from cutover.cli import cli
from cutover.services import ServiceInfo

ROOT = Path(__file__).resolve().parent.parent
# Every character str.splitlines() breaks on, besides "\n": a JSON string may hold
# each of them (the control ones escaped by the encoder, the others raw).
BREAKERS = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r\n"]
T0 = datetime(2024, 1, 1, tzinfo=UTC)
FAST = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

texts = st.lists(
    st.sampled_from(BREAKERS)
    | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=4),
    max_size=5,
).map("".join)
ids = texts.filter(bool)
values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    """A valid orders event whose strings (ids, keys, values) favour line breakers."""
    return Event(
        event_id=draw(ids),
        entity="orders",
        op=draw(st.sampled_from(["upsert", "delete"])),
        id=draw(ids),
        client_id=draw(ids),
        version=draw(st.integers(0, 2**53)),
        occurred_at=T0 + timedelta(seconds=draw(st.integers(0, 10**8))),
        data=draw(st.dictionaries(texts, values, max_size=4)),
    )


def jsonl(evs: list[Event], *, crlf: bool = False, blank: bool = False) -> bytes:
    """The file a producer would write: each event's wire body on its own line."""
    end = b"\r\n" if crlf else b"\n"
    lines = [e.to_json_bytes() + end + (b"\n" if blank else b"") for e in evs]
    return b"".join(lines)


@dataclass
class Cli:
    folder: Path
    topic: str

    def publish(self, data: bytes, *extra: str) -> tuple[int, str]:
        path = self.folder / "events.jsonl"
        path.write_bytes(data)
        args = ["events", "publish", "--file", str(path), "--topic", self.topic, *extra]
        result = CliRunner().invoke(cli, args)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        return result.exit_code, result.output


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`cutover events publish` from an empty folder; no Pub/Sub unless a test sets one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUTOVER_CONFIG_FILE", str(ROOT / "cutover.toml"))
    monkeypatch.setenv("CUTOVER_STATE_DIR", str(tmp_path / "state"))
    return Cli(tmp_path, f"publish-{uuid.uuid4().hex[:8]}")


@dataclass
class Reader:
    """A subscription on the test's topic that pulls what the CLI published."""

    client: Any
    path: str

    def drain(self, want: int) -> list[bytes]:
        """Pull and ack until ``want`` bodies arrived (or 10 empty pulls)."""
        bodies: list[bytes] = []
        empty = 0
        while len(bodies) < want and empty < 10:
            response = self.client.pull(subscription=self.path, max_messages=100, timeout=3)
            got = response.received_messages
            empty = 0 if got else empty + 1
            if got:
                bodies += [m.message.data for m in got]
                self.client.acknowledge(subscription=self.path, ack_ids=[m.ack_id for m in got])
        return bodies


@pytest.fixture
def reader(
    run: Cli, monkeypatch: pytest.MonkeyPatch, pubsub_server: ServiceInfo
) -> Iterator[Reader]:
    project = f"publish-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CUTOVER_PUBSUB_EMULATOR_HOST", pubsub_server.url)
    monkeypatch.setenv("CUTOVER_PUBSUB_PROJECT", project)
    s = Settings(_env_file=None, pubsub_emulator_host=pubsub_server.url, pubsub_project=project)
    pubsub.ensure_topic(s, run.topic)
    client = pubsub.subscriber(s)
    path = pubsub.subscription_path(s, "publish-read")
    client.create_subscription(
        name=path, topic=pubsub.topic_path(s, run.topic), ack_deadline_seconds=60
    )
    yield Reader(client, path)
    client.close()


@FAST
@given(evs=st.lists(events(), max_size=6), crlf=st.booleans(), blank=st.booleans())
def test_each_line_is_one_event_whatever_its_strings_hold(
    evs: list[Event], crlf: bool, blank: bool
) -> None:
    """Parsing the file gives back exactly the events written, in order: a line
    breaker inside a string stays in the string; CRLF ends and blank lines are ignored."""
    assert parse_lines(jsonl(evs, crlf=crlf, blank=blank), "f") == evs


@FAST
@given(evs=st.lists(events(), min_size=1, max_size=4))
def test_dry_run_counts_each_event_once(run: Cli, evs: list[Event]) -> None:
    code, out = run.publish(jsonl(evs), "--dry-run")
    assert code == 0, out
    assert out == f"{len(evs)} valid events; nothing published (dry run)\n"


_example = itertools.count()


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(evs=st.lists(events(), min_size=1, max_size=4))
def test_published_bodies_parse_to_the_same_events(
    run: Cli, reader: Reader, evs: list[Event]
) -> None:
    """Through a real Pub/Sub server: every event of the file arrives as one body that
    parses to the very same event (tagged per example, so no example sees another's)."""
    tag = f"x{next(_example)}:"
    evs = [e.model_copy(update={"event_id": tag + e.event_id}) for e in evs]
    code, out = run.publish(jsonl(evs))
    assert code == 0, out
    got = [parse_event(b) for b in reader.drain(len(evs))]
    mine = [e for e in got if e.event_id.startswith(tag)]
    assert sorted(mine, key=repr) == sorted(evs, key=repr)


@FAST
@given(
    evs=st.lists(events(), min_size=1, max_size=4),
    data=st.data(),
    bad=st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe2\x28\xa1"]),
)
def test_bad_bytes_are_reported_with_their_line_and_offset(
    evs: list[Event], data: st.DataObject, bad: bytes
) -> None:
    lines = [e.to_json_bytes() for e in evs]
    n = data.draw(st.integers(0, len(lines) - 1), label="line index")
    text = lines[n].decode()
    at = len(text[: data.draw(st.integers(0, len(text)), label="character")].encode())
    lines[n] = lines[n][:at] + bad + lines[n][at:]
    offset = sum(len(line) + 1 for line in lines[:n]) + at
    with pytest.raises(EventError) as info:
        parse_lines(b"\n".join(lines), "f.jsonl")
    assert str(info.value).startswith(f"f.jsonl:{n + 1}: not UTF-8: byte(s) ")
    assert f"at byte offset {offset} of the file (byte {at + 1} of the line)" in str(info.value)


def test_a_file_that_is_not_utf8_publishes_nothing(run: Cli, reader: Reader) -> None:
    """A Latin-1 line after a valid one: a one-line error, exit 2, and the valid line
    is not published either (the sentinel published next is the only body that arrives)."""
    good = {
        "event_id": "e-1",
        "entity": "orders",
        "op": "upsert",
        "id": "o-1",
        "client_id": "acme",
        "version": 1,
        "occurred_at": "2024-05-01T10:00:00Z",
        "data": {"status": "paid"},
    }
    first = json.dumps(good).encode() + b"\n"
    second = {**good, "event_id": "e-2", "data": {"status": "pay\u00e9"}}
    latin1 = json.dumps(second, ensure_ascii=False)
    code, out = run.publish(first + latin1.encode("latin-1") + b"\n")
    assert code == 2
    path = run.folder / "events.jsonl"
    at = latin1.index("\u00e9")
    assert out == (
        f"error: {path}:2: not UTF-8: byte(s) e9 at byte offset {len(first) + at} "
        f"of the file (byte {at + 1} of the line)\n"
    )
    invalid = json.dumps({**good, "event_id": "e-3", "version": -1}).encode()
    code, out = run.publish(first + b"\n" + invalid + b"\n")
    assert code == 2 and out.startswith(f"error: {path}:3: event does not meet the contract")
    code, out = run.publish(json.dumps({**good, "event_id": "sentinel"}).encode())
    assert code == 0, out
    assert [parse_event(b).event_id for b in reader.drain(1)] == ["sentinel"]
