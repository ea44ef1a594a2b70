"""Reading old documents: the export stream reader and partition planning.

The export reader must give every document exactly once, from any resume offset and
across any byte-range split, with flat memory; a corrupt document is handed over as
unreadable at its byte offset (and reading goes on), never a silent stop.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import backfill.sources as sources
from backfill.documents import Unreadable
from backfill.sources import DocStream, ExportSource, RethinkSource, SourceError, write_export
from core.config import Entity
from stores.rethink import RethinkStore


def _docs(n: int) -> list[dict[str, Any]]:
    texts = ["é", "plain", "日本語", "x" * 70, 'quote" and \\ backslash', "line\nbreak"]
    return [
        {
            "id": f"k{i:05d}",
            "client_id": f"c{i % 3}",
            "version": 1,
            "s": texts[i % 6],
            "n": i,
            "nested": {"a": [i, {"b": "]"}]},
        }
        for i in range(n)
    ]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 37 bytes: every document and many characters straddle a chunk edge."""
    monkeypatch.setattr(sources, "_CHUNK", 37)


def test_stream_reads_every_layout_completely(tmp_path: Path, tiny_chunks: None) -> None:
    docs = _docs(300)
    array = _write(
        tmp_path / "a.json",
        "\ufeff[\n" + ",\n".join(json.dumps(d, ensure_ascii=False) for d in docs) + "\n]\n",
    )
    lines = _write(tmp_path / "b.jsonl", "".join(json.dumps(d) + "\n" for d in docs))
    pretty = _write(tmp_path / "c.json", json.dumps(docs, indent=2, ensure_ascii=False))
    compact = _write(tmp_path / "d.json", json.dumps(docs, separators=(",", ":")))
    for path in (array, lines, pretty, compact):
        assert [d for d, _ in DocStream(path)] == docs, path.name


def _read_with_positions(path: Path) -> tuple[list[Any], list[int]]:
    """Every document, and the resume position after each; each start offset must
    point at its document's opening brace."""
    raw = path.read_bytes()
    stream = DocStream(path)
    seen, positions = [], []
    for doc, start in stream:
        assert raw[start : start + 1] == b"{"
        seen.append(doc)
        positions.append(stream.position)
    return seen, positions


def test_offsets_are_bytes_and_resume_anywhere(tmp_path: Path, tiny_chunks: None) -> None:
    docs = _docs(120)
    path = _write(
        tmp_path / "a.json",
        "[\n" + ",\n".join(json.dumps(d, ensure_ascii=False) for d in docs) + "\n]\n",
    )
    seen, positions = _read_with_positions(path)
    assert seen == docs
    for i in (0, 1, 59, 118, 119):  # resuming after document i gives exactly the rest
        assert [d for d, _ in DocStream(path, positions[i])] == docs[i + 1 :]


def test_byte_ranges_cover_every_document_exactly_once(
    tmp_path: Path, tiny_chunks: None, orders: Entity
) -> None:
    docs = _docs(500)
    source_dir = tmp_path / "export"
    path = write_export(source_dir, orders, docs)
    source = ExportSource(source_dir)
    source.partition_bytes = 2000  # many small partitions
    plan = source.plan(orders, None, workers=3, active_first=False)
    assert len(plan) > 10
    got = []
    for p in plan:
        assert p.spec["start"] < p.spec["end"]
        got += [d for d, _ in DocStream(path, p.spec["start"], p.spec["end"])]
    assert got == docs


def test_a_file_not_one_document_per_line_is_one_partition(tmp_path: Path, orders: Entity) -> None:
    folder = tmp_path / "export"
    (folder / orders.rethinkdb_db).mkdir(parents=True)
    _write(folder / orders.rethinkdb_db / "orders.json", json.dumps(_docs(200), indent=2))
    source = ExportSource(folder)
    source.partition_bytes = 1000
    assert len(source.plan(orders, None, workers=4, active_first=False)) == 1


def test_line_layout_hands_over_to_the_stream_where_it_stops(
    tmp_path: Path, tiny_chunks: None
) -> None:
    """One document per line is read line by line; from the first line that is not a
    whole document (here a pretty-printed one) the stream decoder reads the rest."""
    docs = _docs(40)
    lines = [json.dumps(d) for d in docs[:20]]
    lines.append(json.dumps(docs[20], indent=2))
    lines += [json.dumps(d) for d in docs[21:]]
    path = _write(tmp_path / "a.json", "[\n" + ",\n".join(lines) + "\n]\n")
    seen, positions = _read_with_positions(path)
    assert seen == docs
    for i in (5, 19, 20, 21, 38):
        assert [d for d, _ in DocStream(path, positions[i])] == docs[i + 1 :]


