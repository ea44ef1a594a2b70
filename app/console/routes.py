"""Serves the console's three static files with a strict Content-Security-Policy.

Only same-origin scripts, styles and requests are allowed (no inline code, no CDN:
the machines running it may have no internet), the page cannot be framed, and nothing
is cached, so a new release is picked up at the next load.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

from app.paths import DecodedPathRoute

HERE = Path(__file__).resolve().parent

#: URL name -> (file, media type). Nothing else in the folder is served.
FILES = {
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "console.css": ("console.css", "text/css; charset=utf-8"),
}

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

router = APIRouter(tags=["console"], include_in_schema=False, route_class=DecodedPathRoute)


@router.get("/console")
def console_page() -> FileResponse:
    return FileResponse(HERE / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/console/")
def console_slash() -> RedirectResponse:
    return RedirectResponse("/console")


@router.get("/console/static/{name}")
def console_file(name: str) -> FileResponse:
    entry = FILES.get(name)
    if entry is None:
        raise HTTPException(
            404, detail={"error": "NotFound", "reason": f"no console file {name!r}"}
        )
    file, media = entry
    return FileResponse(HERE / file, media_type=media, headers=HEADERS)
