"""Evaluating read stages in the API: one ``UnleashClient`` per process, never a 500.

``StageReader.stage(entity, client_id)`` is what a request calls, once. Its rules:

* The SDK client is created lazily, in the process that uses it (a client created
  before a fork never refreshes in the child); a fork is detected by PID.
* Start-up never blocks on Unleash: the client starts in a background thread, with the
  configured request timeout and no HTTP retries, while stages are answered from the
  last snapshot this machine saw (``<state_dir>/flags/unleash-snapshot.json``) or, with
  none, as ``old``. ``wait_ready`` lets a server wait a bounded time for the first fetch.
* Unleash down: the SDK keeps its last state; any error in evaluation returns the last
  stage known for that client (else ``old``) and is logged, rate-limited. It never raises.
* The SDK costs ~20 us per ``is_enabled`` on this hardware, two per stage (``new``
  first, then ``shadow``: :func:`evaluate_stage`), whatever the number of clients in
  the cohorts; results are memoised until the SDK reports new flag state (its FETCHED
  event), so a request pays a dictionary lookup. A generation counter keeps a result
  computed from the previous state out of the new memo.
* The embedded file backend: the flag file is stat'ed on each call; when it changed, a
  fresh offline ``UnleashClient`` is bootstrapped from it (no network, no threads).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from UnleashClient import UnleashClient
from UnleashClient.cache import BaseCache
from UnleashClient.constants import FEATURES_URL
from UnleashClient.events import BaseEvent, UnleashEventType
from UnleashClient.utils import InstanceAllowType

from core.settings import Settings

from .file_backend import flag_file, load_snapshot, write_atomically
from .stages import CONTEXT_FIELD, FlagError, Stage, flag_name

log = logging.getLogger(__name__)
SNAPSHOT_NAME = "unleash-snapshot.json"
APP_NAME = "cutover-api"


class StageSource(Protocol):
    """What the read service needs: a stage per request, never an exception."""

    def stage(self, entity: str, client_id: str) -> Stage: ...

    def wait_ready(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


class FixedStage:
    """Every client at one stage, with no flag lookup: the benchmarks' baseline."""

    def __init__(self, stage: Stage) -> None:
        self._stage = stage

    def stage(self, entity: str, client_id: str) -> Stage:
        return self._stage

    def wait_ready(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass


# -- the SDK's cache ------------------------------------------------------------------
class SnapshotCache(BaseCache):
    """The SDK cache, in memory and private to this process.

    The stock FileCache reads every value back from a shared directory, so a process
    could load another process's newer state without a FETCHED event and keep serving
    a stale memo. Here the only shared thing is a snapshot file of the last features
    seen, written atomically and read once at start, so a process that starts while
    Unleash is down still has the last known stages.
    """

    def __init__(self, snapshot_path: Path | None = None) -> None:
        self._values: dict[str, Any] = {}
        self._path = snapshot_path
        if snapshot_path is not None:
            try:
                text = snapshot_path.read_text(encoding="utf-8")
                json.loads(text)
            except (OSError, ValueError):
                return
            self._values[FEATURES_URL] = text
            self.bootstrapped = True

    def bootstrap_from_dict(self, initial_config: dict[str, Any]) -> None:
        self._values[FEATURES_URL] = json.dumps(initial_config)
        self.bootstrapped = True

    def set(self, key: str, value: Any) -> None:
        changed = self._values.get(key) != value
        self._values[key] = value
        if changed and key == FEATURES_URL and self._path is not None:
            try:
                write_atomically(self._path, json.loads(value))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("could not save the Unleash snapshot %s: %s", self._path, exc)

    def mset(self, data: dict[str, Any]) -> None:
        for key, value in data.items():
            self.set(key, value)

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def exists(self, key: str) -> bool:
        return key in self._values

    def destroy(self) -> None:
        self._values.clear()


# -- log hygiene ----------------------------------------------------------------------
class _RateLimit(logging.Filter):
    """Unleash down means one failed fetch per refresh, each with a traceback: keep
    the first of each kind, then one a minute."""

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self._every = every_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = str(record.msg)[:60]
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self._every:
            return False
        self._last[key] = now
        record.exc_info = None  # the message says enough; no traceback per second
        record.exc_text = None
        return True


_FILTER_INSTALLED = False


def _quiet_sdk_logs() -> None:
    global _FILTER_INSTALLED
    if not _FILTER_INSTALLED:
        logging.getLogger("UnleashClient").addFilter(_RateLimit())
        _FILTER_INSTALLED = True


# -- sources --------------------------------------------------------------------------
def evaluate_stage(client: UnleashClient, entity: str, client_id: str) -> Stage:
    """The client's stage from the SDK, unmemoised: ``new`` first (it wins), then
    ``shadow``: two ``is_enabled`` calls, whatever the number of clients switched."""
    context = {CONTEXT_FIELD: client_id}
    if client.is_enabled(flag_name(entity, Stage.NEW), context):
        return Stage.NEW
    if client.is_enabled(flag_name(entity, Stage.SHADOW), context):
        return Stage.SHADOW
    return Stage.OLD


class _ServerSource:
    """An UnleashClient polling a real server, started off the caller's thread."""

    def __init__(self, settings: Settings, on_change: Any, app_name: str) -> None:
        assert settings.unleash_url
        token = settings.unleash_backend_token
        if token is None:
            raise FlagError(
                "CUTOVER_UNLEASH_URL is set but CUTOVER_UNLEASH_BACKEND_TOKEN is not; "
                "the API evaluates flags with a backend token"
            )
        url = settings.unleash_url.rstrip("/")
        self._on_change = on_change
        self.ready = threading.Event()
        cache = SnapshotCache(settings.state_dir / "flags" / SNAPSHOT_NAME)
        self.client = UnleashClient(
            url=url if url.endswith("/api") else f"{url}/api",
            app_name=app_name,
            environment=settings.unleash_environment,
            instance_id=f"{socket.gethostname()}-{os.getpid()}",
            # The SDK annotates an int, but APScheduler takes float seconds.
            refresh_interval=settings.unleash_refresh_interval_s,  # type: ignore[arg-type]
            request_timeout=settings.unleash_request_timeout_s,  # type: ignore[arg-type]
            request_retries=0,  # the next refresh is the retry; never stall start-up
            custom_headers={"Authorization": token.get_secret_value()},
            disable_metrics=True,
            disable_registration=False,  # product teams see the API in Unleash's UI
            cache=cache,
            multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
            event_callback=self._event,
        )
        self._thread = threading.Thread(target=self._start, name="unleash-start", daemon=True)
        self._thread.start()

    def _event(self, event: BaseEvent) -> None:
        if event.event_type in (UnleashEventType.FETCHED, UnleashEventType.READY):
            self._on_change()

    def _start(self) -> None:
        try:
            self.client.initialize_client()
        except Exception as exc:  # a bad URL; the bootstrap snapshot keeps serving
            log.error("Unleash client did not start: %s", exc)
        finally:
            self._on_change()
            self.ready.set()

    def evaluate(self, entity: str, client_id: str) -> Stage:
        return evaluate_stage(self.client, entity, client_id)

    def refresh(self) -> bool:
        return False

    def close(self) -> None:
        """Stop polling without waiting for a start-up stuck on a hung server: the SDK
        holds its lifecycle lock for the whole start, so destroy after it, in the back."""
        if self.ready.is_set():
            self._destroy()
            return
        threading.Thread(
            target=self._destroy_when_started, name="unleash-stop", daemon=True
        ).start()

    def _destroy_when_started(self) -> None:
        self.ready.wait()
        self._destroy()

    def _destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.client.destroy()


class _FileSource:
    """An offline UnleashClient bootstrapped from the flag file, rebuilt on change."""

    def __init__(self, path: Path, app_name: str) -> None:
        self.path = path
        self._app = app_name
        self._mark: tuple[int, int, int] | None = None
        self.client: UnleashClient | None = None
        self.ready = threading.Event()
        self.refresh()
        self.ready.set()

    def _build(self, snapshot: dict[str, Any]) -> UnleashClient:
        cache = SnapshotCache()
        cache.bootstrap_from_dict(snapshot)
        return UnleashClient(
            url=f"file://{self.path}",
            app_name=self._app,
            instance_id=f"{socket.gethostname()}-{os.getpid()}",
            disable_metrics=True,
            disable_registration=True,
            cache=cache,
            multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
        )

    def refresh(self) -> bool:
        """Re-bootstrap when the file changed (atomic replace: new inode/mtime)."""
        try:
            st = os.stat(self.path)
            mark = (st.st_mtime_ns, st.st_ino, st.st_size)
        except FileNotFoundError:
            mark = (0, 0, 0)
        if mark == self._mark:
            return False
        self.client = self._build(load_snapshot(self.path))
        self._mark = mark
        return True

    def evaluate(self, entity: str, client_id: str) -> Stage:
        assert self.client is not None
        return evaluate_stage(self.client, entity, client_id)

    def close(self) -> None:
        pass


class StageReader:
    """Read stages for this process; see the module docstring for the guarantees."""

    def __init__(self, settings: Settings, *, app_name: str = APP_NAME) -> None:
        self._settings = settings
        self._app = app_name
        self._lock = threading.Lock()
        self._source: _ServerSource | _FileSource | None = None
        self._pid = -1
        self._generation = 0
        self._memo: dict[tuple[str, str], Stage] = {}
        self._known: dict[tuple[str, str], Stage] = {}
        self._errors = 0
        _quiet_sdk_logs()

    @property
    def backend(self) -> str:
        return "unleash" if self._settings.unleash_url else "file"

    def _invalidate(self) -> None:
        with self._lock:
            self._generation += 1
            self._memo = {}

    def _current(self) -> _ServerSource | _FileSource:
        source = self._source
        if source is not None and self._pid == os.getpid():
            return source
        with self._lock:
            if self._source is None or self._pid != os.getpid():
                # In a forked child the parent's client is dead weight: never refreshes.
                self._generation += 1
                self._memo = {}
                if self._settings.unleash_url:
                    self._source = _ServerSource(self._settings, self._invalidate, self._app)
                else:
                    self._source = _FileSource(flag_file(self._settings), self._app)
                self._pid = os.getpid()
            return self._source

    def start(self) -> None:
        """Create the SDK client now (in this process) instead of at the first request."""
        self._safe(lambda: self._current())

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the first answer from Unleash; False if none came."""
        source = self._safe(self._current)
        return bool(source and source.ready.wait(timeout))

    def _safe(self, fn: Any) -> Any:
        try:
            return fn()
        except Exception as exc:
            self._errors += 1
            log.warning("flag evaluation unavailable: %s", exc)
            return None

    def stage(self, entity: str, client_id: str) -> Stage:
        """The client's read stage; the last known one (else ``old``) on any failure."""
        key = (entity, client_id)
        try:
            source = self._current()
            if source.refresh():
                self._invalidate()
            hit = self._memo.get(key)
            if hit is not None:
                return hit
            generation = self._generation
            result = source.evaluate(entity, client_id)
        except Exception as exc:
            self._errors += 1
            if self._errors == 1 or self._errors % 1000 == 0:
                log.warning(
                    "flag evaluation failed (%d so far), serving the last known stage: %s",
                    self._errors,
                    exc,
                )
            return self._known.get(key, Stage.OLD)
        with self._lock:
            if generation == self._generation:
                self._memo[key] = result
        self._known[key] = result
        return result

    def close(self) -> None:
        with self._lock:
            if self._source is not None and self._pid == os.getpid():
                self._source.close()
            self._source = None
