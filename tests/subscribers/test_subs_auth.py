"""A store that refuses the worker's login: reported at once, not retried as transient.

Against the real PostgreSQL (a user that does not exist: the test cluster trusts every
known user) and a real Pub/Sub server. The message stays on the subscription (nacked),
so nothing is lost: a worker with the right credentials applies it afterwards.
"""

from __future__ import annotations

import re
import time

from pydantic import SecretStr
from subs_support import publish, wait_until

from cutover.synthetic import generate_history
from stores.runtime import Runtime
from subscribers import manage
from subscribers.worker import Worker

SECRET = "not-the-password-4b2e"


def test_a_refused_login_stops_the_worker_at_once_and_loses_nothing(world) -> None:
    rt = world.runtime
    manage.add(rt, "orders-sqlstore")
    events = generate_history(world.entity, clients=1, ids_per_client=5, seed=3)
    publish(world.settings, events)

    dsn = world.settings.sql_dsn.get_secret_value()
    wrong = world.settings.model_copy(
        update={
            "sql_dsn": SecretStr(
                re.sub(r"UID=[^;]*;PWD=[^;]*;", f"UID=nobody_9;PWD={SECRET};", dsn)
            )
        }
    )
    worker = Worker(Runtime(wrong, rt.cfg), ["orders-sqlstore"], min_backoff_s=0.1)
    started = time.monotonic()
    worker.start()
    try:
        assert worker.stopping.wait(30), "the worker kept retrying a refused login"
    finally:
        worker.stop()
    assert time.monotonic() - started < 30
    error = worker.error or ""
    assert "authentication failed" in error and "not retried" in error
    assert SECRET not in error and "nobody_9" not in error
    assert world.processed("orders-sqlstore") == 0

    with world.worker("orders-sqlstore"):  # the right credentials: every event applied
        wait_until(lambda: world.processed("orders-sqlstore") >= len(events), 60, "events applied")
