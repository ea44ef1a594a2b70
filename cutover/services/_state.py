"""``<state_dir>/services/state.json`` and ``<state_dir>/services.env``.

The state file is how ``down`` and ``status`` in another process find the servers
``up`` started. It holds tokens, so it and the env file are written 0600, atomically
(a reader never sees half a file), under a lock shared by ``up`` and ``down``.

It also remembers the last port of every server that ever ran (``ports``), kept
across ``down``, so that a restart can come back on the same address and whatever
was pointed at it (``services.env``, an exported variable, a dependent server)
stays valid.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cutover.services._model import Record, ServiceInfo

_PLAIN = re.compile(r"[A-Za-z0-9_.:/@+,-]*")


def state_file(state_dir: Path) -> Path:
    return state_dir / "services" / "state.json"


def env_file(state_dir: Path) -> Path:
    return state_dir / "services.env"


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Serialise ``up``/``down`` across processes for one state dir."""
    path = state_dir / "services" / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to a file only the owner can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _to_json(record: Record) -> dict[str, Any]:
    info = record.info
    return {
        "name": info.name,
        "host": info.host,
        "port": info.port,
        "pid": info.pid,
        "start_ticks": record.start_ticks,
        "url": info.url,
        "log_path": str(info.log_path),
        "extra": dict(info.extra),
    }


def _from_json(data: Mapping[str, Any]) -> Record:
    info = ServiceInfo(
        name=str(data["name"]),
        host=str(data["host"]),
        port=int(data["port"]),
        pid=int(data["pid"]),
        url=str(data["url"]),
        log_path=Path(data["log_path"]),
        extra={str(k): str(v) for k, v in dict(data.get("extra") or {}).items()},
    )
    ticks = data.get("start_ticks")
    return Record(info, int(ticks) if ticks is not None else None)


def _raw(state_dir: Path) -> dict[str, Any]:
    try:
        raw = json.loads(state_file(state_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def load(state_dir: Path) -> dict[str, Record]:
    """The recorded servers; an absent or unreadable file means none."""
    try:
        return {name: _from_json(rec) for name, rec in _raw(state_dir)["services"].items()}
    except (AttributeError, ValueError, KeyError, TypeError):
        return {}


def load_ports(state_dir: Path) -> dict[str, int]:
    """The last port of each server that ever ran here, running now or not."""
    try:
        return {str(k): int(v) for k, v in _raw(state_dir)["ports"].items()}
    except (AttributeError, ValueError, KeyError, TypeError):
        return {}


def save(state_dir: Path, records: Mapping[str, Record]) -> None:
    """Record the running servers; remembered ports are kept and updated."""
    ports = load_ports(state_dir) | {name: rec.info.port for name, rec in records.items()}
    payload = {
        "services": {name: _to_json(rec) for name, rec in records.items()},
        "ports": ports,
    }
    write_private(state_file(state_dir), json.dumps(payload, indent=2) + "\n")


def _quote(value: str) -> str:
    """Single-quote values with spaces or ``;`` so both dotenv and ``sh`` read them."""
    return value if _PLAIN.fullmatch(value) else "'" + value.replace("'", "") + "'"


def write_env(state_dir: Path, env: Mapping[str, str]) -> Path:
    """Write ``KEY=VALUE`` lines for settings.py; remove the file when nothing runs."""
    path = env_file(state_dir)
    if not env:
        path.unlink(missing_ok=True)
        return path
    header = "# Written by `cutover services up`; removed by `cutover services down`.\n"
    write_private(path, header + "".join(f"{k}={_quote(v)}\n" for k, v in sorted(env.items())))
    return path
