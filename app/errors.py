"""Every error the service answers is an orderly JSON response: ``{"error", "reason"}``.

Known failures have handlers (a store down, slow or refusing the login, a stored item
that cannot be served: 503 naming the store; an HTTP error: its status). Anything else
is caught by :class:`OrderlyErrors`, a middleware *inside* Starlette's
``ServerErrorMiddleware``: that one answers 500 but then re-raises, and the server
closes the connection, so the next request a client sends on the same keep-alive
connection fails too. Here the 500 is the end of the request and the connection
stays usable. No stack trace and no secret reaches a response (reasons are redacted).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.redaction import redact
from stores.mapping import MappingError
from stores.rethink import RethinkUnavailable
from stores.sql import StoreUnavailable

from .pools import STORE_LABEL, ReadRefused
from .reads import StoredValueInvalid

log = logging.getLogger(__name__)


def error_response(
    status: int, error: str, reason: str, *, retry: bool = True, **extra: Any
) -> JSONResponse:
    """The JSON error body; a retryable 503 says when to come back."""
    headers = {"Retry-After": "5"} if status == 503 and retry else None
    return JSONResponse({"error": error, "reason": reason, **extra}, status, headers=headers)


def _store_down(exc: StoreUnavailable | RethinkUnavailable, store: str) -> JSONResponse:
    """A store that cannot serve: ``*AuthFailed`` (not retryable) or ``*Unavailable``."""
    error = type(exc).__name__
    return error_response(503, error, redact(str(exc)), retry=exc.retryable, store=store)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StoreUnavailable)
    async def _sql_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return _store_down(exc, "sql")

    @app.exception_handler(RethinkUnavailable)
    async def _rethink_down(request: Request, exc: RethinkUnavailable) -> JSONResponse:
        return _store_down(exc, "rethinkdb")

    @app.exception_handler(ReadRefused)
    async def _refused(request: Request, exc: ReadRefused) -> JSONResponse:
        return error_response(503, exc.error, exc.reason, store=STORE_LABEL[exc.store])

    @app.exception_handler(StoredValueInvalid)
    async def _invalid(request: Request, exc: StoredValueInvalid) -> JSONResponse:
        return error_response(
            503, "StoredValueInvalid", redact(exc.reason), retry=False, store=STORE_LABEL[exc.store]
        )

    @app.exception_handler(MappingError)
    async def _unmappable(request: Request, exc: MappingError) -> JSONResponse:
        reason = f"a stored item cannot be served: {exc}"[:500]
        return error_response(503, "StoredValueInvalid", redact(reason), retry=False)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.detail, dict):
            return JSONResponse(exc.detail, exc.status_code, headers=exc.headers)
        return error_response(exc.status_code, "HTTPError", str(exc.detail))

    app.add_middleware(OrderlyErrors)


class OrderlyErrors:
    """Answer an unexpected exception with a JSON 500 and end the request normally.

    Only a response that has not started can be replaced; an exception after the
    first bytes went out is re-raised (the server must close that connection).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            _log_unexpected(scope, exc)
            response = error_response(500, "InternalError", "unexpected error; see the server log")
            await response(scope, receive, send)


def _log_unexpected(scope: Scope, exc: Exception) -> None:
    path = scope.get("path", "?")
    if isinstance(exc, RecursionError):  # its traceback is a thousand identical frames
        log.error("unexpected error serving %s: RecursionError: %s", path, exc)
    else:
        log.error("unexpected error serving %s", path, exc_info=exc)
