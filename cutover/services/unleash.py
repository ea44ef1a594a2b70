"""Unleash: the real open-source server (npm ``unleash-server``) on the private PostgreSQL.

Tokens: Unleash only creates its ``INIT_*_API_TOKENS`` in a database that has no API
tokens yet. So a fresh pair of random secrets is generated together with a fresh
``unleash`` database and kept (0600) in ``services/unleash/tokens.json``; later starts
reuse both, so flags survive ``down``/``up``. Should the server reject the stored admin
token anyway, the database and tokens are recreated once.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from cutover.services import _install, _proc, _state, postgres
from cutover.services._model import HOST, Context, Record, ServiceError, ServiceInfo, Spec

NAME = "unleash"
DATABASE = "unleash"
ENVIRONMENT = "development"
BOOT_TIMEOUT_S = 90.0
_DROP_ENV = ("DATABASE_", "INIT_", "UNLEASH_")


def _tokens(path: Path, pg: ServiceInfo) -> dict[str, str]:
    """The stored token pair, or a new pair with a new, empty ``unleash`` database."""
    try:
        data = json.loads(path.read_text())
        return {
            "admin_token": str(data["admin_token"]),
            "backend_token": str(data["backend_token"]),
        }
    except (OSError, ValueError, KeyError):
        pass
    _recreate_database(pg)
    tokens = {
        "admin_token": f"*:*.{secrets.token_hex(24)}",
        "backend_token": f"default:{ENVIRONMENT}.{secrets.token_hex(24)}",
    }
    _state.write_private(path, json.dumps(tokens) + "\n")
    return tokens


def _recreate_database(pg: ServiceInfo) -> None:
    import pyodbc

    dsn = postgres.odbc_dsn(pg.port, "postgres")
    with pyodbc.connect(dsn, timeout=5, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')


def _get(url: str, token: str | None = None, timeout: float = 3.0) -> int:
    """The HTTP status of a GET (``Authorization: <token>``, no "Bearer")."""
    request = urllib.request.Request(url, headers={"Authorization": token} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _launch(ctx: Context, pg: ServiceInfo, tokens: Mapping[str, str]) -> Record:
    modules = _install.ensure_node_packages()
    node = _install.node_binary()
    home = ctx.service_dir(NAME)
    log = home / f"{NAME}.log"
    port = _proc.port_or_free(ctx.ports.get(NAME))
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_ENV)}
    env.update(
        TZ="UTC",
        DATABASE_URL=postgres.libpq_url(pg.port, DATABASE).replace("postgresql:", "postgres:"),
        DATABASE_SSL="false",
        HTTP_HOST=HOST,
        HTTP_PORT=str(port),
        CHECK_VERSION="false",
        SEND_TELEMETRY="false",
        INIT_ADMIN_API_TOKENS=tokens["admin_token"],
        INIT_BACKEND_API_TOKENS=tokens["backend_token"],
    )
    server = modules / "unleash-server" / "dist" / "server.js"
    proc = _proc.spawn([node, str(server)], log_path=log, env=env, cwd=home)
    ticks = _proc.start_ticks(proc.pid)
    info = ServiceInfo(
        NAME,
        HOST,
        port,
        proc.pid,
        f"http://{HOST}:{port}",
        log,
        {**tokens, "environment": ENVIRONMENT},
    )
    return _proc.started(info, ticks, check, BOOT_TIMEOUT_S)


def start(ctx: Context, deps: Mapping[str, ServiceInfo]) -> Record:
    pg = deps["postgres"]
    token_file = ctx.service_dir(NAME) / "tokens.json"
    for attempt in (1, 2):
        record = _launch(ctx, pg, _tokens(token_file, pg))
        info = record.info
        status = _get(f"{info.url}/api/admin/projects", info.extra["admin_token"])
        if status == 200:
            return record
        _proc.stop_pid(info.pid, record.start_ticks)
        if attempt == 2 or status != 401:
            raise _proc.failure(
                NAME,
                f"the admin API answered {status} to the stored admin token",
                info.log_path,
                info.secrets(),
            )
        token_file.unlink(missing_ok=True)  # stale pair: recreate database and tokens
    raise ServiceError("unreachable")


def check(info: ServiceInfo) -> tuple[bool, str]:
    """``GET /health`` answers 200."""
    try:
        status = _get(f"{info.url}/health")
    except (OSError, urllib.error.URLError) as exc:
        return False, f"GET /health failed: {getattr(exc, 'reason', exc)}"
    return (True, "ok") if status == 200 else (False, f"GET /health answered {status}")


SPEC = Spec(NAME, start, check, requires=("postgres",))
