"""Read-service latency by stage, flag overhead, and flag propagation (not a test).

``python -m bench.bench_flags [--requests N] [--rounds R] [--changes C]
[--refresh-interval S]`` starts its own
RethinkDB (reqlite), PostgreSQL and Unleash (cutover.services, temp state dir), seeds
identical data in both stores, runs the read service in real uvicorn processes and
drives them over HTTP from this process. Writes ``bench-results/flags.json``:

1. latency p50/p99 of ``GET /v1/orders/{client}/items?limit=20`` for a client at
   ``old``, ``new`` and ``shadow`` (flags evaluated through Unleash), and for the same
   clients on servers whose flag lookup is bypassed (every client fixed at old, or at
   new), all interleaved in the same run. Targets: flag overhead <= 5% at p50 (old
   and new); shadow p99 <= 1.1x old p99 (shadow compares every read: sample rate 1).
2. flag propagation: a stage change made with the code ``cutover flags set`` runs
   (FlagService.set_stage, Admin API writes included), until EVERY API process (two
   uvicorn processes with their own SDK clients) serves the other store; over C
   changes alternating old/new. Target: max <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"
ENTITY = "orders"
CLIENTS = {"old": "client-000", "new": "client-001", "shadow": "client-002", "prop": "client-003"}


# -- the server side (a child process) --------------------------------------------------
def serve(specs: list[str]) -> None:
    """Run one uvicorn server per ``MODE:PORT`` in THIS process (one event loop).

    ``MODE`` is ``flags`` (stages from Unleash) or ``fixed-old``/``fixed-new`` (every
    client at that stage: no flag lookup). Sharing the process means the bypassed
    servers run next to the same SDK polling thread and shadow workers, so the only
    difference between ``flags`` and ``fixed-*`` is the flag lookup itself.
    """
    import asyncio

    import uvicorn

    from app.main import create_app
    from cutover.runtime import Runtime
    from flags.evaluator import FixedStage
    from flags.stages import Stage

    servers = []
    for spec in specs:
        mode, port = spec.split(":")
        stages = None if mode == "flags" else FixedStage(Stage(mode.removeprefix("fixed-")))
        rt = Runtime()
        if os.environ.get("BENCH_REFRESH_INTERVAL_S"):
            # Simulates a float CUTOVER_UNLEASH_REFRESH_INTERVAL_S (Settings takes an int
            # today); the SDK's scheduler accepts fractions of a second.
            rt.settings.unleash_refresh_interval_s = float(  # type: ignore[assignment]
                os.environ["BENCH_REFRESH_INTERVAL_S"]
            )
        app = create_app(rt, stages=stages)
        servers.append(
            uvicorn.Server(
                uvicorn.Config(
                    app, host="127.0.0.1", port=int(port), log_level="warning", access_log=False
                )
            )
        )

    async def run_all() -> None:
        await asyncio.gather(*(server.serve() for server in servers))

    asyncio.run(run_all())


# -- the driver -------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_servers(
    modes: list[str], env: dict[str, str], state: Path
) -> tuple[subprocess.Popen[bytes], list[str]]:
    """One process serving each mode on its own port; returns the process and URLs."""
    ports = [_free_port() for _ in modes]
    state.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.bench_flags",
            "serve",
            *(f"{m}:{p}" for m, p in zip(modes, ports, strict=True)),
        ],
        env={**env, "CUTOVER_STATE_DIR": str(state)},
        cwd=state,
        stdout=subprocess.DEVNULL,
        stderr=open(state / "server.log", "wb"),  # noqa: SIM115
    )
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    deadline = time.monotonic() + 60
    for url in urls:
        while True:
            try:
                if httpx.get(f"{url}/metrics", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"servers {modes} did not start; see {state / 'server.log'}")
            time.sleep(0.1)
    return proc, urls


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50_ms": _pct(samples, 0.50) * 1e3,
        "p99_ms": _pct(samples, 0.99) * 1e3,
        "mean_ms": statistics.fmean(samples) * 1e3,
    }


def _store(http: httpx.Client, url: str, client: str) -> str:
    r = http.get(f"{url}/v1/{ENTITY}/{client}/items", params={"limit": 1})
    r.raise_for_status()
    return r.headers["X-Cutover-Store"]


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        serve(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="Requests per variant per round.")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument(
        "--ids",
        type=int,
        default=50,
        help="Items per client (reqlite re-sorts per page: keep it small).",
    )
    parser.add_argument(
        "--refresh-interval",
        type=float,
        default=None,
        help="SDK refresh interval in the API processes, in seconds "
        "(default: the setting, CUTOVER_UNLEASH_REFRESH_INTERVAL_S).",
    )
    args = parser.parse_args(argv)

    import pyodbc

    from cutover import services
    from cutover.config import load_config
    from cutover.runtime import Runtime
    from cutover.settings import Settings
    from cutover.synthetic import generate_history, reference
    from flags.service import FlagService
    from flags.stages import Stage

    work = Path(tempfile.mkdtemp(prefix="cutover-bench-flags-"))
    work.chmod(0o711)  # PostgreSQL runs as its own user and must enter its folder
    procs: list[subprocess.Popen[bytes]] = []
    try:
        infos = services.up(["rethinkdb", "postgres", "unleash"], state_dir=work / "services")
        pg, unleash, rdb = infos["postgres"], infos["unleash"], infos["rethinkdb"]
        with pyodbc.connect(pg.extra["odbc_dsn"], autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench_reads")
        dsn = pg.extra["odbc_dsn"].replace("DATABASE=cutover", "DATABASE=bench_reads")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUTOVER_")}
        env.update(
            {
                "CUTOVER_CONFIG_FILE": str(ROOT / "cutover.toml"),
                "CUTOVER_SQL_DSN": dsn,
                "CUTOVER_RETHINKDB_HOST": rdb.host,
                "CUTOVER_RETHINKDB_PORT": str(rdb.port),
                "CUTOVER_UNLEASH_URL": unleash.url,
                "CUTOVER_UNLEASH_ADMIN_TOKEN": unleash.extra["admin_token"],
                "CUTOVER_UNLEASH_BACKEND_TOKEN": unleash.extra["backend_token"],
                "PYTHONPATH": str(ROOT),
            }
        )
        if args.refresh_interval:
            env["BENCH_REFRESH_INTERVAL_S"] = str(args.refresh_interval)
        settings = Settings(
            _env_file=None,
            config_file=ROOT / "cutover.toml",
            sql_dsn=dsn,
            rethinkdb_host=rdb.host,
            rethinkdb_port=rdb.port,
            unleash_url=unleash.url,
            unleash_admin_token=unleash.extra["admin_token"],
            unleash_backend_token=unleash.extra["backend_token"],
            state_dir=work / "cli",
        )
        rt = Runtime(settings, load_config(ROOT / "cutover.toml"))
        rt.sql.ensure_schema()
        rt.rethink.ensure_tables()
        ent = rt.cfg.entity(ENTITY)
        rows = list(
            reference(
                ent,
                generate_history(
                    ent,
                    clients=len(CLIENTS),
                    ids_per_client=args.ids,
                    versions=1,
                    delete_rate=0.0,
                    seed=3,
                ),
            ).values()
        )
        rt.sql.apply(ent, rows)
        rt.rethink.write(ent, rows)
        flags = FlagService(rt)
        flags.set_stage(ENTITY, CLIENTS["shadow"], Stage.SHADOW, actor="bench")
        flags.set_stage(ENTITY, CLIENTS["new"], Stage.NEW, actor="bench", force=True)

        main_proc, (flags_url, old_url, new_url) = _start_servers(
            ["flags", "fixed-old", "fixed-new"], env, work / "api-1"
        )
        second_proc, (flags2_url,) = _start_servers(["flags"], env, work / "api-2")
        procs += [main_proc, second_proc]
        http = httpx.Client(timeout=30)
        deadline = time.monotonic() + 30
        while _store(http, flags_url, CLIENTS["new"]) != "new":
            if time.monotonic() > deadline:
                raise RuntimeError("the flags server never saw the seeded stages")
            time.sleep(0.1)

        # 1. latency: one request per variant in a shuffled order, repeated, so drift in
        # the machine's load (reqlite, Unleash, PostgreSQL share 2 cores) hits all alike.
        variants = {
            "old": (flags_url, CLIENTS["old"]),
            "new": (flags_url, CLIENTS["new"]),
            "shadow": (flags_url, CLIENTS["shadow"]),
            "old (flag lookup bypassed)": (old_url, CLIENTS["old"]),
            "new (flag lookup bypassed)": (new_url, CLIENTS["new"]),
        }
        samples: dict[str, list[float]] = {v: [] for v in variants}
        for url, client in variants.values():  # warm-up: connections, caches
            for _ in range(50):
                http.get(f"{url}/v1/{ENTITY}/{client}/items", params={"limit": 20})
        rng = random.Random(1)
        order = list(variants)
        for _ in range(args.rounds * args.requests):
            rng.shuffle(order)
            for name in order:
                url, client = variants[name]
                t0 = time.perf_counter()
                r = http.get(f"{url}/v1/{ENTITY}/{client}/items", params={"limit": 20})
                samples[name].append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"{name}: {r.status_code} {r.text[:200]}")
        latency = {name: _summary(s) for name, s in samples.items()}
        bypassed = {s: latency[f"{s} (flag lookup bypassed)"]["p50_ms"] for s in ("old", "new")}
        overhead_old = latency["old"]["p50_ms"] / bypassed["old"] - 1
        overhead_new = latency["new"]["p50_ms"] / bypassed["new"] - 1
        shadow_ratio = latency["shadow"]["p99_ms"] / latency["old"]["p99_ms"]
        # A/A: the same client and store with and without the (memoised) flag lookup.
        # How far these two p99s differ is the run's p99 noise floor.
        p99_noise = latency["old"]["p99_ms"] / latency["old (flag lookup bypassed)"]["p99_ms"]
        metrics = http.get(f"{flags_url}/metrics").text
        compared = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("cutover_shadow_comparisons_total{")
        )
        dropped = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("cutover_shadow_dropped_total{")
        )

        # 2. propagation to every API process
        prop_client = CLIENTS["prop"]
        apis = [flags_url, flags2_url]
        times: list[float] = []
        command_s: list[float] = []
        target = Stage.OLD
        for _ in range(args.changes):
            target = Stage.NEW if target is Stage.OLD else Stage.OLD
            want = "new" if target is Stage.NEW else "old"
            time.sleep(rng.uniform(0.2, 1.2))  # not in phase with the SDK's refresh
            t0 = time.perf_counter()
            flags.set_stage(ENTITY, prop_client, target, actor="bench", force=True)
            command_s.append(time.perf_counter() - t0)
            pending = set(apis)
            while pending:
                for url in list(pending):
                    if _store(http, url, prop_client) == want:
                        pending.discard(url)
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError("a stage change did not propagate in 30 s")
                time.sleep(0.005)
            times.append(time.perf_counter() - t0)
        flags.close()
        http.close()

        results: dict[str, Any] = {
            "machine_cores": os.cpu_count(),
            "endpoint": f"GET /v1/{ENTITY}/{{client}}/items?limit=20 ({args.ids} items/client)",
            "stores": "RethinkDB = reqlite, SQL = PostgreSQL 15 via psqlodbc",
            "latency": latency,
            "flag_overhead_p50": {"old": overhead_old, "new": overhead_new},
            "shadow_p99_vs_old_p99": shadow_ratio,
            "p99_noise_floor_old_vs_old_bypassed": p99_noise,
            "shadow_comparisons": {"run": compared, "dropped": dropped, "sample_rate": 1.0},
            "propagation": {
                "changes": len(times),
                "median_s": statistics.median(times),
                "max_s": max(times),
                "all_s": times,
                "set_command_median_s": statistics.median(command_s),
                "api_processes": len(apis),
                "refresh_interval_s": args.refresh_interval or settings.unleash_refresh_interval_s,
            },
        }
        worst_overhead = max(overhead_old, overhead_new)
        results["targets"] = [
            {
                "name": "flag overhead at p50 (worst of old, new)",
                "value": worst_overhead,
                "op": "<=",
                "target": 0.05,
                "met": worst_overhead <= 0.05,
            },
            {
                "name": "shadow p99 / old p99",
                "value": shadow_ratio,
                "op": "<=",
                "target": 1.1,
                "met": shadow_ratio <= 1.1,
            },
            {
                "name": "flag propagation max (s)",
                "value": max(times),
                "op": "<=",
                "target": 2.0,
                "met": max(times) <= 2.0,
            },
        ]
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "flags.json").write_text(json.dumps(results, indent=2) + "\n")

        for name, s in latency.items():
            print(
                f"latency  {name:28} p50 {s['p50_ms']:7.2f} ms   p99 {s['p99_ms']:7.2f} ms"
                f"   (n={s['n']})"
            )
        print(
            f"flag overhead at p50: old {overhead_old:+.1%}, new {overhead_new:+.1%} "
            "(target <= +5%)"
        )
        print(
            f"shadow p99 / old p99: {shadow_ratio:.2f} (target <= 1.1); "
            f"{compared:.0f} comparisons run, {dropped:.0f} dropped"
        )
        print(f"p99 noise floor (old with / without flag lookup, same store): {p99_noise:.2f}")
        print(
            f"propagation over {len(times)} changes to {len(apis)} API processes: median "
            f"{statistics.median(times):.2f} s, max {max(times):.2f} s (target max <= 2 s)"
        )
        return 0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        services.down(state_dir=work / "services")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
