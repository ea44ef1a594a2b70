"""Where old documents come from: a live RethinkDB, or a ``rethinkdb export`` folder.

Both sources serve two readers:

* the backfill, which plans *partitions* (units of work with a lease and a
  checkpoint) and reads each partition batch by batch from a resumable position;
* verification, which scans documents in key order (to merge with the SQL store's
  key-ordered scan), fetches documents by key, and samples keys.

Live RethinkDB is partitioned per client (paged through the ``[client, key]`` index),
so a busy client can be finished, verified and cut over early. Documents whose client
field is missing or not a string are not in that index: they get one extra *sweep*
partition that finds them by primary key, so they are reported rather than lost.

An export folder holds ``<db>/<table>.json`` (a JSON array, one document per line as
``rethinkdb export`` writes it, in primary-key order) or ``.jsonl``/``.ndjson``. It
is streamed with ``json.JSONDecoder.raw_decode`` over fixed-size chunks, so memory
does not grow with the file; the checkpoint is a byte offset. A file with one
document per line is split into byte ranges for ``--workers``; any other layout is
read as a single partition.

Whatever one document holds, it is handed over on its own: a live document comes
back as its own JSON text (``to_json``, so no driver conversion or recursion can fail
a page) and is decoded here; an export line that cannot be decoded (not JSON, nested
past the parser's reach, not UTF-8) becomes an :class:`~backfill.documents.Unreadable`
at its byte offset, and reading goes on at the next line. So one document costs at
most its own bad-document record, never its batch or the run.
"""

from __future__ import annotations

import codecs
import hashlib
import heapq
import itertools
import json
import os
import random
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.config import Entity
from core.limits import MAX_CLIENT_ID_CHARS, LimitError, check_text
from stores import jsontext
from stores.mapping import Row

from .documents import Unreadable
from .line_decoder import LineDecoder, block_decoder, line_decoder

if TYPE_CHECKING:  # the driver is imported where it is used: an export needs none of it
    from stores.rethink import RethinkStore


class SourceError(RuntimeError):
    """The source cannot be read as asked (missing file, corrupt JSON, wrong order)."""


@dataclass(frozen=True)
class PlannedPartition:
    """A unit of work as planned: ``part`` names it within its run."""

    part: str
    spec: dict[str, Any]
    client: str | None = None
    est_rows: int = 0


@dataclass
class Batch:
    """Documents read from one partition, and where to resume after them."""

    docs: list[Any]
    position: str | None
    exhausted: bool
    #: Where document ``i`` of this batch came from, for bad-document records.
    locate: Callable[[int], str] = field(default=lambda i: f"#{i}")
    #: Documents read but skipped because their client is not selected.
    skipped: int = 0
    #: Instead of ``docs``: every document already mapped, as the values lists of
    #: :func:`~backfill.line_decoder.block_decoder` (an export read a block at a time).
    values: list[list[Any]] | None = None


class Reader(Protocol):
    def next_batch(self, limit: int) -> Batch: ...

    def close(self) -> None: ...


class Source(Protocol):
    """What the backfill and verification need from the old store."""

    def describe(self) -> dict[str, Any]:
        """What is read, for the run record and reports (never a secret)."""
        ...

    def identity(self, entity: Entity) -> str:
        """A name for the data read, equal on every machine reading the same data."""
        ...

    def plan(
        self,
        entity: Entity,
        clients: Sequence[str] | None,
        *,
        workers: int,
        active_first: bool,
        priority: Sequence[str] = (),
    ) -> list[PlannedPartition]: ...

    def open(
        self,
        entity: Entity,
        spec: dict[str, Any],
        position: str | None,
        clients: frozenset[str] | None,
    ) -> Reader: ...

    def scan(self, entity: Entity, client: str | None) -> Iterator[Any]:
        """Documents in key order (one client's, or all)."""
        ...

    def get_many(self, entity: Entity, keys: Sequence[Any]) -> list[Any]: ...

    def clients(self, entity: Entity) -> list[str]: ...

    def sample_keys(self, entity: Entity, client: str, n: int, seed: int) -> list[Any]: ...


def order_clients(
    counts: dict[str, int], *, active_first: bool, priority: Sequence[str] = ()
) -> list[str]:
    """Claim order: listed clients first (in list order), then busiest first or by id."""
    rank = {c: i for i, c in enumerate(priority)}
    return sorted(
        counts,
        key=lambda c: (rank.get(c, len(rank)), -counts[c] if active_first else 0, c),
    )


