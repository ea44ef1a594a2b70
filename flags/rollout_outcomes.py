"""The read API's outcome per client, counted for the rollout's 5xx guardrail.

:class:`CountReadOutcomes` is a plain ASGI middleware (no web framework imported):
for every response to ``/v1/{entity}/{client}/...`` it counts one response served, and
one server error when its status is 5xx, for that client at the stage it was served
at (the response's ``X-Cutover-Stage`` header; an error response without it is asked
of the stage reader, a memoised flag lookup). Only the stages a rollout moves clients
through are counted (``shadow``, ``new``: :data:`flags.evidence.OUTCOME_STAGES`), so
the table grows with the clients being rolled out, not with all traffic. The counts
go to an :class:`~flags.evidence.OutcomeBuffer` (memory, then the SQL store every
``shadow_evidence_flush_s``), whose flusher this middleware starts and stops with the
application's lifespan. Nothing it does can fail or delay a response: any error while
counting is logged and the response goes on.

Wiring, in ``app.main.create_app`` after the other middleware (so it is the outermost
and sees every response, the 500s of unexpected errors included)::

    app.add_middleware(CountReadOutcomes, runtime=rt, options=opts, stages=reader)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from .evidence import OUTCOME_STAGES, OutcomeBuffer

if TYPE_CHECKING:
    from core.settings import Settings
    from stores.runtime import Runtime

    from .evaluator import StageSource

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STAGE_HEADER = b"x-cutover-stage"
PREFIX = "v1"


def client_of(scope: Scope, entities: set[str]) -> tuple[str, str] | None:
    """``(entity, client)`` of a ``/v1/{entity}/{client}/...`` request, from the path as
    sent (percent-encoded segments decoded once, as the routes do); None for any other
    path, an unknown entity or a segment that does not decode (those are 4xx anyway)."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else str(scope.get("path", ""))
    parts = path.split("/")
    if len(parts) < 4 or parts[0] != "" or parts[1] != PREFIX:
        return None
    try:
        entity, client = (unquote_to_bytes(p).decode("utf-8") for p in parts[2:4])
    except UnicodeDecodeError:
        return None
    if entity not in entities or not client:
        return None
    return entity, client


class CountReadOutcomes:
    """Count each ``/v1`` response per client and stage (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        runtime: Runtime,
        options: Settings | None = None,
        stages: StageSource | None = None,
        buffer: OutcomeBuffer | None = None,
    ) -> None:
        self.app = app
        self.stages = stages
        self.entities = set(runtime.cfg.entities)
        self.buffer = buffer or OutcomeBuffer.from_settings(
            runtime.sql, options or runtime.settings
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan(send))
            return
        target = client_of(scope, self.entities) if scope["type"] == "http" else None
        if target is None:
            await self.app(scope, receive, send)
            return
        seen: dict[str, Any] = {}

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = int(message.get("status", 500))
                for name, value in message.get("headers") or ():
                    if name.lower() == STAGE_HEADER:
                        seen["stage"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            seen.setdefault("status", 500)
            raise
        finally:
            self._count(target, seen)

    def _count(self, target: tuple[str, str], seen: dict[str, Any]) -> None:
        try:
            entity, client = target
            stage = seen.get("stage")
            status = seen.get("status", 500)
            if stage is None and status >= 500 and self.stages is not None:
                stage = self.stages.stage(entity, client).value
            if stage in OUTCOME_STAGES:
                self.buffer.start()  # idempotent: also when the server runs no lifespan
                self.buffer.served(entity, client, stage, status)
        except Exception as exc:  # counting never fails a response
            log.warning("read outcome not counted: %s", exc)

    def _lifespan(self, send: Send) -> Send:
        """Start the flusher with the application, stop it (flushing) at shutdown."""

        async def relay(message: Message) -> None:
            kind = message.get("type")
            if kind == "lifespan.startup.complete":
                self.buffer.start()
            elif kind == "lifespan.shutdown.complete":
                self.buffer.stop()
            await send(message)

        return relay
