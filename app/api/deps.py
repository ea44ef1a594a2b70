"""What route handlers receive: the shared runtime pieces ``create_app`` put on the app.

Like the template's ``deps.py``: handlers declare ``Annotated`` parameters and never
build stores or clients themselves, so tests and the benchmark swap them in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from app.admin.health import HealthCache
from app.first_use import FirstUse
from app.pools import ReadPools
from app.reads import ReadModel
from app.shadow import ShadowComparer
from core.settings import Settings
from flags.evaluator import StageSource
from stores.runtime import Runtime


@dataclass
class Services:
    """Everything a request may use; one instance per app (per process)."""

    runtime: Runtime
    stages: StageSource
    reads: ReadModel
    shadow: ShadowComparer
    options: Settings
    #: The read API's threads, one bounded pool per store.
    pools: ReadPools
    #: The dependency checks behind /healthz and /admin/health (cached).
    health: HealthCache
    #: Publishes the migration job of a client served unmigrated (CUTOVER_FIRST_USE_JOBS).
    first_use: FirstUse = field(default_factory=FirstUse.off)


async def get_services(request: Request) -> Services:
    """Async on purpose: a sync dependency would take a thread of Starlette's shared
    pool for every request, the very pool a hung store could exhaust."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
