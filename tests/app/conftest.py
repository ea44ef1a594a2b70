"""Fixtures for the read service: seeded stores, private flag names, a real uvicorn.

The app runs in a real uvicorn server on a free loopback port (in a thread of the
test process) and is called over HTTP with httpx, so the lifespan, the thread pool,
error handlers and headers are the ones production uses.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from support import make_runtime, seed_stores

from app.main import create_app
from core.config import Config
from core.settings import Settings
from cutover import services
from flags.evaluator import StageSource
from stores.mapping import Row
from stores.runtime import Runtime


def unleash_overrides(info: services.ServiceInfo) -> dict[str, Any]:
    return {
        "unleash_url": info.url,
        "unleash_admin_token": info.extra["admin_token"],
        "unleash_backend_token": info.extra["backend_token"],
    }


@pytest.fixture
def store_settings(
    make_settings: Callable[..., Settings],
    rethink_server: services.ServiceInfo,
    sql_dsn: tuple[str, str],
) -> Callable[..., Settings]:
    """Settings builder for RethinkDB plus the parametrised SQL store (SQLite, PostgreSQL)."""
    dialect, dsn = sql_dsn

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "rethinkdb_host": rethink_server.host,
            "rethinkdb_port": rethink_server.port,
            "sql_dsn": dsn,
            "sql_dialect": dialect,
        }
        values.update(overrides)
        return make_settings(**values)

    return build


def seed(rt: Runtime, entity: str, *, clients: int = 3, ids: int = 9, seed: int = 11) -> list[Row]:
    """The same history in both stores (they agree), with many tombstones."""
    return seed_stores(rt, entity, clients=clients, ids=ids, seed=seed, delete_rate=0.3)


@pytest.fixture
def seed_both() -> Callable[..., list[Row]]:
    return seed


def options(**overrides: Any) -> Settings:
    """Read options for tests: no env files, a short re-check delay."""
    values: dict[str, Any] = {"shadow_recheck_delay_s": 0.05}
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def read_options() -> Callable[..., Settings]:
    return options


@pytest.fixture
def runtime(store_settings: Callable[..., Settings], flag_config: Config) -> Iterator[Runtime]:
    """Stores only; the flag backend is the embedded file (no Unleash URL)."""
    rt = make_runtime(store_settings(), flag_config)
    yield rt
    rt.close()


@pytest.fixture
def unleash_runtime(
    store_settings: Callable[..., Settings],
    flag_config: Config,
    unleash_server: services.ServiceInfo,
) -> Iterator[Runtime]:
    """Stores plus the session's Unleash server as the flag backend."""
    rt = make_runtime(store_settings(**unleash_overrides(unleash_server)), flag_config)
    yield rt
    rt.close()


@dataclass
class Api:
    app: FastAPI
    url: str
    http: httpx.Client

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(path, params=params or None)

    def drain(self) -> None:
        assert self.app.state.services.shadow.drain(30)


@pytest.fixture
def serve() -> Iterator[Callable[..., Api]]:
    """Start ``create_app(runtime, ...)`` under uvicorn; every server stops at teardown."""
    running: list[tuple[uvicorn.Server, threading.Thread, Api]] = []

    def start(
        runtime: Runtime,
        *,
        stages: StageSource | None = None,
        opts: Settings | None = None,
        extra: Callable[[FastAPI], None] | None = None,
    ) -> Api:
        """``extra`` may add routes of the test's own to the app before it starts."""
        app = create_app(runtime, stages=stages, options=opts or options())
        if extra is not None:
            extra(app)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the API server did not start")
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}"
        api = Api(app, url, httpx.Client(base_url=url, timeout=30))
        running.append((server, thread, api))
        return api

    yield start
    for server, thread, api in running:
        api.http.close()
        server.should_exit = True
        thread.join(15)
