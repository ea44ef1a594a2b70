"""Path parameters that may hold any character the contract allows, ``/`` included.

A key or client id may contain ``/``, ``%``, ``?``, ``#``, spaces or any non-ASCII
character, so clients send every path segment percent-encoded (``encodeURIComponent``,
``urllib.parse.quote(s, safe="")``). The server would decode the path before routing,
turning ``client%2F01`` into two segments; so:

* :class:`RouteOnRawPath` (a middleware) routes on the path as it was sent, still
  percent-encoded: one segment is one parameter, whatever it holds once decoded;
* :class:`DecodedPathRoute` (the routers' route class) decodes each path parameter
  exactly once, strictly: a malformed escape, bytes that are not UTF-8 (a lone
  surrogate's encoding included), a NUL or an empty segment is a 400 ``InvalidPath``,
  never an approximation that could name another item.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from core.limits import LimitError, check_text

#: A ``%`` not followed by two hex digits.
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class InvalidPath(ValueError):
    """A path segment that is not a percent-encoded UTF-8 text the contract allows."""


def decode_segment(raw: str) -> str:
    """The text of one percent-encoded path segment, or :class:`InvalidPath`."""
    where = f"path segment {raw[:80]!r}"
    if not raw:
        raise InvalidPath("an empty path segment")
    if _BAD_ESCAPE.search(raw):
        raise InvalidPath(f"{where} has a '%' not followed by two hex digits (send % as %25)")
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPath(f"{where} encodes bytes that are not UTF-8 text") from None
    try:
        check_text(text)
    except LimitError as exc:
        raise InvalidPath(f"{where} {exc}") from None
    return text


class RouteOnRawPath:
    """Route on ``raw_path`` (as sent, still percent-encoded) instead of the decoded path.

    Servers without ``raw_path`` keep their decoded path. The query string is not part
    of either.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path")
        if scope["type"] == "http" and raw:
            scope = {**scope, "path": raw.decode("latin-1")}
        await self.app(scope, receive, send)


class DecodedPathRoute(APIRoute):
    """An API route whose path parameters arrive decoded by :func:`decode_segment`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def decoded(request: Request) -> Response:
            params = request.scope.get("path_params", {})
            try:
                request.scope["path_params"] = {k: decode_segment(v) for k, v in params.items()}
            except InvalidPath as exc:
                raise HTTPException(
                    400, detail={"error": "InvalidPath", "reason": str(exc)}
                ) from None
            return await handler(request)

        return decoded
