"""The embedded default: stage flags in a local JSON file, no Unleash server needed.

The file holds exactly what Unleash's ``/api/client/features`` would return for the
same flags (pilot list and cohort strategies, :mod:`flags.stages`), so the API
evaluates it with the same ``UnleashClient`` SDK (offline, from a bootstrap) and the
same rules apply, limits included (the server's default of 250 ids per list): a flag
is on only when its rule switches someone, an empty rule means off with no strategy.
Writers take an exclusive lock and replace the file atomically, so a reader never
sees half a file and two CLI commands never lose each other's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from core.settings import Settings

from .stages import (
    DEFAULT_LIST_LIMIT,
    FLAGGED,
    EntityFlags,
    FlagError,
    FlagState,
    Stage,
    StageRule,
    StageRules,
    describe,
    feature,
    flag_name,
)

FILE_NAME = "flags.json"


def flag_file(settings: Settings) -> Path:
    return settings.state_dir / "flags" / FILE_NAME


def empty_snapshot() -> dict[str, Any]:
    return {"version": 2, "features": []}


def load_snapshot(path: Path) -> dict[str, Any]:
    """The file's content; a missing file is "no flags" (every client ``old``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return empty_snapshot()
    except (OSError, ValueError) as exc:
        raise FlagError(f"flag file {path} is unreadable: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("features"), list):
        raise FlagError(f"flag file {path} is not an Unleash features document")
    return data


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class FileBackend:
    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def from_settings(cls, settings: Settings) -> FileBackend:
        return cls(flag_file(settings))

    def where(self) -> str:
        return f"flag file {self.path}"

    def close(self) -> None:
        pass

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The snapshot under an exclusive lock; written back when the block succeeds."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = load_snapshot(self.path)
                before = json.dumps(data, sort_keys=True)
                yield data
                if json.dumps(data, sort_keys=True) != before:
                    write_atomically(self.path, data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _find(data: dict[str, Any], flag: str) -> dict[str, Any] | None:
        return next((f for f in data["features"] if f.get("name") == flag), None)

    def ensure(self, entities: Iterable[str]) -> None:
        with self._locked() as data:
            for entity in entities:
                for stage in FLAGGED:
                    flag = flag_name(entity, stage)
                    if self._find(data, flag) is None:
                        data["features"].append(
                            feature(flag, StageRule(), description=describe(entity, stage))
                        )
            data["features"].sort(key=lambda f: str(f.get("name")))

    def _state(self, data: dict[str, Any], flag: str) -> FlagState:
        found = self._find(data, flag)
        if found is None:
            return FlagState(flag)
        return FlagState.from_strategies(
            flag, bool(found.get("enabled")), found.get("strategies") or []
        )

    def read(self, entity: str) -> EntityFlags:
        data = load_snapshot(self.path)
        return EntityFlags(
            entity,
            self._state(data, flag_name(entity, Stage.SHADOW)),
            self._state(data, flag_name(entity, Stage.NEW)),
        )

    def list_limit(self) -> int:
        """Ids per list: Unleash's default, so a file-backed rehearsal meets the same limit."""
        return DEFAULT_LIST_LIMIT

    def apply(self, entity: str, stage: Stage, rule: StageRule) -> None:
        flag = flag_name(entity, stage)
        # The server refuses a longer list (400); the file refuses it the same way.
        StageRules(entity).with_rule(stage, rule).check_limits(self.list_limit(), changed=[stage])
        with self._locked() as data:
            current = self._find(data, flag)
            if current is not None and self._state(data, flag).foreign and rule.switches_anyone:
                raise FlagError(
                    f"refusing to switch {flag} on: the flag file gives it a strategy "
                    "without a clientId constraint, which would switch every client"
                )
            self._replace(data, flag, feature(flag, rule, description=describe(entity, stage)))

    def write(self, entity: str, stage: Stage, ids: Iterable[str]) -> None:
        """Make ``ids`` exactly the stage's pilot list, keeping its cohort."""
        rule = self.read(entity).flag(stage).rule
        self.apply(entity, stage, StageRule(frozenset(ids), rule.percent, rule.excepted))

    @staticmethod
    def _replace(data: dict[str, Any], flag: str, replacement: dict[str, Any]) -> None:
        data["features"] = [f for f in data["features"] if f.get("name") != flag]
        data["features"].append(replacement)
        data["features"].sort(key=lambda f: str(f.get("name")))

    def kill(self, entity: str) -> None:
        # One atomic file replacement: both flags go off together.
        with self._locked() as data:
            for stage in FLAGGED:
                flag = flag_name(entity, stage)
                self._replace(
                    data, flag, feature(flag, StageRule(), description=describe(entity, stage))
                )