def test_values_parse_exactly_as_the_json_module_reads_them(tmp_path: Path) -> None:
    """Big integers stay integers, NaN stays NaN, escapes and lone surrogates survive."""
    texts = [
        '{"id": "a", "n": 123456789012345678901234567890, "m": -9223372036854775809}',
        '{"id": "b", "x": NaN, "y": 1e400}',
        '{"id": "c", "s": "\\ud800 \\u00e9 \\"q\\""}',
    ]
    path = _write(tmp_path / "a.jsonl", "\n".join(texts) + "\n")
    got = [d for d, _ in DocStream(path)]
    want = [json.loads(t) for t in texts]
    assert got[0] == want[0] and isinstance(got[0]["n"], int)
    assert got[1]["x"] != got[1]["x"] and got[1]["y"] == float("inf")
    assert got[2] == want[2]


def test_a_line_longer_than_the_limit_is_streamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "_LINE_LIMIT", 64)
    docs = _docs(30)
    path = _write(tmp_path / "a.json", "[\n" + ",\n".join(json.dumps(d) for d in docs) + "\n]\n")
    assert [d for d, _ in DocStream(path)] == docs


def test_corrupt_json_is_one_unreadable_document_at_its_offset(tmp_path: Path) -> None:
    """A garbled document, one that never closes, or a truncated file's last one is
    handed over as unreadable at its byte offset, with why; nothing is silently
    skipped, and the documents after it (on the next lines) are all read."""
    path = _write(tmp_path / "a.json", '[\n{"id": "a"},\n{"id": "b", oops},\n{"id": "c"}\n]\n')
    got = list(DocStream(path))
    assert [d for d, _ in got if isinstance(d, dict)] == [{"id": "a"}, {"id": "c"}]
    ((bad, at),) = [(d, at) for d, at in got if isinstance(d, Unreadable)]
    assert at == 15 and bad.where == "a.json@15" and "not valid JSON" in bad.reason
    unclosed = _write(tmp_path / "u.jsonl", '{"id": "a"}\n{"id": "b", "x": [1, 2\n{"id": "c"}\n')
    got = [d for d, _ in DocStream(unclosed)]
    assert got[0] == {"id": "a"} and isinstance(got[1], Unreadable) and got[2] == {"id": "c"}
    truncated = _write(tmp_path / "b.json", '[\n{"id": "a"},\n{"id": "b", "x": [1, 2')
    got = [d for d, _ in DocStream(truncated)]
    assert got[0] == {"id": "a"} and len(got) == 2
    assert isinstance(got[1], Unreadable) and "ends inside this document" in got[1].reason


@pytest.mark.parametrize("chunk", [37, 1 << 20])
def test_each_unreadable_line_is_one_document_and_its_neighbours_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """Lines that are not JSON, not UTF-8, nested 10,000 deep, never closed or not an
    object, between good documents, read with chunks smaller than a line and larger
    than the file: every good document comes out once, each bad line once, at its
    offset (bytes that are not UTF-8 come out as a document with lone surrogates)."""
    monkeypatch.setattr(sources, "_CHUNK", chunk)
    good = [
        json.dumps({"id": f"g{i}", "n": "é" * i}, ensure_ascii=False).encode() for i in range(7)
    ]
    bad = [
        b'{"id": "broken", oops}',
        b'{"id": "deep", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        b"not json at all",
        b'{"id": "unclosed", "x": [1, 2',
        b"[" * 10_000 + b"]" * 10_000,
    ]
    lines = [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3], bad[3], good[4]]
    lines += [bad[4], good[5], b'{"id": "bytes-\xff"}', good[6]]
    body, starts = b"[\n", []
    for line in lines:
        starts.append(len(body))
        body += line + b",\n"
    path = tmp_path / "a.json"
    path.write_bytes(body.removesuffix(b",\n") + b"\n]\n")
    got = list(DocStream(path))
    assert [at for _, at in got] == starts
    docs = [d for d, _ in got]
    assert [d for d in docs if isinstance(d, dict) and d["id"].startswith("g")] == [
        json.loads(g) for g in good
    ]
    assert [i for i, d in enumerate(docs) if isinstance(d, Unreadable)] == [1, 3, 5, 7, 9]
    assert "deep" in docs[3].reason and "deep" in docs[9].reason
    assert docs[11] == {"id": "bytes-\udcff"}


def test_export_times_become_datetimes(tmp_path: Path, orders: Entity) -> None:
    when = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    write_export(tmp_path, orders, [{"id": "a", "client_id": "c", "version": 1, "placed_at": when}])
    (doc,) = list(ExportSource(tmp_path).stream(orders))
    assert doc["placed_at"] == when


def test_missing_export_file_is_named(tmp_path: Path, orders: Entity) -> None:
    with pytest.raises(SourceError, match=r"orders\.json"):
        ExportSource(tmp_path).plan(orders, None, workers=1, active_first=False)


