"""One bad message costs one failure-log entry, never its batch, its worker or the other
store (issue 13: reproductions 1-3, the property over hostile input, replay).

Against the real servers: a Pub/Sub server, PostgreSQL (and the SQLite stand-in)
through pyodbc, reqlite. Most examples drive :class:`~subscribers.handler.BatchHandler`
directly with message objects (no Pub/Sub round trip); the reproductions and one
property run go through real workers.

What happens to the data, in every test: a message is either applied to both stores,
identically (the SQL table and the RethinkDB table end equal to the reference model of
the accepted events), or it is in the failure log of both subscriptions with a reason
and its raw body; its valid neighbours are applied either way, and nothing is nacked
for a problem of a message.
"""

from __future__ import annotations

import itertools
import json
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner
from hostile import as_bytes, event_bodies, message_texts, valid_event_bodies
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from rethinkdb.errors import ReqlDriverCompileError
from subs_support import differences, publish, publish_raw, stop_process, wait_until

from core.events import Event
from cutover.cli import cli
from cutover.synthetic import reference
from cutover.tables import all_tables
from stores.mapping import Row, row_from_document
from stores.rethink import r
from stores.sql import StoreUnavailable
from subscribers import counters, failures, manage
from subscribers.decode import decode
from subscribers.handler import BatchHandler
from subscribers.sinks import RethinkSink, SqlSink, rethink_store_failure, sql_store_failure

SQL, RDB = "orders-sqlstore", "orders-rethinkdb"
_ids = itertools.count()


@dataclass(frozen=True)
class Msg:
    """A message as the handler sees it (google's ``Message`` has these fields)."""

    data: bytes
    message_id: str = field(default_factory=lambda: f"m-{next(_ids)}")
    attributes: Mapping[str, str] = field(default_factory=dict)
    ordering_key: str = ""
    delivery_attempt: int | None = 1


def _event(key: str, version: int, **data: Any) -> Event:
    """An event as a producer would build it, not validated (so it may break the
    contract, e.g. a version beyond 2**53): the handler is the one that judges it."""
    return Event.model_construct(
        event_id=f"{key[:40]}-v{version}",
        entity="orders",
        op="upsert",
        id=key,
        client_id="acme",
        version=version,
        occurred_at=datetime(2024, 5, 1, tzinfo=UTC),
        data={"status": "paid", "quantity": version, **data},
    )


def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def _body(key: str, version: int, **raw: str) -> bytes:
    """An event body with ``raw`` field texts spliced into its data as they are."""
    head = _event(key, version).to_json_bytes()[:-2]  # without "}}"
    extra = "".join(f',"{name}":{text}' for name, text in raw.items())
    return head + extra.encode() + b"}}"


def _logged(rt: Any, subscription: str) -> dict[str, failures.Failure]:
    found = failures.list_failures(rt.sql, subscription=subscription, status=None, limit=10**6)
    return {f.message_id: f for f in found}


def _rethink_rows(rt: Any, entity: Any) -> list[Row]:
    return [row_from_document(entity, doc) for doc in rt.rethink.scan(entity)]


def _both_equal(rt: Any, entity: Any, events: list[Event]) -> None:
    """Both stores hold exactly the reference state of ``events``."""
    expected = reference(entity, events)
    assert differences(entity, expected, rt.sql.scan(entity, None)) == []
    assert differences(entity, expected, _rethink_rows(rt, entity)) == []


