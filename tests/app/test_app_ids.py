"""Keys and client ids with any character the contract allows, through the API.

Clients percent-encode every path segment (``quote(s, safe="")``, JavaScript's
``encodeURIComponent``) and send a segment made of dots as ``%2E``: URL libraries drop
``.`` and ``..`` segments. Items are written through the stores (PostgreSQL and
reqlite, the real servers) and read back at stage ``old`` and ``new``; nothing else
is written. A malformed path must never answer 200 with an item other than the one its
segments name.
"""

from __future__ import annotations

import itertools
import re
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.reads import present
from backfill.progress import Progress
from backfill.sources import RethinkSource
from backfill.verify import Verifier
from flags.evaluator import FixedStage
from flags.stages import Stage
from stores.mapping import Row
from stores.runtime import Runtime

pytestmark = pytest.mark.parametrize("sql_dsn", ["postgresql"], indirect=True)

#: Characters URLs and routers treat specially, and a few that are simply unusual.
SPECIAL = ["/", "%", "?", "#", " ", "+", "&", "=", ";", ".", "..", "%2F", "%00", "\\"]
SPECIAL += ["~", "é", "\u00a0", "\u2028", "\t", "\n", "\x7f", "\U0001f600", "\U0010fffd"]
#: Any character the contract allows: everything but NUL and lone surrogates.
ALLOWED = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
IDS = st.lists(st.one_of(st.sampled_from(SPECIAL), ALLOWED), min_size=1, max_size=10).map("".join)
HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def segment(text: str) -> str:
    """How a client encodes one path segment (the README's rule)."""
    return quote(text, safe="") if text.strip(".") else "%2E" * len(text)


def _values(status: str = "ok") -> dict[str, Any]:
    return {"status": status, "amount": None, "quantity": None, "paid": None}


@pytest.fixture
def apis(runtime: Runtime, serve: Any) -> dict[str, Any]:
    return {
        "old": serve(runtime, stages=FixedStage(Stage.OLD)),
        "new": serve(runtime, stages=FixedStage(Stage.NEW)),
    }


def test_any_allowed_id_reads_back_exactly_its_item(
    runtime: Runtime, orders: str, apis: dict[str, Any]
) -> None:
    """Each example writes one item (a newer version each time, so it wins even when
    the key was drawn before for another client) to both stores, then reads it by its
    percent-encoded path from both: the very item, and it is in its client's listing."""
    ent = runtime.cfg.entity(orders)
    versions = itertools.count(1)

    @HYPOTHESIS
    @given(key=IDS, client=IDS)
    def check(key: str, client: str) -> None:
        row = Row(key, client, next(versions), False, {**_values(), "placed_at": None, "meta": {}})
        runtime.sql.apply(ent, [row])
        runtime.rethink.write(ent, [row])
        expected = present(ent, row)
        base = f"/v1/{orders}/{segment(client)}/items"
        for stage, api in apis.items():
            one = api.http.get(f"{base}/{segment(key)}")
            assert one.status_code == 200, (stage, one.text)
            assert one.json() == expected, stage
            listing = api.http.get(base, params={"limit": 1000})
            assert listing.status_code == 200, (stage, listing.text)
            assert expected in listing.json()["items"], stage

    check()


#: Pieces of a raw (as sent) path segment: valid escapes, broken ones, raw characters.
RAW_PIECES = st.sampled_from(
    [
        *("o-1", "o-2", "a", "%41", "%20", "%2F", "%2Fextra", "%25", "%2E", "+", "~", "."),
        *("%00", "%zz", "%", "%2", "%C3", "%C3%A9", "%ED%A0%80", "%FF", "%E2%80", "%C0%AF"),
        *("/", "//", "/extra", "%F0%9F%98%80"),
    ]
)
#: httpx removes dot segments before sending (as browsers do): those are not raw paths.
RAW_SEGMENTS = (
    st.lists(RAW_PIECES, min_size=1, max_size=5).map("".join).filter(lambda raw: raw.strip("."))
)
_ESCAPED = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})+")


