"""Stage flags in a real Unleash server, through its Admin API.

Product teams see and edit the same flags in Unleash's UI, so every write assumes a
human may have changed things in between and re-reads before it decides. Unleash's
traps, and what is done about each:

* a flag switched on with no strategy (or with a strategy cutover does not manage,
  :mod:`flags.stages`) is on for EVERY client: strategies are written before the
  environment is switched on, only after a re-read shows no foreign strategy, and
  strategies are added before others are deleted, so an enabled flag never has none;
  a foreign strategy makes the write fail instead;
* an empty id list is rejected (400): a rule with no pilot list has no pilot
  strategy, one with no exception has a cohort without constraint, and a rule that
  switches nobody switches the environment off first, then deletes what it no longer
  needs;
* lists are limited (250 values per constraint by default): the limit is read from
  the server's UI config and checked before anything is written;
* ids match exactly: values are sent verbatim with ``caseInsensitive: false``;
* a hung server: every call has the configured timeout and fails with a FlagError.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import httpx

from core.redaction import redact
from core.settings import Settings

from .stages import (
    CONTEXT_FIELD,
    DEFAULT_LIST_LIMIT,
    FLAGGED,
    EntityFlags,
    FlagError,
    FlagState,
    Stage,
    StageRule,
    StageRules,
    cohort_group,
    cohort_of,
    cohort_strategy,
    constrained_ids,
    describe,
    flag_name,
    strategy,
)


class UnleashAdmin:
    """The Admin API of one Unleash project and environment."""

    name = "unleash"

    def __init__(
        self,
        url: str,
        admin_token: str,
        *,
        project: str = "default",
        environment: str = "development",
        timeout_s: float = 3.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.project = project
        self.environment = environment
        self._token = admin_token
        self._limit: int | None = None
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": admin_token, "Content-Type": "application/json"},
            timeout=httpx.Timeout(timeout_s),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> UnleashAdmin:
        assert settings.unleash_url and settings.unleash_admin_token
        return cls(
            settings.unleash_url,
            settings.unleash_admin_token.get_secret_value(),
            project=settings.unleash_project,
            environment=settings.unleash_environment,
            timeout_s=settings.unleash_request_timeout_s,
        )

    def where(self) -> str:
        return f"Unleash {self.url} (project {self.project}, environment {self.environment})"

    def close(self) -> None:
        self._http.close()

    # -- HTTP -------------------------------------------------------------------------
    def _call(
        self, method: str, path: str, *, json: Any = None, ok: tuple[int, ...] = (200, 201)
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=json)
        except httpx.TimeoutException:
            raise FlagError(
                f"Unleash at {self.url} did not answer {method} {path} in time"
            ) from None
        except httpx.HTTPError as exc:
            raise FlagError(f"Unleash at {self.url} unreachable: {redact(str(exc))}") from None
        if response.status_code not in ok:
            raise FlagError(
                f"Unleash {method} {path} answered {response.status_code}: {_message(response)}"
            )
        return response

    def _feature_path(self, flag: str) -> str:
        return f"/api/admin/projects/{quote(self.project)}/features/{quote(flag)}"

    def _env_path(self, flag: str) -> str:
        return f"{self._feature_path(flag)}/environments/{quote(self.environment)}"

    # -- setup ------------------------------------------------------------------------
    def ensure(self, entities: Iterable[str]) -> None:
        found = self._call("GET", f"/api/admin/context/{CONTEXT_FIELD}", ok=(200, 404))
        if found.status_code == 404:
            self._call(
                "POST",
                "/api/admin/context",
                json={
                    "name": CONTEXT_FIELD,
                    "description": "The product's client (tenant) id; cutover read stages "
                    "are constrained and bucketed (cohorts) on it. Values match exactly.",
                    "stickiness": True,
                },
                ok=(200, 201, 409),
            )
        elif not found.json().get("stickiness"):
            # The UI offers a field as a cohort's stickiness only when it is marked so.
            self._call(
                "PUT",
                f"/api/admin/context/{CONTEXT_FIELD}",
                json={**found.json(), "stickiness": True},
                ok=(200, 204),
            )
        for entity in entities:
            for stage in FLAGGED:
                flag = flag_name(entity, stage)
                if self._call("GET", self._feature_path(flag), ok=(200, 404)).status_code == 404:
                    self._call(
                        "POST",
                        f"/api/admin/projects/{quote(self.project)}/features",
                        json={
                            "name": flag,
                            "type": "release",
                            "description": describe(entity, stage),
                            "impressionData": False,
                        },
                        ok=(200, 201, 409),
                    )

    # -- reads ------------------------------------------------------------------------
    def _flag(self, flag: str) -> tuple[FlagState, list[dict[str, Any]]]:
        response = self._call("GET", self._env_path(flag), ok=(200, 404))
        if response.status_code == 404:
            return FlagState(flag), []
        body = response.json()
        strategies = list(body.get("strategies") or [])
        return FlagState.from_strategies(flag, bool(body.get("enabled")), strategies), strategies

    def read(self, entity: str) -> EntityFlags:
        shadow, _ = self._flag(flag_name(entity, Stage.SHADOW))
        new, _ = self._flag(flag_name(entity, Stage.NEW))
        return EntityFlags(entity, shadow, new)

    def list_limit(self) -> int:
        """The server's values-per-constraint limit (its UI config), 250 if not shown."""
        if self._limit is None:
            body = self._call("GET", "/api/admin/ui-config").json()
            try:
                self._limit = int(body["resourceLimits"]["constraintValues"])
            except (KeyError, TypeError, ValueError):
                self._limit = DEFAULT_LIST_LIMIT
        return self._limit

    # -- writes -----------------------------------------------------------------------
    def _switch(self, flag: str, on: bool) -> None:
        self._call("POST", f"{self._env_path(flag)}/{'on' if on else 'off'}", ok=(200, 201, 204))

    def _delete(self, flag: str, strat: dict[str, Any]) -> None:
        self._call("DELETE", f"{self._env_path(flag)}/strategies/{strat['id']}", ok=(200, 204, 404))

    def _put(self, flag: str, existing: list[dict[str, Any]], body: dict[str, Any]) -> None:
        if existing:
            self._call("PUT", f"{self._env_path(flag)}/strategies/{existing[0]['id']}", json=body)
        else:
            self._call("POST", f"{self._env_path(flag)}/strategies", json=body)

    def apply(self, entity: str, stage: Stage, rule: StageRule) -> None:
        flag = flag_name(entity, stage)
        StageRules(entity).with_rule(stage, rule).check_limits(self.list_limit(), changed=[stage])
        state, strategies = self._flag(flag)
        if not state.exists:
            self.ensure([entity])
            state, strategies = self._flag(flag)
        if state.foreign and rule.switches_anyone:
            raise _loose(flag)
        active = [s for s in strategies if not s.get("disabled")]
        pilots = [s for s in active if constrained_ids(s) is not None]
        group = cohort_group(entity)
        cohorts = [
            s for s in active if constrained_ids(s) is None and cohort_of(s, group) is not None
        ][:1]
        if state.enabled and not rule.switches_anyone:
            self._switch(flag, False)  # off first: a flag left with no strategy must be off
        # Writes before deletes: an enabled flag never has zero strategies (= everyone).
        if rule.pilot:
            self._put(flag, pilots, strategy(flag, rule.pilot))
        if rule.has_cohort:
            self._put(flag, cohorts, cohort_strategy(flag, rule))
        stale = (pilots[1:] if rule.pilot else pilots) + ([] if rule.has_cohort else cohorts)
        for strat in stale:  # extra pilot lists were merged into the first: their ids are in
            self._delete(flag, strat)
        after, _ = self._flag(flag)
        if after.foreign and rule.switches_anyone:
            raise _loose(flag)
        if after.rule != rule:
            raise FlagError(
                f"{flag}: Unleash holds {after.rule.summary()} after writing {rule.summary()} "
                "(changed concurrently?); run the command again"
            )
        if rule.switches_anyone and not after.enabled:
            self._switch(flag, True)

    def write(self, entity: str, stage: Stage, ids: Iterable[str]) -> None:
        """Make ``ids`` exactly the stage's pilot list, keeping its cohort."""
        rule = self.read(entity).flag(stage).rule
        self.apply(entity, stage, StageRule(frozenset(ids), rule.percent, rule.excepted))

    def kill(self, entity: str) -> None:
        flags = [flag_name(entity, s) for s in (Stage.NEW, Stage.SHADOW)]
        for flag in flags:  # everyone back to old first, before any other call can fail
            if self._call("GET", self._env_path(flag), ok=(200, 404)).status_code == 200:
                self._switch(flag, False)
        for stage in (Stage.NEW, Stage.SHADOW):
            self.apply(entity, stage, StageRule())


def _loose(flag: str) -> FlagError:
    return FlagError(
        f"refusing to switch {flag} on: it has a strategy without a clientId "
        "constraint, which would switch every client. Remove it in the Unleash UI."
    )


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return redact(response.text[:300])
    details = "; ".join(str(d.get("message", d)) for d in body.get("details") or [])
    return redact(details or str(body.get("message") or body)[:300])