@dataclass
class Pair:
    """The SQL and the legacy handler of one world, fed the same messages."""

    rt: Any
    sql: BatchHandler
    rdb: BatchHandler
    accepted: list[Event] = field(default_factory=list)

    @property
    def entity(self) -> Any:
        return self.sql.entity

    def handle(self, messages: list[Msg]) -> None:
        """Both handlers apply the batch; neither may raise (no store is failing)."""
        for handler in (self.sql, self.rdb):
            outcome = handler.handle(messages)
            assert outcome.applied + outcome.stale + outcome.failed == len(messages)

    def judge(self, messages: list[Msg], valid: list[bool] | None = None) -> None:
        """Every message is in both failure logs (with a reason and its body) or in
        neither; the ones in neither are accepted, and both stores hold the reference
        state of everything accepted so far."""
        in_sql, in_rdb = _logged(self.rt, SQL), _logged(self.rt, RDB)
        for at, m in enumerate(messages):
            sql_entry, rdb_entry = in_sql.get(m.message_id), in_rdb.get(m.message_id)
            errors = [e.error if e else None for e in (sql_entry, rdb_entry)]
            what = f"{m.data[:300]!r}: {errors}"
            assert (sql_entry is None) == (rdb_entry is None), what
            if valid is not None and valid[at]:
                assert sql_entry is None, what  # a valid neighbour is always applied
            if sql_entry is None:
                self.accepted.append(decode(self.rt.cfg, self.entity, m.data)[0])
                continue
            assert rdb_entry is not None
            for entry in (sql_entry, rdb_entry):
                assert entry.error and entry.data == m.data
        _both_equal(self.rt, self.entity, self.accepted)


@pytest.fixture
def pair(world: Any) -> Pair:
    rt = world.runtime
    sql, rdb = BatchHandler(rt, SQL), BatchHandler(rt, RDB)
    sql.prepare()
    rdb.prepare()
    return Pair(rt, sql, rdb)


# -- reproductions 1-3 of the issue, through real workers -------------------------------
def test_an_event_nested_10000_deep_costs_one_entry_in_both_workers(world: Any) -> None:
    """Reproduction 1: a worker process of each sink records the deep event and goes on
    applying the events after it; it never exits, SIGTERM still ends it with 0."""
    rt = world.runtime
    manage.add(rt, SQL)
    manage.add(rt, RDB)
    before = [_event(f"a-{i}", 1) for i in range(20)]
    after = [_event(f"b-{i}", 1) for i in range(20)]
    deep = _body("deep-1", 1, meta=_nested(10_000))
    assert len(deep) > 20_000

    proc = world.spawn(SQL, RDB)
    try:
        publish(world.settings, before)
        deep_id = publish_raw(world.settings, deep, entity="orders", op="upsert")
        publish(world.settings, after)
        total = len(before) + 1 + len(after)
        for name in (SQL, RDB):
            wait_until(lambda n=name: world.processed(n) >= total, 90, f"{name} past the event")
        assert proc.poll() is None, "the worker exited"
    finally:
        assert stop_process(proc, signal.SIGTERM) == 0
    for name in (SQL, RDB):
        [entry] = _logged(rt, name).values()
        assert entry.message_id == deep_id and entry.data == deep
        assert "nested more than" in entry.error, entry.error
    _both_equal(rt, world.entity, before + after)


def test_a_lone_surrogate_is_recorded_and_its_batch_neighbours_applied(world: Any) -> None:
    """Reproduction 2: ``"a\\ud800b"`` (valid JSON, not UTF-8 text) in a string field is
    one failure-log entry per sink, recorded on its first delivery; the events around it,
    in the same batch, are applied; no batch is ever nacked."""
    rt = world.runtime
    manage.add(rt, SQL)
    manage.add(rt, RDB)
    good = [_event(f"s-{i}", 1) for i in range(20)]
    bad = _body("s-bad", 1, status='"a\\ud800b"')
    with world.worker(SQL, RDB) as worker:
        publish(world.settings, good[:10])
        bad_id = publish_raw(world.settings, bad, entity="orders", op="upsert")
        publish(world.settings, good[10:])
        for name in (SQL, RDB):
            wait_until(lambda n=name: world.processed(n) >= 21, 60, f"{name}: 21 handled")
        assert worker.error is None
        for name in (SQL, RDB):
            assert worker.totals(name)["nacked_batches"] == 0
            assert worker.totals(name)["failed"] == 1
    for name in (SQL, RDB):
        [entry] = _logged(rt, name).values()
        assert entry.message_id == bad_id and entry.attempts == 1
        assert "surrogate" in entry.error, entry.error
    _both_equal(rt, world.entity, good)


