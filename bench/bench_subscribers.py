"""Subscription handler ingest rate against its two ceilings (not a test).

``python -m bench.bench_subscribers [--events N]`` starts its own Pub/Sub server and
PostgreSQL (cutover.services, temp state dir, stopped at the end), writes
``bench-results/subscribers.json`` and prints:

* (a) the Pub/Sub server's raw receive-and-ack rate: a plain ``subscribe()`` callback
  that only acks, on a subscription with the same settings and the same N messages;
* (b) the SQL store's raw batched write rate: ``SqlStore.apply`` of the same events'
  rows in batches of the subscription's batch size, one transaction each, no Pub/Sub;
* (c) the worker: ``cutover subs run`` as its own process, streaming pull -> parse ->
  map -> one transaction per batch (rows + counters) -> ack, into PostgreSQL through
  pyodbc, until the counters say every message is committed; and its peak RSS.

Target: (c) >= 0.7 x min(a, b). All three run in this process's run, on this machine,
one after the other. The N events are a synthetic history (10 clients, up to 3
versions per id, deletes, 5% duplicates, shuffled) published once to a topic that
both subscriptions (a) and (c) are attached to. Publishing is slow on the local
server (it rescans the topic's retained log per message) and is not part of any rate.
Peak RSS is the worker process's VmHWM, read just before it is sent SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from google.cloud import pubsub_v1

from core.config import load_config, parse_config
from core.settings import Settings
from cutover import pubsub, services
from cutover.services.postgres import create_database
from cutover.synthetic import generate_history, reference, with_faults
from cutover.tables import all_tables
from stores.mapping import row_from_event
from stores.runtime import Runtime
from stores.sql import SqlStore
from subscribers import counters, manage

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"
SUB, RAW = "bench-worker", "bench-raw"
TARGET = 0.7


def say(text: str) -> None:
    print(text, flush=True)


def bench_config(path: Path) -> Path:
    """cutover.toml's entities plus one subscription with the declared defaults."""
    text = (ROOT / "cutover.toml").read_text(encoding="utf-8").split("\n[subscriptions.", 1)[0]
    text += f'\n[subscriptions.{SUB}]\ntopic = "orders"\nentity = "orders"\nsink = "sqlstore"\n'
    path.write_text(text, encoding="utf-8")
    parse_config(text)  # fail here, not in the worker, if the file is wrong
    return path


