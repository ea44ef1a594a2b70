"""PostgreSQL: a private cluster, the real server behind the ODBC stand-in for SQL Server.

Private (own ``initdb``, own port, trust auth on 127.0.0.1 only) so that no password
is needed and the machine's own PostgreSQL on 5432 is never touched. PostgreSQL
refuses to run as root: as root the cluster belongs to the ``postgres`` user and the
server tools run through ``runuser``. The data directory survives ``down``.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from cutover.services import _install, _proc
from cutover.services._model import HOST, Context, Record, ServiceError, ServiceInfo, Spec

NAME = "postgres"
DATABASES = ("cutover", "unleash")
ODBC_DRIVER = "PostgreSQL Unicode"
BOOT_TIMEOUT_S = 60
_SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes; keep a margin


def odbc_dsn(port: int, database: str = "cutover") -> str:
    """The pyodbc connection string (psqlodbc; trust auth, so an empty password)."""
    return (
        f"DRIVER={{{ODBC_DRIVER}}};SERVER={HOST};PORT={port};DATABASE={database};UID=postgres;PWD=;"
    )


def create_database(admin_dsn: str, name: str, *, replace: bool = False) -> str:
    """Create database ``name`` on the server of ``admin_dsn``; returns its ODBC DSN.

    For tests and benchmarks that want a fresh, private database per use.
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"invalid database name {name!r}")
    import pyodbc

    conn = pyodbc.connect(admin_dsn, autocommit=True)
    try:
        if replace:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    finally:
        conn.close()
    return re.sub(r"DATABASE=[^;]*", f"DATABASE={name}", admin_dsn)


def libpq_url(port: int, database: str = "cutover") -> str:
    return f"postgresql://postgres@{HOST}:{port}/{database}"


def _owner() -> pwd.struct_passwd | None:
    """The ``postgres`` account when running as root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError(
            "running as root but there is no 'postgres' user to run "
            "PostgreSQL as; run scripts/setup.sh"
        ) from None


def _as_owner(argv: Sequence[str], owner: pwd.struct_passwd | None) -> list[str]:
    return ["runuser", "-u", owner.pw_name, "--", *argv] if owner else list(argv)


def _check_traversable(path: Path, owner: pwd.struct_passwd) -> None:
    """Every parent of the cluster must be enterable by the ``postgres`` user."""
    groups = {g for g in os.getgrouplist(owner.pw_name, owner.pw_gid)}
    for parent in path.parents:
        st = parent.stat()
        if (
            st.st_mode & stat.S_IXOTH
            or (st.st_uid == owner.pw_uid and st.st_mode & stat.S_IXUSR)
            or (st.st_gid in groups and st.st_mode & stat.S_IXGRP)
        ):
            continue
        raise ServiceError(
            f"{NAME}: the server runs as user {owner.pw_name!r}, which cannot "
            f"enter {parent} (mode {stat.filemode(st.st_mode)}); use a state "
            f"dir under a world-enterable path or `chmod o+x {parent}`"
        )


def _run(
    argv: Sequence[str],
    owner: pwd.struct_passwd | None,
    log: Path,
    cwd: Path,
    what: str,
    stdin: str | None = None,
) -> None:
    """Run a PostgreSQL tool to completion, its output appended to the server log."""
    with open(log, "ab") as fh:
        result = subprocess.run(
            _as_owner(argv, owner),
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            input=stdin.encode() if stdin else None,
            stdin=None if stdin else subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
    if result.returncode != 0:
        raise _proc.failure(NAME, f"{what} failed (status {result.returncode})", log)


def _read_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _prepare(
    home: Path, data: Path, log: Path, owner: pwd.struct_passwd | None, bindir: Path
) -> None:
    """Create the cluster once; clear a lock file left by a server killed uncleanly."""
    if owner:
        _check_traversable(home, owner)
        for path in (home, log):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        os.chmod(home, 0o700)
    if not (data / "PG_VERSION").exists():
        if data.exists():  # a half-made cluster from an interrupted initdb
            shutil.rmtree(data)
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "--auth=trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            owner,
            log,
            home,
            "initdb",
        )
    pid = _read_pid(data)
    if pid is not None and not _proc.is_alive(pid):
        # A zombie postmaster still "exists" for kill(pid, 0), so PostgreSQL itself
        # would refuse to start over this lock file.
        (data / "postmaster.pid").unlink(missing_ok=True)


def start(ctx: Context, deps: Mapping[str, ServiceInfo]) -> Record:
    bindir = _install.postgres_bindir()
    _install.require_odbc_driver(ODBC_DRIVER)
    owner = _owner()
    home = ctx.service_dir(NAME)
    data = home / "data"
    log = home / f"{NAME}.log"
    log.touch()
    _prepare(home, data, log, owner, bindir)

    port = _proc.port_or_free(ctx.ports.get(NAME))
    sockets = str(data) if len(f"{data}/.s.PGSQL.{port}") < _SUN_PATH_MAX else "''"
    if sockets != "''":
        sockets = shlex.quote(sockets)
    opts = (
        f"-c listen_addresses={HOST} -p {port} -k {sockets} -c fsync={'on' if ctx.fsync else 'off'}"
    )
    _run(
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            str(BOOT_TIMEOUT_S),
            "-o",
            opts,
            "start",
        ],
        owner,
        log,
        home,
        "pg_ctl start",
    )
    pid = _read_pid(data)
    if pid is None:
        raise _proc.failure(NAME, "started but wrote no postmaster.pid", log)
    ticks = _proc.start_ticks(pid)
    extra = {"odbc_dsn": odbc_dsn(port), "data_dir": str(data)}
    info = ServiceInfo(NAME, HOST, port, pid, libpq_url(port), log, extra)
    try:
        _create_databases(bindir, port, log, home)
        _proc.wait_until(
            lambda: check(info), name=NAME, timeout=30, pid=pid, ticks=ticks, log_path=log
        )
    except BaseException:
        _proc.stop_pid(pid, ticks, sig=signal.SIGINT)
        raise
    return Record(info, ticks)


def _create_databases(bindir: Path, port: int, log: Path, cwd: Path) -> None:
    """Create the project's databases if missing (psql over TCP, trust auth)."""
    names = ",".join(f"'{db}'" for db in DATABASES)
    sql = (
        f"SELECT format('CREATE DATABASE %I', d) FROM unnest(ARRAY[{names}]) AS d "
        f"WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = d)\\gexec\n"
    )
    argv = [
        str(bindir / "psql"),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        HOST,
        "-p",
        str(port),
        "-U",
        "postgres",
        "-d",
        "postgres",
    ]
    _run(argv, None, log, cwd, "creating databases", stdin=sql)


def check(info: ServiceInfo) -> tuple[bool, str]:
    """``SELECT 1`` through pyodbc and psqlodbc: the path the project's code takes."""
    import pyodbc

    try:
        conn = pyodbc.connect(info.extra["odbc_dsn"], timeout=3, autocommit=True)
    except pyodbc.Error as exc:
        return False, f"ODBC connect failed: {exc.args[-1] if exc.args else exc}"
    try:
        row = conn.cursor().execute("SELECT 1").fetchone()
        return (True, "ok") if row and row[0] == 1 else (False, f"SELECT 1 returned {row}")
    except pyodbc.Error as exc:
        return False, f"SELECT 1 failed: {exc}"
    finally:
        conn.close()


# SIGINT is "fast shutdown"; SIGTERM ("smart") would wait for clients such as unleash.
SPEC = Spec(NAME, start, check, stop_signal=signal.SIGINT)