def test_meta_nested_25_deep_is_refused_by_both_sinks_alike(world: Any) -> None:
    """Reproduction 3: ``data.meta`` nested 25 deep is refused by the contract's depth
    limit before either sink sees it, with the same reason in both failure logs, so the
    legacy store neither stalls nor falls behind the SQL store."""
    rt = world.runtime
    manage.add(rt, SQL)
    manage.add(rt, RDB)
    good = [_event(f"n-{i}", 2, meta={"ok": [i]}) for i in range(10)]
    bad = _body("n-bad", 1, meta=_nested(25))
    with world.worker(SQL, RDB) as worker:
        publish(world.settings, good[:5])
        publish_raw(world.settings, bad, entity="orders", op="upsert")
        publish(world.settings, good[5:])
        for name in (SQL, RDB):
            wait_until(lambda n=name: world.processed(n) >= 11, 60, f"{name}: 11 handled")
        assert worker.totals(RDB)["nacked_batches"] == 0
    [in_sql], [in_rdb] = _logged(rt, SQL).values(), _logged(rt, RDB).values()
    assert in_sql.error == in_rdb.error and "nested more than" in in_sql.error
    _both_equal(rt, world.entity, good)


# -- what a driver or a server refuses at write time -------------------------------------
def _decoded_with(handler: BatchHandler, bodies: list[bytes], at: int, row: Row) -> list[Any]:
    """Decoded items of ``bodies`` where item ``at`` carries ``row``: a value the
    contract's limits would have refused, to show each sink contains it by itself."""
    items = handler.decode([Msg(b) for b in bodies])
    items[at].row = row
    return items


def _hostile_row(key: str, **values: Any) -> Row:
    base = {"status": "paid", "amount": 1.0, "quantity": 1, "paid": True, "placed_at": None}
    return Row(key, "acme", 1, False, {**base, "meta": None, **values})


@pytest.mark.parametrize(
    "values, sql_takes_it, rdb_error",
    [
        # pyodbc and the RethinkDB driver both refuse it, client-side
        ({"status": "a\ud800b"}, False, "UnicodeEncodeError"),
        # only the RethinkDB driver refuses it (more than 20 levels in one query)
        ({"meta": json.loads(_nested(19))}, True, "ReqlDriverCompileError"),
    ],
    ids=["surrogate", "nested-19"],
)
def test_a_value_a_driver_refuses_is_isolated_by_each_sink(
    pair: Pair, values: dict[str, Any], sql_takes_it: bool, rdb_error: str
) -> None:
    """Past the contract's limits (a row injected after decoding, which the limits would
    have refused for both sinks alike), a row a driver refuses fails its batch; the
    handler splits the batch until that row is alone, records it with the driver's
    reason, and applies every other row of the batch."""
    events = [_event(f"w-{i}", 1) for i in range(7)]
    bodies = [e.to_json_bytes() for e in events]
    bad = _hostile_row("w-3", **values)
    sql = pair.sql.commit(_decoded_with(pair.sql, bodies, 3, bad))
    rdb = pair.rdb.commit(_decoded_with(pair.rdb, bodies, 3, bad))
    assert (rdb.applied, rdb.failed) == (6, 1)
    [rdb_entry] = _logged(pair.rt, RDB).values()
    assert rdb_entry.error.startswith(f"RethinkDB rejected the row: {rdb_error}"), rdb_entry.error
    assert sorted(r.key for r in _rethink_rows(pair.rt, pair.entity)) == [
        e.id for i, e in enumerate(events) if i != 3
    ]
    if sql_takes_it:
        assert (sql.applied, sql.failed) == (7, 0)
        return
    assert (sql.applied, sql.failed) == (6, 1)
    [sql_entry] = _logged(pair.rt, SQL).values()
    assert sql_entry.error.startswith("the SQL store rejected the row: UnicodeEncodeError")
    _both_equal(pair.rt, pair.entity, [e for i, e in enumerate(events) if i != 3])


