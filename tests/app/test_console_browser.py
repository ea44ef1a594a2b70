"""The console in a real browser: headless Debian Chromium driven by Playwright.

The real app is served by uvicorn on a free loopback port over real stores (a SQLite
file, reqlite, the embedded flag file), after a real backfill and verification. The
browser loads /console, is refused with a wrong token, unlocks with the right one,
reads each client's state, rolls a client back (confirming the dialog) and sees the
stage change; a move to ``new`` that the gate refuses shows the gate's reason and
changes nothing; a subscription's logged failure is listed and replayed. A screenshot
is saved as ``test-artifacts/console.png``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from app_support import stream_through_worker

from app.shadow import Mismatch, MismatchRecorder
from backfill.progress import Progress
from backfill.runner import Backfill, Options
from backfill.sources import RethinkSource
from backfill.verify import Verifier
from core.config import Config
from core.settings import Settings
from cutover import services
from cutover.synthetic import client_ids, generate_history, reference
from flags.service import FlagService
from stores.mapping import Row
from stores.runtime import Runtime

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TOKEN = "console-test-token-7f3a"
CLEAN, SHADOWED, DIRTY = client_ids(3)


def _quiet(title: str, total: int | None, done: int) -> Progress:
    return Progress(title, total, done, tty=False, emit=lambda line: None)


@pytest.fixture
def migration(
    make_settings: Callable[..., Settings],
    rethink_server: services.ServiceInfo,
    pubsub_server: services.ServiceInfo,
    config: Config,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Runtime]:
    """A migration in progress: orders double-written by a worker (one poison message
    logged), backfilled and verified; one client at ``new``, one at ``shadow`` with two
    recorded mismatches, one whose verification found a difference."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_server.url)  # restored afterwards
    settings = make_settings(
        admin_token=TOKEN,
        rethinkdb_host=rethink_server.host,
        rethinkdb_port=rethink_server.port,
        pubsub_emulator_host=pubsub_server.url,
    )
    rt = Runtime(settings, config)
    rt.sql.ensure_schema()
    rt.rethink.ensure_tables()
    orders = rt.cfg.entity("orders")
    history = generate_history(orders, clients=3, ids_per_client=40, seed=11)
    rt.rethink.write(orders, list(reference(orders, history).values()))
    stream_through_worker(rt, history, b'{"entity": "orders", "truncated', actor="carol@ops")
    assert (
        Backfill(rt.sql, RethinkSource(rt.rethink), orders, Options(rate=0), progress=_quiet)
        .run()
        .complete
    )
    row = next(r for r in rt.sql.scan(orders, DIRTY) if not r.deleted)
    rt.sql.apply(orders, [Row(row.key, row.client_id, row.version + 1, False, row.values)])
    Verifier(rt.sql, RethinkSource(rt.rethink), orders, recheck_delay_s=0.0, progress=_quiet).run()
    service = FlagService(rt)
    service.set_stage("orders", CLEAN, "new", actor="carol@ops", reason="verified clean")
    service.set_stage("orders", SHADOWED, "shadow", actor="carol@ops", reason="dark reads")
    service.close()
    MismatchRecorder(rt.sql).record(
        [
            Mismatch(
                "orders", SHADOWED, f"{SHADOWED}-000003", "fields", ["status"], 2, 2, "shadow"
            ),
            Mismatch(
                "orders", SHADOWED, f"{SHADOWED}-000007", "version", ["amount"], 3, 2, "shadow"
            ),
        ]
    )
    yield rt
    rt.close()


@pytest.fixture
def server(migration: Runtime, serve: Callable[..., Any]) -> str:
    """The real app under uvicorn on a free port (tests/app/conftest.py); its base URL."""
    return str(serve(migration).url)


@pytest.fixture
def page(server: str) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        tab.goto(f"{server}/console")
        yield tab
        context.close()
        browser.close()
        # A CSP violation, a script error or a missing file would show here; the 401 of
        # the wrong token and the 409 of the gate's refusal are expected.
        expected = ("status of 401", "status of 409")
        unexpected = [e for e in errors if not any(x in e for x in expected)]
        assert not unexpected, unexpected


def _row(page: Any, client: str) -> Any:
    return page.locator(f'article[data-entity="orders"] tr[data-client="{client}"]')


