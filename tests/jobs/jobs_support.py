"""Helpers for the per-client jobs tests (imported as a plain module, unique name).

A world is the project's cutover.toml with a private RethinkDB database and a
test-tuned ``[jobs]`` (short ack deadline, lease and backoff, so a killed worker's job
comes back within seconds), Settings pointing at the session's real servers (Pub/Sub,
PostgreSQL through pyodbc, reqlite) with a fresh database and Pub/Sub project, the jobs
subscription created by ``cutover jobs add``'s own code, and helpers to run job
workers in this process or as ``cutover jobs run`` subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backfill.export_index import ClientIndexedExport
from backfill.job_worker import JobOptions, JobWorker
from backfill.sources import Source, write_export
from core.config import Entity
from core.settings import Settings
from cutover.synthetic import generate_history, reference
from stores.mapping import Row, document_from_row
from stores.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]

#: Test-tuned jobs: Pub/Sub's shortest ack deadline, a lease taken over 3 s after its
#: holder's last renewal, one second of backoff, five attempts.
TEST_JOBS = """
[jobs]
topic = "cutover-jobs"
subscription = "cutover-jobs"
ack_deadline_s = 10
lease_ttl_s = 3
max_delivery_attempts = 5
retry_min_backoff_s = 1
retry_max_backoff_s = 2
"""

#: Unthrottled copies, quick polls, no wait before verification re-reads.
FAST = JobOptions(rate=0, batch=50, recheck_delay_s=0.1, poll_s=0.1)


def config_text(rethink_db: str) -> str:
    text = (ROOT / "cutover.toml").read_text(encoding="utf-8")
    text = text.replace('rethinkdb_db = "app"', f'rethinkdb_db = "{rethink_db}"')
    head, _, rest = text.partition("\n[jobs]\n")
    rest = rest[rest.index("\n[subscriptions.") :]
    return head + "\n" + TEST_JOBS + rest


@dataclass
class JobsWorld:
    settings: Settings
    path: Path
    rethink_db: str
    tmp: Path
    runtimes: list[Runtime] = field(default_factory=list)

    @property
    def runtime(self) -> Runtime:
        if not self.runtimes:
            self.runtimes.append(Runtime(self.settings))
        return self.runtimes[0]

    def new_runtime(self) -> Runtime:
        """Another runtime (own connections), as another process would have."""
        rt = Runtime(self.settings)
        self.runtimes.append(rt)
        return rt

    @property
    def entity(self) -> Entity:
        return self.runtime.cfg.entity("orders")

    def env(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUTOVER_")}
        env.update(
            {
                "CUTOVER_CONFIG_FILE": str(self.path),
                "CUTOVER_STATE_DIR": str(s.state_dir),
                "CUTOVER_SQL_DSN": s.sql_dsn.get_secret_value() if s.sql_dsn else "",
                "CUTOVER_PUBSUB_EMULATOR_HOST": s.pubsub_emulator_host or "",
                "CUTOVER_PUBSUB_PROJECT": s.pubsub_project,
                "CUTOVER_RETHINKDB_HOST": s.rethinkdb_host,
                "CUTOVER_RETHINKDB_PORT": str(s.rethinkdb_port),
            }
        )
        return env

    def export(self, docs: list[dict[str, Any]], name: str = "export") -> Path:
        folder = self.tmp / name
        write_export(folder, self.entity, docs)
        return folder

    @contextmanager
    def worker(
        self,
        source: Source | Path,
        options: JobOptions = FAST,
        *,
        concurrency: int | None = None,
    ) -> Iterator[JobWorker]:
        """A job worker in this process on a runtime of its own, stopped on exit."""
        src = ClientIndexedExport(source) if isinstance(source, Path) else source
        w = JobWorker(self.new_runtime(), src, options, concurrency=concurrency)
        w.start()
        try:
            yield w
        finally:
            w.stop()

    def spawn(self, *args: str, log: str = "") -> subprocess.Popen[bytes]:
        """``cutover jobs run ARGS`` as a separate process, settings from CUTOVER_*."""
        argv = [sys.executable, "-c", "from cutover.cli import main; main()", "jobs", "run", *args]
        name = log or f"jobs-{uuid.uuid4().hex[:6]}.log"
        with open(self.tmp / name, "wb") as out:
            return subprocess.Popen(
                argv, env=self.env(), cwd=self.tmp, stdout=out, stderr=subprocess.STDOUT
            )

    def log(self, name: str) -> str:
        return (self.tmp / name).read_text(errors="replace")


def history(
    entity: Entity, *, clients: int, ids: int, seed: int = 3, delete_rate: float = 0.1
) -> dict[str, Row]:
    """The newest row of every id of a synthetic history, tombstones included."""
    events = generate_history(
        entity, clients=clients, ids_per_client=ids, seed=seed, delete_rate=delete_rate
    )
    return reference(entity, events)


def documents(entity: Entity, rows: dict[str, Row]) -> list[dict[str, Any]]:
    """Old-store documents in key order (tombstones carry the deleted marker)."""
    return [document_from_row(entity, rows[k]) for k in sorted(rows)]
