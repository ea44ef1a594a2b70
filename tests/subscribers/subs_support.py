"""Helpers shared by the subscribers tests: publish, wait, compare with the reference."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any

from core import pubsub
from core.config import Entity
from core.events import Event
from core.settings import Settings
from cutover.synthetic import reference
from stores.mapping import Row, row_from_document, same_value
from stores.rethink import RethinkStore
from stores.sql import SqlStore


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def wait_equal(differences: Callable[[], list[str]], timeout: float, what: str) -> None:
    """Poll a differences function until it reports none; on timeout show what differs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = differences()
        except Exception as exc:  # the store may still be reconnecting
            found = [f"store not readable: {exc}"]
        if not found:
            return
        if time.monotonic() >= deadline:
            shown = "\n  ".join(found[:10])
            raise AssertionError(
                f"{what}: still {len(found)} difference(s) after {timeout}s:\n  {shown}"
            )
        time.sleep(1.0)


def publish(settings: Settings, events: list[Event], topic: str = "orders") -> None:
    client = pubsub.publisher(settings)
    pubsub.ensure_topic(settings, topic, client)
    pubsub.publish_events(settings, events, topic=topic, client=client)


def publish_raw(settings: Settings, data: bytes, topic: str = "orders", **attributes: str) -> str:
    """Publish a body that need not meet the contract; returns its message id."""
    client = pubsub.publisher(settings, ordering=False)
    pubsub.ensure_topic(settings, topic, client)
    future = client.publish(pubsub.topic_path(settings, topic), data, **attributes)
    return str(future.result(timeout=30))


def differences(entity: Entity, expected: dict[str, Row], actual: Iterable[Row]) -> list[str]:
    """Every way ``actual`` differs from the reference (empty when equal)."""
    got = {row.key: row for row in actual}
    problems = [f"missing {k}" for k in sorted(set(expected) - set(got))]
    problems += [f"unexpected {k}" for k in sorted(set(got) - set(expected))]
    for key in sorted(set(expected) & set(got)):
        want, have = expected[key], got[key]
        if (want.version, want.deleted, want.client_id) != (
            have.version,
            have.deleted,
            have.client_id,
        ):
            problems.append(
                f"{key}: want v{want.version} deleted={want.deleted}, "
                f"have v{have.version} deleted={have.deleted}"
            )
            continue
        if not want.deleted:
            for column in entity.columns:
                a, b = want.values.get(column.name), have.values.get(column.name)
                if not same_value(column, a, b):
                    problems.append(f"{key}.{column.name}: want {a!r}, have {b!r}")
    return problems


def sql_differences(store: SqlStore, entity: Entity, events: list[Event]) -> list[str]:
    return differences(entity, reference(entity, events), store.scan(entity, None))


def rethink_differences(store: RethinkStore, entity: Entity, events: list[Event]) -> list[str]:
    rows = [row_from_document(entity, doc) for doc in store.scan(entity)]
    return differences(entity, reference(entity, events), rows)


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60
) -> int:
    """Signal a worker subprocess and wait for its exit code (killed if it hangs)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
