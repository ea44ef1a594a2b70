"""Per-client jobs throughput against ``cutover backfill run`` (not a test).

``python -m bench.bench_jobs [--docs N] [--clients K] [--rounds R]`` starts its own
PostgreSQL and Pub/Sub server (cutover.services, temp state dir), writes an export of
N documents (default 200,000) in K clients (default 200), writes
``bench-results/jobs.json`` and prints, per round and best of the rounds:

1. ``cutover backfill run orders --from-export DIR --rate 0`` (a subprocess, the
   baseline: the whole export in one run, with its reader process and two commits in
   flight), then ``cutover verify orders --full`` of the same rows;
2. the same rows as K per-client jobs (``cutover jobs enqueue --all-not-migrated``,
   then ``cutover jobs run --rate 0`` in 1 and in 2 processes): timed from the
   workers' start until every job is done, i.e. every client copied AND verified and
   its ledger entry ``verified``.

Each round runs the four into fresh databases (and the jobs on a fresh Pub/Sub project),
interleaved, so each side meets the same machine; the best round of each counts.
Ratios: jobs rows/s over ``backfill run`` rows/s (the target: 1 worker >= 0.8), and
over ``backfill run`` + ``verify`` (the same work a job does: a copy and a full check).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.bench_backfill import documents
from core.config import load_config
from cutover import services
from cutover.services.postgres import create_database

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"
TARGET = 0.8


def _env(work: Path, dsn: str, pubsub: str, project: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUTOVER_")}
    env.update(
        {
            "CUTOVER_CONFIG_FILE": str(ROOT / "cutover.toml"),
            "CUTOVER_STATE_DIR": str(work / "state-cli"),
            "CUTOVER_SQL_DSN": dsn,
            "CUTOVER_PUBSUB_EMULATOR_HOST": pubsub,
            "CUTOVER_PUBSUB_PROJECT": project,
        }
    )
    return env


def _cutover(env: dict[str, str], *args: str) -> float:
    """Run a cutover command to its end; its wall time in seconds."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cutover", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cutover {' '.join(args)} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - start


def _schema(dsn: str) -> None:
    """Entity and bookkeeping tables (``cutover db init`` would also want RethinkDB)."""
    from cutover.tables import all_tables
    from stores.sql import SqlStore

    store = SqlStore(dsn, "postgresql", load_config(ROOT / "cutover.toml"))
    store.ensure_schema(all_tables())
    store.close()


def _verified(dsn: str, clients: int) -> int:
    import pyodbc

    with pyodbc.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM backfill_ledger WHERE entity = 'orders' AND state = 'verified'"
        ).fetchone()
    return int(row[0])


def _jobs(
    work: Path, admin: str, pubsub: str, export: Path, clients: int, workers: int, tag: str
) -> dict[str, Any]:
    dsn = create_database(admin, f"bench_jobs_{tag}", replace=True)
    env = _env(work, dsn, pubsub, f"bench-{uuid.uuid4().hex[:8]}")
    _schema(dsn)
    _cutover(env, "jobs", "add")
    _cutover(env, "jobs", "enqueue", "orders", "--all-not-migrated", "--from-export", str(export))
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cutover",
                "jobs",
                "run",
                "--from-export",
                str(export),
                "--rate",
                "0",
                "--recheck-delay",
                "0",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / f"jobs-{tag}-{i}.log", "wb"),  # noqa: SIM115
            cwd=ROOT,
        )
        for i in range(workers)
    ]
    try:
        while _verified(dsn, clients) < clients:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a job worker exited early; see {work}/jobs-{tag}-*.log")
            time.sleep(0.05)
        seconds = time.perf_counter() - start
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    return {"seconds": seconds, "workers": workers}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    work.chmod(0o711)  # the PostgreSQL server runs as another user and must enter it
    state = work / "state"
    try:
        infos = services.up(["postgres", "pubsub"], state_dir=state)
        return run(args.docs, args.clients, args.rounds, infos, work)
    finally:
        services.down(state_dir=state)
        shutil.rmtree(work, ignore_errors=True)


def run(n: int, clients: int, rounds: int, infos: dict[str, Any], work: Path) -> int:
    from backfill.sources import write_export

    entity = load_config(ROOT / "cutover.toml").entity("orders")
    admin, pubsub = infos["postgres"].extra["odbc_dsn"], infos["pubsub"].url
    export = work / "export"
    print(f"generating an export of {n:,} documents in {clients} clients ...", flush=True)
    write_export(export, entity, documents(entity, n, clients=clients))
    runs: dict[str, list[float]] = {"backfill": [], "verify": [], "jobs_1": [], "jobs_2": []}
    for i in range(rounds):
        dsn = create_database(admin, f"bench_backfill_{i}", replace=True)
        env = _env(work, dsn, pubsub, "bench-backfill")
        _schema(dsn)
        runs["backfill"].append(
            _cutover(env, "backfill", "run", "orders", "--from-export", str(export), "--rate", "0")
        )
        runs["verify"].append(
            _cutover(
                env,
                "verify",
                "orders",
                "--full",
                "--from-export",
                str(export),
                "--recheck-delay",
                "0",
            )
        )
        for workers in (1, 2):
            got = _jobs(work, admin, pubsub, export, clients, workers, f"{i}_{workers}")
            runs[f"jobs_{workers}"].append(got["seconds"])
        print(
            f"round {i + 1}: backfill run {runs['backfill'][-1]:.2f} s, verify "
            f"{runs['verify'][-1]:.2f} s, jobs x1 {runs['jobs_1'][-1]:.2f} s, "
            f"jobs x2 {runs['jobs_2'][-1]:.2f} s",
            flush=True,
        )
    best = {k: min(v) for k, v in runs.items()}
    rate = {k: n / s for k, s in best.items()}
    copy_and_check = best["backfill"] + best["verify"]
    results: dict[str, Any] = {
        "docs": n,
        "clients": clients,
        "machine_cores": os.cpu_count(),
        "rounds": runs,
        "best_seconds": best,
        "rows_per_s": rate,
        "ratio_vs_backfill": {w: best["backfill"] / best[f"jobs_{w}"] for w in ("1", "2")},
        "ratio_vs_backfill_and_verify": {w: copy_and_check / best[f"jobs_{w}"] for w in ("1", "2")},
    }
    one = results["ratio_vs_backfill"]["1"]
    results["targets"] = [
        {
            "name": "jobs (1 worker) rows/s vs backfill run",
            "value": one,
            "op": ">=",
            "target": TARGET,
            "met": one >= TARGET,
        }
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "jobs.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"backfill run   {rate['backfill']:,.0f} rows/s ({best['backfill']:.2f} s)")
    print(
        f"  + verify     {n / copy_and_check:,.0f} rows/s copied and checked "
        f"({copy_and_check:.2f} s)"
    )
    for w in ("1", "2"):
        print(
            f"jobs x{w}        {rate[f'jobs_{w}']:,.0f} rows/s copied and verified "
            f"({best[f'jobs_{w}']:.2f} s): {results['ratio_vs_backfill'][w]:.2f} of backfill "
            f"run (target for x1 >= {TARGET}), "
            f"{results['ratio_vs_backfill_and_verify'][w]:.2f} of backfill run + verify"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