# -- live RethinkDB ---------------------------------------------------------------------
class RethinkSource:
    """A live RethinkDB through :class:`~stores.rethink.RethinkStore`, paged by key.

    Documents are fetched as their own JSON text (``[key, doc.to_json()]`` pairs) and
    decoded here exactly as an export's lines are (the fast path, else the reference
    path; TIME objects at the top level become datetimes, anything deeper stays as the
    server wrote it), so a live copy and an export copy of the same data map alike, and
    no document can fail the driver's decoding of a whole page (a TIME object without
    its epoch, nesting past Python's recursion limit). When the server cannot serve a
    page at all (reqlite fails on a document nested a few thousand levels deep), the
    page's keys are read and its documents fetched one by one: each one that still
    fails becomes an :class:`~backfill.documents.Unreadable` with its key.

    Every value taken from the data into a query (a key, a client id) is sent as JSON
    text (``r.json``): a key holding a lone surrogate, which the driver cannot encode,
    is still a bound the server understands.
    """

    def __init__(self, store: RethinkStore, *, page_size: int = 1000) -> None:
        self.store = store
        self.page_size = page_size

    def describe(self) -> dict[str, Any]:
        return {"kind": "rethinkdb", "server": repr(self.store)}

    def identity(self, entity: Entity) -> str:
        return f"rethinkdb:{entity.rethinkdb_db}.{entity.rethinkdb_table}"

    def plan(
        self,
        entity: Entity,
        clients: Sequence[str] | None,
        *,
        workers: int,
        active_first: bool,
        priority: Sequence[str] = (),
    ) -> list[PlannedPartition]:
        if clients is not None:
            counts = {c: self.store.count(entity, c) for c in clients}
            strays = 0
        else:
            groups = self.store.count_per_client(entity)
            counts = {c: int(n) for c, n in groups.items() if isinstance(c, str) and c}
            strays = sum(int(n) for c, n in groups.items() if not (isinstance(c, str) and c))
        plan = [
            _client_partition(c, counts[c])
            for c in order_clients(counts, active_first=active_first, priority=priority)
        ]
        if strays:
            plan.append(PlannedPartition("sweep", {"kind": "sweep"}, None, strays))
        return plan

    def open(
        self,
        entity: Entity,
        spec: dict[str, Any],
        position: str | None,
        clients: frozenset[str] | None,
    ) -> Reader:
        after = json.loads(position) if position is not None else None
        if spec["kind"] == "client":
            client = spec["client"] if "client" in spec else json.loads(spec["client_json"])
            return _RethinkReader(self, entity, client, after)
        if spec["kind"] == "sweep":
            return _RethinkReader(self, entity, None, after, sweep=True)
        raise SourceError(f"a RethinkDB source cannot read a {spec['kind']!r} partition")

    def scan(self, entity: Entity, client: str | None) -> Iterator[Any]:
        """Documents (never rows: verification maps them itself) in key order."""
        reader = _RethinkReader(self, entity, client, None, fast=False)
        while True:
            batch = reader.next_batch(self.page_size)
            yield from batch.docs
            if batch.exhausted:
                return

    def get_many(self, entity: Entity, keys: Sequence[Any]) -> list[Any]:
        from stores.rethink import r

        table = self.store.table(entity)
        found: list[Any] = []
        for start in range(0, len(keys), 1000):
            query = table.get_all(r.args(_as_json(list(keys[start : start + 1000]))))
            found.extend(doc for _, doc in self.documents(entity, query, None))
        return found

    def clients(self, entity: Entity) -> list[str]:
        return sorted(c for c in self.store.count_per_client(entity) if isinstance(c, str) and c)

    def sample_keys(self, entity: Entity, client: str, n: int, seed: int) -> list[Any]:
        from stores.rethink import r

        c = _as_json(client)
        query = (
            self.store.table(entity)
            .between([c, r.minval], [c, r.maxval], index=entity.client_index)
            .get_field(entity.key)
            .sample(int(n))
        )
        with self.store.connection() as conn:
            keys = list(query.run(conn, **_RAW))
        # reqlite wraps each sampled value in a list; RethinkDB does not.
        return [k[0] if isinstance(k, list) and len(k) == 1 else k for k in keys]

    # -- reading ------------------------------------------------------------------------
    def page_query(
        self, entity: Entity, client: str | None, after: Any, limit: int, *, sweep: bool = False
    ) -> Any:
        """The next ``limit`` documents after ``after``: one client's (by the client
        index), or all (by primary key), or the sweep's (client missing or not a string)."""
        from stores.rethink import r

        table = self.store.table(entity)
        bound = "closed" if after is None else "open"
        if client is None:
            lower = r.minval if after is None else _as_json(after)
            query = table.between(lower, r.maxval, left_bound=bound).order_by(index=entity.key)
            if sweep:
                field = entity.client
                query = query.filter(
                    lambda d: d.has_fields(field).not_() | d[field].type_of().ne("STRING")
                )
        else:
            c = _as_json(client)
            lower = [c, r.minval] if after is None else [c, _as_json(after)]
            query = table.between(
                lower, [c, r.maxval], index=entity.client_index, left_bound=bound
            ).order_by(index=entity.client_index)
        return query.limit(int(limit))

    def documents(
        self, entity: Entity, query: Any, decode_row: LineDecoder | None
    ) -> list[tuple[Any, Any]]:
        """``(key, document)`` for each document ``query`` selects, in its order.

        A document is a :class:`Row` when ``decode_row`` maps it, else what its JSON
        text decodes to, or an :class:`Unreadable`. Only a store failure (connection,
        timeout: :class:`~stores.rethink.RethinkUnavailable`) is raised.
        """
        from stores.rethink import RethinkUnavailable

        key = entity.key
        try:
            with self.store.connection() as conn:
                pairs = list(query.map(lambda d: [d[key], d.to_json()]).run(conn, **_RAW))
        except RethinkUnavailable:
            raise
        except Exception:  # one document the server or the driver cannot serve
            pairs = self._one_by_one(entity, query)
        return [(k, _decoded(text, decode_row, k)) for k, text in pairs]

    def _one_by_one(self, entity: Entity, query: Any) -> list[tuple[Any, Any]]:
        """The query's keys, then each document on its own: the page that failed."""
        from stores.rethink import RethinkUnavailable

        with self.store.connection() as conn:
            keys = list(query.get_field(entity.key).run(conn, **_RAW))
        table = self.store.table(entity)
        pairs: list[tuple[Any, Any]] = []
        for k in keys:
            try:
                with self.store.connection() as conn:
                    pairs.append((k, table.get(_as_json(k)).to_json().run(conn)))
            except RethinkUnavailable:
                raise
            except Exception as exc:
                reason = f"the old store cannot serve it ({type(exc).__name__}: {exc})"
                pairs.append((k, Unreadable(reason[:300], f"key {_shown(k)}", k)))
        return pairs


