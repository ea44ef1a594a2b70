"""The admin API (``/admin/...``, bearer token) and ``/healthz``.

Everything under ``/admin`` needs ``Authorization: Bearer <CUTOVER_ADMIN_TOKEN>``
(:mod:`app.admin.auth`); with no token configured it is off (503). Handlers are thin:
they call :mod:`app.admin`, which reads each area's records and performs actions
through each area's own functions (stage changes through ``FlagService`` and its
gate, pause/resume through ``backfill.control``, replays through the subscribers
area). Refusals come back as JSON ``{"error", "reason"}``: 409 when the gate refuses,
404 for an unknown entity or subscription, 502 when the flag backend fails, 503 when
a store is down (the app's handlers). ``/healthz`` needs no token and never fails; it
shows each dependency's state only, and ``/admin/health`` the full report (targets,
reasons, latencies). Path parameters are percent-encoded segments, decoded once by the
route class (:mod:`app.paths`), so a client id may hold ``/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.admin import audit, backfill, overview, shadow, stages, subscriptions, verification
from app.admin.auth import AdminDep, require_admin
from app.admin.health import public_view
from app.api.deps import ServicesDep
from app.paths import DecodedPathRoute
from core.config import ConfigError
from core.redaction import redact
from flags.gate import GateRefused
from flags.stages import ClientIdError, FlagError, InputError, ListLimitError
from stores.runtime import Runtime


def _no_store(response: Response) -> None:
    """Admin answers describe live state and must never be cached by a proxy."""
    response.headers["Cache-Control"] = "no-store"


admin = APIRouter(
    prefix="/admin",
    tags=["admin"],
    route_class=DecodedPathRoute,
    dependencies=[Depends(require_admin), Depends(_no_store)],
    responses={
        401: {"description": "missing or invalid bearer token"},
        503: {"description": "admin API disabled (no token configured) or a store down"},
    },
)


def _fail(status: int, error: str, reason: str) -> HTTPException:
    return HTTPException(status, detail={"error": error, "reason": redact(reason)})


@contextmanager
def _answers() -> Iterator[None]:
    """Known refusals of the areas, as JSON errors with their reason."""
    try:
        yield
    except ConfigError as exc:
        raise _fail(404, "UnknownName", str(exc)) from None
    except GateRefused as exc:
        raise _fail(409, "GateRefused", str(exc)) from None
    except ClientIdError as exc:
        raise _fail(422, "InvalidClientId", str(exc)) from None
    except FlagError as exc:
        raise _fail(502, "FlagBackendError", str(exc)) from None
    except LookupError as exc:
        raise _fail(404, "NotFound", str(exc.args[0] if exc.args else exc)) from None


def _rt(services: ServicesDep) -> Runtime:
    return services.runtime


RuntimeDep = Annotated[Runtime, Depends(_rt)]


def _actor(name: str | None, address: str) -> str:
    """Who acted, for the audit: the name the operator gave (or ``admin-api``) and from where."""
    return f"{(name or 'admin-api').strip()[:80]}@{address} (admin API)"


class Action(BaseModel):
    reason: str | None = Field(None, max_length=500, description="Why; kept in the audit.")
    actor: str | None = Field(None, max_length=80, description="Who (default: admin-api).")


class StageChange(Action):
    client: str = Field(..., min_length=1, max_length=255, description="Exact client id.")
    stage: Literal["old", "shadow", "new"]


class Rollback(Action):
    client: str = Field(..., min_length=1, max_length=255, description="Exact client id.")


class Hold(Action):
    client: str = Field(..., min_length=1, max_length=255, description="Exact client id.")
    stage: Literal["old", "shadow"] = Field("old", description="The stage it is held at.")
    release: bool = Field(False, description="Drop the client's exceptions instead.")


class Cohort(Action):
    stage: Literal["shadow", "new"]
    percent: int = Field(..., ge=0, le=100, description="Share of clients, by clientId hash.")
    dry_run: bool = Field(False, description="Only compute the step and the gate's verdict.")


class Kill(Action):
    confirm: str = Field(..., description="The entity's name again, to confirm.")


class Replay(Action):
    ids: list[str] | None = Field(
        None, max_length=10_000, description="Message ids to replay (default: every open one)."
    )


# -- overview ---------------------------------------------------------------------------
@admin.get("/overview")
def get_overview(rt: RuntimeDep, audit_limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
    """Everything the console shows: per entity every client's stage, backfill state,
    latest verification and shadow mismatches; backfill progress; subscription health;
    the audit log. Parts that cannot be read are named in ``errors``."""
    return overview.overview(rt, audit_limit=audit_limit)


@admin.get("/entities/{entity}")
def get_entity(entity: str, rt: RuntimeDep) -> dict[str, Any]:
    with _answers():
        name = rt.cfg.entity(entity).name
        return overview.entity_overview(rt, name)


# -- flags ------------------------------------------------------------------------------
@admin.get("/flags")
def get_all_stages(rt: RuntimeDep) -> list[dict[str, Any]]:
    """Every entity's clients and their read stage (old, shadow, new)."""
    with _answers():
        return [stages.stages(rt, name) for name in rt.cfg.entities]


