"""Read-service latency by stage, flag overhead, flag propagation, and stages at scale.

``python -m bench.bench_flags [--part all|reads|scale] [--requests N] [--rounds R]
[--changes C] [--refresh-interval S] [--scale-rounds R]`` (not a test). Each part
starts its own servers (cutover.services, temp state dir) and prints its figures as
ratios against a baseline measured in the same run.

``reads`` (writes ``bench-results/flags.json``): RethinkDB (reqlite), PostgreSQL and
Unleash; identical data in both stores; the read service in real uvicorn processes,
driven over HTTP from this process:

1. latency p50/p99 of ``GET /v1/orders/{client}/items?limit=20`` for a client at
   ``old``, ``new`` and ``shadow`` (flags evaluated through Unleash), and for the same
   clients on servers whose flag lookup is bypassed (every client fixed at old, or at
   new), all interleaved in the same run. Targets: flag overhead <= 5% at p50 (old
   and new); shadow p99 <= 1.1x old p99 (shadow compares every read: sample rate 1).
2. flag propagation: a stage change made with the code ``cutover flags set`` runs
   (FlagService.set_stage, Admin API writes included), until EVERY API process (two
   uvicorn processes with their own SDK clients) serves the other store; over C
   changes alternating old/new. Target: max <= 2 s.

``scale`` (writes ``bench-results/flags_scale.json``): Unleash only. Three entities
over the same 20,000 client ids, each with the same shape (a pilot list of 10, a
cohort holding 3 exceptions) and 10, ~1,000 and 19,997 clients switched to ``new``
(cohort at 0%, ~5% and 100%). Figures, each against the 10-client entity:

3. flag evaluation cost per request, p50, for the same 400 clients in every case,
   rounds interleaved in a shuffled order: the SDK asked both flags (the most a
   stage decision costs; the target: within 5% of the 10-client case), the SDK as
   served (``flags.evaluator.evaluate_stage``, not memoised: it stops at ``new``, so
   a case where most clients read new asks one flag), and the API's memoised
   ``StageReader.stage`` (what a request pays between flag changes).
4. the bytes of Unleash's client features payload for each entity's flags (what every
   SDK polls). Target: not growing with the count (ratio <= 1.01: only the rollout's
   digits differ).
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
from collections import Counter
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
    from flags.evaluator import FixedStage
    from flags.stages import Stage
    from stores.runtime import Runtime

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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part", choices=["all", "reads", "scale"], default="all", help="Which figures to run."
    )
    parser.add_argument(
        "--scale-rounds", type=int, default=40, help="Interleaved rounds of the scale part."
    )
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
    code = 0
    if args.part in ("all", "reads"):
        code = reads(args)
    if args.part in ("all", "scale"):
        code = code or scale(args)
    return code


def reads(args: argparse.Namespace) -> int:
    """Figures 1 and 2: latency by stage, flag overhead, propagation."""
    import pyodbc

    from core.config import load_config
    from core.settings import Settings
    from cutover import services
    from cutover.synthetic import generate_history, reference
    from flags.service import FlagService
    from flags.stages import Stage
    from stores.runtime import Runtime

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


# -- stages at scale ------------------------------------------------------------------
SCALE_CLIENTS = 20_000
SCALE_PILOTS = 10
SCALE_HELD = 3
#: Entity names of equal length, so their payloads differ only by what they hold.
SCALE_CASES = {"scale-a": 10, "scale-b": 1_000, "scale-c": SCALE_CLIENTS}
SCALE_SAMPLE = 400  # clients evaluated per case per round


def _cohort_percent(entity: str, population: list[str], target: int) -> int:
    """The whole percentage whose cohort is closest to ``target`` clients."""
    from flags.stages import bucket, cohort_group

    if target <= SCALE_PILOTS:
        return 0
    if target >= len(population):
        return 100
    buckets = Counter(bucket(c, cohort_group(entity)) for c in population)
    reached, best = 0, (len(population), 100)
    for percent in range(1, 101):
        reached += buckets[percent]
        best = min(best, (abs(reached - target), percent))
    return best[1]


def _payload_bytes(http: httpx.Client, entity: str, rollout: str) -> int:
    """The bytes of the client features payload of the entity's flags, once the server
    serves what was written (it refreshes that cache on its own, ~1 s after a write)."""
    deadline = time.monotonic() + 30
    while True:
        r = http.get("/api/client/features", params={"namePrefix": f"cutover.{entity}."})
        r.raise_for_status()
        served = {
            s["parameters"].get("rollout")
            for f in r.json()["features"]
            if f["name"].endswith(".new")
            for s in f["strategies"]
            if s["parameters"].get("stickiness") == "clientId"
        }
        if served == {rollout} and len(r.json()["features"]) == 2:
            return len(r.content)
        if time.monotonic() > deadline:
            raise RuntimeError(f"Unleash never served {entity}'s cohort at {rollout}%")
        time.sleep(0.2)


def scale(args: argparse.Namespace) -> int:
    """Figures 3 and 4: evaluation cost and payload bytes with 10, 1,000, 20,000 switched."""
    from UnleashClient import UnleashClient
    from UnleashClient.utils import InstanceAllowType

    from core.settings import Settings
    from cutover import services
    from flags.evaluator import StageReader, evaluate_stage
    from flags.stages import CONTEXT_FIELD, Stage, StageRule, StageRules, flag_name
    from flags.unleash_admin import UnleashAdmin

    work = Path(tempfile.mkdtemp(prefix="cutover-bench-flags-scale-"))
    work.chmod(0o711)  # PostgreSQL runs as its own user and must enter its folder
    reader: StageReader | None = None
    sdk: Any = None
    try:
        unleash = services.up(["postgres", "unleash"], state_dir=work / "services")["unleash"]
        backend_token = unleash.extra["backend_token"]
        admin = UnleashAdmin(unleash.url, unleash.extra["admin_token"])
        population = [f"client-{i:05d}" for i in range(SCALE_CLIENTS)]
        switched: dict[str, int] = {}
        rollouts: dict[str, str] = {}
        for entity, target in SCALE_CASES.items():
            percent = _cohort_percent(entity, population, target)
            rules = StageRules(entity)
            pilots = frozenset(population[:SCALE_PILOTS])
            cohort = [c for c in population[SCALE_PILOTS:] if rules.bucket(c) <= max(percent, 1)]
            rule = StageRule(pilots, percent, frozenset(cohort[:SCALE_HELD]))
            admin.ensure([entity])
            admin.apply(entity, Stage.NEW, rule)
            rules = rules.with_rule(Stage.NEW, rule)
            switched[entity] = sum(rules.stage_of(c) is Stage.NEW for c in population)
            rollouts[entity] = str(percent)
        payload: dict[str, int] = {}
        with httpx.Client(base_url=unleash.url, headers={"Authorization": backend_token}) as http:
            for entity in SCALE_CASES:
                payload[entity] = _payload_bytes(http, entity, rollouts[entity])
            whole = len(http.get("/api/client/features").content)
        admin.close()

        sdk = UnleashClient(
            url=f"{unleash.url}/api",
            app_name="bench-flags-scale",
            custom_headers={"Authorization": backend_token},
            refresh_interval=3600,
            disable_metrics=True,
            disable_registration=True,
            multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
        )
        sdk.initialize_client()
        settings = Settings(
            _env_file=None,
            state_dir=work / "reader",
            unleash_url=unleash.url,
            unleash_admin_token=unleash.extra["admin_token"],
            unleash_backend_token=backend_token,
        )
        reader = StageReader(settings)
        if not reader.wait_ready(30):
            raise RuntimeError("the stage reader never reached Unleash")
        for entity in SCALE_CASES:  # both see every case before anything is timed
            pilot = population[0]
            deadline = time.monotonic() + 30
            while reader.stage(entity, pilot) is not Stage.NEW:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the reader never saw {entity}'s flags")
                time.sleep(0.1)
            assert evaluate_stage(sdk, entity, pilot) is Stage.NEW

        # One fixed sample of clients for every case, already in the reader's memo:
        # each case then differs only by what its flags hold.
        sample = random.Random(5).sample(population, SCALE_SAMPLE)
        for entity in SCALE_CASES:
            for client in sample:
                reader.stage(entity, client)
        both: dict[str, list[float]] = {e: [] for e in SCALE_CASES}
        mixed: dict[str, list[float]] = {e: [] for e in SCALE_CASES}
        memo: dict[str, list[float]] = {e: [] for e in SCALE_CASES}
        order = list(SCALE_CASES)
        rng = random.Random(6)
        clock = time.perf_counter_ns
        for _ in range(args.scale_rounds):
            rng.shuffle(order)
            for entity in order:
                new_flag, shadow_flag = (flag_name(entity, s) for s in (Stage.NEW, Stage.SHADOW))
                for client in sample:
                    context = {CONTEXT_FIELD: client}
                    t0 = clock()
                    sdk.is_enabled(new_flag, context)
                    sdk.is_enabled(shadow_flag, context)
                    both[entity].append(clock() - t0)
                for client in sample:
                    t0 = clock()
                    evaluate_stage(sdk, entity, client)
                    mixed[entity].append(clock() - t0)
                for client in sample:
                    t0 = clock()
                    reader.stage(entity, client)
                    memo[entity].append(clock() - t0)
        p50 = {
            name: {e: _pct(v, 0.5) / 1e3 for e, v in samples.items()}
            for name, samples in (("both", both), ("mixed", mixed), ("memo", memo))
        }
    finally:
        if reader is not None:
            reader.close()
        if sdk is not None:
            sdk.destroy()
        services.down(state_dir=work / "services")
        shutil.rmtree(work, ignore_errors=True)

    base = next(iter(SCALE_CASES))
    as_list = len(json.dumps(population).encode())  # a clientId IN list of every id
    results: dict[str, Any] = {
        "machine_cores": os.cpu_count(),
        "clients": SCALE_CLIENTS,
        "shape": f"pilot list of {SCALE_PILOTS}, cohort with {SCALE_HELD} exceptions",
        "cases": {
            e: {
                "switched": switched[e],
                "payload_bytes": payload[e],
                "sdk_both_flags_p50_us": p50["both"][e],
                "sdk_evaluate_stage_p50_us": p50["mixed"][e],
                "reader_memoised_p50_us": p50["memo"][e],
                "samples": len(both[e]),
            }
            for e in SCALE_CASES
        },
        "whole_payload_bytes": whole,
        "one_clientid_list_of_every_client_bytes": as_list,
        "rounds": args.scale_rounds,
    }
    targets = []
    for entity in list(SCALE_CASES)[1:]:
        n = f"{switched[entity]:,}"
        ratio = p50["both"][entity] / p50["both"][base]
        targets.append(
            {
                "name": f"flag evaluation p50 (both flags), {n} / 10 switched",
                "value": ratio,
                "op": "<=",
                "target": 1.05,
                "met": ratio <= 1.05,
            }
        )
        size = payload[entity] / payload[base]
        targets.append(
            {
                "name": f"client features payload, {n} / 10 switched",
                "value": size,
                "op": "<=",
                "target": 1.01,
                "met": size <= 1.01,
            }
        )
    results["targets"] = targets
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flags_scale.json").write_text(json.dumps(results, indent=2) + "\n")

    for entity in SCALE_CASES:
        ratios = {k: v[entity] / v[base] for k, v in p50.items()}
        print(
            f"scale  {switched[entity]:>6,} clients switched: payload {payload[entity]:6,} "
            f"bytes ({payload[entity] / payload[base]:.3f}x); evaluation p50: both flags "
            f"{p50['both'][entity]:5.1f} us ({ratios['both']:.3f}x), as served "
            f"{p50['mixed'][entity]:5.1f} us ({ratios['mixed']:.3f}x), memoised "
            f"{p50['memo'][entity]:5.2f} us ({ratios['memo']:.3f}x)"
        )
    print(
        f"scale  targets: evaluation within 5% of the 10-client case, payload not growing; "
        f"a clientId list of all {SCALE_CLIENTS:,} ids would be {as_list:,} bytes "
        "(and Unleash refuses more than 250)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
