"""Source documents to rows; a document that cannot be mapped becomes a record.

A bad document is never dropped silently: it is counted, stored with its key (or its
place in the source when it has no usable key) and the reason, and listed in the
summary, so it can be fixed in the old store and copied by a re-run.

Whatever one document holds, it costs at most its own record: a document the source
cannot even decode (not JSON, nested past any parser's reach, not UTF-8) arrives as
an :class:`Unreadable`, and every text a record keeps is made storable first (a key
with a NUL or a lone surrogate is kept escaped), so recording it cannot fail either.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.config import Entity
from stores.mapping import MappingError, Row, row_from_document


@dataclass(frozen=True)
class BadDoc:
    """A source document that could not be mapped (or written), and why."""

    ref: str
    key: str | None
    client: str | None
    error: str


@dataclass(frozen=True)
class Unreadable:
    """A document the source holds but cannot decode: why, where, and its key if known.

    Sources hand these over in place of the document, so the document costs its own
    bad-document record and nothing else (its neighbours are read and copied).
    """

    reason: str
    where: str
    key: Any = None


def storable(text: str) -> str:
    """``text`` as every store can keep it: lone surrogates and NUL written as escapes.

    Clean text (the common case) is returned as it is.
    """
    if "\x00" not in text:
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _ref(key: Any, where: str) -> str:
    if isinstance(key, str) and key:
        text = f"key:{storable(key)}"
    elif key is not None:
        text = f"key:{json.dumps(key, default=repr)}"
    else:
        text = f"at:{where}"
    if len(text) > 300:
        text = text[:280] + "#" + hashlib.sha256(text.encode()).hexdigest()[:16]
    return text


def _shown_key(key: Any) -> str | None:
    if key is None:
        return None
    return storable(key) if isinstance(key, str) else json.dumps(key, default=repr)


def bad_document(
    key: Any, client: Any, error: str, where: str, *, place_in_error: bool | None = None
) -> BadDoc:
    """The record of one bad document; ``where`` is its place in the source.

    The place is added to the error when the document has no key to find it by (or
    when ``place_in_error`` says so).
    """
    if place_in_error if place_in_error is not None else key is None:
        error = f"{error} (at {where})"
    return BadDoc(
        _ref(key, where),
        _shown_key(key),
        storable(client) if isinstance(client, str) else None,
        storable(error),
    )


def key_of(doc: Any, field: str) -> Any:
    """The key of a source document, a mapped row or an unreadable document (or None)."""
    if type(doc) is dict:
        return doc.get(field)
    if isinstance(doc, Row | Unreadable):
        return doc.key
    return doc.get(field) if isinstance(doc, dict) else None


def map_documents(
    entity: Entity, docs: Sequence[Any], locate: Callable[[int], str]
) -> tuple[list[Row], list[BadDoc], dict[str, int], str | None]:
    """Rows for the mappable documents; every other document becomes a :class:`BadDoc`.

    A document may already be a :class:`Row` (mapped by the reader's fast path) or an
    :class:`Unreadable`. The mapping refuses whatever is outside the contract's limits
    (:mod:`core.limits`); any other failure to map one document is its own bad
    record too, never the batch's.
    """
    rows: list[Row] = []
    bad: list[BadDoc] = []
    counts: dict[str, int] = {}
    for i, doc in enumerate(docs):
        if type(doc) is Row:  # mapped on the way in (see backfill.line_decoder)
            rows.append(doc)
            counts[doc.client_id] = counts.get(doc.client_id, 0) + 1
            continue
        if isinstance(doc, Unreadable):
            bad.append(bad_document(doc.key, None, doc.reason, locate(i), place_in_error=True))
            continue
        if not isinstance(doc, dict):
            where = locate(i)
            bad.append(bad_document(None, None, f"not a JSON object ({type(doc).__name__})", where))
            continue
        try:
            row = row_from_document(entity, doc)
        except (MappingError, RecursionError, TypeError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, MappingError) else _unexpected(entity, exc)
            bad.append(bad_document(doc.get(entity.key), doc.get(entity.client), reason, locate(i)))
            continue
        rows.append(row)
        counts[row.client_id] = counts.get(row.client_id, 0) + 1
    last = next((key_of(d, entity.key) for d in reversed(docs) if key_of(d, entity.key)), None)
    return rows, bad, counts, _shown_key(last)


def _unexpected(entity: Entity, exc: BaseException) -> str:
    """The reason for a failure the mapping did not name (it should name them all)."""
    if isinstance(exc, RecursionError):
        return f"{entity.name} document: nested too deeply to map"
    return f"{entity.name} document: cannot be mapped ({type(exc).__name__}: {exc})"
