"""No document stops the backfill: each is copied, or reported as bad, and the run goes on.

Hostile documents (tests/hostile.py, the space the subscription worker's tests draw
from too) in an export and in the live RethinkDB stand-in: nesting to 10,000 levels,
lone surrogates, NUL, integers past 2**53, TIME objects in odd places, lines that are
not JSON or not UTF-8. Whatever one of them does while being read, decoded, mapped or
written, it alone becomes a bad document, named by its key (or its byte offset when it
has no readable key); every document the reference mapping takes is in the SQL store
exactly as the mapping gives it; the run completes.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from backfill_helpers import FAST, quiet
from hostile import as_bytes, document_texts, export_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backfill.documents import storable
from backfill.runner import Backfill, Summary
from backfill.sources import ExportSource, RethinkSource, decode
from backfill.verify import Verifier
from core.config import Entity
from stores.mapping import MappingError, Row, row_from_document, same_value
from stores.rethink import RethinkStore, r
from stores.sql import SqlStore

#: Two documents per batch: every run after its first batch reads a block at a time.
SMALL = replace(FAST, batch=2)
_examples = itertools.count()


def _expected(entity: Entity, text: bytes) -> Row | str:
    """The reference path's answer for one document's text: its row, or why not."""
    try:
        doc = decode(text, None)
    except ValueError as exc:
        return f"unreadable: {exc}"
    if not isinstance(doc, dict):
        return "not an object"
    try:
        return row_from_document(entity, doc)
    except MappingError as exc:
        return f"bad: {exc}"


def _same_row(entity: Entity, got: Row | None, want: Row) -> bool:
    return (
        got is not None
        and (got.client_id, got.version, got.deleted)
        == (want.client_id, want.version, want.deleted)
        and all(
            same_value(c, got.values.get(c.name), want.values.get(c.name)) for c in entity.columns
        )
    )


def _check(
    sql: SqlStore,
    entity: Entity,
    summary: Summary,
    expected: dict[str, tuple[Row | str, str]],
    unreadable_at: list[int],
) -> None:
    """Every document copied as the mapping gives it, or reported: by key, or by offset."""
    assert summary.complete, summary.lines()
    by_key = {b.key: b for b in summary.bad if b.key is not None}
    refs = {b.ref for b in summary.bad}
    storable_keys = [k for k in expected if storable(k) == k]  # others cannot even be asked for
    held = {row.key: row for row in sql.get_many(entity, storable_keys)}
    for key, (want, where) in expected.items():
        if isinstance(want, Row) and _same_row(entity, held.get(key), want):
            continue
        bad = by_key.get(storable(key))
        assert bad is not None, f"{where}: neither copied nor reported: {want!r:.300}"
        assert isinstance(want, str) or "the SQL store refused it" in bad.error, bad
        assert key not in held, f"{where}: reported as bad, yet in the SQL store"
    for at in unreadable_at:
        assert f"at:orders.json@{at}" in refs, (at, sorted(refs))


def _key(n: int, i: int, hostile: str) -> str:
    """A key unique to this example and document, keeping the drawn key's oddities."""
    return f"e{n}-{i:02d}-{hostile}"


@st.composite
def _export(draw: st.DrawFn) -> list[bytes]:
    """Export lines, hostile or valid, each document under a key of its own."""
    n = next(_examples)
    count = draw(st.integers(1, 7))
    kinds = [draw(st.sampled_from(["valid", "hostile"])) for _ in range(count)]
    lines = []
    for i, kind in enumerate(kinds):
        hostile = draw(st.sampled_from(["", "é", "\ud800", "\x00", "/%", "k" * 260]))
        key = _key(n, i, hostile)
        if kind == "valid":
            lines.append(as_bytes(_valid_text(key, draw(st.integers(1, 9)))))
        else:
            lines.append(draw(export_lines(key=key)))
    return lines


def _valid_text(key: str, version: int, client: str = "acme") -> str:
    doc = {"id": key, "client_id": client, "version": version, "status": "paid", "amount": 2.5}
    return json.dumps({**doc, "meta": {"tags": ["a"], "n": version}}, ensure_ascii=False)


