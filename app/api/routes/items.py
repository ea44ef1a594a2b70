"""``/v1/{entity}/{client_id}/items``: a client's items from the store its stage says.

The stage is read once per request (memoised flag lookup) and decides the store for
the whole response; in ``shadow`` (and sampled ``new``) the served rows go to the
background comparer after the response is built, never delaying it. Handlers are plain
``def``: the store drivers block, so FastAPI runs them in its thread pool.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Response

from app.api.deps import ServicesDep
from app.reads import InvalidCursor, StoreName, decode_cursor, encode_cursor, present
from cutover.config import ConfigError, Entity
from flags.stages import Stage

router = APIRouter(prefix="/v1", tags=["items"])

STORE_HEADER = "X-Cutover-Store"
STAGE_HEADER = "X-Cutover-Stage"


def _entity(services: ServicesDep, name: str) -> Entity:
    try:
        return services.runtime.cfg.entity(name)
    except ConfigError as exc:
        raise HTTPException(404, detail={"error": "UnknownEntity", "reason": str(exc)}) from None


def _store(stage: Stage) -> StoreName:
    return "new" if stage is Stage.NEW else "old"


@router.get("/{entity}/{client_id}/items")
def list_items(
    entity: str,
    client_id: str,
    services: ServicesDep,
    response: Response,
    cursor: str | None = Query(None, description="Opaque; from the previous page."),
    limit: int | None = Query(None, ge=1, description="Items per page (capped)."),
) -> dict[str, Any]:
    """One page of the client's live items in key order, and the next page's cursor."""
    ent = _entity(services, entity)
    options = services.options
    size = min(limit or options.read_default_limit, options.read_max_limit)
    try:
        after = decode_cursor(cursor) if cursor else None
    except InvalidCursor as exc:
        raise HTTPException(400, detail={"error": "InvalidCursor", "reason": str(exc)}) from None
    stage = services.stages.stage(ent.name, client_id)
    store = _store(stage)
    page = services.reads.page(store, ent, client_id, after, size)
    services.shadow.page_served(
        stage, store, ent, client_id, after, size, page.rows, page.next_after
    )
    response.headers[STORE_HEADER] = store
    response.headers[STAGE_HEADER] = stage.value
    return {
        "items": [present(ent, row) for row in page.rows],
        "next_cursor": encode_cursor(page.next_after) if page.next_after else None,
    }


@router.get("/{entity}/{client_id}/items/{item_id}")
def get_item(
    entity: str, client_id: str, item_id: str, services: ServicesDep, response: Response
) -> dict[str, Any]:
    """One live item of the client; 404 if absent, deleted or another client's."""
    ent = _entity(services, entity)
    stage = services.stages.stage(ent.name, client_id)
    store = _store(stage)
    row = services.reads.item(store, ent, client_id, item_id)
    services.shadow.item_served(stage, store, ent, client_id, item_id, row)
    response.headers[STORE_HEADER] = store
    response.headers[STAGE_HEADER] = stage.value
    if row is None:
        raise HTTPException(
            404,
            detail={
                "error": "NotFound",
                "reason": f"no {ent.name} {item_id!r} for client {client_id!r}",
            },
            headers={STORE_HEADER: store, STAGE_HEADER: stage.value},
        )
    return present(ent, row)