#: Driver options for every page: pseudo-types (TIME, BINARY) stay as the server sends
#: them, so decoding a key or a bound never fails on one.
_RAW = {"time_format": "raw", "binary_format": "raw"}


def _as_json(value: Any) -> Any:
    """A value from the data as a query term: its JSON text, parsed by the server."""
    from stores.rethink import r

    return r.json(json.dumps(value))


def _shown(value: Any) -> str:
    return json.dumps(value, default=repr)


def _decoded(text: Any, decode_row: LineDecoder | None, key: Any) -> Any:
    """A live document's JSON text decoded as an export line is (see :func:`decode`)."""
    if isinstance(text, Unreadable):
        return text
    if not isinstance(text, str):
        reason = f"the old store sent {type(text).__name__}, not JSON text"
        return Unreadable(reason, f"key {_shown(key)}", key)
    try:
        return decode(text.encode("utf-8", "backslashreplace"), decode_row)
    except ValueError as exc:
        return Unreadable(f"not a JSON document ({exc})"[:300], f"key {_shown(key)}", key)


def _client_partition(client: str, est_rows: int) -> PlannedPartition:
    """One client's partition, named by its id when every store can keep that id.

    Any other id (a NUL, a lone surrogate, longer than the client column) is carried as
    JSON text and the partition is named by a digest: its documents are still read
    and each is reported (the mapping refuses such an id), and nothing about it has to
    fit a bookkeeping column.
    """
    if len(client) <= MAX_CLIENT_ID_CHARS:
        try:
            check_text(client)
            return PlannedPartition(
                f"client:{client}", {"kind": "client", "client": client}, client, est_rows
            )
        except LimitError:
            pass
    text = json.dumps(client)
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    return PlannedPartition(
        f"client#{digest}", {"kind": "client", "client_json": text}, None, est_rows
    )


