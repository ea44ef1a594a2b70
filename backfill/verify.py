"""Verification: prove, per client, that the SQL store holds what the old store holds.

Both stores are scanned in key order (binary collation on both sides) and merged like
a sorted-merge join, so memory stays flat on any table size. Each key falls in one of:

* ``missing_in_new``: live in the old store, absent or tombstoned in the new one;
* ``extra_in_new``: live in the new store, absent or tombstoned in the old one;
* ``version_mismatch``: live in both at different versions (differing fields listed);
* ``field_mismatch``: same version, different values after the mapping, compared
  canonically (``stores.mapping.differing_fields``: UTC datetimes, float tolerance,
  NFC unicode, JSON key order ignored);
* ``bad_in_old``: an old document the mapping rejects (it can never be copied).

Scans are not snapshots and both subscriptions lag a little, so a difference may be
in flight. Every candidate is re-read by key at once (a key that changed during the
check shows up here); any that may still be in flight (a version or presence
difference, or a change between the two reads) is re-read again after a delay.
Only what survives is reported: every key, nothing truncated.

``repair`` re-copies differing keys from the old store through ``SqlStore.apply``
(the version rules), then re-verifies them. The old side is any
:class:`~backfill.sources.Source`: a live RethinkDB, or an export folder.
"""

from __future__ import annotations

import json
import math
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from core.clock import now_utc
from core.config import Entity
from stores.mapping import MappingError, Row, differing_fields, row_from_document
from stores.sql import SqlStore, bookkeeping
from stores.sql.schema import DELETED

from . import ledger
from .documents import Unreadable, key_of, storable
from .progress import Progress
from .refusals import reason as refusal_reason
from .refusals import refused_for_data, split_refused
from .sources import Source, SourceError
from .tables import VERIFICATIONS

MISSING, EXTRA, VERSION, FIELDS, BAD = (
    "missing_in_new",
    "extra_in_new",
    "version_mismatch",
    "field_mismatch",
    "bad_in_old",
)
KINDS = (MISSING, EXTRA, VERSION, FIELDS, BAD)


@dataclass
class Difference:
    key: str
    client: str
    kind: str
    fields: list[str] = field(default_factory=list)
    old_version: int | None = None
    new_version: int | None = None
    old_deleted: bool | None = None
    new_deleted: bool | None = None
    detail: str = ""
    rechecked: bool = False
    repaired: bool | None = None  # None: no repair attempted
    repair_note: str = ""

    def describe(self) -> str:
        def side(version: int | None, deleted: bool | None) -> str:
            if version is None:
                return "absent"
            return f"v{version}{' (tombstone)' if deleted else ''}"

        old = "unmappable" if self.kind == BAD else side(self.old_version, self.old_deleted)
        new = side(self.new_version, self.new_deleted)
        text = f"{self.client}  {self.key}  {self.kind}  old {old} / new {new}"
        if self.fields:
            text += f"  fields: {', '.join(self.fields)}"
        if self.detail:
            text += f"  ({self.detail})"
        if self.repaired is not None:
            text += "  REPAIRED" if self.repaired else f"  NOT REPAIRED: {self.repair_note}"
        return text


@dataclass
class ClientResult:
    client: str
    rows_checked: int = 0
    found: int = 0
    remaining: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return self.remaining == 0


@dataclass
class Report:
    verification_id: str
    entity: str
    mode: str  # full | sample
    sample: int | None
    old_source: dict[str, Any]
    new_store: str
    started_at: datetime
    finished_at: datetime | None = None
    clients: dict[str, ClientResult] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)
    rows_checked: int = 0
    rechecked: int = 0
    repair: bool = False
    seconds: float = 0.0

    @property
    def remaining(self) -> list[Difference]:
        return [d for d in self.differences if not d.repaired]

    @property
    def clean(self) -> bool:
        return not self.remaining

    def to_json(self) -> dict[str, Any]:
        return {
            "verification_id": self.verification_id,
            "entity": self.entity,
            "mode": self.mode,
            "sample": self.sample,
            "old_source": self.old_source,
            "new_store": self.new_store,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "seconds": round(self.seconds, 3),
            "clean": self.clean,
            "rows_checked": self.rows_checked,
            "differences_found": len(self.differences),
            "differences_remaining": len(self.remaining),
            "rechecked_in_flight": self.rechecked,
            "repair": self.repair,
            "clients": {
                c: {**asdict(r), "clean": r.clean} for c, r in sorted(self.clients.items())
            },
            "differences": [asdict(d) for d in self.differences],
        }

    def summary_lines(self) -> list[str]:
        verdict = "CLEAN" if self.clean else f"{len(self.remaining)} DIFFERENCE(S)"
        rate = self.rows_checked / self.seconds if self.seconds > 0 else 0.0
        repaired = sum(bool(d.repaired) for d in self.differences)
        lines = [
            f"verify {self.entity} ({self.mode}"
            f"{f', {self.sample} keys per client' if self.sample else ''}): {verdict}",
            f"  old: {json.dumps(self.old_source)}; new: {self.new_store}",
            f"  {self.rows_checked:,} keys checked in {self.seconds:,.1f} s ({rate:,.0f}/s); "
            f"{len(self.differences)} found, {self.rechecked} re-checked after a delay"
            + (f", {repaired} repaired" if self.repair else ""),
        ]
        for client, res in sorted(self.clients.items()):
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(res.by_kind.items()))
            lines.append(
                f"  {client}: {res.rows_checked:,} keys, "
                + ("clean" if res.clean else f"{res.remaining} remaining ({kinds})")
            )
        if self.differences:
            lines.append("  differing keys (client  key  kind  old / new  fields):")
            lines += [f"    {d.describe()}" for d in self.differences]
        return lines


