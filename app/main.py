"""The FastAPI application factory.

``create_app(runtime)`` builds one app per process (uvicorn calls it in each worker,
after any fork), wiring the stage reader, the read model and the shadow comparer onto
``app.state.services``. Errors are answered as JSON with a reason and never with a
stack trace (:mod:`app.errors`): a store that is down, slow or refusing the login is a
503 naming it; flags never cause an error at all (the stage reader falls back to the
last known stage). The read model has stores of its own, with the read deadlines, and
each store its own bounded pool of threads (:mod:`app.pools`). Routing is on the
raw, percent-encoded path (:mod:`app.paths`), so ids may hold ``/``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.settings import Settings
from flags.evaluator import StageReader, StageSource
from flags.rollout_outcomes import CountReadOutcomes
from stores.rethink import RethinkStore
from stores.runtime import Runtime
from stores.sql import SqlStore

from .admin.health import HealthCache, check_dependencies
from .api.deps import Services
from .errors import install_error_handlers
from .first_use import FirstUse
from .paths import RouteOnRawPath
from .pools import ReadPools
from .reads import ReadModel
from .shadow import MismatchRecorder, ShadowComparer

log = logging.getLogger(__name__)


def _include_routers(app: FastAPI) -> None:
    """The read API, the admin API and the web console, in that order."""
    from .api.routes import admin, items
    from .console import routes as console

    for module in (items, admin, console):
        app.include_router(module.router)


def read_model(runtime: Runtime, options: Settings) -> ReadModel:
    """A read model over stores of its own: the read deadlines on every query (the
    runtime's stores keep the timeouts that suit the workers' batch work) and one
    connection per read thread."""
    settings, cfg = runtime.settings, runtime.cfg
    sql = SqlStore.from_settings(
        settings,
        cfg,
        login_timeout_s=options.read_sql_timeout_s,
        query_timeout_s=options.read_sql_timeout_s,
        pool_size=options.read_sql_pool_size,
        server_timeout=True,
    )
    rethink = RethinkStore.from_settings(
        settings,
        cfg,
        timeout_s=min(settings.rethinkdb_timeout_s, options.read_rethinkdb_timeout_s),
        query_timeout_s=options.read_rethinkdb_timeout_s,
        pool_size=options.read_rethinkdb_pool_size,
    )
    return ReadModel(runtime, sql=sql, rethink=rethink)


def create_app(
    runtime: Runtime | None = None,
    *,
    stages: StageSource | None = None,
    options: Settings | None = None,
) -> FastAPI:
    """An app over ``runtime``'s stores; ``stages`` defaults to a :class:`StageReader`."""
    rt = runtime or Runtime()
    opts = options or rt.settings
    reader = stages or StageReader(rt.settings)
    reads = read_model(rt, opts)
    pools = ReadPools(opts)
    shadow = ShadowComparer(reads, MismatchRecorder(rt.sql), opts)
    health = HealthCache(lambda: check_dependencies(rt.settings, rt.cfg))
    first_use = FirstUse.for_app(rt, opts)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        shadow.start()
        # Bounded: a hung Unleash delays start-up by one request timeout at most, and
        # until it answers the last snapshot (or `old`) is served.
        reader.wait_ready(rt.settings.unleash_request_timeout_s)
        try:
            yield
        finally:
            shadow.stop()
            first_use.stop()
            reader.close()
            pools.close()
            reads.close()

    app = FastAPI(
        title="cutover read service",
        summary="Per-client reads from RethinkDB or the SQL store, by read stage.",
        lifespan=lifespan,
        # A trailing '/' is an empty segment, not another resource: never redirect
        # ``.../items/{id}/`` to the listing.
        redirect_slashes=False,
    )
    app.state.services = Services(rt, reader, reads, shadow, opts, pools, health, first_use)
    install_error_handlers(app)
    app.add_middleware(RouteOnRawPath)
    # Outermost (added last): it sees every response, 500s included, for the rollout's
    # per-client 5xx guardrail.
    app.add_middleware(CountReadOutcomes, runtime=rt, options=opts, stages=reader)
    _include_routers(app)

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        """Prometheus metrics (shadow comparisons, mismatches, drops, ...)."""
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory (``uvicorn app.main:app_from_env --factory``)."""
    return create_app()