def test_a_value_the_sql_server_refuses_is_isolated(pair: Pair) -> None:
    """A value PostgreSQL itself refuses (SQLSTATE 23514, a CHECK constraint of the
    table) is one failure-log entry; the rest of its batch is applied."""
    with pair.rt.sql.transaction() as cur:
        cur.execute("ALTER TABLE orders ADD CONSTRAINT no_666 CHECK (quantity <> 666)")
    events = [_event(f"c-{i}", 1, quantity=666 if i == 5 else i) for i in range(9)]
    outcome = pair.sql.handle([Msg(e.to_json_bytes()) for e in events])
    assert (outcome.applied, outcome.failed) == (8, 1)
    [entry] = _logged(pair.rt, SQL).values()
    assert "the SQL store rejected the row" in entry.error and "no_666" in entry.error
    assert sorted(r.key for r in pair.rt.sql.scan(pair.entity, None)) == sorted(
        e.id for i, e in enumerate(events) if i != 5
    )


# -- a failure of a store is never a message's ------------------------------------------
class _StopsOnFirstRefusal(SqlSink):
    """The real SQL sink; when a write first fails, the SQL server is stopped."""

    def __init__(self, store: Any, stop: Any) -> None:
        super().__init__(store)
        self.stop, self.fired = stop, False

    def write(self, entity: Any, rows: Any, cursor: Any) -> Any:
        try:
            return super().write(entity, rows, cursor)
        except Exception:
            if not self.fired:
                self.fired = True
                self.stop()
            raise


def test_sql_server_lost_during_a_split_nacks_the_batch_and_blames_no_message(
    world: Any, private_postgres: Any
) -> None:
    """The batch fails on one row's value, and the server goes away while the handler
    splits it: the next part fails with a store failure, which propagates (the worker
    nacks the batch) and nothing is recorded as poison. Redelivered once the server is
    back, the batch ends as it should: the valid rows applied, the bad one recorded."""
    world.settings = world.settings.model_copy(update={"sql_dsn": SecretStr(private_postgres.dsn)})
    rt = world.runtime
    sink = _StopsOnFirstRefusal(rt.sql, private_postgres.stop)
    handler = BatchHandler(rt, SQL, sink=sink)
    handler.prepare()
    bodies = [_event(f"p-{i}", 1).to_json_bytes() for i in range(6)]
    bad = _hostile_row("p-4", status="a\ud800b")
    with pytest.raises(StoreUnavailable):
        handler.commit(_decoded_with(handler, bodies, 4, bad))
    private_postgres.start()
    assert _logged(rt, SQL) == {}
    assert rt.sql.count(world.entity, include_deleted=True) == 0
    assert counters.read_all(rt.sql)[SQL].processed == 0

    outcome = handler.commit(_decoded_with(handler, bodies, 4, bad))  # the redelivery
    assert (outcome.applied, outcome.failed) == (5, 1)
    assert len(_logged(rt, SQL)) == 1


class _DropsTableOnFirstRefusal(RethinkSink):
    """The real RethinkDB sink; when a write first fails, its table is dropped."""

    fired = False

    def write(self, entity: Any, rows: Any, cursor: Any) -> Any:
        try:
            return super().write(entity, rows, cursor)
        except Exception:
            if not self.fired:
                self.fired = True
                with self.store.connection() as conn:
                    r.db(entity.rethinkdb_db).table_drop(entity.rethinkdb_table).run(conn)
            raise


@pytest.mark.parametrize("neighbours", [6, 0], ids=["during-split", "alone-probe"])
def test_rethinkdb_table_lost_during_a_split_blames_no_message(world: Any, neighbours: int) -> None:
    """RethinkDB refuses one row (nested too deep for its driver) and then loses the
    table. With neighbours, the next part of the split fails on the missing table (a
    store failure); alone, the row's refusal is blamed on it only if the store answers
    a trivial read of the table, which it does not. Either way the failure propagates
    and the failure log stays empty."""
    rt = world.runtime
    handler = BatchHandler(rt, RDB, sink=_DropsTableOnFirstRefusal(rt.rethink))
    handler.prepare()
    bodies = [_event(f"t-{i}", 1).to_json_bytes() for i in range(neighbours + 1)]
    bad = _hostile_row(f"t-{neighbours}", meta=json.loads(_nested(19)))
    with pytest.raises(Exception) as info:  # the last one is bad: the first half is not
        handler.commit(_decoded_with(handler, bodies, neighbours, bad))
    assert rethink_store_failure(info.value) and "does not exist" in str(info.value)
    assert _logged(rt, RDB) == {}
    assert counters.read_all(rt.sql)[RDB].processed == 0


