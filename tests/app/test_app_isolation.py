"""One store frozen under concurrent load: only the reads that need it degrade.

Reproduction 5 of issue 13 (a hung RethinkDB took stage-new reads from p99 11.6 ms to
7.4 s). Each store is frozen with SIGSTOP of its server's whole process tree (the
kernel still accepts connections: a server that stopped answering, not one that is
down) while 50 readers of that store's clients run; sequential reads of a client on
the other store are measured before and during the freeze. Private servers (this
module's own PostgreSQL cluster and reqlite), so freezing them stalls nothing else;
nothing is written during the measurements.

The one timing bound is the issue's: the other store's p99 within 2x of the run
without the freeze (plus 10 ms of allowance for a 2-core machine's scheduling noise
on millisecond reads). The frozen store's reads end in 503 with a reason within their
deadline (plus a generous margin); a full pool refuses at once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from support import frozen, make_runtime, seed_stores

from core.config import Config
from core.settings import Settings
from cutover import services
from cutover.services.postgres import create_database
from flags.file_backend import FileBackend
from flags.stages import Stage

TIMEOUT_S = 1.0
#: Beyond its deadline, how late a refused read may come back on a busy 2-core machine.
MARGIN_S = 3.0
#: Added to the 2x bound: scheduling noise on millisecond reads (a starved read waits
#: for the frozen store's deadline, 1 s, far beyond it).
ALLOWANCE_S = 0.050
READERS = 50
ROUNDS = 2
SAMPLES = 100
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def private_servers() -> Iterator[dict[str, services.ServiceInfo]]:
    state = Path(tempfile.mkdtemp(prefix="cutover-test-isolation-"))
    state.chmod(0o711)
    try:
        yield services.up(["postgres", "rethinkdb"], state_dir=state)
    finally:
        services.down(state_dir=state)
        shutil.rmtree(state, ignore_errors=True)


@dataclass
class Setup:
    api: Any
    old_path: str  # an item of a client at stage old (RethinkDB)
    new_path: str  # an item of a client at stage new (the SQL store)
    servers: dict[str, services.ServiceInfo]


@pytest.fixture
def setup(
    private_servers: dict[str, services.ServiceInfo],
    make_settings: Callable[..., Settings],
    flag_config: Config,
    orders: str,
    serve: Any,
    read_options: Callable[..., Settings],
) -> Iterator[Setup]:
    pg, rdb = private_servers["postgres"], private_servers["rethinkdb"]
    settings = make_settings(
        sql_dsn=create_database(pg.extra["odbc_dsn"], f"t_iso_{time.monotonic_ns()}"),
        sql_dialect="postgresql",
        rethinkdb_host=rdb.host,
        rethinkdb_port=rdb.port,
    )
    rt = make_runtime(settings, flag_config)
    rows = seed_stores(rt, orders, clients=2, ids=6, seed=3, delete_rate=0.0)
    old_row = next(r for r in rows if r.client_id == "client-000")
    new_row = next(r for r in rows if r.client_id == "client-001")
    FileBackend.from_settings(settings).write(orders, Stage.NEW, [new_row.client_id])
    opts = read_options(
        read_sql_timeout_s=TIMEOUT_S,
        read_rethinkdb_timeout_s=TIMEOUT_S,
        read_sql_pool_size=4,
        read_rethinkdb_pool_size=4,
        read_queue_size=4,
    )
    api = serve(rt, opts=opts)
    paths = [f"/v1/{orders}/{r.client_id}/items/{r.key}" for r in (old_row, new_row)]
    for path in paths:
        assert api.http.get(path).status_code == 200
    yield Setup(api, paths[0], paths[1], private_servers)
    rt.close()


class Read(NamedTuple):
    started: float  # monotonic clock, shared with the readers' process
    took: float
    status: int
    error: str | None


class Load:
    """READERS concurrent readers of one path in a process of their own (read_load.py)."""

    def __init__(self, url: str, path: str) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, str(HERE / "read_load.py"), url, path, str(READERS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.results: list[Read] = []
        #: The reads made while the store was frozen (filled by :func:`_compare`).
        self.frozen: list[Read] = []

    def __enter__(self) -> Load:
        time.sleep(1.0)  # every reader has started
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self._proc.communicate(timeout=120)  # closes stdin: the readers stop
        self.results = [Read(*r) for r in json.loads(out)]

    def within(self, window: tuple[float, float]) -> list[Read]:
        """Reads that started and ended inside ``window`` (monotonic clock)."""
        lo, hi = window
        return [r for r in self.results if r[0] >= lo and r[0] + r[1] <= hi]


def _times(http: httpx.Client, path: str) -> list[float]:
    times = []
    for _ in range(SAMPLES):
        started = time.monotonic()
        r = http.get(path)
        times.append(time.monotonic() - started)
        assert r.status_code == 200, r.text
    return times


def _p99(times: list[float]) -> float:
    return sorted(times)[int(len(times) * 0.99) - 1]


def _recovered(http: httpx.Client, path: str) -> None:
    deadline = time.monotonic() + 30
    while http.get(path).status_code != 200:
        assert time.monotonic() < deadline, "the store's reads did not come back"
        time.sleep(0.2)


def _compare(
    setup: Setup, frozen_pid: int, loaded: str, measured: str
) -> tuple[float, float, Load]:
    """p99 of reads of ``measured`` with the store behind ``loaded`` answering, then
    frozen, in alternating rounds (the machine's noise falls on both alike), while
    READERS read ``loaded`` throughout."""
    http = setup.api.http
    answering: list[float] = []
    stalled: list[float] = []
    with Load(setup.api.url, loaded) as load:
        windows = []
        for _ in range(ROUNDS):
            answering += _times(http, measured)
            with frozen(frozen_pid):
                started = time.monotonic()
                time.sleep(TIMEOUT_S)  # the frozen store's threads and queue fill up
                stalled += _times(http, measured)
                windows.append((started, time.monotonic()))
            _recovered(http, loaded)
    load.frozen = [r for w in windows for r in load.within(w)]
    return _p99(answering), _p99(stalled), load


def _check_refusals(load: Load) -> None:
    """Every read of the frozen store answered 503 with a reason within its deadline
    (and a generous margin); with the pool full, the typical refusal came at once."""
    reads = load.frozen
    assert len(reads) > READERS, "the readers kept reading while the store was frozen"
    for read in reads:
        assert read.status == 503, read
        assert read.took < TIMEOUT_S + MARGIN_S, read
    kinds = {read.error for read in reads}
    assert kinds <= {"StoreBusy", "StoreTimeout", "RethinkUnavailable", "StoreUnavailable"}
    assert kinds & {"StoreTimeout", "RethinkUnavailable"}, kinds  # the deadline ended some
    busy = sorted(read.took for read in reads if read.error == "StoreBusy")
    assert busy, f"{READERS} readers on 4 threads + 4 queued: some must find the pool full"
    assert busy[len(busy) // 2] < TIMEOUT_S / 4, busy  # not queued until the deadline


def test_frozen_rethinkdb_degrades_only_old_stage_reads(setup: Setup) -> None:
    pid = setup.servers["rethinkdb"].pid
    unfrozen, during, load = _compare(setup, pid, setup.old_path, setup.new_path)
    print(f"stage-new p99: {unfrozen * 1000:.1f} ms answering, {during * 1000:.1f} ms frozen")
    assert during <= 2 * unfrozen + ALLOWANCE_S, (unfrozen, during)
    _check_refusals(load)


def test_frozen_sql_store_degrades_only_new_stage_reads(setup: Setup) -> None:
    pid = setup.servers["postgres"].pid
    unfrozen, during, load = _compare(setup, pid, setup.new_path, setup.old_path)
    print(f"stage-old p99: {unfrozen * 1000:.1f} ms answering, {during * 1000:.1f} ms frozen")
    assert during <= 2 * unfrozen + ALLOWANCE_S, (unfrozen, during)
    _check_refusals(load)