@admin.get("/flags/{entity}")
def get_stages(entity: str, rt: RuntimeDep) -> dict[str, Any]:
    with _answers():
        return stages.stages(rt, entity)


@admin.post("/flags/{entity}/stage")
def post_stage(entity: str, body: StageChange, rt: RuntimeDep, who: AdminDep) -> dict[str, Any]:
    """Move one client to a stage. ``new`` passes only the cutover gate (409 with the
    reason otherwise); the gate cannot be overridden here (CLI ``--force`` only)."""
    with _answers(), _stage_refusals():
        return stages.set_stage(
            rt, entity, body.client, body.stage, actor=_actor(body.actor, who), reason=body.reason
        )


@admin.post("/flags/{entity}/rollback")
def post_rollback(entity: str, body: Rollback, rt: RuntimeDep, who: AdminDep) -> dict[str, Any]:
    """Send one client's reads back to RethinkDB now (no gate, no store needed)."""
    with _answers():
        return stages.rollback(
            rt,
            entity,
            body.client,
            actor=_actor(body.actor, who),
            reason=body.reason or "rollback from the admin API",
        )


@contextmanager
def _stage_refusals() -> Iterator[None]:
    """A list over the server's limit is a refusal (409), not a backend failure."""
    try:
        yield
    except ListLimitError as exc:
        raise _fail(409, "ListLimit", str(exc)) from None
    except ClientIdError:
        raise  # InvalidClientId, as on every route
    except InputError as exc:
        raise _fail(422, "InvalidInput", str(exc)) from None


@admin.post("/flags/{entity}/except")
def post_except(entity: str, body: Hold, rt: RuntimeDep, who: AdminDep) -> dict[str, Any]:
    """Hold one client at ``old`` (or ``shadow``) whatever the cohorts do, at any
    percentage; ``release`` lets it follow the cohorts again (gate applies for ``new``).
    409 when the exceptions are full (the limit is named)."""
    with _answers(), _stage_refusals():
        return stages.hold(
            rt,
            entity,
            body.client,
            body.stage,
            release=body.release,
            actor=_actor(body.actor, who),
            reason=body.reason,
        )


@admin.post("/flags/{entity}/cohort")
def post_cohort(entity: str, body: Cohort, rt: RuntimeDep, who: AdminDep) -> dict[str, Any]:
    """Set the share of clients (by clientId hash) in a stage. A step that switches
    clients to ``new`` is refused (409) unless every known client it switches passes
    the gate: the reason says how many block it, names the first ones and the file
    that lists them all. Never forced here (CLI ``--force`` only)."""
    with _answers(), _stage_refusals():
        return stages.cohort(
            rt,
            entity,
            body.stage,
            body.percent,
            dry_run=body.dry_run,
            actor=_actor(body.actor, who),
            reason=body.reason,
        )


