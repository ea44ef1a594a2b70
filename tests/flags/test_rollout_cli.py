"""`cutover rollout` as an operator runs it: real processes, SIGKILL, a second terminal.

The runs here bake on the real clock (a second or two) with a fast tick and a short
lease, set through the environment exactly as an operator would set them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from flags_support import cli_env, seed_ledger

from cutover.cli import cli
from flags import rollout_state
from flags.audit import AuditLog
from flags.rollout_state import PlanRow
from flags.stages import bucket, cohort_group
from flags.tables import TABLES
from stores.runtime import Runtime

WAIT_S = 60.0  # only to avoid hanging


def _env(tmp_path: Path, rt: Runtime, **extra: str) -> dict[str, str]:
    env = cli_env(tmp_path, rt)
    env.update(
        {
            "CUTOVER_ROLLOUT_TICK_S": "0.2",
            "CUTOVER_ROLLOUT_LEASE_TTL_S": "3",
            "CUTOVER_SHADOW_EVIDENCE_FLUSH_S": "0.2",
            **extra,
        }
    )
    return env


def _spawn(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CUTOVER_")}
    full.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "cutover", *args],
        env=full,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _until(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _row(rt: Runtime, entity: str) -> PlanRow | None:
    try:
        return rollout_state.load(rt.sql, entity)
    except Exception:  # the table is not there yet
        return None


def _at(rt: Runtime, entity: str, wave: int, phase: str) -> bool:
    row = _row(rt, entity)
    return row is not None and (row.wave, row.phase) == (wave, phase)


def _steps(rt: Runtime, entity: str) -> list[tuple[str, int, int]]:
    rt.sql.ensure_schema(TABLES)
    audit = AuditLog(rt.sql, rt.settings.state_dir)
    return [(s.stage, s.from_percent, s.to_percent) for s in audit.steps(entity)]


def test_a_run_killed_with_sigkill_mid_wave_resumes_without_repeating_or_skipping(
    tmp_path: Path, file_runtime: Runtime, orders: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rollout run` is SIGKILLed while wave 2 bakes. Its lease outlives it: a run at
    once is refused, naming the dead holder. Once the lease has expired, `rollout run`
    takes over: wave 2 goes on from its recorded bake, then wave 3. Every cohort step
    is applied and audited exactly once, in order."""
    monkeypatch.chdir(tmp_path)
    seed_ledger(file_runtime, orders, [f"k{i:04d}" for i in range(300)])
    env = _env(tmp_path, file_runtime)
    child = _spawn(tmp_path, env, "rollout", "run", orders, "--waves", "10,50,100", "--bake", "1s")
    try:
        _until("wave 2 to bake", lambda: _at(file_runtime, orders, 1, "baking"))
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    dead = _row(file_runtime, orders)
    assert dead is not None and dead.state == "running" and dead.owner is not None
    assert f"/{child.pid}/" in dead.owner

    refused = CliRunner().invoke(cli, ["rollout", "run", orders], env=env)
    assert refused.exit_code == 2, refused.output
    assert "another `rollout run` holds" in refused.output and dead.owner in refused.output
    status = CliRunner().invoke(cli, ["rollout", "status", orders], env=env)
    assert status.exit_code == 0 and "run by" in status.output, status.output

    assert dead.lease_expires is not None
    time.sleep(max(0.0, (dead.lease_expires - rollout_state.now_utc()).total_seconds()) + 0.1)
    resumed = CliRunner().invoke(cli, ["rollout", "run", orders], env=env)
    assert resumed.exit_code == 0, resumed.output
    assert "from wave 2 (baking)" in resumed.output
    assert _steps(file_runtime, orders) == [
        ("shadow", 0, 10),
        ("new", 0, 10),
        ("shadow", 10, 50),
        ("new", 10, 50),
        ("shadow", 50, 100),
        ("new", 50, 100),
    ]
    row = _row(file_runtime, orders)
    assert row is not None and row.state == "done" and row.owner is None