def test_live_plan_is_per_client_with_a_sweep_for_clientless_documents(
    rethink_store: RethinkStore, orders: Entity
) -> None:
    """Documents whose client is not a string are not in the client index: a sweep
    partition finds them, so they are reported as bad instead of being lost."""
    docs = [{"id": f"a{i}", "client_id": "acme", "version": 1} for i in range(5)]
    docs += [{"id": f"b{i}", "client_id": "busy", "version": 1} for i in range(9)]
    docs += [{"id": "odd", "client_id": 42, "version": 1}]
    rethink_store.insert_documents(orders, docs)
    source = RethinkSource(rethink_store)
    plan = source.plan(orders, None, workers=1, active_first=False)
    assert [p.part for p in plan] == ["client:acme", "client:busy", "sweep"]
    busy_first = source.plan(orders, None, workers=1, active_first=True)
    assert [p.client for p in busy_first][:2] == ["busy", "acme"]
    listed = source.plan(orders, ["acme", "busy"], workers=1, active_first=True, priority=["acme"])
    assert [(p.client, p.est_rows) for p in listed] == [("acme", 5), ("busy", 9)]
    reader = source.open(orders, {"kind": "sweep"}, None, None)
    batch = reader.next_batch(10)
    assert [d["id"] for d in batch.docs] == ["odd"] and batch.exhausted


def _ready_batches(source: ExportSource, entity: Entity, limit: int) -> list[tuple[Any, ...]]:
    """Every batch of every partition, as the backfill's producer prepares it."""
    from backfill.producer import InlineProducer
    from stores.sql.dialects import get_dialect
    from stores.sql.schema import entity_table
    from stores.sql.store import RowEncoder

    encoder = RowEncoder(get_dialect("postgresql"), entity, entity_table(entity))
    out = []
    for part in source.plan(entity, None, workers=2, active_first=False):
        producer = InlineProducer(source, encoder, limit)
        producer.open(part.spec, None, None)
        while True:
            b = producer.take()
            bad = [(x.ref, x.error) for x in b.bad]
            out.append((b.position, b.exhausted, b.read, b.rows.chunks, bad, b.counts, b.last_key))
            if b.exhausted:
                break
        producer.close()
    return out


def test_export_batches_read_a_block_at_a_time_equal_those_read_line_by_line(
    tmp_path: Path, orders: Entity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole batches decoded at once give the very batches (positions, rows, counts) the
    per-document path gives; a batch holding an odd line (a bad document, a TIME object
    in a JSON column, a blank line) falls back to that path and reports the same."""
    docs: list[Any] = []
    for i in range(120):
        doc: dict[str, Any] = {
            "id": f"k{i:04d}",
            "client_id": f"c{i % 4}",
            "version": 1 + i % 3,
            "status": "é" if i % 5 else "ok",
            "amount": i / 7,
            "quantity": i,
            "paid": i % 2 == 0,
            "placed_at": f"2024-05-0{1 + i % 9}T10:00:00.{i:06d}Z",
            "meta": {"tags": [str(i)], "n": i},
        }
        if i % 17 == 0:
            doc = {
                orders.key: doc["id"],
                orders.client: doc["client_id"],
                "version": 4,
                orders.deleted_marker: True,
            }
        docs.append(doc)
    docs[30].pop("version")  # bad: counted and reported with its key
    docs[61]["meta"] = {"$reql_type$": "TIME", "epoch_time": 1.5, "timezone": "+00:00"}
    lines = [json.dumps(d, ensure_ascii=i % 2 == 0) for i, d in enumerate(docs)]
    lines[90] = "\n" + lines[90]  # a blank line before a document
    export = tmp_path / "export"
    path = export / orders.rethinkdb_db / f"{orders.rethinkdb_table}.json"
    path.parent.mkdir(parents=True)
    _write(path, "[\n" + ",\n".join(lines) + "\n]\n")

    blocks: list[bool] = []
    block = sources._ExportReader._block

    def counted(self: Any, limit: int) -> Any:
        batch = block(self, limit)
        blocks.append(batch is not None)
        return batch

    monkeypatch.setattr(sources._ExportReader, "_block", counted)
    at_once = _ready_batches(ExportSource(export), orders, 9)
    assert sum(blocks) >= 8 and not all(blocks)  # most batches at once, the odd ones not
    monkeypatch.setattr(sources, "block_decoder", lambda entity: None)
    one_by_one = _ready_batches(ExportSource(export), orders, 9)
    assert at_once == one_by_one
    assert sum(b[2] for b in at_once) == len(docs)
    assert [ref for b in at_once for ref, _ in b[4]] == ["key:k0030", "key:k0061"]
