"""Helpers shared by the app tests (imported like tests/subscribers/subs_support.py)."""

from __future__ import annotations

import time

from core.events import Event
from core.pubsub import publish_events, publisher, topic_path
from stores.runtime import Runtime
from subscribers import counters
from subscribers.manage import add
from subscribers.worker import Worker


def stream_through_worker(rt: Runtime, events: list[Event], poison: bytes, *, actor: str) -> None:
    """Publish events plus one poison message and let a real worker handle them all."""
    add(rt, "orders-sqlstore", actor=actor)
    worker = Worker(rt, ["orders-sqlstore"])
    worker.start()
    try:
        publish_events(rt.settings, events, topic="orders")
        publisher(rt.settings).publish(topic_path(rt.settings, "orders"), poison).result(30)
        deadline = time.monotonic() + 60
        while True:
            counts = counters.read_all(rt.sql).get("orders-sqlstore")
            if counts and counts.processed >= len(events) + 1:
                break
            assert time.monotonic() < deadline, f"the worker did not finish: {counts}"
            time.sleep(0.2)
    finally:
        worker.stop()
