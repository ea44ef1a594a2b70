"""``/healthz``: the state of every dependency, checked in parallel with short timeouts.

Each check opens its own short-lived connection with a ~2 s timeout (not the
runtime's pooled stores, whose timeouts suit batch work), and all run at once under
one deadline, so a hung dependency makes the answer late by the deadline at most and
never makes it fail: whatever goes wrong becomes ``state: down`` with the reason
(secrets redacted). The result also feeds the ``cutover_dependency_up`` gauge.

The report names hosts, ports, URLs and drivers' messages: it is for the admin API
(``/admin/health``). ``/healthz`` answers anyone, so it shows only each dependency's
state (:func:`public_view`). Both read one :class:`HealthCache`: a result is reused for
``ttl_s`` (1.5 s) and one check runs at a time, however often the endpoints are called.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from prometheus_client import Gauge
from rethinkdb import r

from core.clock import now_utc
from core.config import Config
from core.redaction import redact
from core.settings import Settings
from stores.rethink import RethinkStore
from stores.sql import SqlStore

DEPENDENCY_UP = Gauge(
    "cutover_dependency_up",
    "1 when the last /healthz check reached the dependency, else 0",
    ["dependency"],
)

UP, DOWN = "up", "down"


@dataclass(frozen=True)
class DependencyState:
    name: str
    state: str  # up | down
    target: str  # what was checked, without secrets
    detail: str
    latency_ms: float | None = None


def _sql(settings: Settings, config: Config, timeout_s: float) -> str:
    store = SqlStore(
        settings.sql_connection_string(),
        settings.dialect,
        config,
        login_timeout_s=max(1, round(timeout_s)),
        query_timeout_s=max(1, round(timeout_s)),
        pool_size=1,
    )
    try:
        store.ping()
    finally:
        store.close()
    return "SELECT 1 answered"


def _rethink(settings: Settings, config: Config, timeout_s: float) -> str:
    store = RethinkStore(
        config,
        host=settings.rethinkdb_host,
        port=settings.rethinkdb_port,
        user=settings.rethinkdb_user,
        password=settings.rethinkdb_password.get_secret_value(),
        timeout_s=timeout_s,
    )
    with store.connection() as conn:
        r.expr(1).run(conn)
    return "query answered"


def _pubsub(settings: Settings, config: Config, timeout_s: float) -> str:
    from google.cloud import pubsub_v1

    from core.pubsub import publisher

    client: pubsub_v1.PublisherClient = publisher(settings, ordering=False)
    try:
        pages = client.list_topics(
            request={"project": f"projects/{settings.pubsub_project}", "page_size": 1},
            timeout=timeout_s,
            retry=None,
        )
        next(iter(pages.pages), None)
    finally:
        transport = getattr(client, "transport", None)
        if transport is not None:
            transport.close()
    return f"listed topics of project {settings.pubsub_project}"


def _unleash(settings: Settings, config: Config, timeout_s: float) -> str:
    if not settings.unleash_url:
        from flags.file_backend import flag_file, load_snapshot

        path = flag_file(settings)
        flags = load_snapshot(path)["features"]
        return f"embedded flag file ({len(flags)} flags)"
    response = httpx.get(settings.unleash_url.rstrip("/") + "/health", timeout=timeout_s)
    if response.status_code != 200:
        raise RuntimeError(f"/health answered {response.status_code}")
    return "/health answered 200"


def _targets(settings: Settings) -> dict[str, str]:
    return {
        "pubsub": (
            f"Pub/Sub server {settings.pubsub_emulator_host}"
            if settings.pubsub_emulator_host
            else f"Google Cloud Pub/Sub (project {settings.pubsub_project})"
        ),
        "sql": f"SQL store ({settings.dialect})",
        "rethinkdb": f"RethinkDB {settings.rethinkdb_host}:{settings.rethinkdb_port}",
        "unleash": (
            f"Unleash {settings.unleash_url}"
            if settings.unleash_url
            else "flag file (no Unleash configured)"
        ),
    }


CHECKS: dict[str, Callable[[Settings, Config, float], str]] = {
    "pubsub": _pubsub,
    "sql": _sql,
    "rethinkdb": _rethink,
    "unleash": _unleash,
}


def _timed(
    name: str,
    check: Callable[[Settings, Config, float], str],
    settings: Settings,
    config: Config,
    timeout_s: float,
    target: str,
) -> DependencyState:
    started = time.monotonic()
    try:
        detail = check(settings, config, timeout_s)
        state = UP
    except Exception as exc:
        detail = f"{type(exc).__name__}: {redact(str(exc))}".strip()[:500]
        state = DOWN
    latency = round((time.monotonic() - started) * 1000, 1)
    return DependencyState(name, state, target, detail, latency)


def public_view(report: dict[str, Any]) -> dict[str, Any]:
    """What a caller without the admin token may see: states only, no targets or details."""
    return {
        "status": report["status"],
        "checked_at": report["checked_at"],
        "dependencies": {
            name: {"state": dep["state"]} for name, dep in report["dependencies"].items()
        },
    }


class HealthCache:
    """The last report, reused for ``ttl_s``; one check in flight at a time.

    Lives on one event loop (the app's): callers that arrive while a check runs await
    that same check instead of starting another. The check itself runs in a thread.
    """

    def __init__(self, check: Callable[[], dict[str, Any]], ttl_s: float = 1.5) -> None:
        self._check = check
        self.ttl_s = ttl_s
        self._report: dict[str, Any] | None = None
        self._at = float("-inf")
        self._running: asyncio.Future[dict[str, Any]] | None = None
        #: Checks run so far (for tests and metrics).
        self.checks = 0

    async def report(self) -> dict[str, Any]:
        if self._report is not None and time.monotonic() - self._at < self.ttl_s:
            return self._report
        if self._running is None:
            self._running = asyncio.ensure_future(self._refresh())
        return await asyncio.shield(self._running)

    async def _refresh(self) -> dict[str, Any]:
        try:
            self.checks += 1
            report = await asyncio.to_thread(self._check)
            self._report, self._at = report, time.monotonic()
            return report
        finally:
            self._running = None


def check_dependencies(
    settings: Settings, config: Config, *, timeout_s: float = 2.0
) -> dict[str, Any]:
    """Every dependency's state; never raises, returns within about ``timeout_s + 1``."""
    targets = _targets(settings)
    pool = ThreadPoolExecutor(max_workers=len(CHECKS), thread_name_prefix="healthz")
    futures = {
        name: pool.submit(_timed, name, check, settings, config, timeout_s, targets[name])
        for name, check in CHECKS.items()
    }
    wait(futures.values(), timeout=timeout_s + 1.0)
    # A check stuck past the deadline keeps its thread until its own timeout fires;
    # the answer does not wait for it.
    pool.shutdown(wait=False, cancel_futures=True)
    states: dict[str, DependencyState] = {}
    for name, future in futures.items():
        if future.done() and not future.cancelled() and future.exception() is None:
            states[name] = future.result()
        else:
            states[name] = DependencyState(
                name, DOWN, targets[name], f"no answer within {timeout_s + 1.0:.0f} s"
            )
    for name, dep in states.items():
        DEPENDENCY_UP.labels(name).set(1 if dep.state == UP else 0)
    healthy = all(d.state == UP for d in states.values())
    return {
        "status": "ok" if healthy else "degraded",
        "checked_at": now_utc().isoformat(),
        "dependencies": {name: asdict(dep) for name, dep in states.items()},
    }