# -- comparison ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BadOld:
    """An old document the mapping rejects: why, and its client when it has one."""

    reason: str
    client: str


def map_old(entity: Entity, doc: Any) -> Row | BadOld:
    """The old document's row, or why it cannot be mapped (the mapping's limits apply
    here as in the backfill, so a repair never writes what a backfill would refuse)."""
    if isinstance(doc, Unreadable):
        return BadOld(f"{doc.reason} (at {doc.where})", "")
    if not isinstance(doc, dict):
        return BadOld(f"not a JSON object ({type(doc).__name__})", "")
    try:
        return row_from_document(entity, doc)
    except (MappingError, RecursionError, TypeError, ValueError) as exc:
        client = doc.get(entity.client)
        return BadOld(str(exc), client if isinstance(client, str) else "")


def classify(
    entity: Entity, key: str, old: Row | BadOld | None, new: Row | None, client_hint: str = ""
) -> Difference | None:
    """The difference between one key's old and new state, or None when they agree."""
    if (
        type(old) is Row
        and new is not None
        and old.version == new.version
        and old.deleted == new.deleted
        and old.client_id == new.client_id
        and (old.deleted or old.values == new.values)
    ):
        return None  # the common case, decided without building anything
    if isinstance(old, BadOld):
        client = old.client or (new.client_id if new else client_hint)
        return Difference(
            key,
            client,
            BAD,
            detail=old.reason,
            new_version=new.version if new else None,
            new_deleted=new.deleted if new else None,
        )
    client = (old.client_id if old else None) or (new.client_id if new else client_hint)
    diff = Difference(
        key,
        client,
        "",
        old_version=old.version if old else None,
        old_deleted=old.deleted if old else None,
        new_version=new.version if new else None,
        new_deleted=new.deleted if new else None,
    )
    old_live = old is not None and not old.deleted
    new_live = new is not None and not new.deleted
    if not old_live and not new_live:
        return None
    if old_live and not new_live:
        diff.kind = MISSING
        return diff
    if new_live and not old_live:
        diff.kind = EXTRA
        return diff
    assert old is not None and new is not None
    same = old.client_id == new.client_id and old.values == new.values
    diff.fields = [] if same else differing_fields(entity, old, new)
    if old.version != new.version:
        diff.kind = VERSION
        return diff
    if diff.fields:
        diff.kind = FIELDS
        return diff
    return None


def merge(
    entity: Entity, old_docs: Iterable[Any], new_rows: Iterable[Row]
) -> Iterator[tuple[str, Row | BadOld | None, Row | None]]:
    """Sorted-merge both key-ordered streams: ``(key, old, new)`` for every key.

    A stream out of key order would make the merge report nonsense, so it is an error.
    Old documents whose key is not a string cannot be in the SQL store: reported as bad.
    """
    key_field = entity.key
    old_it, new_it = iter(old_docs), iter(new_rows)
    last_old: str | None = None
    last_new: str | None = None
    strays: list[tuple[str, Row | BadOld]] = []

    def next_old() -> tuple[str, Row | BadOld] | None:
        nonlocal last_old
        for doc in old_it:
            k = key_of(doc, key_field)
            if not isinstance(k, str):
                where = doc.where if isinstance(doc, Unreadable) and k is None else None
                strays.append((where or json.dumps(k, default=str), map_old(entity, doc)))
                continue
            if last_old is not None and k <= last_old:
                raise SourceError(f"old store scan of {entity.name} not in key order at {k!r}")
            last_old = k
            return (k, map_old(entity, doc))
        return None

    def next_new() -> Row | None:
        nonlocal last_new
        for row in new_it:
            if last_new is not None and row.key <= last_new:
                raise SourceError(f"SQL scan of {entity.name} not in key order at {row.key!r}")
            last_new = row.key
            return row
        return None

    o, n = next_old(), next_new()
    while o is not None or n is not None or strays:
        while strays:
            key, reason = strays.pop()
            yield key, reason, None
        if o is None and n is None:
            break
        if n is None or (o is not None and o[0] < n.key):
            assert o is not None
            yield o[0], o[1], None
            o = next_old()
        elif o is None or n.key < o[0]:
            yield n.key, None, n
            n = next_new()
        else:
            yield o[0], o[1], n
            o, n = next_old(), next_new()


