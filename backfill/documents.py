"""Source documents to rows; a document that cannot be mapped becomes a record.

A bad document is never dropped silently: it is counted, stored with its key (or its
place in the source when it has no usable key) and the reason, and listed in the
summary, so it can be fixed in the old store and copied by a re-run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cutover.config import Entity
from stores.mapping import MappingError, Row, row_from_document


@dataclass(frozen=True)
class BadDoc:
    """A source document that could not be mapped, and why."""

    ref: str
    key: str | None
    client: str | None
    error: str


def _ref(key: Any, where: str) -> str:
    if isinstance(key, str) and key:
        text = f"key:{key}"
    elif key is not None:
        text = f"key:{json.dumps(key)}"
    else:
        text = f"at:{where}"
    if len(text) > 300:
        text = text[:280] + "#" + hashlib.sha256(text.encode()).hexdigest()[:16]
    return text


def _key_of(doc: Row | dict[str, Any], field: str) -> Any:
    return doc.key if isinstance(doc, Row) else doc.get(field)


def map_documents(
    entity: Entity, docs: Sequence[Any], locate: Callable[[int], str]
) -> tuple[list[Row], list[BadDoc], dict[str, int], str | None]:
    """Rows for the mappable documents; every other document becomes a :class:`BadDoc`.

    A document may already be a :class:`Row` (mapped by the reader's fast path).
    """
    rows: list[Row] = []
    bad: list[BadDoc] = []
    counts: dict[str, int] = {}
    for i, doc in enumerate(docs):
        if type(doc) is Row:  # mapped on the way in (see backfill.line_decoder)
            rows.append(doc)
            counts[doc.client_id] = counts.get(doc.client_id, 0) + 1
            continue
        if not isinstance(doc, dict):
            bad.append(
                BadDoc(
                    _ref(None, locate(i)),
                    None,
                    None,
                    f"not a JSON object ({type(doc).__name__}) at {locate(i)}",
                )
            )
            continue
        try:
            row = row_from_document(entity, doc)
        except MappingError as exc:
            key = doc.get(entity.key)
            client = doc.get(entity.client)
            bad.append(
                BadDoc(
                    _ref(key, locate(i)),
                    key if isinstance(key, str) else (json.dumps(key) if key is not None else None),
                    client if isinstance(client, str) else None,
                    f"{exc}" + ("" if key is not None else f" (at {locate(i)})"),
                )
            )
            continue
        rows.append(row)
        counts[row.client_id] = counts.get(row.client_id, 0) + 1
    last = next((_key_of(d, entity.key) for d in reversed(docs) if isinstance(d, Row | dict)), None)
    return rows, bad, counts, (last if isinstance(last, str) or last is None else json.dumps(last))