def publish(settings: Settings, events: list[Any], chunk: int = 1000) -> None:
    """Publish with the contract's body, attributes and ordering keys, 1,000 per request.

    Not ``core.pubsub.publish_events``: with ordering keys the high-level client
    sends one request per key, and shuffled events have thousands of keys; against the
    local server that alone takes ~10 minutes for 50,000 events. One Publish request may
    carry messages of many ordering keys (the API keeps order per key within it), so
    the low-level call publishes the very same messages in 50 requests.
    """
    client = pubsub.publisher(settings)
    path = pubsub.topic_path(settings, "orders")
    for i in range(0, len(events), chunk):
        messages = [
            pubsub_v1.types.PubsubMessage(
                data=e.to_json_bytes(), attributes=e.attributes, ordering_key=e.ordering_key
            )
            for e in events[i : i + chunk]
        ]
        client.api.publish(topic=path, messages=messages, timeout=600)
        if (i // chunk) % 10 == 9 or i + chunk >= len(events):
            say(f"  published {min(i + chunk, len(events)):,}/{len(events):,}")


def raw_receive(settings: Settings, n: int, flow: Any) -> tuple[float, float]:
    """(a) wall and CPU seconds to receive and ack n messages with a do-nothing callback."""
    client = pubsub.subscriber(settings)
    done, lock, count = threading.Event(), threading.Lock(), [0]

    def callback(message: Any) -> None:
        message.ack()
        with lock:
            count[0] += 1
            if count[0] >= n:
                done.set()

    start, cpu = time.perf_counter(), time.process_time()
    future = client.subscribe(pubsub.subscription_path(settings, RAW), callback, flow_control=flow)
    if not done.wait(600):
        raise RuntimeError(f"raw receive stalled at {count[0]} of {n}")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    future.cancel()
    future.result(timeout=30)
    client.close()
    return elapsed, cpu


def raw_write(dsn: str, config_path: Path, events: list[Any], batch: int) -> float:
    """(b) seconds for SqlStore.apply of the rows in batches (mapping done beforehand)."""
    config = load_config(config_path)
    entity = config.entity("orders")
    store = SqlStore(dsn, "postgresql", config)
    store.ensure_schema(all_tables())
    rows = [row_from_event(entity, e) for e in events]
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        store.apply(entity, rows[i : i + batch])
    elapsed = time.perf_counter() - start
    store.close()
    return elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_worker(rt: Runtime, env: dict[str, str], n: int, log_path: Path) -> dict[str, float]:
    """(c) the worker as its own process; timed from "pulling" in its log to all committed."""
    argv = [
        sys.executable,
        "-c",
        "from cutover.cli import main; main()",
        "subs",
        "run",
        SUB,
        "--log-every",
        "5",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while b"pulling" not in log_path.read_bytes():
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.01)
        start, cpu_start = time.perf_counter(), cpu_seconds(proc.pid)
        last_report = start
        while True:
            got = counters.read_all(rt.sql).get(SUB)
            processed = got.processed if got else 0
            if processed >= n:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"worker died:\n{log_path.read_text()[-2000:]}")
            now = time.perf_counter()
            if now - start > 900:
                raise RuntimeError(f"worker stalled at {processed} of {n}")
            if now - last_report >= 5:
                say(f"  worker: {processed:,}/{n:,} committed")
                last_report = now
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        rss, cpu = peak_rss_mb(proc.pid), cpu_seconds(proc.pid) - cpu_start
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    return {"seconds": elapsed, "cpu_seconds": cpu, "peak_rss_mb": rss, "exit_code": code}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args(argv)
    n = args.events

    state = Path(tempfile.mkdtemp(prefix="cutover-bench-subs-"))
    state.chmod(0o711)  # PostgreSQL runs as its own user and must enter its folder
    try:
        say("starting Pub/Sub server and PostgreSQL ...")
        infos = services.up(["pubsub", "postgres"], state_dir=state)
        admin = infos["postgres"].extra["odbc_dsn"]
        config_path = bench_config(state / "cutover.toml")
        worker_dsn = create_database(admin, "bench_worker", replace=True)
        write_dsn = create_database(admin, "bench_write", replace=True)
        settings = Settings(
            _env_file=None,
            config_file=config_path,
            state_dir=state / "cutover",
            sql_dsn=worker_dsn,
            pubsub_emulator_host=infos["pubsub"].url,
            pubsub_project="bench",
        )
        rt = Runtime(settings)
        sub = rt.cfg.subscription(SUB)
        entity = rt.cfg.entity("orders")

        history = generate_history(
            entity, clients=10, ids_per_client=-(-n // 15), versions=3, delete_rate=0.1, seed=21
        )
        events = with_faults(history, duplicate_rate=0.05, shuffle=True, seed=21)[:n]
        if len(events) < n:
            raise RuntimeError(f"generated only {len(events)} events")

        manage.add(rt, SUB, actor="bench")
        raw = manage.declared_subscription(settings, sub)
        raw.name = pubsub.subscription_path(settings, RAW)
        client = pubsub.subscriber(settings)
        client.create_subscription(request=raw)
        client.close()

        say(f"publishing {n:,} events (not timed as part of any rate) ...")
        start = time.perf_counter()
        publish(settings, events)
        publish_s = time.perf_counter() - start

        flow = pubsub_v1.types.FlowControl(
            max_messages=sub.max_outstanding_messages, max_bytes=sub.max_outstanding_bytes
        )
        say("(a) raw receive-and-ack ...")
        receive_s, receive_cpu = raw_receive(settings, n, flow)
        say("(b) raw batched SqlStore.apply ...")
        write_s = raw_write(write_dsn, config_path, events, sub.batch_size)
        say("(c) worker process ...")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUTOVER_")}
        env.update(
            {
                "CUTOVER_CONFIG_FILE": str(config_path),
                "CUTOVER_STATE_DIR": str(state / "cutover"),
                "CUTOVER_SQL_DSN": worker_dsn,
                "CUTOVER_PUBSUB_EMULATOR_HOST": infos["pubsub"].url,
                "CUTOVER_PUBSUB_PROJECT": "bench",
            }
        )
        worker = run_worker(rt, env, n, state / "worker.log")

        ref = reference(entity, events)
        stored = {row.key: row for row in rt.sql.scan(entity, None)}
        correct = len(stored) == len(ref) and all(
            stored[k].rank == r.rank for k, r in ref.items() if k in stored
        )
        rt.close()
    finally:
        services.down(state_dir=state)
        shutil.rmtree(state, ignore_errors=True)

    a, b, c = n / receive_s, n / write_s, n / worker["seconds"]
    ceiling = min(a, b)
    ratio = c / ceiling
    results: dict[str, Any] = {
        "events": n,
        "batch_size": sub.batch_size,
        "max_batch_latency_ms": sub.max_batch_latency_ms,
        "max_outstanding_messages": sub.max_outstanding_messages,
        "publish_per_s": n / publish_s,
        "raw_receive_ack_per_s": a,
        "raw_batched_write_per_s": b,
        "worker_per_s": c,
        "ratio_vs_receive": c / a,
        "ratio_vs_write": c / b,
        "ratio_vs_min": ratio,
        "raw_receive_cpu_us_per_event": 1e6 * receive_cpu / n,
        "worker_cpu_us_per_event": 1e6 * worker["cpu_seconds"] / n,
        "load_average_1m_at_end": os.getloadavg()[0],
        "worker_peak_rss_mb": worker["peak_rss_mb"],
        "worker_exit_code": worker["exit_code"],
        "final_state_equals_reference": correct,
        "targets": [
            {
                "name": "worker events/s vs min(raw receive, raw write)",
                "value": ratio,
                "op": ">=",
                "target": TARGET,
                "met": ratio >= TARGET,
            },
        ],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "subscribers.json").write_text(json.dumps(results, indent=2) + "\n")

    say(
        f"\nsubscription handler, {n:,} events, batch {sub.batch_size}, "
        f"latency {sub.max_batch_latency_ms} ms, PostgreSQL via pyodbc"
    )
    say(f"  (a) raw Pub/Sub receive+ack:   {a:10,.0f} events/s")
    say(f"  (b) raw SqlStore.apply:        {b:10,.0f} events/s")
    say(f"  (c) worker (cutover subs run): {c:10,.0f} events/s")
    say(
        f"  ratio c/a {c / a:.2f}, c/b {c / b:.2f}, c/min(a,b) {ratio:.2f} "
        f"(target >= {TARGET}: {'met' if ratio >= TARGET else 'MISSED'})"
    )
    say(
        f"  client CPU per event: raw receive {1e6 * receive_cpu / n:.0f} us, worker "
        f"{1e6 * worker['cpu_seconds'] / n:.0f} us (machine load {os.getloadavg()[0]:.1f}: "
        "the rates depend on what else runs on the 2 cores)"
    )
    say(
        f"  worker peak RSS {worker['peak_rss_mb']:.0f} MB; exit code on SIGTERM "
        f"{worker['exit_code']}; final state equals reference: {correct}"
    )
    say(f"  (publishing ran at {n / publish_s:,.0f} events/s; not part of any rate)")
    say(f"wrote {RESULTS / 'subscribers.json'}")
    return 0 if correct and worker["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