class _RethinkReader:
    """One client's documents via the client index, all of them by primary key, or the
    sweep of client-less ones; ``fast=False`` hands over documents, never rows."""

    def __init__(
        self,
        source: RethinkSource,
        entity: Entity,
        client: str | None,
        after: Any,
        *,
        sweep: bool = False,
        fast: bool = True,
    ) -> None:
        self.source, self.entity, self.client, self.after = source, entity, client, after
        self.sweep = sweep
        self._decode_row = line_decoder(entity) if fast else None

    def next_batch(self, limit: int) -> Batch:
        query = self.source.page_query(
            self.entity, self.client, self.after, limit, sweep=self.sweep
        )
        pairs = self.source.documents(self.entity, query, self._decode_row)
        previous = self.after
        if pairs:
            self.after = pairs[-1][0]
        keys = [k for k, _ in pairs]

        def locate(i: int) -> str:
            return f"key {_shown(keys[i])} (after {_shown(previous)})"

        return Batch(
            [doc for _, doc in pairs],
            json.dumps(self.after) if self.after is not None else None,
            exhausted=len(pairs) < limit,
            locate=locate,
        )

    def close(self) -> None:
        return None


# -- rethinkdb export folder ----------------------------------------------------------------
_SEPARATORS = re.compile(r"[\s,]*")  # always matches (possibly empty)
_CHUNK = 1 << 20
_MAX_DOC = 256 << 20  # larger than RethinkDB's own document limit
_EXTENSIONS = (".json", ".jsonl", ".ndjson")
_TIME = b'"$reql_type$"'
_LINE_LIMIT = 16 << 20


def _match_end(text: str, pos: int) -> int:
    """Where the separators (whitespace, commas) starting at ``pos`` end."""
    found = _SEPARATORS.match(text, pos)
    return found.end() if found is not None else pos


def native(doc: Any) -> Any:
    """Turn ``$reql_type$: TIME`` values (export's raw time format) into datetimes.

    Only top-level fields are converted: those are the mapped columns. A TIME nested
    inside a JSON column stays as the raw object the export wrote, and so does a TIME
    without a usable ``epoch_time``: the mapping then names the field it is in.
    """
    if type(doc) is dict:
        for name, value in doc.items():
            if type(value) is dict and value.get("$reql_type$") == "TIME":
                with suppress(KeyError, TypeError, ValueError, OverflowError, OSError):
                    doc[name] = datetime.fromtimestamp(float(value["epoch_time"]), tz=UTC)
    return doc


def decode(text: bytes, decode_row: LineDecoder | None) -> Any:
    """One document's JSON text: its :class:`Row` when the fast path ``decode_row`` maps
    it, else the parsed document (TIME objects at its top level as datetimes).

    Raises ValueError for text that is not JSON (nested too deeply to parse included).
    """
    if decode_row is not None and (row := decode_row(text)) is not None:
        return row
    doc = jsontext.loads(text)
    if _TIME in text or b"\\u" in text:  # a TIME value, perhaps spelled with escapes
        doc = native(doc)
    return doc


def _line_end(text: str, pos: int) -> int | None:
    """Just past the line break at or after ``pos``; None when ``text`` ends first."""
    found = text.find("\n", pos)
    return found + 1 if found >= 0 else None


