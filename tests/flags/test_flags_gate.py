"""The cutover gate: which condition fails, refusal through the service and the CLI,
``--force`` recorded in the audit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from flags_support import cli_env

from cutover.cli import cli
from flags.gate import GateRefused, decide
from flags.service import FlagService
from flags.stages import Stage
from stores.runtime import Runtime

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
DAY = 24 * 3600


@dataclass
class Entry:
    state: str = "verified"
    rows_copied: int = 10
    copied_at: datetime | None = NOW - timedelta(hours=3)
    verified_at: datetime | None = NOW - timedelta(hours=2)
    last_verification_clean: bool | None = True
    differences: int | None = 0


def _decide(entry: Entry | None, max_age_s: int = DAY) -> tuple[bool, str]:
    d = decide(entry, entity="orders", client_id="acme", now=NOW, max_age_s=max_age_s)
    return d.allowed, d.reason


@pytest.mark.parametrize(
    ("entry", "max_age", "expected"),
    [
        (None, DAY, "backfill not started"),
        (Entry(state="not_started"), DAY, "backfill not started"),
        (
            Entry(state="copying", rows_copied=5),
            DAY,
            "not complete for 'acme' (orders): state copying, 5 rows",
        ),
        (Entry(verified_at=None, last_verification_clean=None), DAY, "never verified"),
        (Entry(last_verification_clean=False, differences=3), DAY, "found 3 differences"),
        (Entry(copied_at=NOW - timedelta(hours=1)), DAY, "copied again after its last"),
        (Entry(), 3600, "too old: 2h (limit 60min)"),
    ],
)
def test_each_failed_condition_is_named(entry: Entry | None, max_age: int, expected: str) -> None:
    allowed, reason = _decide(entry, max_age)
    assert not allowed
    assert expected in reason


def test_complete_clean_recent_backfill_passes() -> None:
    allowed, reason = _decide(Entry())
    assert allowed, reason
    allowed, _ = _decide(Entry(state="copied"))  # copied, then verified clean: fine too
    assert allowed


def test_service_refuses_new_for_an_unverified_client(
    file_runtime: Runtime, orders: str, seed_both
) -> None:
    """Refused: the flags are left exactly as they were and nothing is audited."""
    seed_both(file_runtime, orders, clients=1)
    service = FlagService(file_runtime)
    service.set_stage(orders, "client-000", Stage.SHADOW, actor="t")
    with pytest.raises(GateRefused, match="backfill not started for 'client-000'"):
        service.set_stage(orders, "client-000", Stage.NEW, actor="t")
    assert service.backend.read(orders).stage_of("client-000") is Stage.SHADOW
    assert [c.to_stage for c in service.audit.history(orders)] == ["shadow"]


def test_unknown_client_is_refused_unless_forced(file_runtime: Runtime, orders: str) -> None:
    """A typo would switch nobody: refused, then forced and audited as such."""
    service = FlagService(file_runtime)
    with pytest.raises(GateRefused, match="unknown client 'ACME'"):
        service.set_stage(orders, "ACME", Stage.SHADOW, actor="t")
    change = service.set_stage(orders, "ACME", Stage.SHADOW, actor="t", force=True)
    assert change is not None and change.forced and "unknown client" in (change.gate or "")


# -- the CLI ----------------------------------------------------------------------------
def test_cli_gate_refusal_then_force_is_audited(
    tmp_path: Path,
    file_runtime: Runtime,
    orders: str,
    seed_both,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed_both(file_runtime, orders, clients=2)
    monkeypatch.chdir(tmp_path)  # no .env / services.env from the checkout
    env = cli_env(tmp_path, file_runtime)
    runner = CliRunner()

    refused = runner.invoke(cli, ["flags", "set", orders, "client-001", "new"], env=env)
    assert refused.exit_code == 2, refused.output
    assert "refused: backfill not started for 'client-001'" in refused.output

    forced = runner.invoke(
        cli,
        [
            "flags",
            "set",
            orders,
            "client-001",
            "new",
            "--force",
            "--reason",
            "pilot demo",
            "--actor",
            "alice",
        ],
        env=env,
    )
    assert forced.exit_code == 0, forced.output
    assert "old -> new by alice (FORCED" in forced.output

    (change,) = FlagService(file_runtime).audit.history(orders, "client-001")
    assert (change.from_stage, change.to_stage, change.actor) == ("old", "new", "alice")
    assert change.forced and change.reason == "pilot demo"
    assert "overridden with --force: backfill not started" in (change.gate or "")

    status = runner.invoke(cli, ["flags", "status", orders], env=env)
    assert status.exit_code == 0, status.output
    line = next(ln for ln in status.output.splitlines() if ln.strip().startswith("client-001"))
    assert "new" in line and "alice" in line and "[forced]" in line
    assert "pilot demo" in line
    other = next(ln for ln in status.output.splitlines() if ln.strip().startswith("client-000"))
    assert " old " in other

    back = runner.invoke(
        cli, ["flags", "rollback", orders, "client-001", "--actor", "bob"], env=env
    )
    assert back.exit_code == 0 and "new -> old by bob" in back.output
    history = runner.invoke(cli, ["flags", "history", orders, "client-001"], env=env)
    lines = history.output.strip().splitlines()
    assert len(lines) == 2 and "old -> new" in lines[0] and "new -> old" in lines[1]


def test_cli_rejects_padded_ids_and_unknown_entities(
    tmp_path: Path, file_runtime: Runtime, orders: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = cli_env(tmp_path, file_runtime)
    padded = CliRunner().invoke(cli, ["flags", "set", orders, "acme ", "shadow"], env=env)
    assert padded.exit_code == 2 and "surrounding spaces" in padded.output
    unknown = CliRunner().invoke(cli, ["flags", "set", "nope", "acme", "shadow"], env=env)
    assert unknown.exit_code == 2 and "unknown entity 'nope'" in unknown.output


# -- with the backfill ledger -----------------------------------------------------------
def test_gate_reads_the_backfill_ledger(file_runtime: Runtime, orders: str, seed_both) -> None:
    """Ledger rows written the way the backfill writes them: a clean, recent, full
    verification opens the gate; a dirty or stale one closes it again, naming why."""
    ledger = pytest.importorskip("backfill.ledger")
    from core.clock import now_utc

    seed_both(file_runtime, orders, clients=1)
    store, d = file_runtime.sql, file_runtime.sql.dialect
    service = FlagService(file_runtime)
    client = "client-000"
    now = now_utc()
    ledger.ensure_tables(store)
    with store.transaction() as cur:
        ledger.start_copy(cur, d, orders, client, "run-1", None, now - timedelta(days=5))
        ledger.mark_copied(cur, d, orders, "run-1", now - timedelta(days=4), client)
    with pytest.raises(GateRefused, match="never verified"):
        service.set_stage(orders, client, Stage.NEW, actor="t")

    with store.transaction() as cur:
        ledger.record_verification(
            cur, d, orders, client, clean=False, mode="full", differences=2, rows_checked=6
        )
    with pytest.raises(GateRefused, match="found 2 differences"):
        service.set_stage(orders, client, Stage.NEW, actor="t")

    with store.transaction() as cur:
        ledger.record_verification(
            cur,
            d,
            orders,
            client,
            clean=True,
            mode="full",
            differences=0,
            rows_checked=6,
            finished_at=now - timedelta(days=3),
        )
    with pytest.raises(GateRefused, match="too old"):
        service.set_stage(orders, client, Stage.NEW, actor="t")

    with store.transaction() as cur:
        ledger.record_verification(
            cur, d, orders, client, clean=True, mode="full", differences=0, rows_checked=6
        )
    change = service.set_stage(orders, client, Stage.NEW, actor="t", reason="verified")
    assert change is not None and not change.forced
    assert (change.gate or "").startswith("verified clean")
    assert service.backend.read(orders).stage_of(client) is Stage.NEW


def test_cli_help_explains_stages_and_the_gate() -> None:
    runner = CliRunner()
    top = runner.invoke(cli, ["flags", "--help"])
    assert top.exit_code == 0
    for word in ("status", "set", "rollback", "kill", "shadow", "clientId"):
        assert word in top.output
    set_help = runner.invoke(cli, ["flags", "set", "--help"])
    assert "verification is clean and recent" in set_help.output and "--force" in set_help.output
    serve_help = runner.invoke(cli, ["serve", "--help"])
    assert serve_help.exit_code == 0 and "--port" in serve_help.output


def test_cli_status_json_and_kill_needs_confirmation(
    tmp_path: Path,
    file_runtime: Runtime,
    orders: str,
    seed_both,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --yes, kill asks; answering no changes nothing."""
    import json

    seed_both(file_runtime, orders, clients=2)
    monkeypatch.chdir(tmp_path)
    env = cli_env(tmp_path, file_runtime)
    runner = CliRunner()
    assert (
        runner.invoke(cli, ["flags", "set", orders, "client-000", "shadow"], env=env).exit_code == 0
    )
    aborted = runner.invoke(cli, ["flags", "kill", orders], env=env, input="n\n")
    assert aborted.exit_code == 1
    (report,) = json.loads(
        runner.invoke(cli, ["flags", "status", orders, "--json"], env=env).output
    )
    stages = {c["client"]: c["stage"] for c in report["clients"]}
    assert stages == {"client-000": "shadow", "client-001": "old"}
    killed = runner.invoke(cli, ["flags", "kill", orders, "--yes"], env=env)
    assert killed.exit_code == 0 and "1 client(s) back to old: client-000" in killed.output