def _unlock(page: Any, token: str, name: str = "") -> None:
    page.fill("#token", token)
    if name:
        page.fill("#operator", name)
    page.click("#login-form button[type=submit]")


def test_console_rollback_in_a_real_browser(page: Any, migration: Runtime) -> None:
    """A wrong token keeps the console locked; with the right one the operator reads
    each client's state, rolls one back through the confirmation dialog and sees it at
    ``old``; a refused move to ``new`` shows the gate's reason and changes nothing; a
    replay of a poison message that is still bad leaves it open."""
    # Locked, and a wrong token is refused.
    assert page.locator("#login").is_visible()
    _unlock(page, "not-the-token")
    page.wait_for_selector("#login-error:has-text('refused')")
    assert page.locator("#content").is_hidden()

    _unlock(page, TOKEN, "dave")
    shadowed = _row(page, SHADOWED)
    shadowed.locator("[data-testid=stage]").wait_for()
    assert TOKEN not in page.content()  # never displayed, not even in the form

    # Each client's state as stored.
    assert _row(page, CLEAN).locator("[data-testid=stage]").inner_text().lower() == "new"
    assert shadowed.locator("[data-testid=stage]").inner_text().lower() == "shadow"
    assert "clean" in _row(page, CLEAN).inner_text()
    assert "1 difference" in _row(page, DIRTY).inner_text()
    assert "verified" in _row(page, CLEAN).inner_text()
    assert shadowed.locator("td.num").inner_text().strip() == "2"
    orders_card = page.locator('article[data-entity="orders"]')
    assert "100%" in orders_card.locator(".metric").first.inner_text()
    assert page.locator('#health [data-dependency="rethinkdb"].up').count() == 1

    # The gate refuses `new` for the client whose verification found a difference.
    dirty = _row(page, DIRTY)
    dirty.locator("select").select_option("new")
    dirty.locator("button", has_text="Move").click()
    page.click("#confirm-ok")
    page.wait_for_selector("#banner.error")
    assert "not clean" in page.inner_text("#banner")
    assert dirty.locator("[data-testid=stage]").inner_text().lower() == "old"

    # Roll back the shadowed client, confirming the dialog.
    shadowed.locator("button", has_text="Roll back").click()
    dialog = page.locator("dialog#confirm")
    assert dialog.is_visible()
    assert SHADOWED in dialog.inner_text()
    page.fill("#confirm-reason", "mismatches in dark reads")
    page.click("#confirm-ok")
    page.wait_for_function(
        "c => document.querySelector(`article[data-entity='orders'] tr[data-client='${c}'] "
        "[data-testid=stage]`).textContent.trim().toLowerCase() === 'old'",
        arg=SHADOWED,
    )
    assert "rolled back" in page.inner_text("#banner")
    page.wait_for_selector("#audit:has-text('mismatches in dark reads')")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)

    # Subscription health from the worker's counters; the poison message is listed, and
    # a replay (confirmed) judges it again: still not JSON, so it stays open.
    sub = page.locator('#subscriptions tr[data-subscription="orders-sqlstore"]')
    assert "drift" in sub.inner_text() or "ok" in sub.inner_text()
    sub.locator("button", has_text="Failures (1)").click()
    page.wait_for_selector("#subscriptions tr.failures-row code.body")
    assert "truncated" in page.inner_text("#subscriptions tr.failures-row")
    sub.locator("button", has_text="Replay").click()
    page.click("#confirm-ok")
    page.wait_for_selector("#banner:has-text('replay done')")
    assert "1 failed" in page.inner_text("#banner")
    assert "1 still open" in page.inner_text("#banner")

    # The change is real: the flag backend and the audit say so.
    service = FlagService(migration)
    try:
        stages = {c.client_id: c for c in service.status("orders").clients}
    finally:
        service.close()
    assert stages[SHADOWED].stage.value == "old"
    last = stages[SHADOWED].last
    assert last is not None
    assert last.actor.startswith("dave@")
    assert last.reason == "mismatches in dark reads"
    assert stages[CLEAN].stage.value == "new"
    assert stages[DIRTY].stage.value == "old"
    assert os.path.getsize(ARTIFACTS / "console.png") > 10_000
