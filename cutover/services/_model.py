"""The data types every service module shares.

Kept apart from the process plumbing so that importing :mod:`cutover.services` stays
cheap: no gRPC, driver or ODBC import happens until a server is really checked.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: Every server binds here and only here: the machine may run its own servers on the
#: standard ports and on other interfaces, and tests must never reach those.
HOST = "127.0.0.1"

_SECRET_HINTS = ("token", "secret", "password")


class ServiceError(RuntimeError):
    """A local server could not be installed, started, checked or stopped.

    The message is meant for a human: it names the server, says what failed and, when
    the server wrote a log, ends with the log's last lines (secrets masked).
    """


@dataclass(frozen=True, repr=False)
class ServiceInfo:
    """Where one started server listens, as recorded in ``state.json``.

    ``extra`` carries per-server details (``odbc_dsn``, ``admin_token``, ...). Its
    secrets are masked in ``repr`` so that printing an info never leaks a token.
    """

    name: str
    host: str
    port: int
    pid: int
    url: str
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        shown = {k: ("***" if is_secret_key(k) else v) for k, v in self.extra.items()}
        return (
            f"ServiceInfo(name={self.name!r}, host={self.host!r}, port={self.port}, "
            f"pid={self.pid}, url={self.url!r}, log_path={str(self.log_path)!r}, extra={shown!r})"
        )

    def secrets(self) -> list[str]:
        """The secret values in ``extra``: masked wherever a log or message is shown."""
        return [v for k, v in self.extra.items() if is_secret_key(k) and v]


def is_secret_key(key: str) -> bool:
    return any(hint in key.lower() for hint in _SECRET_HINTS)


@dataclass(frozen=True)
class Record:
    """A started server plus what identifies its process beyond the PID.

    ``start_ticks`` is the process start time from ``/proc/PID/stat``: a PID recorded by
    another, long-gone process may have been reused by an unrelated program, which must
    never be signalled.
    """

    info: ServiceInfo
    start_ticks: int | None


@dataclass(frozen=True)
class Context:
    """Where a server keeps its files and how it is tuned.

    ``state_dir`` is absolute; each server owns ``<state_dir>/services/<name>/``.
    ``fsync=False`` trades crash safety for speed (fine for tests and demos).
    ``ports`` holds each server's last port: a starter asks for it again
    (``_proc.port_or_free``) so a restart keeps the address others point at.
    """

    state_dir: Path
    fsync: bool = False
    ports: Mapping[str, int] = field(default_factory=dict)

    @property
    def services_dir(self) -> Path:
        return self.state_dir / "services"

    def service_dir(self, name: str) -> Path:
        path = self.services_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


Starter = Callable[[Context, Mapping[str, ServiceInfo]], Record]
Checker = Callable[[ServiceInfo], tuple[bool, str]]


@dataclass(frozen=True)
class Spec:
    """How to start, check and stop one kind of server.

    ``requires`` names servers that must run first (their infos are passed to
    ``start``); ``stop_signal`` is what asks it to shut down cleanly.
    """

    name: str
    start: Starter
    check: Checker
    requires: tuple[str, ...] = ()
    stop_signal: int = signal.SIGTERM