@admin.post("/flags/{entity}/kill")
def post_kill(entity: str, body: Kill, rt: RuntimeDep, who: AdminDep) -> dict[str, Any]:
    """Kill switch: every client of the entity back to ``old``. ``confirm`` must repeat
    the entity's name (422 otherwise), so a stray request cannot trigger it."""
    with _answers():
        name = rt.cfg.entity(entity).name
        if body.confirm != name:
            raise _fail(422, "NotConfirmed", f"kill switch not applied: 'confirm' must be {name!r}")
        return stages.kill(
            rt,
            name,
            actor=_actor(body.actor, who),
            reason=body.reason or "kill switch from the admin API",
        )


# -- backfill ---------------------------------------------------------------------------
@admin.get("/backfill")
def get_backfills(rt: RuntimeDep) -> list[dict[str, Any]]:
    """Every entity's backfill: paused or not, runs with progress, rate (rows/s), ETA (s)."""
    return backfill.all_backfills(rt)


@admin.get("/backfill/{entity}")
def get_backfill(entity: str, rt: RuntimeDep) -> dict[str, Any]:
    with _answers():
        return backfill.entity_backfill(rt, entity)


@admin.get("/backfill/{entity}/runs/{run_id}")
def get_run(entity: str, run_id: str, rt: RuntimeDep) -> dict[str, Any]:
    """One run with each partition's checkpoint and lease."""
    with _answers():
        rt.cfg.entity(entity)
        found = backfill.find_run(rt, run_id)
        if found is None or found["entity"] != entity:
            raise LookupError(f"no backfill run {run_id!r} for {entity}")
        return found


@admin.post("/backfill/{entity}/pause")
def post_pause(entity: str, body: Action, rt: RuntimeDep, who: AdminDep) -> dict[str, Any]:
    """Pause the entity's backfill on every worker (within one batch); leases are kept."""
    with _answers():
        reason = body.reason or "paused from the admin API"
        return backfill.set_paused(rt, entity, True, f"{reason} ({_actor(body.actor, who)})")


@admin.post("/backfill/{entity}/resume")
def post_resume(entity: str, body: Action, rt: RuntimeDep, who: AdminDep) -> dict[str, Any]:
    with _answers():
        return backfill.set_paused(rt, entity, False)


# -- verification -----------------------------------------------------------------------
@admin.get("/verification")
def get_verifications(rt: RuntimeDep) -> dict[str, list[dict[str, Any]]]:
    """The latest verification of every client, per entity (clean, or how many differences)."""
    return {name: verification.latest(rt, name) for name in rt.cfg.entities}


@admin.get("/verification/{entity}")
def get_verification(entity: str, rt: RuntimeDep) -> list[dict[str, Any]]:
    with _answers():
        return verification.latest(rt, entity)


@admin.get("/verification/{entity}/{client}")
def get_verification_history(
    entity: str, client: str, rt: RuntimeDep, limit: int = Query(50, ge=1, le=1000)
) -> list[dict[str, Any]]:
    """One client's verifications, newest first, with the differences by kind."""
    with _answers():
        return verification.history(rt, entity, client, limit)


# -- rollout plans ----------------------------------------------------------------------
@admin.get("/rollout/{entity}")
def get_rollout(entity: str, rt: RuntimeDep) -> dict[str, Any]:
    """The entity's rollout plan: state and reason, waves with their progress and
    guardrail figures, the lease, recent events."""
    from flags.rollout import plan_report

    with _answers():
        return plan_report(rt, entity)


