"""RethinkDB: reqlite, a RethinkDB-compatible server in JavaScript (npm).

No real RethinkDB server can be installed here; the official Python driver talks to
reqlite over TCP. Data is in memory: a restart starts empty. The launcher binds it to
127.0.0.1 (reqlite itself listens on all addresses).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cutover.services import _install, _proc
from cutover.services._model import HOST, Context, Record, ServiceInfo, Spec

NAME = "rethinkdb"
_LAUNCHER = Path(__file__).with_name("reqlite_launcher.js")
BOOT_TIMEOUT_S = 30.0


def start(ctx: Context, deps: Mapping[str, ServiceInfo]) -> Record:
    modules = _install.ensure_node_packages()
    node = _install.node_binary()
    home = ctx.service_dir(NAME)
    log = home / f"{NAME}.log"
    port = _proc.port_or_free(ctx.ports.get(NAME))
    proc = _proc.spawn([node, str(_LAUNCHER), str(modules), str(port)], log_path=log, cwd=home)
    ticks = _proc.start_ticks(proc.pid)
    info = ServiceInfo(NAME, HOST, port, proc.pid, f"rethinkdb://{HOST}:{port}", log)
    return _proc.started(info, ticks, check, BOOT_TIMEOUT_S)


def check(info: ServiceInfo) -> tuple[bool, str]:
    """Connect with the official driver and list the databases.

    ``close(noreply_wait=False)``: reqlite answers the default noreply-wait with
    something the driver cannot parse (IndexError).
    """
    from rethinkdb import r
    from rethinkdb.errors import ReqlDriverError, ReqlError

    try:
        conn = r.connect(host=info.host, port=info.port, timeout=3)
    except (ReqlDriverError, OSError) as exc:
        return False, f"connect failed: {exc}"
    try:
        dbs = r.db_list().run(conn)
        return True, f"ok ({len(dbs)} databases)"
    except (ReqlError, OSError) as exc:
        return False, f"db_list failed: {exc}"
    finally:
        conn.close(noreply_wait=False)


SPEC = Spec(NAME, start, check)