def _write(folder: Path, lines: list[bytes]) -> list[int]:
    """An export with one line per document (as ``rethinkdb export`` writes it); the
    byte offset where each line starts."""
    path = folder / "orders.json"
    starts, at, body = [], 2, b"[\n"
    for i, line in enumerate(lines):
        starts.append(at)
        chunk = line + (b",\n" if i < len(lines) - 1 else b"\n")
        body += chunk
        at += len(chunk)
    path.write_bytes(body + b"]\n")
    return starts


def _key_in(line: bytes) -> str | None:
    """The key of a line's document when it has a readable one (bytes that are not
    UTF-8 are read as the export reader reads them: as lone surrogates)."""
    try:
        doc = json.loads(line.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return None
    key = doc.get("id") if isinstance(doc, dict) else None
    return key if isinstance(key, str) else None


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=_export())
def test_a_hostile_export_is_copied_or_reported_document_by_document(
    pg_store: SqlStore, orders: Entity, tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]
) -> None:
    """From an export, on PostgreSQL (the strictest stand-in): per document, per block
    and through the line decoder's fast path alike."""
    folder = tmp_path_factory.mktemp("export")
    starts = _write(folder, lines)
    summary = Backfill(pg_store, ExportSource(folder), orders, SMALL, progress=quiet).run()
    assert summary.read == len(lines)
    expected: dict[str, tuple[Row | str, str]] = {}
    unreadable: list[int] = []
    for line, at in zip(lines, starts, strict=True):
        key = _key_in(line)
        if key is None:
            unreadable.append(at)
        else:
            expected[key] = (_expected(orders, line), f"line at byte {at}")
    _check(pg_store, orders, summary, expected, unreadable)


def _insert(store: RethinkStore, entity: Entity, text: str) -> bool:
    """Insert a document from its JSON text (parsed by the server: any value JSON can
    spell gets in, lone surrogates and NUL included); False when the server refuses it."""
    try:
        with store.connection() as conn:
            result = store.table(entity).insert(r.json(text)).run(conn)
    except Exception:  # reqlite cannot take nesting some thousands deep
        return False
    return bool(result.get("inserted"))


def _held(store: RethinkStore, entity: Entity, key: str) -> bytes | None:
    """The document's JSON text as the old store holds it (None: it cannot serve it)."""
    try:
        with store.connection() as conn:
            text = store.table(entity).get(r.json(json.dumps(key))).to_json().run(conn)
    except Exception:
        return None
    return str(text).encode("utf-8", "backslashreplace")


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_hostile_live_store_is_copied_or_reported_document_by_document(
    pg_store: SqlStore, orders: Entity, rethink_store: RethinkStore, data: st.DataObject
) -> None:
    """From the live RethinkDB stand-in, one client at a time (each example a client
    of its own): what the old store holds is copied as the mapping gives it, or
    reported by key, however it is nested or spelled."""
    n = next(_examples)
    client = f"client-{n}"
    count = data.draw(st.integers(1, 6))
    expected: dict[str, tuple[Row | str, str]] = {}
    for i in range(count):
        hostile = data.draw(st.sampled_from(["", "\ud800", "\x00", "k" * 260]))
        key = _key(n, i, hostile)
        text = data.draw(
            st.one_of(document_texts(key=key, client=client), st.just(_valid_text(key, i, client)))
        )
        if not _insert(rethink_store, orders, as_bytes(text).decode()):
            continue
        held = _held(rethink_store, orders, key)
        want = _expected(orders, held) if held is not None else "the old store cannot serve it"
        expected[key] = (want, f"live document {key!r:.60}")
    source = RethinkSource(rethink_store)
    options = replace(SMALL, clients=(client,))
    summary = Backfill(pg_store, source, orders, options, progress=quiet).run()
    assert summary.read == len(expected)
    _check(pg_store, orders, summary, expected, [])