# -- shadow reads -----------------------------------------------------------------------
@admin.get("/shadow/{entity}", response_model=shadow.ShadowReport)
def get_shadow(
    entity: str,
    rt: RuntimeDep,
    client: str | None = None,
    limit: int = Query(50, ge=1, le=1000, description="Recent mismatch records."),
    client_limit: int = Query(1000, ge=0, le=100_000, description="Clients listed."),
    window_s: int | None = Query(None, ge=60, description="Default: the gate's window."),
) -> shadow.ShadowReport:
    """Each client's shadow evidence over the window (comparisons, mismatches, rate, and
    whether the gate's policy passes it), from every API process; the entity's totals;
    recorded mismatches per client and the latest ones (newest first)."""
    with _answers():
        return shadow.report(
            rt, entity, client=client, limit=limit, client_limit=client_limit, window_s=window_s
        )


# -- subscriptions ----------------------------------------------------------------------
@admin.get("/subscriptions")
def get_subscriptions(rt: RuntimeDep) -> dict[str, Any]:
    """Each subscription's status, applied/failed counts and lag, and its failure log:
    open entries (``failure_log_size``) and, in ``failure_log``, entries per status,
    when the oldest was first seen and the declared retention in days (0: forever;
    ``cutover subs failures purge`` enforces it)."""
    with _answers():
        return subscriptions.health(rt)


@admin.get("/subscriptions/{name}/failures")
def get_failures(
    name: str,
    rt: RuntimeDep,
    limit: int = Query(100, ge=1, le=1000),
    status: Literal["open", "replayed", "all"] = "open",
) -> dict[str, Any]:
    """The failure log of one subscription, newest first (bodies cut at 500 characters)."""
    with _answers():
        return subscriptions.failures_of(rt, name, status=status, limit=limit)


@admin.get("/subscriptions/{name}/failures/{failure_id}")
def get_failure(name: str, failure_id: str, rt: RuntimeDep) -> dict[str, Any]:
    """One failure in full: raw body, attributes, error, attempts, first and last seen."""
    with _answers():
        return subscriptions.failure(rt, name, failure_id)


@admin.post("/subscriptions/{name}/replay")
def post_replay(name: str, body: Replay, rt: RuntimeDep, who: AdminDep) -> dict[str, Any]:
    """Replay logged failures (the given ids, or all) through the subscription's sink."""
    with _answers():
        return subscriptions.replay(rt, name, body.ids, actor=_actor(body.actor, who))


# -- audit ------------------------------------------------------------------------------
@admin.get("/audit")
def get_audit(
    rt: RuntimeDep, entity: str | None = None, limit: int = Query(100, ge=1, le=5000)
) -> list[dict[str, Any]]:
    """Every area's audit records, newest first (stage changes, replays, ...)."""
    with _answers():
        return audit.entries(rt, entity=entity, limit=limit)


# -- health -----------------------------------------------------------------------------
def _health_answer(report: dict[str, Any], strict: bool) -> JSONResponse:
    status = 503 if strict and report["status"] != "ok" else 200
    return JSONResponse(report, status, headers={"Cache-Control": "no-store"})


@admin.get("/health")
async def get_health(services: ServicesDep, strict: bool = False) -> JSONResponse:
    """Each dependency (Pub/Sub, SQL store, RethinkDB, Unleash): state, what was checked
    (host, port, URL), the reason when down and the latency. Secrets are redacted.
    ``?strict=true`` answers 503 when any is down."""
    return _health_answer(await services.health.report(), strict)


ops = APIRouter(tags=["ops"], route_class=DecodedPathRoute)


@ops.get("/healthz")
async def dependency_health(services: ServicesDep, strict: bool = False) -> JSONResponse:
    """Each dependency (Pub/Sub, SQL store, RethinkDB, Unleash) with its state, up or down.

    Always 200 (a status page that never fails), unless ``?strict=true``: then 503
    when any dependency is down, for load balancers. No hosts, ports, user names, URLs
    or reasons: those are in ``/admin/health``. Checks run in parallel with ~2 s
    timeouts; a result is reused for 1.5 s and one check runs at a time, so calling
    this often costs nothing.
    """
    return _health_answer(public_view(await services.health.report()), strict)


#: What ``app.main`` mounts: ``/admin/...`` and ``/healthz``.
router = APIRouter()
router.include_router(admin)
router.include_router(ops)
