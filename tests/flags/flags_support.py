"""Helpers shared by the flags tests (imported like tests/app/app_support.py)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import timedelta
from pathlib import Path

from core.clock import now_utc
from stores.runtime import Runtime
from stores.sql import bookkeeping


def seed_ledger(
    rt: Runtime, entity: str, clients: Iterable[str], *, unverified: Collection[str] = ()
) -> None:
    """Ledger rows for many synthetic clients at once, in the backfill's own table: each
    copied 3 h ago and verified clean (full) 2 h ago, except ``unverified`` ones, which
    are copied but never verified. Nothing else is written (no entity rows)."""
    from backfill.ledger import ensure_tables
    from backfill.tables import LEDGER

    ensure_tables(rt.sql)
    now = now_utc()
    copied, verified = now - timedelta(hours=3), now - timedelta(hours=2)
    with rt.sql.transaction() as cur:
        for client in clients:
            row = {
                "entity": entity,
                "client": client,
                "state": "copied",
                "rows_copied": 1,
                "copied_at": copied,
                "updated_at": now,
            }
            if client not in unverified:
                row.update(
                    state="verified",
                    verified_at=verified,
                    last_verification_clean=True,
                    last_verification_mode="full",
                    differences=0,
                    rows_checked=1,
                    last_clean_at=verified,
                )
            bookkeeping.insert(cur, rt.sql.dialect, LEDGER, row)


def cli_env(tmp_path: Path, runtime: Runtime) -> dict[str, str]:
    """The environment of a CLI run on ``runtime``'s entities (a config file with this
    test's entity names and RethinkDB db), state dir and flag backend."""
    cfg = runtime.cfg
    toml = []
    for ent in cfg.entities.values():
        toml.append(f"[entities.{ent.name}]")
        toml.append(f'topic = "{ent.topic}"\nrethinkdb_db = "{ent.rethinkdb_db}"')
        toml.append(f'rethinkdb_table = "{ent.rethinkdb_table}"\nsql_table = "{ent.sql_table}"')
        toml.append(f"[entities.{ent.name}.columns]")
        toml.extend(f'{c.name} = "{c.type.value}"' for c in ent.columns)
    path = tmp_path / "cutover-test.toml"
    path.write_text("\n".join(toml) + "\n")
    s = runtime.settings
    env = {
        "CUTOVER_CONFIG_FILE": str(path),
        "CUTOVER_STATE_DIR": str(s.state_dir),
        "CUTOVER_RETHINKDB_HOST": s.rethinkdb_host,
        "CUTOVER_RETHINKDB_PORT": str(s.rethinkdb_port),
    }
    if s.unleash_url and s.unleash_admin_token:
        env["CUTOVER_UNLEASH_URL"] = s.unleash_url
        env["CUTOVER_UNLEASH_ADMIN_TOKEN"] = s.unleash_admin_token.get_secret_value()
    return env