class DocStream:
    """Documents of a JSON-array or JSON-lines file from a byte offset, with offsets.

    Iterating yields ``(document, start_byte)``; after each document ``position`` is
    the byte offset past it (and its separator), which is where a resumed reader
    seeks to. With ``end`` set, documents starting at or after ``end`` are left to the
    next range.

    The layout ``rethinkdb export`` writes, one document per line, is read line by
    line and parsed with :func:`stores.jsontext.loads` (several times faster). From
    the first line that is not one whole document (a pretty-printed file, say), the
    rest is decoded as a character stream, which accepts any JSON-array layout.

    With ``decode_row`` (the backfill's :func:`~backfill.line_decoder.line_decoder`),
    a line it can map comes out as a :class:`~stores.mapping.Row` instead of a
    document; the other lines come out as documents, as without it.

    A document that cannot be decoded (not JSON, nested too deeply to parse, a file
    that ends inside it) comes out as an :class:`Unreadable` at its offset, and
    reading goes on at the next line, so a bad line never takes the next line's
    document with it. Bytes that are not UTF-8 are read as lone surrogates, which the
    mapping then refuses (the document is reported by its key).
    """

    def __init__(
        self,
        path: Path,
        start: int = 0,
        end: int | None = None,
        *,
        decode_row: LineDecoder | None = None,
    ) -> None:
        self.path, self.start, self.end = path, start, end
        self.position = start
        self._decoder = json.JSONDecoder()
        self._decode_row = decode_row

    def __iter__(self) -> Generator[tuple[Any, int], None, None]:
        at: int | None = self.start
        while at is not None:
            resume = yield from self._lines(at)
            if resume is None:
                return
            at = yield from self._stream(resume)

    def _lines(self, start: int) -> Generator[tuple[Any, int], None, int | None]:
        """One document per line; returns where the line layout stopped, if it did."""
        end = self.end
        decode_row = self._decode_row
        with open(self.path, "rb") as fh:
            fh.seek(start)
            at = start
            while line := fh.readline(_LINE_LIMIT):
                if len(line) == _LINE_LIMIT and not line.endswith(b"\n"):
                    return at  # a very long line: the chunked stream keeps memory flat
                begin, at = at, at + len(line)
                text = line.strip()
                if begin == 0:
                    if text.startswith(b"\xef\xbb\xbf"):
                        text = text[3:].lstrip()
                    if text.startswith(b"["):
                        text = text[1:].lstrip()
                if text.endswith(b","):
                    text = text[:-1].rstrip()
                if not text:
                    self.position = at
                    continue
                if text == b"]":
                    return None
                if end is not None and begin >= end:
                    return None
                if not text.startswith(b"{") or not text.endswith(b"}"):
                    return begin  # not one whole object on this line
                try:
                    doc = decode(text, decode_row)
                except ValueError:
                    return begin  # an object spread over lines, or corrupt: let _stream say
                self.position = at
                yield doc, begin + line.index(b"{")
        return None

    def _stream(self, start: int) -> Generator[tuple[Any, int], None, int | None]:
        """Any layout: ``raw_decode`` over fixed-size chunks of text from ``start``.

        Returns None at the end, or, after an unreadable document followed by a line
        that looks like one whole document, that line's offset: the line layout
        goes on from there."""
        raw_decode = self._decoder.raw_decode
        skip = _match_end
        utf8 = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        # buf holds decoded text from byte offset `base`; (mark_p, mark_b) caches the
        # byte offset of one text position so offsets cost O(1) per document.
        buf, base, eof, ascii_buf = "", start, False, True
        mark_p, mark_b = 0, start

        def offset(pos: int) -> int:
            nonlocal mark_p, mark_b
            if ascii_buf:
                return base + pos
            mark_b += len(buf[mark_p:pos].encode("utf-8", "surrogateescape"))
            mark_p = pos
            return mark_b

        with open(self.path, "rb") as fh:
            fh.seek(start)

            def refill(keep: int) -> int:
                """Drop text before ``keep``, append the next chunk; returns the new 0."""
                nonlocal buf, base, eof, ascii_buf, mark_p, mark_b
                base = offset(keep)
                buf = buf[keep:]
                mark_p, mark_b = 0, base
                data = fh.read(_CHUNK)
                eof = not data
                buf += utf8.decode(data, final=eof)
                ascii_buf = buf.isascii()
                return 0

            p = refill(0)
            if start == 0:
                p = skip(buf, 1 if buf.startswith("\ufeff") else 0)
                if buf.startswith("[", p):
                    p += 1
            while True:
                p = skip(buf, p)
                if p >= len(buf):
                    if eof:
                        return None
                    p = refill(p)
                    continue
                if buf[p] == "]":
                    return None
                begin = offset(p)
                if self.end is not None and begin >= self.end:
                    return None
                try:
                    doc, q = raw_decode(buf, p)
                except (json.JSONDecodeError, RecursionError) as exc:
                    end, why = _unreadable_extent(buf, p, exc, eof)
                    if end is None:  # it may go on in the next chunk: read more first
                        if len(buf) - p > _MAX_DOC:
                            raise SourceError(
                                f"{self.path}: document at byte {begin} is invalid or too large"
                            ) from None
                        p = refill(p)
                        continue
                    if isinstance(exc, json.JSONDecodeError) and why == "invalid":
                        at = f" at byte {offset(exc.pos)}" if exc.pos < end else ""
                        why = f"not valid JSON: {exc.msg}{at}"
                    p = end
                    self.position = offset(end)
                    yield Unreadable(why, f"{self.path.name}@{begin}"), begin
                    if _whole_object_line(buf, end):
                        return self.position
                    continue
                if q >= len(buf) and not eof:
                    p = refill(p)  # a value may go on in the next chunk: decode it again
                    continue
                p = q
                self.position = offset(q)
                yield native(doc), begin