def _prefetch(items: Iterable[Any], chunk: int = 2000, depth: int = 4) -> Iterator[Any]:
    """Produce ``items`` from a background thread, so reading one store overlaps work."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def pump() -> None:
        try:
            buf: list[Any] = []
            for item in items:
                buf.append(item)
                if len(buf) >= chunk:
                    q.put(buf)
                    buf = []
                    if stop.is_set():
                        return
            q.put(buf)
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    thread = threading.Thread(target=pump, daemon=True, name="verify-prefetch")
    thread.start()
    try:
        while True:
            got = q.get()
            if got is done:
                return
            if isinstance(got, BaseException):
                raise got
            yield from got
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


# -- the verifier ------------------------------------------------------------------------------
class Verifier:
    """Compares one entity between an old source and the SQL store, per client."""

    def __init__(
        self,
        sql: SqlStore,
        old: Source,
        entity: Entity,
        *,
        recheck_delay_s: float = 5.0,
        page_size: int = 5000,
        progress: Callable[[str, int | None, int], Progress] | None = None,
        emit: Callable[[str], None] | None = None,
        seed: int | None = None,
    ) -> None:
        self.sql, self.old, self.entity = sql, old, entity
        self.recheck_delay = recheck_delay_s
        self.page_size = page_size
        self._progress = progress or (lambda title, total, done: Progress(title, total, done))
        self.emit = emit or (lambda line: None)
        self.seed = seed if seed is not None else random.randrange(2**31)

    def run(
        self,
        clients: Sequence[str] | None = None,
        *,
        sample: int | None = None,
        repair: bool = False,
        record: bool = True,
    ) -> Report:
        started = time.monotonic()
        report = Report(
            verification_id=uuid.uuid4().hex[:16],
            entity=self.entity.name,
            mode="sample" if sample else "full",
            sample=sample,
            old_source=self.old.describe(),
            new_store=self.sql.dialect.name,
            started_at=now_utc(),
            repair=repair,
        )
        for client in clients or ():
            report.clients[client] = ClientResult(client)
        if sample:
            candidates = self._sample(report, clients, sample)
        else:
            candidates = self._full(report, clients)
        confirmed = self._recheck(report, candidates)
        if repair and confirmed:
            self._repair(confirmed)
        report.differences = sorted(confirmed.values(), key=lambda d: (d.client, d.key))
        for d in report.differences:
            res = report.clients.setdefault(d.client, ClientResult(d.client))
            res.found += 1
            res.by_kind[d.kind] = res.by_kind.get(d.kind, 0) + 1
            if not d.repaired:
                res.remaining += 1
        report.finished_at = now_utc()
        report.seconds = time.monotonic() - started
        if record:
            self.record(report)
        return report

    # -- full scan -------------------------------------------------------------------------
    def _full(self, report: Report, clients: Sequence[str] | None) -> dict[str, Difference]:
        total = (
            self.sql.count(self.entity, include_deleted=True)
            if clients is None
            else sum(self.sql.count(self.entity, c, include_deleted=True) for c in clients)
        )
        progress = self._progress(f"verify {self.entity.name}", total or None, 0)
        candidates: dict[str, Difference] = {}
        try:
            for client in [None] if clients is None else list(clients):
                self._scan_one(report, client, candidates, progress)
        finally:
            progress.close()
        return candidates

    def _scan_one(
        self,
        report: Report,
        client: str | None,
        candidates: dict[str, Difference],
        progress: Progress,
    ) -> None:
        entity = self.entity
        old_docs = self.old.scan(entity, client)
        new_rows = _prefetch(self.sql.scan(entity, client, page_size=self.page_size))
        per_client: dict[str, int] = {}
        counted = scanned = 0
        for key, old, new in merge(entity, old_docs, new_rows):
            if client is None:  # whole table: attribute each key to its client
                owner = (
                    old.client_id
                    if isinstance(old, Row)
                    else new.client_id
                    if new
                    else old.client
                    if isinstance(old, BadOld)
                    else ""
                )
                per_client[owner] = per_client.get(owner, 0) + 1
            diff = classify(entity, key, old, new, client or "")
            if diff is not None:
                candidates[key] = diff
            counted += 1
            if counted >= 2000:
                progress.advance(counted)
                scanned += counted
                counted = 0
        progress.advance(counted)
        scanned += counted
        report.rows_checked += scanned
        if client is not None:
            per_client = {client: scanned}
        for c, n in per_client.items():
            report.clients.setdefault(c, ClientResult(c)).rows_checked += n

    # -- sample ------------------------------------------------------------------------------
    def _sample(
        self, report: Report, clients: Sequence[str] | None, n: int
    ) -> dict[str, Difference]:
        entity = self.entity
        chosen = (
            list(clients)
            if clients is not None
            else sorted(set(self.old.clients(entity)) | set(self.sql.clients(entity)))
        )
        candidates: dict[str, Difference] = {}
        for i, client in enumerate(chosen):
            res = report.clients.setdefault(client, ClientResult(client))
            keys = list(
                dict.fromkeys(
                    [
                        k
                        for k in self.old.sample_keys(
                            entity, client, math.ceil(n / 2), self.seed + i
                        )
                        if k is not None
                    ]
                    + self._random_new_keys(client, n // 2)
                )
            )
            found = self._compare_keys([k for k in keys if isinstance(k, str)], client)
            found.update(
                {
                    json.dumps(k): Difference(
                        json.dumps(k), client, BAD, detail="key is not a string"
                    )
                    for k in keys
                    if not isinstance(k, str)
                }
            )
            candidates.update(found)
            res.rows_checked += len(keys)
            report.rows_checked += len(keys)
        return candidates

    def _random_new_keys(self, client: str, n: int) -> list[str]:
        if n <= 0:
            return []
        d = self.sql.dialect
        q = d.quote
        table = self.sql.table(self.entity).name
        rand = "NEWID()" if d.name == "mssql" else "RANDOM()"
        sql = f"SELECT {q(self.entity.key)} FROM {q(table)} WHERE {q(self.entity.client)} = ?"
        sql = d.limit(f"{sql} ORDER BY {rand}", n)
        with self.sql.transaction() as cur:
            cur.execute(sql, [client])
            return [r[0] for r in cur.fetchall()]

    # -- by key: re-checks, samples, repair ------------------------------------------------------
    def _compare_keys(self, keys: Sequence[str], client_hint: str = "") -> dict[str, Difference]:
        """Read these keys from both stores now and classify them."""
        out: dict[str, Difference] = {}
        for key in keys:  # a key no store can keep cannot be asked for in the SQL store
            if storable(key) != key:
                detail = "the key is not text every store can keep (a NUL or a lone surrogate)"
                out[key] = Difference(key, client_hint, BAD, detail=detail)
        keys = [k for k in keys if k not in out]
        if not keys:
            return out
        entity = self.entity
        olds = self._old_rows(keys)
        news = {row.key: row for row in self.sql.get_many(entity, list(keys))}
        for key in keys:
            diff = classify(entity, key, olds.get(key), news.get(key), client_hint)
            if diff is not None:
                out[key] = diff
        return out

    def _recheck(self, report: Report, candidates: dict[str, Difference]) -> dict[str, Difference]:
        """Drop differences that were in flight; re-read suspects after a delay."""
        bad_keys = {k: d for k, d in candidates.items() if d.kind == BAD}
        keys = [k for k in candidates if k not in bad_keys]
        now = self._compare_keys(keys)
        suspects = [
            k for k, d in now.items() if d.kind != FIELDS or _state(d) != _state(candidates[k])
        ]
        confirmed = {k: d for k, d in now.items() if k not in suspects}
        if suspects:
            self.emit(
                f"verify {self.entity.name}: re-checking {len(suspects)} key(s) that may be in "
                f"flight in {self.recheck_delay:g} s"
            )
            time.sleep(self.recheck_delay)
            later = self._compare_keys(suspects)
            for d in later.values():
                d.rechecked = True
            confirmed.update(later)
            report.rechecked += len(suspects)
        confirmed.update(bad_keys)
        return confirmed

    def _old_rows(self, keys: Sequence[str]) -> dict[str, Row | BadOld]:
        """The old store's documents by key, each mapped (or why not)."""
        olds: dict[str, Row | BadOld] = {}
        for doc in self.old.get_many(self.entity, list(keys)):
            k = key_of(doc, self.entity.key)
            if isinstance(k, str):
                olds[k] = map_old(self.entity, doc)
        return olds

    def _repair(self, diffs: dict[str, Difference]) -> None:
        """Re-copy differing keys from the old store by the version rules; re-verify.

        Only rows the mapping takes are written; a row the SQL store refuses for its
        data is left out (its difference says why) and the other repairs are made.
        """
        entity = self.entity
        keys = [k for k, d in diffs.items() if d.kind != BAD]
        olds = self._old_rows(keys)
        news = {row.key: row for row in self.sql.get_many(entity, keys)}
        to_apply: list[Row] = []
        for key, diff in diffs.items():
            old = olds.get(key)
            new = news.get(key)
            if diff.kind == BAD or isinstance(old, BadOld):
                diff.repaired, diff.repair_note = False, "the old document cannot be mapped; fix it"
            elif old is None:
                diff.repaired = False
                diff.repair_note = "absent from the old store; not deleted automatically"
            elif new is not None and new.rank > old.rank:
                diff.repaired = False
                diff.repair_note = "the new store is newer: the old store lags (legacy sink?)"
            elif new is not None and new.rank == old.rank:
                refusal = self._replace_same_version(old, new)
                if refusal is not None:
                    diff.repaired, diff.repair_note = False, refusal
            else:
                to_apply.append(old)
        for key, refusal in self._apply_repairs(to_apply).items():
            diffs[key].repaired, diffs[key].repair_note = False, refusal
        attempted = [k for k, d in diffs.items() if d.repaired is None]
        still = self._compare_keys(attempted)
        for key in attempted:
            diffs[key].repaired = key not in still
            if key in still:
                diffs[key].repair_note = f"still differs after repair ({still[key].kind})"

    def _apply_repairs(self, rows: list[Row]) -> dict[str, str]:
        """Write ``rows`` by the version rules; the keys the store refused, and why."""
        if not rows:
            return {}
        prepared = self.sql.prepare(self.entity, rows)
        try:
            self.sql.apply(self.entity, prepared)
            return {}
        except Exception as exc:
            if not refused_for_data(exc):
                raise
        taken, refused = split_refused(self.sql, self.entity, prepared)
        self.sql.apply(self.entity, taken)
        return {b.key: b.error for b in refused if b.key is not None}

    def _replace_same_version(self, old: Row, new: Row) -> str | None:
        """Same version, different values: the version rules cannot choose, so replace.

        Compare-and-set: the stored row is removed only if it is still exactly the
        version seen, then the old store's row goes through ``SqlStore.apply`` in the
        same transaction. A concurrent newer write waits on the row lock and wins.
        Returns why the store refused the row (then nothing changed), or None.
        """
        d = self.sql.dialect
        q = d.quote
        table = self.sql.table(self.entity).name
        try:
            with self.sql.transaction() as cur:
                cur.execute(
                    f"DELETE FROM {q(table)} WHERE {q(self.entity.key)} = ? AND "
                    f"{q(self.entity.version)} = ? AND {q(DELETED)} = ?",
                    [new.key, d.to_db("int", new.version), d.to_db("bool", new.deleted)],
                )
                self.sql.apply(self.entity, [old], cursor=cur)
        except Exception as exc:
            if not refused_for_data(exc):
                raise
            return refusal_reason(exc)
        return None

    # -- ledger ------------------------------------------------------------------------------
    def record(self, report: Report, report_path: str | None = None) -> None:
        """Store each client's result in the ledger and the verification history."""
        d = self.sql.dialect
        ledger.ensure_tables(self.sql)
        finished = report.finished_at or now_utc()
        with self.sql.transaction() as cur:
            for client, res in sorted(report.clients.items()):
                if not client:
                    continue
                ledger.record_verification(
                    cur,
                    d,
                    report.entity,
                    client,
                    clean=res.clean,
                    mode=report.mode,
                    differences=res.remaining,
                    rows_checked=res.rows_checked,
                    finished_at=finished,
                )
                values = {
                    "verification_id": report.verification_id,
                    "client": client,
                    "entity": report.entity,
                    "mode": report.mode,
                    "started_at": report.started_at,
                    "finished_at": finished,
                    "rows_checked": res.rows_checked,
                    "differences": res.remaining,
                    "clean": res.clean,
                    "by_kind": res.by_kind,
                    "report_path": report_path,
                }
                bookkeeping.insert(cur, d, VERIFICATIONS, values)


def _state(d: Difference) -> tuple[Any, ...]:
    return (d.old_version, d.old_deleted, d.new_version, d.new_deleted)