def test_the_worst_of_a_live_store(
    pg_store: SqlStore, orders: Entity, rethink_store: RethinkStore
) -> None:
    """Documents the driver cannot decode as a page (nested 5,000 deep: reqlite fails
    the whole page; a TIME object without its epoch: the driver fails it), keys and
    client ids the driver cannot even send (a lone surrogate), a NUL: each is one bad
    document with its key, every neighbour is copied, and verification reports them
    as bad in the old store and repairs nothing it should not."""
    good = [{"id": f"g{i}", "client_id": "acme", "version": 1, "status": "ok"} for i in range(6)]
    rethink_store.insert_documents(orders, good)
    texts = [
        '{"id": "g2-deep", "client_id": "acme", "version": 1, "meta": '
        + "[" * 5000
        + "]" * 5000
        + "}",
        '{"id": "g3-time", "client_id": "acme", "version": 1,'
        ' "placed_at": {"$reql_type$": "TIME", "timezone": "+00:00"}}',
        '{"id": "g4-\\ud800", "client_id": "acme", "version": 1}',
        '{"id": "g4-nul\\u0000", "client_id": "acme", "version": 1}',
        '{"id": "odd-client", "client_id": "bad\\ud800client", "version": 1}',
        '{"id": "g5-nested-time", "client_id": "acme", "version": 1,'
        ' "meta": {"at": {"$reql_type$": "TIME", "epoch_time": 5, "timezone": "+00:00"}}}',
    ]
    for text in texts:
        assert _insert(rethink_store, orders, text), text[:60]
    source = RethinkSource(rethink_store, page_size=3)
    summary = Backfill(pg_store, source, orders, SMALL, progress=quiet).run()
    assert summary.complete and summary.read == len(good) + len(texts)
    bad = {b.key: b.error for b in summary.bad}
    assert set(bad) == {"g2-deep", "g3-time", "g4-\\ud800", "g4-nul\\x00", "odd-client"}
    assert "cannot serve it" in bad["g2-deep"] or "deep" in bad["g2-deep"]
    assert "placed_at" in bad["g3-time"]
    held = {row.key for row in pg_store.scan(orders, None)}
    assert held == {d["id"] for d in good} | {"g5-nested-time"}  # a nested TIME stays JSON

    report = Verifier(pg_store, source, orders, recheck_delay_s=0, progress=quiet).run(
        repair=True, record=False
    )
    kinds = {d.key: d.kind for d in report.differences}
    assert kinds == {
        "g2-deep": "bad_in_old",
        "g3-time": "bad_in_old",
        "g4-\ud800": "bad_in_old",
        "g4-nul\x00": "bad_in_old",
        "odd-client": "bad_in_old",
    }
    assert not any(d.repaired for d in report.differences)
    assert {row.key for row in pg_store.scan(orders, None)} == held


def _narrow_status(sql: SqlStore, length: int) -> None:
    """The SQL table takes shorter statuses than the config says (a DBA's change)."""
    with sql.transaction() as cur:
        cur.execute(f'ALTER TABLE "orders" ALTER COLUMN "status" TYPE VARCHAR({length})')


def test_rows_the_server_refuses_are_bad_documents_and_the_rest_is_copied(
    pg_store: SqlStore, orders: Entity, export_of: Callable[..., ExportSource]
) -> None:
    """A write refused for its data (PostgreSQL: value too long, SQLSTATE 22001) costs
    only the refused rows: each is a bad document with the server's reason, the rest of
    its batch and every other batch is copied, and the run completes. Also a repair: the
    refused rows stay differences, with the reason; the others are repaired."""
    _narrow_status(pg_store, 5)
    docs: list[dict[str, Any]] = [
        {"id": f"k{i:03d}", "client_id": "acme", "version": 1, "status": "x" * (3 + i % 5)}
        for i in range(40)
    ]
    source = export_of(orders, docs)
    summary = Backfill(pg_store, source, orders, replace(FAST, batch=16), progress=quiet).run()
    refused = {d["id"] for d in docs if len(d["status"]) > 5}
    assert summary.complete and summary.read == len(docs)
    assert {b.key for b in summary.bad} == refused
    assert all("the SQL store refused it" in b.error for b in summary.bad)
    assert summary.applied == len(docs) - len(refused)
    held = {row.key for row in pg_store.scan(orders, None)}
    assert held == {d["id"] for d in docs} - refused

    # The same through verify --repair: an old store that moved on, the same refusals.
    newer = [{**d, "version": 2, "status": d["status"][:-1]} for d in docs]
    report = Verifier(
        pg_store, export_of(orders, newer), orders, recheck_delay_s=0, progress=quiet
    ).run(repair=True, record=False)
    still = {d.key for d in report.differences if not d.repaired}
    assert still == {d["id"] for d in newer if len(d["status"]) > 5}
    assert all("refused" in (d.repair_note or "") for d in report.differences if not d.repaired)
    versions = {row.key: row.version for row in pg_store.scan(orders, None)}
    assert all(versions[d["id"]] == 2 for d in newer if len(d["status"]) <= 5)