def _unreadable_extent(
    text: str, pos: int, exc: json.JSONDecodeError | RecursionError, eof: bool
) -> tuple[int | None, str]:
    """How far the document at ``pos`` that failed to decode with ``exc`` goes, and
    why it is unreadable ("invalid": the caller names the error and its byte).

    It goes to the end of its first line, so a document that is not JSON never takes
    the next line's document with it (in the one-document-per-line layout every
    export has, that is the whole document). None for the end when the text may go on
    past ``text`` (read more, then decide): a value cut by the end of the chunk fails
    to decode just as a corrupt one does. A failure past the end of its line, when the
    next line is a document of its own, is that line's: nothing more is read for it.
    """
    end = _line_end(text, pos)
    unclosed = "not valid JSON: it does not close on its line"
    beyond = isinstance(exc, json.JSONDecodeError) and end is not None and exc.pos >= end
    if beyond and end is not None and _whole_object_line(text, end):
        return end, unclosed
    cut = isinstance(exc, json.JSONDecodeError) and (
        exc.msg.startswith("Unterminated string") or exc.pos >= len(text) - 6
    )
    if (cut or end is None) and not eof:
        return None, ""
    end = end or len(text)
    if isinstance(exc, RecursionError):
        return end, "nested too deeply to decode"
    if cut and text[end:].strip() in ("", "]"):
        return end, "the file ends inside this document (a truncated export?)"
    return end, unclosed if cut else "invalid"


def _whole_object_line(text: str, pos: int) -> bool:
    """Whether the line starting at ``pos`` looks like one whole document."""
    end = _line_end(text, pos)
    line = text[pos:end].strip().removesuffix(",").rstrip()
    return end is not None and line.startswith("{") and line.endswith("}")


def find_table_file(folder: Path, entity: Entity) -> Path:
    """``<folder>/<db>/<table>.json`` (or .jsonl/.ndjson), or ``<folder>/<table>.json``."""
    candidates = [
        folder / entity.rethinkdb_db / f"{entity.rethinkdb_table}{ext}" for ext in _EXTENSIONS
    ] + [folder / f"{entity.rethinkdb_table}{ext}" for ext in _EXTENSIONS]
    for path in candidates:
        if path.is_file():
            return path
    raise SourceError(
        f"no export file for {entity.name}: looked for {entity.rethinkdb_db}/"
        f"{entity.rethinkdb_table}.json (or .jsonl/.ndjson) under {folder}"
    )


def _line_is_document(line: bytes) -> bool:
    """Whether a line is one document of the one-document-per-line layout (or its
    array's bracket): shaped like one whole object. Its text is not judged: one bad
    document on its own line does not change the layout, and no line of an object
    spread over lines both starts with its "{" and ends with its "}"."""
    text = line.strip().rstrip(b",").strip()
    return text in (b"", b"[", b"]") or (text.startswith(b"{") and text.endswith(b"}"))