def test_a_second_run_is_refused_an_edit_is_refused_and_kill_stops_the_running_plan(
    tmp_path: Path, file_runtime: Runtime, orders: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one `rollout run` bakes wave 1, a second is refused (exit 2, naming the
    holder), so is another definition of the plan; nothing changes. `flags kill` from
    another terminal sends everyone back, and the running plan notices within a tick:
    it stops (exit 3) saying the kill switch stopped it, and is not run again."""
    monkeypatch.chdir(tmp_path)
    clients = [f"k{i:04d}" for i in range(200)]
    seed_ledger(file_runtime, orders, clients)
    env = _env(tmp_path, file_runtime)
    child = _spawn(tmp_path, env, "rollout", "run", orders, "--waves", "20,100", "--bake", "10m")
    try:
        _until("wave 1 to bake", lambda: _at(file_runtime, orders, 0, "baking"))
        second = CliRunner().invoke(cli, ["rollout", "run", orders], env=env)
        assert second.exit_code == 2 and f"/{child.pid}/" in second.output, second.output
        edit = CliRunner().invoke(cli, ["rollout", "plan", orders, "--waves", "5,100"], env=env)
        assert edit.exit_code == 2 and "not edited while it runs" in edit.output, edit.output
        assert _steps(file_runtime, orders) == [("shadow", 0, 20)]

        kill = CliRunner().invoke(
            cli, ["flags", "kill", orders, "--yes", "--reason", "incident"], env=env
        )
        assert kill.exit_code == 0, kill.output
        out, _ = child.communicate(timeout=WAIT_S)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 3, out
    assert "is stopped: kill switch by" in out and "incident" in out
    status = CliRunner().invoke(cli, ["rollout", "status", orders, "--json"], env=env)
    assert '"state": "stopped"' in status.output
    assert _steps(file_runtime, orders) == [("shadow", 0, 20), ("shadow", 20, 0)]
    again = CliRunner().invoke(cli, ["rollout", "run", orders], env=env)
    assert again.exit_code == 2 and "has ended (stopped: kill switch" in again.output
    assert _steps(file_runtime, orders) == [("shadow", 0, 20), ("shadow", 20, 0)]


def test_dry_run_shows_each_wave_with_its_clients_and_the_gates_verdict(
    tmp_path: Path, file_runtime: Runtime, orders: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One unverified client in the 50% wave: the dry run names it in that wave's
    verdict and counts every wave's clients; no plan is recorded, no flag changes."""
    monkeypatch.chdir(tmp_path)
    clients = [f"k{i:04d}" for i in range(300)]
    group = cohort_group(orders)
    bad = next(c for c in clients if 10 < bucket(c, group) <= 50)
    seed_ledger(file_runtime, orders, clients, unverified=[bad])
    env = _env(tmp_path, file_runtime)
    counts = [
        sum(1 for c in clients if lo < bucket(c, group) <= hi)
        for lo, hi in ((0, 10), (10, 50), (50, 100))
    ]
    out = CliRunner().invoke(
        cli, ["rollout", "run", orders, "--waves", "10,50,100", "--dry-run"], env=env
    )
    assert out.exit_code == 0, out.output
    lines = [line for line in out.output.splitlines() if line.strip().startswith("wave ")]
    assert len(lines) == 3
    for line, n in zip(lines, counts, strict=True):
        assert f" {n} to new" in line
    assert f"all {counts[0]} pass" in lines[0] and f"all {counts[2]} pass" in lines[2]
    assert f"1 of {counts[1]} blocked" in lines[1] and bad in lines[1]
    status = CliRunner().invoke(cli, ["rollout", "status", orders], env=env)
    assert "no rollout plan" in status.output
    assert _steps(file_runtime, orders) == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["rollout", "plan", "nope"], "unknown entity"),
        (["rollout", "plan", "{e}", "--waves", "5,150"], "outside 0..100"),
        (["rollout", "plan", "{e}", "--waves", "50,10"], "larger than the one before"),
        (["rollout", "plan", "{e}", "--waves", "a,b"], "not a whole number"),
        (["rollout", "plan", "{e}", "--bake", "soon"], "not a length of time"),
        (["rollout", "plan", "{e}", "--pilot", "ghost"], "unknown"),
        (["rollout", "resume", "{e}"], "no rollout plan"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(
    tmp_path: Path,
    file_runtime: Runtime,
    orders: str,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    says: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    seed_ledger(file_runtime, orders, ["k0001", "k0002"])
    env = _env(tmp_path, file_runtime)
    out = CliRunner().invoke(cli, [a.format(e=orders) for a in args], env=env)
    assert out.exit_code == 2, out.output
    assert out.output.startswith("error: ") and says in out.output, out.output
    assert _row(file_runtime, orders) is None
    assert _steps(file_runtime, orders) == []