def test_store_failures_are_told_from_value_failures(world: Any) -> None:
    """Errors raised by the real servers and drivers, classified: the store's or a
    value's (the handler retries the first, isolates the second)."""
    rt = world.runtime
    rt.sql.ensure_schema()
    rt.rethink.ensure_tables([world.entity])

    def sql_error(statement: str, *params: Any) -> BaseException:
        with pytest.raises(Exception) as info, rt.sql.transaction() as cur:
            cur.execute(statement, *params)
        return info.value

    def rdb_error(query: Any) -> BaseException:
        with pytest.raises(Exception) as info, rt.rethink.connection() as conn:
            query().run(conn)
        return info.value

    table = rt.rethink.table(world.entity)
    store_side = [
        sql_error("SELECT * FROM no_such_table"),  # 42P01
        sql_error("SELECT no_such_column FROM orders"),  # 42703
        rdb_error(lambda: r.db(world.rethink_db).table("no_such_table").get("k")),
        rdb_error(lambda: r.db("no_such_db").table("orders").get("k")),
    ]
    value_side = [
        sql_error("INSERT INTO orders (id) VALUES (?)", "k" * 300),  # 22001
        sql_error("SELECT CAST(? AS integer)", "x"),  # 22P02
        sql_error("SELECT ?", "a\ud800b"),  # UnicodeEncodeError, client-side
        rdb_error(lambda: table.insert(json.loads(_nested(25)))),
        rdb_error(lambda: r.expr("a").add(1)),  # a query logic error
        rdb_error(lambda: r.expr({"a": 1})["b"]),  # a non-existence error
    ]
    assert isinstance(value_side[3], ReqlDriverCompileError)
    for exc in store_side:
        assert sql_store_failure(exc) or rethink_store_failure(exc), repr(exc)
    for exc in value_side:
        assert not sql_store_failure(exc) and not rethink_store_failure(exc), repr(exc)


# -- the property, over tests/hostile.py's space -----------------------------------------
#: (valid, body): one in three a valid event, the others from the hostile space.
_batches = st.lists(
    st.integers(0, 2).flatmap(
        lambda i: (event_bodies() if i else valid_event_bodies()).map(lambda b: (not i, b))
    ),
    min_size=2,
    max_size=10,
)
_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
}


#: Each value class one sink would take and the other not, were it not for the limits:
#: always tried, next to valid neighbours, whatever hypothesis draws.
_EDGES = [
    (False, _body("e-1", 1, quantity=str(2**53 + 1))),  # RethinkDB would round it
    (False, _body("e-2", 2**53 + 1)),  # a version RethinkDB would round
    (False, _body("k" * 256, 1)),  # longer than the SQL key column
    (False, _body("e-3", 1, meta=_nested(17))),  # past 20 levels in a RethinkDB query
    (False, _body("e-4", 1, status='"a\\ud800b"')),  # not encodable: both drivers refuse
    (False, _body("e-5", 1, status='"a\\u0000b"')),  # PostgreSQL text refuses NUL
    (False, _body("e-6", 1, placed_at='"9999-12-31T23:59:59-01:00"')),  # out of range
    (True, _event("e-7", 1).to_json_bytes()),
]


@settings(max_examples=120, **_SETTINGS)
@given(batch=_batches)
@example(batch=_EDGES)
def test_any_batch_is_applied_by_both_sinks_alike_or_refused_by_both(
    pair: Pair, batch: list[tuple[bool, bytes]]
) -> None:
    """For any batch of bodies, valid and hostile mixed: neither handler raises; each
    message is applied to both stores identically or in both failure logs with a
    reason and its body; every valid one is applied (state accumulates over examples)."""
    messages = [Msg(body) for _, body in batch]
    pair.handle(messages)
    pair.judge(messages, [valid for valid, _ in batch])


