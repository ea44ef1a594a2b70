"""How the stores fail: a refused login at once and without the secret, a server that
stops answering within the query deadline, a stored value that cannot be decoded as an
error naming key and column. All against the real servers (PostgreSQL, reqlite)."""

from __future__ import annotations

import re
import time

import pyodbc
import pytest
from support import frozen

from core.config import Config
from cutover.services import ServiceInfo
from stores.mapping import MappingError, Row
from stores.rethink import RethinkAuthFailed, RethinkStore, RethinkUnavailable
from stores.sql import SqlStore, StoreAuthFailed, StoreUnavailable, is_transient

SECRET = "not-the-password-9c1f"


def _with_user(dsn: str, user: str) -> str:
    return re.sub(r"UID=[^;]*;PWD=[^;]*;", f"UID={user};PWD={SECRET};", dsn)


def test_a_refused_sql_login_is_reported_at_once_and_never_as_transient(
    postgres_dsn: str, config: Config
) -> None:
    """The test cluster trusts every known user, so the login is refused the way it is
    for a wrong user name: SQLSTATE 28000 on the server, which psqlodbc reports as
    08001 ("connection failed"), like a server that cannot be reached."""
    store = SqlStore(_with_user(postgres_dsn, "no_such_user_7"), "postgresql", config)
    with pytest.raises(StoreAuthFailed) as caught:
        store.ping()
    message = str(caught.value)
    assert message.startswith("authentication failed for the SQL store")
    assert SECRET not in message and "no_such_user_7" not in message
    assert isinstance(caught.value, StoreUnavailable)  # callers of the old type keep working
    assert caught.value.retryable is False and StoreUnavailable.retryable is True
    with pytest.raises(pyodbc.Error) as raw:
        pyodbc.connect(_with_user(postgres_dsn, "no_such_user_7"), timeout=5)
    assert not is_transient(raw.value)


def test_a_refused_rethinkdb_login_is_reported_as_such(
    rethink_server: ServiceInfo, config: Config
) -> None:
    """reqlite takes only the empty password: any other fails the SCRAM handshake,
    as a wrong password does on RethinkDB."""
    store = RethinkStore(
        config, host=rethink_server.host, port=rethink_server.port, password=SECRET
    )
    with pytest.raises(RethinkAuthFailed) as caught:
        store.get(config.entity("orders"), "o-1")
    assert str(caught.value).startswith("authentication failed for RethinkDB")
    assert SECRET not in str(caught.value)
    assert caught.value.retryable is False and RethinkUnavailable.retryable is True


def test_a_frozen_rethinkdb_fails_a_query_within_its_deadline_then_recovers(
    rethink_store: RethinkStore, rethink_server: ServiceInfo, config: Config
) -> None:
    """The driver's timeout covers connecting only: without the socket deadline this
    get would wait as long as the server stays frozen."""
    orders = config.entity("orders")
    rethink_store.insert_documents(orders, [{"id": "o-1", "client_id": "c", "version": 1}])
    store = RethinkStore(
        config, host=rethink_server.host, port=rethink_server.port, query_timeout_s=0.5
    )
    assert store.get(orders, "o-1") is not None  # a pooled connection, with its deadline
    with frozen(rethink_server.pid):
        started = time.monotonic()
        with pytest.raises(RethinkUnavailable, match=r"did not answer within 0\.5 s"):
            store.get(orders, "o-1")
        assert time.monotonic() - started < 5  # generous: the deadline is 0.5 s
    found = store.get(orders, "o-1")  # the timed-out connection was discarded
    assert found is not None and found["version"] == 1
    store.close()


def test_the_read_store_bounds_statements_on_the_postgresql_server(
    postgres_dsn: str, config: Config
) -> None:
    """``server_timeout``: a statement running past the query timeout is cancelled by
    the server itself (57014), reported as the store being unavailable (retry later);
    a store without it keeps the server's default (no limit)."""
    store = SqlStore(postgres_dsn, "postgresql", config, query_timeout_s=1, server_timeout=True)
    with store.transaction() as cur:
        assert cur.execute("SHOW statement_timeout").fetchone()[0] == "1s"
    with pytest.raises(StoreUnavailable, match="statement timeout"), store.transaction() as cur:
        cur.execute("SELECT pg_sleep(3)").fetchall()
    store.ping()  # a fresh connection serves the next read
    store.close()
    plain = SqlStore(postgres_dsn, "postgresql", config)
    with plain.transaction() as cur:
        assert cur.execute("SHOW statement_timeout").fetchone()[0] == "0"
    plain.close()


def test_a_stored_value_that_cannot_be_decoded_names_its_key_and_column(
    pg_store: SqlStore, config: Config
) -> None:
    """A JSON text nested 10,000 deep (written around cutover) makes the parser recurse
    past Python's limit: the read fails with a MappingError naming the key and the
    column, the row is left as it is, and the other rows are still read."""
    orders = config.entity("orders")
    values = {"status": "new", "amount": 1.0, "quantity": 1, "paid": False}
    rows = [Row(k, "c", 1, False, {**values, "placed_at": None, "meta": {}}) for k in ("a", "b")]
    pg_store.apply(orders, rows)
    deep = "[" * 10_000 + "]" * 10_000
    with pg_store.transaction() as cur:
        cur.execute('UPDATE "orders" SET "meta" = ? WHERE "id" = ?', deep, "b")
    with pytest.raises(MappingError, match="orders 'b': stored column 'meta' nests too deep"):
        pg_store.get(orders, "b")
    found = pg_store.get(orders, "a")
    assert found is not None and found.values["meta"] == {}
    with pg_store.transaction() as cur:
        stored = cur.execute('SELECT "meta" FROM "orders" WHERE "id" = ?', "b").fetchone()[0]
    assert stored == deep
