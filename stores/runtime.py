"""What every command and the service need: settings, config and the stores.

One place builds them (like FastAPI's ``deps``), so the CLI, the workers and the API
open stores the same way and a production DSN set in the environment reaches all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from core.config import Config, load_config
from core.settings import Settings
from stores.rethink import RethinkStore
from stores.sql import SqlStore


@dataclass
class Runtime:
    settings: Settings = field(default_factory=lambda: Settings())
    config: Config | None = None

    def __post_init__(self) -> None:
        if self.config is None:
            self.config = load_config(self.settings.config_file)

    @property
    def cfg(self) -> Config:
        assert self.config is not None
        return self.config

    @cached_property
    def sql(self) -> SqlStore:
        return SqlStore.from_settings(self.settings, self.cfg)

    @cached_property
    def rethink(self) -> RethinkStore:
        return RethinkStore.from_settings(self.settings, self.cfg)

    def close(self) -> None:
        if "sql" in self.__dict__:
            self.sql.close()
        if "rethink" in self.__dict__:
            self.rethink.close()
