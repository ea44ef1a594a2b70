"""The old store on reqlite through the official driver: paging, counts, version rules."""

from __future__ import annotations

import random

import pytest

from core.config import Config
from cutover.services import ServiceInfo
from stores.mapping import Row, row_from_document
from stores.rethink import RethinkStore, RethinkUnavailable

CLIENTS = ["acme", "globex", "initech", "umbrella"]


@pytest.fixture
def seeded(rethink_store: RethinkStore, config: Config) -> dict[str, str]:
    """2,400 documents with string ids (varied lengths, case, unicode) over 4 clients."""
    rng = random.Random(3)
    orders = config.entity("orders")
    docs, owner = [], {}
    for i in range(2400):
        key = rng.choice(["o", "O", "ord-", "ü"]) + f"{rng.randint(0, 10**9)}-{i}"
        client = CLIENTS[i % len(CLIENTS)]
        owner[key] = client
        docs.append({"id": key, "client_id": client, "version": 1, "status": "new"})
    for start in range(0, len(docs), 500):
        rethink_store.insert_documents(orders, docs[start : start + 500])
    return owner


def test_scan_by_primary_key_sees_every_document_once_in_order(
    rethink_store: RethinkStore, config: Config, seeded: dict[str, str]
) -> None:
    keys = [d["id"] for d in rethink_store.scan(config.entity("orders"), page_size=300)]
    assert keys == sorted(seeded)  # in order, each exactly once


def test_scan_one_client_by_index(
    rethink_store: RethinkStore, config: Config, seeded: dict[str, str]
) -> None:
    orders = config.entity("orders")
    for client in CLIENTS:
        keys = [d["id"] for d in rethink_store.scan(orders, client, page_size=128)]
        assert keys == sorted(k for k, c in seeded.items() if c == client)
    assert rethink_store.count_per_client(orders) == {c: 600 for c in CLIENTS}
    assert rethink_store.count(orders, "acme") == 600
    assert rethink_store.count(orders) == 2400


def test_resume_after_a_key(
    rethink_store: RethinkStore, config: Config, seeded: dict[str, str]
) -> None:
    orders = config.entity("orders")
    ordered = sorted(seeded)
    tail = [d["id"] for d in rethink_store.scan(orders, after=ordered[999], page_size=500)]
    assert tail == ordered[1000:]


def test_version_guarded_write(rethink_store: RethinkStore, config: Config) -> None:
    orders = config.entity("orders")
    values = {c.name: None for c in orders.columns} | {"status": "v"}
    rethink_store.write(orders, [Row("k", "c", 3, False, values | {"status": "three"})])
    assert rethink_store.write(orders, [Row("k", "c", 2, False, values)]).applied == 0
    rethink_store.write(orders, [Row("k", "c", 4, True, {})])
    assert rethink_store.write(orders, [Row("k", "c", 4, False, values)]).applied == 0
    doc = rethink_store.get(orders, "k")
    assert doc is not None
    row = row_from_document(orders, doc)
    assert row.deleted and row.version == 4


def test_server_down_is_a_clear_error(config: Config, rethink_server: ServiceInfo) -> None:
    store = RethinkStore(config, host="127.0.0.1", port=1, timeout_s=2)
    with pytest.raises(RethinkUnavailable, match=r"cannot connect to RethinkDB at 127\.0\.0\.1:1"):
        store.count(config.entity("orders"))