def _decoded(raw: str) -> str | None:
    """The text a well-formed raw segment names, else None (the test's own reading of
    RFC 3986 and UTF-8, independent of the service's)."""
    if "/" in raw or not _ESCAPED.fullmatch(raw):
        return None
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


def test_a_malformed_path_never_answers_another_item(
    runtime: Runtime, orders: str, apis: dict[str, Any]
) -> None:
    """Items ``o-1`` and ``o-1/extra`` exist for client ``C``, ``o-2`` for ``C/x``. Any raw path
    built from valid and broken escapes answers 400 or 404 unless it is well formed and
    names a stored item exactly; a 200 is always that item. ``o-1%00garbage`` used to
    answer ``o-1`` at stage new (the ODBC driver cut the key at the NUL)."""
    ent = runtime.cfg.entity(orders)
    stored = {("C", "o-1"), ("C", "o-1/extra"), ("C/x", "o-2")}
    rows = [Row(k, c, 1, False, {**_values(), "placed_at": None, "meta": None}) for c, k in stored]
    runtime.sql.apply(ent, rows)
    runtime.rethink.write(ent, rows)

    @HYPOTHESIS
    @given(client=st.one_of(st.just("C"), st.just("C%2Fx"), RAW_SEGMENTS), item=RAW_SEGMENTS)
    def check(client: str, item: str) -> None:
        wanted = (_decoded(client), _decoded(item))
        for stage, api in apis.items():
            r = api.http.get(f"/v1/{orders}/{client}/items/{item}")
            if wanted in stored:
                assert r.status_code == 200, (stage, r.text)
            if r.status_code == 200:
                assert (r.json()["client"], r.json()["key"]) == wanted, stage
            else:
                assert r.status_code in (400, 404), (stage, r.status_code, r.text)
                assert r.json()["reason"], r.text

    check()
    for api in apis.values():
        r = api.http.get(f"/v1/{orders}/C/items/o-1%00garbage")
        assert r.status_code == 400 and r.json()["error"] == "InvalidPath", r.text
        assert "NUL" in r.json()["reason"]


def test_admin_per_client_routes_take_encoded_ids(
    runtime: Runtime, orders: str, serve: Any, store_settings: Any
) -> None:
    """The verification of a client whose id holds '/' and '?' (one row; client ``acme``
    has two) is found by its encoded id, and only it."""
    ent = runtime.cfg.entity(orders)
    client = "acme/eu?x=1"
    rows = [
        Row(key, owner, 1, False, {**_values(), "placed_at": None, "meta": None})
        for key, owner in (("k/1", client), ("k/2", "acme"), ("k/3", "acme"))
    ]
    runtime.sql.apply(ent, rows)
    runtime.rethink.write(ent, rows)
    Verifier(
        runtime.sql, RethinkSource(runtime.rethink), ent, recheck_delay_s=0.0, progress=_quiet
    ).run()
    token = "admin-token-for-ids"
    admin_rt = Runtime(store_settings(admin_token=token), runtime.cfg)
    api = serve(admin_rt, stages=FixedStage(Stage.OLD))
    auth = {"Authorization": f"Bearer {token}"}
    r = api.http.get(f"/admin/verification/{orders}/{segment(client)}", headers=auth)
    assert r.status_code == 200, r.text
    assert [(e["rows_checked"], e["clean"]) for e in r.json()] == [(1, True)]
    bad = api.http.get(f"/admin/verification/{orders}/acme%ZZ", headers=auth)
    assert bad.status_code == 400 and bad.json()["error"] == "InvalidPath"
    admin_rt.close()


def _quiet(title: str, total: int | None, done: int) -> Progress:
    return Progress(title, total, done, tty=False, emit=lambda line: None)
