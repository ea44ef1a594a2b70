"""A dry run counts, maps and reports every document exactly as a real run does.

It reads through the same producer as a run, so these tests take it down every path a
run takes (several batches each): an export decoded a block at a time after its
first batch, an export read document by document (a client selection), the live
RethinkDB stand-in, and each of those in a reader process; then a real run over the
same data must report the same documents read, the same bad documents, and write
the rows the dry run said it would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from backfill_helpers import FAST, docs_for, history_state, quiet
from click.testing import CliRunner

import backfill.sources as sources
from backfill.cli import standalone
from backfill.runner import Backfill, Options, Summary
from backfill.sources import ExportSource, RethinkSource, Source, write_export
from core.config import Entity, load_config
from stores.sql import SqlStore

ROOT = Path(__file__).resolve().parents[2]


def _documents(entity: Entity) -> list[dict[str, Any]]:
    """A history of 3 clients (tombstones included) with a few bad documents."""
    docs = docs_for(entity, history_state(entity, clients=3, ids=70, seed=14).values())
    for i in range(0, len(docs), 97):
        docs[i] = {**docs[i], "quantity": "seven"}  # a bad value, reported by key
    docs.append({"client_id": "client-001", "version": 1})  # no key: reported by offset
    return docs


def _counts(summary: Summary) -> tuple[Any, ...]:
    return (summary.read, sorted((b.ref, b.error) for b in summary.bad), summary.partitions)


@pytest.fixture(params=["export", "export, one client", "live"])
def source_and_options(
    request: pytest.FixtureRequest,
    orders: Entity,
    export_of: Callable[..., ExportSource],
    live_of: Callable[..., RethinkSource],
) -> tuple[Source, Options]:
    docs = _documents(orders)
    if request.param == "live":
        return live_of(orders, docs), FAST
    options = replace(FAST, clients=("client-001",)) if "one client" in request.param else FAST
    return export_of(orders, docs), options


@pytest.mark.parametrize("processes", [False, True], ids=["in the worker", "reader process"])
def test_a_dry_run_reports_what_the_run_then_does(
    pg_store: SqlStore,
    orders: Entity,
    source_and_options: tuple[Source, Options],
    processes: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, options = source_and_options
    options = replace(options, batch=15, processes=processes, reader_warm_up=False)
    blocks: list[bool] = []
    block = sources._ExportReader._block

    def counted(self: Any, limit: int) -> Any:
        batch = block(self, limit)
        blocks.append(batch is not None)
        return batch

    monkeypatch.setattr(sources._ExportReader, "_block", counted)
    batches: list[int] = []
    dry = Backfill(pg_store, source, orders, options, progress=quiet).dry_run()
    assert dry.dry_run and dry.complete and not dry.stopped
    assert pg_store.count(orders, include_deleted=True) == 0  # nothing written

    real = Backfill(
        pg_store, source, orders, options, progress=quiet, on_batch=lambda p, b: batches.append(1)
    ).run()
    assert real.complete
    assert _counts(dry) == _counts(real)
    assert dry.applied == real.applied + real.stale == pg_store.count(orders, include_deleted=True)
    assert len(batches) > 3 and real.bad and dry.read > 200 * (options.clients is None)
    if isinstance(source, ExportSource) and options.clients is None and not processes:
        assert sum(blocks) >= 4, "the block decoder read most batches"


def test_the_dry_run_of_the_command_counts_every_document(
    postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14's case: 5,000 valid documents, batches of 1,000: all 5,000 are read."""
    entity = load_config(ROOT / "cutover.toml").entity("orders")
    docs = [
        {"id": f"k{i:05d}", "client_id": f"c{i % 7}", "version": 1, "status": "paid"}
        for i in range(5000)
    ]
    write_export(tmp_path / "export", entity, docs)
    monkeypatch.setenv("CUTOVER_SQL_DSN", postgres_dsn)
    monkeypatch.setenv("CUTOVER_CONFIG_FILE", str(ROOT / "cutover.toml"))
    monkeypatch.setenv("CUTOVER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    args = ["backfill", "run", "orders", "--from-export", str(tmp_path / "export")]
    result = CliRunner().invoke(
        standalone, [*args, "--dry-run", "--batch", "1000"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "(dry run: nothing written): complete" in result.output
    assert "documents read 5,000; rows to write 5,000; bad documents 0" in result.output
    assert json.dumps({"kind": "export", "folder": str(tmp_path / "export")}) in result.output
