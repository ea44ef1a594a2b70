"""The FastAPI application factory.

``create_app(runtime)`` builds one app per process (uvicorn calls it in each worker,
after any fork), wiring the stage reader, the read model and the shadow comparer onto
``app.state.services``. Errors are answered as JSON with a reason and never with a
stack trace: a store that is down is a 503 naming it; flags never cause an error at all
(the stage reader falls back to the last known stage).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from cutover.redaction import redact
from cutover.runtime import Runtime
from cutover.settings import Settings
from flags.evaluator import StageReader, StageSource
from stores.mapping import MappingError
from stores.rethink import RethinkUnavailable
from stores.sql import StoreUnavailable

from .api.deps import Services
from .reads import ReadModel
from .shadow import MismatchRecorder, ShadowComparer

log = logging.getLogger(__name__)

#: Router modules mounted by every app, in order. The admin API and the web console
#: add theirs here (``app.api.routes.admin...``, ``app.console...``); a listed module
#: that is not installed yet is skipped.
ROUTERS: list[str] = [
    "app.api.routes.items",
    "app.api.routes.admin",
    "app.console.routes",
]


def _include_routers(app: FastAPI) -> None:
    for name in ROUTERS:
        try:
            module: Any = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # not built yet
            raise
        app.include_router(module.router)


def _error(status: int, error: str, reason: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse({"error": error, "reason": reason, **extra}, status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StoreUnavailable)
    async def _sql_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return _error(503, "StoreUnavailable", redact(str(exc)), store="sql")

    @app.exception_handler(RethinkUnavailable)
    async def _rethink_down(request: Request, exc: RethinkUnavailable) -> JSONResponse:
        return _error(503, "RethinkUnavailable", redact(str(exc)), store="rethinkdb")

    @app.exception_handler(MappingError)
    async def _bad_document(request: Request, exc: MappingError) -> JSONResponse:
        return _error(502, "MappingError", f"the stored item cannot be served: {exc}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.detail, dict):
            return JSONResponse(exc.detail, exc.status_code, headers=exc.headers)
        return _error(exc.status_code, "HTTPError", str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s", request.url.path)
        return _error(500, "InternalError", "unexpected error; see the server log")


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
    reads = ReadModel(rt)
    shadow = ShadowComparer(reads, MismatchRecorder(rt.sql), opts)

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
            reader.close()

    app = FastAPI(
        title="cutover read service",
        summary="Per-client reads from RethinkDB or the SQL store, by read stage.",
        lifespan=lifespan,
    )
    app.state.services = Services(rt, reader, reads, shadow, opts)
    _install_error_handlers(app)
    _include_routers(app)

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        """Prometheus metrics (shadow comparisons, mismatches, drops, ...)."""
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory (``uvicorn app.main:app_from_env --factory``)."""
    return create_app()