class ExportSource:
    """A ``rethinkdb export`` folder: streamed, byte-range partitioned, resumable."""

    #: A partition of about this many bytes; more for ``--workers`` when smaller.
    partition_bytes = 16 << 20
    #: How much of the file's start is checked for the one-document-per-line layout.
    probe_bytes = 1 << 20

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"export folder {self.folder} does not exist")

    def describe(self) -> dict[str, Any]:
        return {"kind": "export", "folder": str(self.folder)}

    def identity(self, entity: Entity) -> str:
        """Name, size and a digest of both ends: equal for copies of one export on
        several machines, different for a new export of the same table."""
        path = find_table_file(self.folder, entity)
        size = path.stat().st_size
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            digest.update(fh.read(1 << 16))
            fh.seek(max(0, size - (1 << 16)))
            digest.update(fh.read(1 << 16))
        return f"export:{entity.rethinkdb_db}/{path.name}:{size}:{digest.hexdigest()[:16]}"

    # -- backfill ---------------------------------------------------------------------
    def plan(
        self,
        entity: Entity,
        clients: Sequence[str] | None,
        *,
        workers: int,
        active_first: bool,
        priority: Sequence[str] = (),
    ) -> list[PlannedPartition]:
        path = find_table_file(self.folder, entity)
        size = path.stat().st_size
        per_line, bytes_per_doc = self._probe(path)
        wanted = max(workers, -(-size // self.partition_bytes)) if per_line else 1
        cuts = sorted({0, *(self._align(path, size * i // wanted) for i in range(1, wanted)), size})
        if per_line and not all(self._boundary_ok(path, c, size) for c in cuts[1:-1]):
            cuts = [0, size]
        plan = []
        for start, end in itertools.pairwise(cuts):
            if end > start:
                est = int((end - start) / bytes_per_doc) if bytes_per_doc else 0
                spec = {"kind": "bytes", "file": path.name, "start": start, "end": end}
                plan.append(PlannedPartition(f"bytes:{start:015d}", spec, None, est))
        return plan or [
            PlannedPartition(
                "bytes:0", {"kind": "bytes", "file": path.name, "start": 0, "end": size}, None, 0
            )
        ]

    def _probe(self, path: Path) -> tuple[bool, float]:
        """Whether the file has one document per line, and the average bytes per doc."""
        with open(path, "rb") as fh:
            head = fh.read(self.probe_bytes)
            complete = fh.read(1) == b""
        lines = head.split(b"\n")
        if not complete:
            lines = lines[:-1]  # the last one may be cut
        docs = [ln for ln in lines if ln.strip().rstrip(b",").strip() not in (b"", b"[", b"]")]
        per_line = all(_line_is_document(ln) for ln in lines) and bool(docs)
        per_doc = (sum(len(ln) + 1 for ln in docs) / len(docs)) if docs else 0.0
        return per_line, per_doc

    @staticmethod
    def _align(path: Path, target: int) -> int:
        """The start of the first line at or after ``target``."""
        with open(path, "rb") as fh:
            fh.seek(max(target - 1, 0))
            fh.readline()
            return fh.tell()

    @staticmethod
    def _boundary_ok(path: Path, at: int, size: int) -> bool:
        if at >= size:
            return True
        with open(path, "rb") as fh:
            fh.seek(at)
            return _line_is_document(fh.readline())

    def open(
        self,
        entity: Entity,
        spec: dict[str, Any],
        position: str | None,
        clients: frozenset[str] | None,
    ) -> Reader:
        if spec.get("kind") != "bytes":
            raise SourceError(f"an export source cannot read a {spec.get('kind')!r} partition")
        path = find_table_file(self.folder, entity)
        start = int(position) if position is not None else int(spec["start"])
        return _ExportReader(entity, path, start, int(spec["end"]), clients)

    # -- verification -----------------------------------------------------------------------
    def stream(self, entity: Entity) -> Iterator[Any]:
        for doc, _ in DocStream(find_table_file(self.folder, entity)):
            yield doc

    def scan(self, entity: Entity, client: str | None) -> Iterator[Any]:
        """All documents (of one client) in key order; a file out of order is an error."""
        key, cl = entity.key, entity.client
        previous: Any = None
        for doc in self.stream(entity):
            k = doc.get(key) if isinstance(doc, dict) else None
            if isinstance(k, str):
                if previous is not None and k <= previous:
                    raise SourceError(
                        f"export of {entity.name} is not in key order at {k!r} (after "
                        f"{previous!r}); verification merges by key and needs a sorted export"
                    )
                previous = k
            if client is None or (isinstance(doc, dict) and doc.get(cl) == client):
                yield doc

    def get_many(self, entity: Entity, keys: Sequence[Any]) -> list[Any]:
        """Documents by key: one pass over the file (an export has no index)."""
        wanted = set(keys)
        if not wanted:
            return []
        key = entity.key
        return [d for d in self.stream(entity) if isinstance(d, dict) and d.get(key) in wanted]

    def clients(self, entity: Entity) -> list[str]:
        cl = entity.client
        found = {d.get(cl) for d in self.stream(entity) if isinstance(d, dict)}
        return sorted(c for c in found if isinstance(c, str) and c)

    def sample_keys(self, entity: Entity, client: str, n: int, seed: int) -> list[Any]:
        """A uniform sample of one client's keys (reservoir sampling over one pass)."""
        rng = random.Random(seed)
        heap: list[tuple[float, int, Any]] = []
        for i, doc in enumerate(self.scan(entity, client)):
            item = (rng.random(), i, doc.get(entity.key))
            if len(heap) < n:
                heapq.heappush(heap, item)
            elif item[0] > heap[0][0]:
                heapq.heapreplace(heap, item)
        return [k for _, _, k in heap]


class _ExportReader:
    """One byte range of an export file, a batch at a time.

    A batch of whole-document lines is decoded in one go (``block_decoder``). The
    first batch of a file, a batch for selected clients only, and any batch the block
    decoder is not certain of are read document by document with :class:`DocStream`,
    from the same position, as the reference path reads them.
    """

    def __init__(
        self, entity: Entity, path: Path, start: int, end: int, clients: frozenset[str] | None
    ) -> None:
        self.entity, self.path, self.end, self.clients = entity, path, end, clients
        self.position = start
        self.done = start >= end
        self._decode_row = line_decoder(entity)
        self._decode_block = block_decoder(entity) if clients is None else None
        self._file = open(path, "rb") if self._decode_block is not None else None  # noqa: SIM115

    def next_batch(self, limit: int) -> Batch:
        if not self.done and self.position > 0:
            batch = self._block(limit)
            if batch is not None:
                return batch
        return self._documents(limit)

    def _block(self, limit: int) -> Batch | None:
        """The next ``limit`` lines decoded at once, or None to read them one by one."""
        if self._file is None or self._decode_block is None:
            return None
        fh = self._file
        fh.seek(self.position)
        lines: list[bytes] = []
        at, ended = self.position, False
        while len(lines) < limit:
            if at >= self.end:
                ended = True  # the next line belongs to the next range
                break
            line = fh.readline(_LINE_LIMIT)
            if not line.startswith(b"{"):
                if line and line.strip() != b"]":
                    return None  # blank or odd lines: the document path decides
                ended = True  # the end of the file, or of its array
                break
            if not line.endswith(b"\n") and len(line) == _LINE_LIMIT:
                return None
            lines.append(line)
            at += len(line)
        values = self._decode_block(lines)
        if values is None or len(values) != len(lines):
            return None
        self.position, self.done = at, ended
        return Batch([], str(at), exhausted=ended, values=values)

    def _documents(self, limit: int) -> Batch:
        docs: list[Any] = []
        starts: list[int] = []
        skipped = 0
        cl = self.entity.client
        selected = self.clients
        if not self.done:
            stream = DocStream(self.path, self.position, self.end, decode_row=self._decode_row)
            iterator = iter(stream)
            try:
                for doc, begin in iterator:
                    if selected is not None and _client_of(doc, cl) not in selected:
                        skipped += 1
                        if skipped >= limit * 10:
                            break  # report progress (and let pause work) on long filtered runs
                        continue
                    docs.append(doc)
                    starts.append(begin)
                    if len(docs) >= limit:
                        break
                else:
                    self.done = True
            finally:
                iterator.close()
            self.position = stream.position
        name = self.path.name
        return Batch(
            docs,
            str(self.position),
            exhausted=self.done,
            locate=lambda i: f"{name}@{starts[i]}",
            skipped=skipped,
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _client_of(doc: Any, field: str) -> Any:
    if type(doc) is Row:
        return doc.client_id
    return doc.get(field) if type(doc) is dict else None


def write_export(folder: Path, entity: Entity, docs: Iterable[dict[str, Any]]) -> Path:
    """Write documents the way ``rethinkdb export`` does (tests, benchmarks, demos)."""
    path = folder / entity.rethinkdb_db / f"{entity.rethinkdb_table}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        out.write("[")
        first = True
        for doc in docs:
            out.write(("\n" if first else ",\n") + json.dumps(doc, default=_json_default))
            first = False
        out.write("\n]\n")
    info = path.with_suffix(".info")
    info.write_text(json.dumps({"primary_key": entity.key, "name": entity.rethinkdb_table}))
    os.utime(path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$reql_type$": "TIME", "epoch_time": value.timestamp(), "timezone": "+00:00"}
    raise TypeError(f"cannot export {type(value).__name__}")