def test_hostile_batches_through_a_real_worker(world: Any) -> None:
    """The same property end to end: hostile and valid bodies published to the topic,
    one worker for both subscriptions; it never stops and never nacks a batch."""
    rt = world.runtime
    manage.add(rt, SQL)
    manage.add(rt, RDB)
    pair = Pair(rt, BatchHandler(rt, SQL), BatchHandler(rt, RDB))
    published: list[Msg] = []
    valid: list[bool] = []

    @settings(max_examples=6, **_SETTINGS)
    @given(batch=_batches)
    def publish_batch(batch: list[tuple[bool, bytes]]) -> None:
        for is_valid, body in batch:
            message_id = publish_raw(world.settings, body, entity="orders")
            published.append(Msg(body, message_id))
            valid.append(is_valid)

    publish_batch()
    with world.worker(SQL, RDB) as worker:
        for name in (SQL, RDB):
            wait_until(
                lambda n=name: world.processed(n) >= len(published), 90, f"{name}: all handled"
            )
        assert worker.error is None
        assert worker.totals(SQL)["nacked_batches"] == worker.totals(RDB)["nacked_batches"] == 0
    pair.judge(published, valid)


# -- recording never fails because of the message ---------------------------------------
@pytest.fixture(params=["postgresql", "sqlite"])
def any_world(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("world" if request.param == "postgresql" else "sqlite_world")


@settings(max_examples=25, **_SETTINGS)
@given(
    body=st.one_of(st.binary(max_size=64), message_texts.map(as_bytes), event_bodies()),
    message_id=message_texts,
    ordering_key=message_texts,
    attributes=st.dictionaries(message_texts, message_texts, max_size=3),
    error=st.one_of(message_texts, st.just("e" * 100_000)),
)
def test_any_poison_is_recorded_with_its_body_intact(
    any_world: Any,
    body: bytes,
    message_id: str,
    ordering_key: str,
    attributes: dict[str, str],
    error: str,
) -> None:
    """Whatever a poison message carries (any bytes, NUL, lone surrogates, characters
    from U+100000 up, sizes past every column), its entry is written, on PostgreSQL
    and on SQLite: the body comes back byte for byte, the texts cleaned and bounded."""
    rt = any_world.runtime
    rt.sql.ensure_schema(all_tables())
    sub = rt.cfg.subscription(SQL)
    unique = f"{next(_ids)}:".encode()  # one entry per example: the id is the entry's key
    poison = failures.Poison(
        unique.decode() + message_id, unique + body, attributes, ordering_key, 1, error
    )
    with rt.sql.transaction() as cur:
        failures.record(rt.sql, cur, sub, [poison])
    [entry] = [f for f in _logged(rt, SQL).values() if f.data.startswith(unique)]
    assert entry.data == unique + body
    for text in (entry.error, entry.ordering_key, entry.message_id, *entry.attributes.values()):
        assert "\x00" not in text and max(text, default=" ") < "\U00100000"
        text.encode("utf-8")  # no lone surrogate
    assert len(entry.message_id) <= failures.MAX_ID_CHARS
    assert len(entry.error) <= 10 * failures.MAX_ERROR_CHARS + 50  # escapes at most 10x
    if error == "e" * 100_000:
        assert entry.error.startswith("e" * failures.MAX_ERROR_CHARS + "... (96,000 more")


class _UnreadableAttributes:
    """A message whose attributes raise when read (as a bug in our code might)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.message_id = data, f"m-{next(_ids)}"
        self.ordering_key, self.delivery_attempt = "", 1

    @property
    def attributes(self) -> Mapping[str, str]:
        raise RuntimeError("attributes lost")


def test_an_entry_the_log_refuses_is_recorded_plainly(pair: Pair) -> None:
    """Recording a poison entry fails for one message (its attributes cannot be read):
    that message alone is recorded plainly (body kept, no attributes, the reason said),
    its neighbours are applied and recorded as usual."""
    good = [_event(f"u-{i}", 1) for i in range(4)]
    broken = _UnreadableAttributes(b"not json")
    poison = Msg(b"not json either", attributes={"entity": "orders"})
    batch: list[Any] = [Msg(good[0].to_json_bytes()), broken, poison]
    batch += [Msg(e.to_json_bytes()) for e in good[1:]]
    outcome = pair.sql.handle(batch)
    assert (outcome.applied, outcome.failed) == (4, 2)
    log = _logged(pair.rt, SQL)
    assert log[broken.message_id].data == b"not json" and log[broken.message_id].attributes == {}
    assert "recorded plainly" in log[broken.message_id].error
    assert "attributes lost" in log[broken.message_id].error
    assert log[poison.message_id].attributes == {"entity": "orders"}
    assert sorted(r.key for r in pair.rt.sql.scan(pair.entity, None)) == [e.id for e in good]


# -- replay goes through the same containment -------------------------------------------
@settings(max_examples=25, **_SETTINGS)
@given(bodies=st.lists(event_bodies(), min_size=1, max_size=5))
def test_replaying_a_hostile_body_judges_it_again(pair: Pair, bodies: list[bytes]) -> None:
    """Every recorded body, replayed as it is, is judged again: still poison, it stays
    open with one more attempt and the new reason, never a traceback; nothing of it
    reaches either store."""
    messages = [Msg(b) for b in bodies]
    pair.handle(messages)
    for name in (SQL, RDB):
        for message in messages:
            entry = _logged(pair.rt, name).get(message.message_id)
            if entry is None or entry.status != "open":
                continue
            outcome = failures.replay(pair.rt, entry)
            # The same body under the same config: judged as it was, poison again.
            assert outcome.result == "failed" and outcome.detail
            again = failures.get(pair.rt.sql, entry.message_id, name)
            assert again.status == "open" and again.attempts == entry.attempts + 1
            assert again.error.startswith("replay: ")
    pair.judge(messages)


def test_replay_of_a_row_the_store_refuses_stays_open(pair: Pair) -> None:
    """A body that decodes but whose row the SQL server refuses (a CHECK constraint)
    fails again on replay with the store's reason, and stays open."""
    with pair.rt.sql.transaction() as cur:
        cur.execute("ALTER TABLE orders ADD CONSTRAINT no_666 CHECK (quantity <> 666)")
    message = Msg(_event("r-1", 1, quantity=666).to_json_bytes())
    pair.sql.handle([message])
    entry = failures.get(pair.rt.sql, message.message_id, SQL)
    outcome = failures.replay(pair.rt, entry)
    assert outcome.result == "failed" and "rejected the row" in outcome.detail
    again = failures.get(pair.rt.sql, message.message_id, SQL)
    assert again.status == "open" and again.attempts == entry.attempts + 1


@pytest.fixture
def cli_env(world: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[CliRunner]:
    for key, value in world.env().items():
        if key.startswith("CUTOVER_"):
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    yield CliRunner()


def test_cli_replay_of_hostile_bodies_reports_them_failed(
    pair: Pair, cli_env: CliRunner, tmp_path: Any
) -> None:
    """``cutover subs failures replay --all`` over hostile stored bodies, and with a
    corrected body nested 10,000 deep: each is reported failed with its reason, exit 0,
    no traceback; the entries stay open."""
    bodies = [
        _body("x-1", 1, meta=_nested(10_000)),
        _body("x-2", 1, status='"a\\ud800b"'),
        b"\xff\xfe" + b"[" * 5000,
        _body("x-3", 1, placed_at='"9999-12-31T23:59:59-01:00"'),
        _body("k" * 300, 1),
    ]
    messages = [Msg(b) for b in bodies]
    pair.handle(messages)
    for name in (SQL, RDB):
        result = cli_env.invoke(
            cli, ["subs", "failures", "replay", "--all", "--subscription", name]
        )
        assert result.exit_code == 0, result.output
        assert result.exception is None and "Traceback" not in result.output
        assert result.output.count(": failed: ") == len(bodies), result.output
    deep = tmp_path / "deep.json"
    deep.write_bytes(_body("x-1", 2, meta=_nested(10_000)))
    first = messages[0].message_id
    result = cli_env.invoke(
        cli, ["subs", "failures", "replay", first, "--subscription", SQL, "--data", str(deep)]
    )
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "failed" in result.output and "nested more than" in result.output
    assert all(f.status == "open" for f in _logged(pair.rt, SQL).values())
    pair.judge(messages)
