"""The local servers: start all four for real, use each one, check status, stop them.

Slow-ish (about 10 s for the whole module on a fresh state dir: PostgreSQL's initdb
and Unleash's migrations dominate), so the servers are started once per module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyodbc
import pytest

import cutover.services as services
from cutover.services import _install, _proc, _state
from cutover.services._model import Record, ServiceInfo

pytestmark = pytest.mark.timeout(240)


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (PID 1 here does not reap orphans)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return text[text.rfind(")") + 2] in "ZX"


def _fresh_state_dir() -> Path:
    # Not pytest's tmp_path: its base is 0700, and PostgreSQL, run as the postgres
    # user when the tests run as root, must be able to enter the state dir.
    path = Path(tempfile.mkdtemp(prefix="cutover-services-"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def state_dir() -> Iterator[Path]:
    path = _fresh_state_dir()
    yield path
    with contextlib.suppress(Exception):
        services.down(state_dir=path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def infos(state_dir: Path) -> dict[str, ServiceInfo]:
    began = time.monotonic()
    started = services.up(state_dir=state_dir)
    print(f"all servers up in {time.monotonic() - began:.1f} s")
    return started


def test_all_four_start_on_loopback_ports(infos: dict[str, ServiceInfo]) -> None:
    assert set(infos) == {"pubsub", "rethinkdb", "postgres", "unleash"}
    ports = {info.port for info in infos.values()}
    assert len(ports) == 4
    assert not ports & {5432, 8085, 28015, 4242}
    for info in infos.values():
        assert info.host == "127.0.0.1"
        assert not _gone(info.pid)


def test_pubsub_publish_and_pull(
    infos: dict[str, ServiceInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud import pubsub_v1

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", infos["pubsub"].url)
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    suffix = uuid.uuid4().hex[:8]
    topic = publisher.topic_path("cutover-local", f"t-{suffix}")
    sub = subscriber.subscription_path("cutover-local", f"s-{suffix}")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=10)
    try:
        publisher.publish(topic, b"hello", kind="test").result(timeout=10)
        received: list[Any] = []
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            response = subscriber.pull(subscription=sub, max_messages=1, timeout=5)
            received = list(response.received_messages)
        assert received, "no message pulled back"
        message = received[0].message
        assert message.data == b"hello"
        assert message.attributes["kind"] == "test"
        subscriber.acknowledge(subscription=sub, ack_ids=[received[0].ack_id])
    finally:
        subscriber.delete_subscription(subscription=sub)
        publisher.delete_topic(topic=topic)
        subscriber.close()


def test_rethinkdb_roundtrip(infos: dict[str, ServiceInfo]) -> None:
    from rethinkdb import r

    info = infos["rethinkdb"]
    conn = r.connect(host=info.host, port=info.port, timeout=5)
    try:
        r.db_create("svc_test").run(conn)
        r.db("svc_test").table_create("docs").run(conn)
        r.db("svc_test").table("docs").insert([{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]).run(conn)
        assert r.db("svc_test").table("docs").get(2).run(conn) == {"id": 2, "v": "b"}
        assert r.db("svc_test").table("docs").count().run(conn) == 2
    finally:
        conn.close(noreply_wait=False)


def test_postgres_through_odbc_and_libpq(infos: dict[str, ServiceInfo]) -> None:
    info = infos["postgres"]
    dsn = info.extra["odbc_dsn"]
    assert f"PORT={info.port};" in dsn
    with pyodbc.connect(dsn, timeout=5) as conn:
        assert conn.cursor().execute("SELECT 1").fetchone()[0] == 1
        names = {row[0] for row in conn.cursor().execute("SELECT datname FROM pg_database")}
        assert {"cutover", "unleash"} <= names
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(info.url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("cutover",)


def test_unleash_admin_api_needs_the_admin_token(infos: dict[str, ServiceInfo]) -> None:
    info = infos["unleash"]
    projects = f"{info.url}/api/admin/projects"
    authed = httpx.get(projects, headers={"Authorization": info.extra["admin_token"]}, timeout=10)
    assert authed.status_code == 200
    assert httpx.get(projects, timeout=10).status_code == 401
    client = httpx.get(
        f"{info.url}/api/client/features",
        headers={"Authorization": info.extra["backend_token"]},
        timeout=10,
    )
    assert client.status_code == 200


def test_status_reports_every_server_healthy(
    infos: dict[str, ServiceInfo], state_dir: Path
) -> None:
    rows = services.status(state_dir=state_dir)
    assert [info.name for info, _, _ in rows] == ["pubsub", "rethinkdb", "postgres", "unleash"]
    assert all(healthy for _, healthy, _ in rows), rows
    assert {info.pid for info, _, _ in rows} == {info.pid for info in infos.values()}
    tokens = infos["unleash"].secrets()
    assert len(tokens) == 2
    for info, _, detail in rows:
        assert not any(token in detail or token in repr(info) for token in tokens)


def test_env_and_state_files_are_private(infos: dict[str, ServiceInfo], state_dir: Path) -> None:
    env = services.env_for(infos)
    assert env["CUTOVER_PUBSUB_EMULATOR_HOST"] == infos["pubsub"].url
    assert env["CUTOVER_RETHINKDB_PORT"] == str(infos["rethinkdb"].port)
    assert env["CUTOVER_UNLEASH_URL"] == infos["unleash"].url
    assert env["CUTOVER_TEST_POSTGRES_DSN"] == infos["postgres"].extra["odbc_dsn"]
    assert "CUTOVER_SQL_DSN" not in env
    for path in (state_dir / "services.env", state_dir / "services" / "state.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    from core.settings import Settings

    settings = Settings(_env_file=state_dir / "services.env")  # type: ignore[call-arg]
    assert settings.pubsub_emulator_host == infos["pubsub"].url
    assert settings.rethinkdb_port == infos["rethinkdb"].port
    assert settings.unleash_admin_token is not None
    assert settings.unleash_admin_token.get_secret_value() == infos["unleash"].extra["admin_token"]
    assert settings.sql_dsn is None


def test_up_again_reuses_the_running_servers(
    infos: dict[str, ServiceInfo], state_dir: Path
) -> None:
    began = time.monotonic()
    again = services.up(state_dir=state_dir)
    assert {n: i.pid for n, i in again.items()} == {n: i.pid for n, i in infos.items()}
    assert time.monotonic() - began < 10


def test_down_stops_every_process(infos: dict[str, ServiceInfo], state_dir: Path) -> None:
    services.down(state_dir=state_dir)
    for info in infos.values():
        assert _gone(info.pid), f"{info.name} (pid {info.pid}) still runs"
    assert services.status(state_dir=state_dir) == []
    assert not (state_dir / "services.env").exists()
    services.down(state_dir=state_dir)  # again: nothing to do, no error


def test_a_server_that_cannot_start_raises_with_its_log_tail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = _fresh_state_dir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(_proc, "free_port", lambda host="127.0.0.1": port)
        try:
            with pytest.raises(services.ServiceError) as caught:
                services.up(["rethinkdb"], state_dir=path)
            message = str(caught.value)
            assert message.startswith("rethinkdb: exited during start-up")
            assert "last lines of" in message
            assert "EADDRINUSE" in message
            assert services.status(state_dir=path) == []
        finally:
            services.down(state_dir=path)
            shutil.rmtree(path, ignore_errors=True)


def test_down_forgets_a_process_that_is_already_gone() -> None:
    path = _fresh_state_dir()
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        info = ServiceInfo("rethinkdb", "127.0.0.1", 1, dead.pid, "rethinkdb://x", path / "x.log")
        _state.save(path, {"rethinkdb": Record(info, 12345)})
        [(_, healthy, detail)] = services.status(state_dir=path)
        assert not healthy and "not running" in detail
        services.down(state_dir=path)
        assert json.loads((path / "services" / "state.json").read_text())["services"] == {}
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _unleash_projects(info: ServiceInfo) -> int:
    """An admin API call that reads Unleash's database (``/health`` does not)."""
    headers = {"Authorization": info.extra["admin_token"]}
    return httpx.get(f"{info.url}/api/admin/projects", headers=headers, timeout=10).status_code


