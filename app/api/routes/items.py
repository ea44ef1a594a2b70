"""``/v1/{entity}/{client_id}/items``: a client's items from the store its stage says.

The stage is read once per request (memoised flag lookup, on the event loop) and
decides the store for the whole response; in ``shadow`` (and sampled ``new``) the
served rows go to the background comparer after the response is built, never
delaying it. The store drivers block, so the read (and building the response body) runs
in that store's own bounded pool (:mod:`app.pools`), under its deadline: a hung
RethinkDB never takes the threads that serve SQL store reads, nor the other way round.

Path segments are percent-encoded by clients and decoded once by the route class
(:mod:`app.paths`), so keys and client ids may hold ``/`` or any other character.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse

from app.api.deps import ServicesDep
from app.paths import DecodedPathRoute
from app.reads import (
    InvalidCursor,
    Page,
    ReadModel,
    StoreName,
    decode_cursor,
    encode_cursor,
    present,
)
from core.config import ConfigError, Entity
from flags.stages import Stage
from stores.mapping import Row

router = APIRouter(prefix="/v1", tags=["items"], route_class=DecodedPathRoute)

STORE_HEADER = "X-Cutover-Store"
STAGE_HEADER = "X-Cutover-Stage"


def _entity(services: ServicesDep, name: str) -> Entity:
    try:
        return services.runtime.cfg.entity(name)
    except ConfigError as exc:
        raise HTTPException(404, detail={"error": "UnknownEntity", "reason": str(exc)}) from None


def _store(stage: Stage) -> StoreName:
    return "new" if stage is Stage.NEW else "old"


def _headers(store: StoreName, stage: Stage) -> dict[str, str]:
    return {STORE_HEADER: store, STAGE_HEADER: stage.value}


def _answer(response: JSONResponse, store: StoreName, stage: Stage) -> JSONResponse:
    response.headers.update(_headers(store, stage))
    return response


def _page_body(
    reads: ReadModel,
    store: StoreName,
    entity: Entity,
    client_id: str,
    after: str | None,
    size: int,
) -> tuple[Page, JSONResponse]:
    """Read one page and render its body (in the store's pool: both may take time)."""
    page = reads.page(store, entity, client_id, after, size)
    body = {
        "items": [present(entity, row) for row in page.rows],
        "next_cursor": encode_cursor(page.next_after) if page.next_after else None,
    }
    return page, JSONResponse(body)


def _item_body(
    reads: ReadModel, store: StoreName, entity: Entity, client_id: str, key: str
) -> tuple[Row | None, JSONResponse | None]:
    row = reads.item(store, entity, client_id, key)
    return row, (JSONResponse(present(entity, row)) if row is not None else None)


@router.get("/{entity}/{client_id}/items", response_class=JSONResponse)
async def list_items(
    entity: str,
    client_id: str,
    services: ServicesDep,
    cursor: str | None = Query(None, description="Opaque; from the previous page."),
    limit: int | None = Query(None, ge=1, description="Items per page (capped)."),
) -> JSONResponse:
    """One page of the client's live items in key order, and the next page's cursor.

    Percent-encode ``entity`` and ``client_id`` as path segments (``/`` as ``%2F``).
    503 when the store is down, slow or busy, or when an item of the page is stored
    beyond what the contract allows (``StoredValueInvalid``, naming its key).
    """
    ent = _entity(services, entity)
    options = services.options
    size = min(limit or options.read_default_limit, options.read_max_limit)
    try:
        after = decode_cursor(cursor) if cursor else None
    except InvalidCursor as exc:
        raise HTTPException(400, detail={"error": "InvalidCursor", "reason": str(exc)}) from None
    stage = services.stages.stage(ent.name, client_id)
    store = _store(stage)
    page, response = await services.pools.run(
        store, _page_body, services.reads, store, ent, client_id, after, size
    )
    services.shadow.page_served(
        stage, store, ent, client_id, after, size, page.rows, page.next_after
    )
    services.first_use.served(ent.name, client_id)
    return _answer(response, store, stage)


@router.get("/{entity}/{client_id}/items/{item_id}", response_class=JSONResponse)
async def get_item(
    entity: str, client_id: str, item_id: str, services: ServicesDep
) -> JSONResponse:
    """One live item of the client; 404 if absent, deleted or another client's.

    Percent-encode each segment; a malformed one (bad escape, not UTF-8, NUL) is a 400.
    """
    ent = _entity(services, entity)
    stage = services.stages.stage(ent.name, client_id)
    store = _store(stage)
    row, response = await services.pools.run(
        store, _item_body, services.reads, store, ent, client_id, item_id
    )
    services.shadow.item_served(stage, store, ent, client_id, item_id, row)
    services.first_use.served(ent.name, client_id)
    if response is None:
        raise HTTPException(
            404,
            detail={
                "error": "NotFound",
                "reason": f"no {ent.name} {item_id!r:.200} for client {client_id!r:.200}",
            },
            headers=_headers(store, stage),
        )
    return _answer(response, store, stage)
