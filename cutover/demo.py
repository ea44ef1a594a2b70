"""``cutover demo``: a full migration rehearsal on embedded defaults.

It runs the README's runbook with the real commands, as an operator would, against
servers it starts itself (Pub/Sub, RethinkDB; the SQL store is the embedded SQLite
file and the flags the embedded file backend): seed the old store's history; add the
legacy and the new subscriptions and run their workers; publish live traffic
(duplicates, reordered versions, deletes, one poison message) while the backfill
runs; verify; move a pilot client through shadow to new and back; roll every client
out in waves (``cutover rollout``) while reads flow, one wave tripping its guardrail on a
mismatch injected into the SQL store and rolling back by itself; summarise. It stops
everything it started unless ``--keep``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console

from core.events import Event
from core.pubsub import ensure_topic, publish_events, publisher, topic_path
from core.settings import Settings
from stores.mapping import Row, document_from_row, row_from_document
from stores.runtime import Runtime

from . import services
from .synthetic import generate_history, reference, with_faults

console = Console(highlight=False)
ENTITY = "orders"
SUBSCRIPTIONS = ("orders-rethinkdb", "orders-sqlstore")
PILOT = "client-000"
CLIENTS = tuple(f"client-{i:03d}" for i in range(4))
#: The rollout's cohort waves; the pilot client goes first, on its own.
WAVES = (50, 100)
ROLLOUT = ("--waves", ",".join(map(str, WAVES)), "--bake", "4s", "--watch", "1s")


class DemoFailed(click.ClickException):
    """A rehearsal step did not do what the runbook promises."""


@dataclass
class Rehearsal:
    state_dir: Path
    keep: bool
    timings: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # -- plumbing ---------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        console.rule(f"[bold]{name}")
        started = time.monotonic()
        yield
        self.timings[name] = time.monotonic() - started

    def cutover(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one CLI command the way the runbook shows it, echoing it first."""
        console.print(f"[dim]$ cutover {' '.join(args)}[/dim]")
        done = subprocess.run(
            [sys.executable, "-m", "cutover", *args],
            env=self.env,
            text=True,
            capture_output=True,
            timeout=600,
        )
        out = (done.stdout + done.stderr).rstrip()
        if out:
            console.print("  " + out.replace("\n", "\n  "), markup=False)
        if check and done.returncode != 0:
            raise DemoFailed(f"`cutover {' '.join(args)}` exited {done.returncode}")
        return done

    def spawn(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        console.print(f"[dim]$ cutover {' '.join(args)} &   (log: {self.state_dir / log})[/dim]")
        handle = (self.state_dir / log).open("wb")
        child = subprocess.Popen(
            [sys.executable, "-m", "cutover", *args],
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        self.children.append(child)
        return child

    def stop_child(self, child: subprocess.Popen[bytes], name: str) -> None:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        # uvicorn re-raises SIGTERM after a graceful shutdown: -15 is a clean stop there.
        how = "on SIGTERM" if child.returncode == -signal.SIGTERM else f"exit {child.returncode}"
        console.print(f"  {name} stopped ({how})")

    # -- the rehearsal ----------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        finally:
            for child in self.children:
                if child.poll() is None and not self.keep:
                    self.stop_child(child, f"the API (pid {child.pid})")
            if not self.keep:
                services.down(state_dir=self.state_dir)

    def _run(self) -> None:
        with self.phase("Start the local servers"):
            if self.state_dir.exists():
                services.down(state_dir=self.state_dir)
                shutil.rmtree(self.state_dir)
            self.state_dir.mkdir(parents=True)
            infos = services.up(["pubsub", "rethinkdb"], state_dir=self.state_dir)
            for info in infos.values():
                console.print(f"  {info.name:10} {info.url}  (pid {info.pid})")
            token_file = self.state_dir / "admin-token"
            token_file.write_text(secrets.token_urlsafe(24))
            token_file.chmod(0o600)
            self.env = _child_env(self.state_dir, services.env_for(infos), token_file)
            console.print("  new store: SQLite file (embedded default); flags: local file backend")

        settings = Settings(_env_file=None, **_settings_from_env(self.env))
        rt = Runtime(settings)
        orders = rt.cfg.entity(ENTITY)

        with self.phase("Seed the old store with history"):
            history = generate_history(orders, clients=4, ids_per_client=150, versions=3, seed=11)
            self.cutover("db", "init")
            seeded = [r for r in reference(orders, history).values() if not r.deleted]
            rt.rethink.insert_documents(orders, [document_from_row(orders, r) for r in seeded])
            console.print(f"  {len(seeded)} {ENTITY} documents for 4 clients in RethinkDB")

        with self.phase("Double-write: add both subscriptions, run their workers"):
            for name in SUBSCRIPTIONS:
                self.cutover("subs", "add", name)
            self.cutover("jobs", "add")  # where the API's first-use jobs go
            workers = self.spawn(
                "subs", "run", *SUBSCRIPTIONS, "--log-every", "2", log="workers.log"
            )

        with self.phase("Live traffic while the backfill runs"):
            live = _live_events(orders, history)
            delivered = with_faults(live, duplicate_rate=0.15, seed=5)
            publishing = threading.Thread(
                target=self._publish, args=(settings, delivered), name="publisher"
            )
            publishing.start()
            self.cutover("backfill", "run", ENTITY, "--rate", "0", "--batch", "200")
            publishing.join()
            console.print(
                f"  published {len(delivered)} live events ({len(live)} changes, "
                f"{len(delivered) - len(live)} duplicates, reordered) + 1 poison message"
            )
            self.facts["events published"] = len(delivered) + 1

        with self.phase("Wait until both workers have applied everything"):
            expected = {
                k: r
                for k, r in reference(orders, [*history, *live]).items()
                if not r.deleted and (k in {s.key for s in seeded} or _touched(k, live))
            }
            _wait_for(lambda: _live_rows(rt, orders) == expected, what="the SQL store to catch up")
            _wait_for(lambda: _old_rows(rt, orders) == expected, what="RethinkDB to catch up")
            _wait_for(lambda: self._failures(rt) >= 1, what="the poison message to be logged")
            console.print(f"  both stores hold the newest version of all {len(expected)} live rows")
            self.stop_child(workers, "workers")
            if workers.returncode != 0:
                raise DemoFailed(f"the workers exited {workers.returncode}; see workers.log")

        with self.phase("Verify: both stores agree, client by client"):
            done = self.cutover("verify", ENTITY, "--full", "--recheck-delay", "1", check=False)
            self.facts["differences found"] = "0" if done.returncode == 0 else "see report"
            if done.returncode != 0:
                raise DemoFailed("verification found differences")

        with self.phase(f"Cut over the pilot client {PILOT}"):
            port = self.env["CUTOVER_API_PORT"]
            api = self.spawn("serve", log="api.log")
            base = f"http://127.0.0.1:{port}"
            _wait_for(lambda: _ok(f"{base}/healthz"), what="the API to start")
            self._show_read(base, "before")
            for stage in ("shadow", "new"):
                self.cutover("flags", "set", ENTITY, PILOT, stage, "--reason", "demo pilot")
                self._wait_for_store(base, "old" if stage == "shadow" else "new")
                self._show_read(base, f"stage {stage}")

        with self.phase("Roll back instantly"):
            started = time.monotonic()
            self.cutover("flags", "rollback", ENTITY, PILOT, "--reason", "demo rollback")
            self._wait_for_store(base, "old")
            self._show_read(base, f"rolled back in {time.monotonic() - started:.1f} s")
            self.cutover("flags", "status", ENTITY)

        with self.phase("Roll out every client in waves, one tripping its guardrail"):
            self._rollout(rt, base)

        self._summary(rt, base, api)

    # -- steps ------------------------------------------------------------------------
    def _rollout(self, rt: Runtime, base: str) -> None:
        """Every client to new in waves (the pilot first), reads flowing for each client.
        While a later wave bakes in shadow, one of its items is changed in the SQL store
        behind cutover's back: the shadow comparisons find it, the wave's mismatch rate
        trips its guardrail, the wave rolls back by itself and the plan pauses. The
        client is held back for investigation and the plan resumed to the end."""
        from flags.rollout_state import load

        wave, target = _tripping_wave()
        pilot = ("--pilot", PILOT)
        self.cutover("rollout", "plan", ENTITY, *ROLLOUT, *pilot, "--dry-run")
        stop = threading.Event()
        reads = threading.Thread(target=_read_all, args=(base, stop), name="reads", daemon=True)
        reads.start()
        try:
            run = self.spawn("rollout", "run", ENTITY, *ROLLOUT, *pilot, log="rollout.log")

            def baking() -> bool:
                row = load(rt.sql, ENTITY)
                return row is not None and (row.wave, row.phase) == (wave, "baking")

            _wait_for(lambda: baking() or run.poll() is not None, what=f"wave {wave + 1} to bake")
            key = self._tamper(rt, target)
            console.print(
                f"  injected: {ENTITY}/{key} of {target} changed in the SQL store only "
                f"(wave {wave + 1} bakes in shadow)"
            )
            run.wait(timeout=180)
            log = (self.state_dir / "rollout.log").read_text(encoding="utf-8").rstrip()
            console.print("  " + log.replace("\n", "\n  "), markup=False)
            if run.returncode != 3:
                raise DemoFailed(
                    f"the rollout exited {run.returncode}, not paused by its guardrail"
                )
            self.cutover("rollout", "status", ENTITY)
            reason = "shadow mismatches under investigation"
            self.cutover("flags", "except", ENTITY, target, "--reason", reason)
            self.cutover("rollout", "resume", ENTITY)
        finally:
            stop.set()
            reads.join(timeout=10)
        self._rollout_facts(rt, wave, target)

    def _tamper(self, rt: Runtime, client: str) -> str:
        """Change one item of ``client`` in the SQL store only (written around cutover)."""
        entity = rt.cfg.entity(ENTITY)
        [row] = rt.sql.page(entity, client, limit=1)
        q = rt.sql.dialect.quote
        with rt.sql.transaction() as cur:
            cur.execute(
                f"UPDATE {q(entity.sql_table)} SET {q('status')} = ? WHERE {q(entity.key)} = ?",
                "tampered",
                row.key,
            )
        return row.key

    def _rollout_facts(self, rt: Runtime, wave: int, target: str) -> None:
        from flags.rollout import Rollout
        from flags.service import FlagService

        rollout = Rollout(rt, FlagService(rt))
        report = rollout.report(ENTITY)
        flags = rollout.service.backend.read(ENTITY)
        rollout.close()
        tripped = report["waves"][wave]
        if report["plan"]["state"] != "done" or not tripped["rolled_back"]:
            raise DemoFailed(f"the rollout ended {report['plan']['state']}, see rollout.log")
        figures = next(e["figures"] for e in report["events"] if e["event"] == "tripped")
        self.facts["rollout waves"] = ", ".join(w["label"] for w in report["waves"])
        self.facts["guardrail tripped"] = (
            f"wave {wave + 1} ({tripped['label']}): shadow mismatch rate "
            f"{figures['mismatch_rate']:.1%} ({figures['mismatches']} of "
            f"{figures['comparisons']} comparisons) > "
            f"{report['limits']['max_mismatch_rate']:.1%}: rolled back by itself"
        )
        stages = {c: flags.stage_of(c).value for c in CLIENTS}
        self.facts["reads after the rollout"] = ", ".join(f"{c} {s}" for c, s in stages.items())
        self.facts["held back"] = f"{target} (its reads mismatched; the plan went on without it)"

    def _publish(self, settings: Settings, events: list[Event]) -> None:
        client = publisher(settings)
        ensure_topic(settings, ENTITY, client)
        for start in range(0, len(events), 100):
            publish_events(settings, events[start : start + 100], client=client)
            time.sleep(0.05)  # a live stream, not one burst: it overlaps the backfill
        poison = client.publish(
            topic_path(settings, ENTITY),
            b"{not json",
            ordering_key="orders:poison",
            entity=ENTITY,
            client_id=PILOT,
            op="upsert",
        )
        poison.result(timeout=60)

    def _failures(self, rt: Runtime) -> int:
        from subscribers.failures import list_failures

        return len(list_failures(rt.sql, limit=1000))

    def _store(self, base: str) -> str:
        response = httpx.get(f"{base}/v1/{ENTITY}/{PILOT}/items?limit=1", timeout=5)
        return response.headers.get("X-Cutover-Store", "?")

    def _wait_for_store(self, base: str, want: str) -> None:
        _wait_for(lambda: self._store(base) == want, what=f"reads from the {want} store")

    def _show_read(self, base: str, when: str) -> None:
        response = httpx.get(f"{base}/v1/{ENTITY}/{PILOT}/items?limit=2", timeout=5)
        console.print(
            f"  GET /v1/{ENTITY}/{PILOT}/items  ({when}): {response.status_code}, "
            f"stage {response.headers.get('X-Cutover-Stage')}, "
            f"served by the {response.headers.get('X-Cutover-Store')} store"
        )

    def _summary(self, rt: Runtime, base: str, api: subprocess.Popen[bytes]) -> None:
        from backfill.ledger import entries
        from subscribers import counters

        ledger = entries(rt.sql, ENTITY)
        self.facts["rows backfilled"] = sum(e.rows_copied for e in ledger)
        self.facts["rows in the SQL store"] = rt.sql.count(rt.cfg.entity(ENTITY))
        counts = counters.read_all(rt.sql)
        for name in SUBSCRIPTIONS:
            c = counts[name]
            self.facts[f"{name}"] = (
                f"{c.processed} received: {c.applied} applied, {c.stale} stale, {c.failed} poison"
            )
        self.facts["poison messages logged"] = (
            f"{self._failures(rt)} (the one poison message, once per subscription)"
        )
        console.rule("[bold]Summary")
        for name, value in self.facts.items():
            console.print(f"  {name:28} {value}")
        console.print()
        for name, seconds in self.timings.items():
            console.print(f"  {name:58} {seconds:6.1f} s")
        console.print(
            f"\n  console: {base}/console  (admin token in {self.state_dir / 'admin-token'})"
        )
        if self.keep:
            console.print(
                "  servers and the API keep running; stop them with "
                f"`kill {api.pid}` and `cutover services down --state-dir {self.state_dir}`"
            )


def _tripping_wave() -> tuple[int, str]:
    """The plan's wave (its index, the pilot being wave 0) whose guardrail the demo
    trips, and the client whose item it tampers with: the first client, after the
    first cohort wave, that a wave of its own moves (by the SDK's hash)."""
    from flags.stages import bucket, cohort_group

    group = cohort_group(ENTITY)
    for i, (lo, hi) in enumerate(zip((0, *WAVES), WAVES, strict=False)):
        for client in CLIENTS:
            if i > 0 and client != PILOT and lo < bucket(client, group) <= hi:
                return i + 1, client
    raise DemoFailed("no rollout wave after the first moves a demo client")


def _read_all(base: str, stop: threading.Event) -> None:
    """Reads of every client's first page, as the product would make them."""
    with httpx.Client(base_url=base, timeout=5) as http:
        while not stop.is_set():
            for client in CLIENTS:
                with suppress(httpx.HTTPError):
                    http.get(f"/v1/{ENTITY}/{client}/items", params={"limit": 50})
            stop.wait(0.1)


def _live_events(entity: Any, history: list[Event]) -> list[Event]:
    """Newer versions of existing ids (some deletes) and brand-new ids, as live traffic."""
    last = reference(entity, history)
    fresh = generate_history(entity, clients=4, ids_per_client=60, versions=3, seed=23)
    live = []
    for event in fresh:
        held = last.get(event.id)
        bump = held.version if held is not None else 0
        live.append(
            event.model_copy(
                update={
                    "version": event.version + bump,
                    "event_id": f"live-{event.event_id}",
                }
            )
        )
    extra = generate_history(entity, clients=4, ids_per_client=20, versions=2, seed=29)
    live += [
        e.model_copy(update={"id": "new-" + e.id, "event_id": "new-" + e.event_id}) for e in extra
    ]
    return live


def _touched(key: str, live: list[Event]) -> bool:
    return any(e.id == key for e in live)


def _live_rows(rt: Runtime, entity: Any) -> dict[str, Row]:
    return {row.key: row for row in rt.sql.scan(entity, None, include_deleted=False)}


def _old_rows(rt: Runtime, entity: Any) -> dict[str, Row]:
    rows = (row_from_document(entity, doc) for doc in rt.rethink.scan(entity))
    return {row.key: row for row in rows if not row.deleted}


def _wait_for(condition: Callable[[], bool], *, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # not ready yet (server starting, store busy)
            pass
        time.sleep(0.3)
    raise DemoFailed(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _ok(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_env(state_dir: Path, servers: dict[str, str], token_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUTOVER_")}
    env.update(servers)
    env.update(
        {
            "CUTOVER_STATE_DIR": str(state_dir),
            "CUTOVER_CONFIG_FILE": str(Settings(_env_file=None).config_file.resolve()),
            "CUTOVER_PUBSUB_PROJECT": "cutover-demo",
            "CUTOVER_API_PORT": str(_free_port()),
            "CUTOVER_ADMIN_TOKEN": token_file.read_text(),
            "CUTOVER_UNLEASH_REFRESH_INTERVAL_S": "0.5",
            # Quick rounds for the rollout's guardrails (production: 5 s and 10 s).
            "CUTOVER_SHADOW_EVIDENCE_FLUSH_S": "0.5",
            "CUTOVER_ROLLOUT_TICK_S": "0.5",
            # The API publishes the job of a client it serves unmigrated (README:
            # "Per-client jobs"); off by default in production settings.
            "CUTOVER_FIRST_USE_JOBS": "1",
        }
    )
    return env


def _settings_from_env(env: dict[str, str]) -> dict[str, Any]:
    fields = Settings.model_fields
    return {
        k.removeprefix("CUTOVER_").lower(): v
        for k, v in env.items()
        if k.startswith("CUTOVER_") and k.removeprefix("CUTOVER_").lower() in fields
    }


@click.command("demo")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=Path(".cutover/demo"),
    show_default=True,
    help="Where the demo keeps its servers and stores (wiped first).",
)
@click.option("--keep", is_flag=True, help="Leave the servers and the API running at the end.")
def demo(state_dir: Path, keep: bool) -> None:
    """Rehearse a whole migration on embedded defaults, with the real commands.

    Starts its own Pub/Sub and RethinkDB servers; the new store is a SQLite file and
    the flags a local file (set CUTOVER_* for anything else). Ends with exit 0 when
    every step did what the runbook promises.
    """
    Rehearsal(state_dir.resolve(), keep).run()