def _crash(info: ServiceInfo) -> None:
    """Stop a server behind cutover's back (its record stays, its process is gone)."""
    os.kill(info.pid, signal.SIGINT)
    deadline = time.monotonic() + 30
    while not _gone(info.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(info.pid)


def _cli(*args: str) -> str:
    from click.testing import CliRunner

    from cutover.services.cli import group

    result = CliRunner().invoke(group, list(args))
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # rich wraps long lines


def test_restarting_postgres_keeps_its_port_and_never_drops_unleash() -> None:
    """postgres goes away under a running Unleash. `up postgres` brings it back on its
    old port and Unleash, which only had to reconnect, keeps running (said so). When
    the old port is taken, postgres moves (said so) and Unleash, whose database moved
    with it, is restarted too (said so); `status` lists both, healthy, each time, and
    Unleash still serves the data it wrote before (same database, same tokens)."""
    path = _fresh_state_dir()
    try:
        first = services.up(["unleash"], state_dir=path)
        pg, unleash = first["postgres"], first["unleash"]
        assert _unleash_projects(unleash) == 200

        _crash(pg)
        notes: list[str] = []
        again = services.up(["postgres"], state_dir=path, report=notes.append)
        assert again["postgres"].port == pg.port and again["postgres"].pid != pg.pid
        assert again["unleash"].pid == unleash.pid
        assert notes == [
            f"postgres: restarted on its last port {pg.port} (process {pg.pid} is not running)",
            "unleash: kept running (postgres came back on the same port)",
        ]
        assert [(i.name, ok) for i, ok, _ in services.status(state_dir=path)] == [
            ("postgres", True),
            ("unleash", True),
        ]
        assert _unleash_projects(again["unleash"]) == 200

        _crash(again["postgres"])
        with socket.socket() as squatter:  # another program now listens on that port
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", pg.port))
            squatter.listen()
            out = _cli("up", "postgres", "--state-dir", str(path))
        rows = {i.name: (i, ok) for i, ok, _ in services.status(state_dir=path)}
        moved, restarted = rows["postgres"][0], rows["unleash"][0]
        assert moved.port != pg.port and restarted.pid != unleash.pid
        assert f"postgres: restarted on port {moved.port}: its last port {pg.port} is taken" in out
        assert f"unleash: restarted on its last port {unleash.port} (it runs on postgres, " in out
        assert f"which moved to port {moved.port})" in out
        assert rows["postgres"][1] and rows["unleash"][1]
        assert _unleash_projects(restarted) == 200

        out = _cli("down", "postgres", "--state-dir", str(path))
        assert "stopped unleash, postgres" in out
        assert "unleash was stopped too: it runs on postgres" in out
        assert services.status(state_dir=path) == []
    finally:
        services.down(state_dir=path)
        shutil.rmtree(path, ignore_errors=True)


def test_secrets_are_masked_in_repr_and_log_tails(tmp_path: Path) -> None:
    info = ServiceInfo(
        "unleash",
        "127.0.0.1",
        1,
        1,
        "http://x",
        tmp_path / "u.log",
        {"admin_token": "*:*.s3cr3t", "environment": "development"},
    )
    assert "s3cr3t" not in repr(info) and "development" in repr(info)
    (tmp_path / "u.log").write_text("boot\ntoken *:*.s3cr3t rejected\nDSN PWD=hunter2;\n")
    tail = _proc.log_tail(tmp_path / "u.log", secrets=info.secrets())
    assert "s3cr3t" not in tail and "hunter2" not in tail and "boot" in tail


def test_cloudbox_patch_is_idempotent() -> None:
    _install.patch_cloudbox()
    assert _install.patch_cloudbox() is False
    import cloudbox.core.store

    assert (
        Path(cloudbox.core.store.__file__)
        .read_text()
        .startswith("from __future__ import annotations\n")
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to 'postgres'")
def test_postgres_refuses_a_state_dir_postgres_cannot_enter() -> None:
    path = Path(tempfile.mkdtemp(prefix="cutover-private-"))  # 0700, owned by root
    try:
        with pytest.raises(services.ServiceError, match="cannot enter"):
            services.up(["postgres"], state_dir=path)
    finally:
        services.down(state_dir=path)
        shutil.rmtree(path, ignore_errors=True)
