"""Where the stage flags are written: a real Unleash server, or the embedded file.

Both backends hold the same definitions and obey the same rules, so everything above
them (the service, the CLI, the status view) is written once against this protocol.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from core.config import ConfigError
from core.settings import Settings

from .stages import EntityFlags, Stage, StageRule


class FlagBackend(Protocol):
    #: "unleash" or "file", recorded in the audit.
    name: str

    def where(self) -> str:
        """A human description of the backend (no secrets)."""

    def ensure(self, entities: Iterable[str]) -> None:
        """Create the context field and both stage flags of each entity when missing."""

    def read(self, entity: str) -> EntityFlags:
        """Both stage flags of an entity as they are now."""

    def list_limit(self) -> int:
        """How many ids one list (a constraint's values) may hold on this backend."""

    def apply(self, entity: str, stage: Stage, rule: StageRule) -> None:
        """Make ``rule`` exactly what the entity's ``stage`` flag holds.

        The strategies are written before the flag is switched on, and a flag with a
        foreign strategy (one that may switch every client) is never switched on; a
        rule that switches nobody switches the flag off first, then removes what it
        no longer needs. A list over :meth:`list_limit` is refused (ListLimitError).
        """

    def write(self, entity: str, stage: Stage, ids: Iterable[str]) -> None:
        """Make ``ids`` exactly the stage's pilot list, keeping its cohort."""

    def kill(self, entity: str) -> None:
        """Switch both flags off at once (every client reads ``old``), then clear them
        (pilot lists, cohorts and exceptions)."""

    def close(self) -> None: ...


def backend_for(settings: Settings) -> FlagBackend:
    """The Unleash Admin API when ``unleash_url`` is set, else the local flag file."""
    if settings.unleash_url:
        from .unleash_admin import UnleashAdmin

        if settings.unleash_admin_token is None:
            raise ConfigError(
                "CUTOVER_UNLEASH_URL is set but CUTOVER_UNLEASH_ADMIN_TOKEN is not: "
                "changing stages needs an admin token (form '*:*.<secret>')"
            )
        return UnleashAdmin.from_settings(settings)
    from .file_backend import FileBackend

    return FileBackend.from_settings(settings)
