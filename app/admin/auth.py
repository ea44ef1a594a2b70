"""Bearer-token guard of the admin API and the console's actions.

Safe by default: with no ``CUTOVER_ADMIN_TOKEN`` configured the admin API answers
every request with 503 and says how to enable it, rather than running open. The
token is compared in constant time (``hmac.compare_digest``) so response timing does
not reveal how much of a guess was right, and it never appears in a response or log.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from app.api.deps import Services, get_services

#: Answered with every 401 so clients know which scheme to use.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cutover-admin"'}


def _refuse(status: int, error: str, reason: str) -> HTTPException:
    headers = CHALLENGE if status == 401 else {"Retry-After": "60"}
    return HTTPException(status, detail={"error": error, "reason": reason}, headers=headers)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison (on bytes: ``compare_digest`` rejects non-ASCII str)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def require_admin(request: Request, services: Annotated[Services, Depends(get_services)]) -> str:
    """FastAPI dependency: pass with the right bearer token; returns the caller's address.

    503 when no admin token is configured (the admin API is off), 401 when the header
    is missing, malformed or carries another token.
    """
    configured = services.runtime.settings.admin_token
    expected = configured.get_secret_value() if configured is not None else ""
    if not expected:
        raise _refuse(
            503,
            "AdminDisabled",
            "the admin API is disabled: no admin token is configured (set CUTOVER_ADMIN_TOKEN)",
        )
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise _refuse(401, "Unauthorized", "missing bearer token (Authorization: Bearer <token>)")
    if not token_matches(token, expected):
        raise _refuse(401, "Unauthorized", "invalid admin token")
    return request.client.host if request.client else "unknown"


AdminDep = Annotated[str, Depends(require_admin)]
