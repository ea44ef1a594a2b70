"""Stage flags in a real Unleash server, through its Admin API.

Product teams see and edit the same flags in Unleash's UI, so every write assumes a
human may have changed things in between and re-reads before it decides. Unleash's
traps, and what is done about each:

* a flag switched on with no strategy (or with a strategy that does not constrain
  ``clientId``) is on for EVERY client: the constrained strategy is written first, the
  environment is switched on only after a re-read shows every active strategy is
  constrained, and a loose strategy makes the write fail instead;
* an empty id list is rejected (400): removing the last client switches the
  environment off first, then deletes the strategy;
* ids match exactly: values are sent verbatim with ``caseInsensitive: false``;
* a hung server: every call has the configured timeout and fails with a FlagError.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import httpx

from cutover.redaction import redact
from cutover.settings import Settings

from .stages import (
    CONTEXT_FIELD,
    FLAGGED,
    EntityFlags,
    FlagError,
    FlagState,
    Stage,
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
                    "are constrained on it. Values match exactly.",
                    "stickiness": False,
                },
                ok=(200, 201, 409),
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

    # -- writes -----------------------------------------------------------------------
    def _switch(self, flag: str, on: bool) -> None:
        self._call("POST", f"{self._env_path(flag)}/{'on' if on else 'off'}", ok=(200, 201, 204))

    def write(self, entity: str, stage: Stage, ids: Iterable[str]) -> None:
        flag = flag_name(entity, stage)
        wanted = sorted(set(ids))
        state, strategies = self._flag(flag)
        if not state.exists:
            self.ensure([entity])
            state, strategies = self._flag(flag)
        ours = [s for s in strategies if not s.get("disabled") and constrained_ids(s) is not None]
        if not wanted:
            # Off first: an environment with no strategy left must never be on.
            if state.enabled:
                self._switch(flag, False)
            for strat in ours:
                self._call(
                    "DELETE", f"{self._env_path(flag)}/strategies/{strat['id']}", ok=(200, 204, 404)
                )
            return
        body = strategy(flag, wanted)
        if ours:
            self._call("PUT", f"{self._env_path(flag)}/strategies/{ours[0]['id']}", json=body)
            for extra in ours[1:]:  # merged into the first one: their ids were in `wanted`
                self._call(
                    "DELETE", f"{self._env_path(flag)}/strategies/{extra['id']}", ok=(200, 204, 404)
                )
        else:
            self._call("POST", f"{self._env_path(flag)}/strategies", json=body)
        after, _ = self._flag(flag)
        if after.unconstrained:
            raise FlagError(
                f"refusing to switch {flag} on: it has a strategy without a clientId "
                "constraint, which would switch every client. Remove it in the Unleash UI."
            )
        if after.ids != frozenset(wanted):
            raise FlagError(
                f"{flag}: Unleash holds {sorted(after.ids)} after writing {wanted} "
                "(changed concurrently?); run the command again"
            )
        if not after.enabled:
            self._switch(flag, True)

    def kill(self, entity: str) -> None:
        flags = [flag_name(entity, s) for s in (Stage.NEW, Stage.SHADOW)]
        for flag in flags:  # everyone back to old first, before any other call can fail
            if self._call("GET", self._env_path(flag), ok=(200, 404)).status_code == 200:
                self._switch(flag, False)
        for stage in (Stage.NEW, Stage.SHADOW):
            self.write(entity, stage, [])


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return redact(response.text[:300])
    details = "; ".join(str(d.get("message", d)) for d in body.get("details") or [])
    return redact(details or str(body.get("message") or body)[:300])
