"""The declarative file (``cutover.toml``): entities and subscriptions.

Adding an entity or a subscription is an edit here, never code. The file is checked
completely at load time so a typo fails before anything touches a store: the error
names the file, the dotted field path and what is wrong.
"""

from __future__ import annotations

import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,115}$")
#: Columns every entity table has; mapped columns may not reuse these names.
SYSTEM_COLUMNS = ("_deleted", "_updated_at")


class ConfigError(ValueError):
    """The declarative file is missing or invalid; the message says where and why."""


class ColumnType(StrEnum):
    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATETIME = "datetime"
    JSON = "json"


def _identifier(value: str) -> str:
    if not IDENTIFIER.match(value):
        raise ValueError(
            f"{value!r} is not a valid identifier "
            "(letters, digits and _, not starting with a digit)"
        )
    return value


Identifier = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    # defer_build: a model's validator is built when it first validates, not at import.
    # The backfill's reader process only unpickles validated config and never
    # validates, so it skips that work (about 30 ms of its start, measured here).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Column(_Strict):
    """One mapped column: its SQL name, type, and the document field it comes from."""

    name: Identifier
    type: ColumnType
    source: str = ""  # document/event data field; defaults to the column name
    nullable: bool = True
    max_length: int | None = Field(None, gt=0, le=4000)  # strings; None means NVARCHAR(MAX)

    _check_name = field_validator("name")(_identifier)

    @property
    def field(self) -> str:
        return self.source or self.name


class Entity(_Strict):
    """An entity as both stores hold it.

    In RethinkDB a document carries ``key``, ``client`` and ``version`` fields next to
    its data fields; in SQL those become the key, client and version columns plus the
    mapped ``columns``.
    """

    name: Identifier
    topic: str
    rethinkdb_db: Identifier
    rethinkdb_table: Identifier
    sql_table: Identifier
    key: Identifier = "id"
    client: Identifier = "client_id"
    version: Identifier = "version"
    #: RethinkDB field that marks a tombstone document written by the legacy sink.
    deleted_marker: Identifier = "_deleted"
    #: RethinkDB secondary index on [client, key] used for per-client scans.
    client_index: Identifier = "client_key"
    key_max_length: int = Field(255, gt=0, le=900)
    columns: tuple[Column, ...]

    _check_name = field_validator(
        "name", "rethinkdb_db", "rethinkdb_table", "sql_table", "key", "client", "version"
    )(_identifier)

    @model_validator(mode="after")
    def _distinct_columns(self) -> Entity:
        names = [self.key.lower(), self.client.lower(), self.version.lower(), *SYSTEM_COLUMNS]
        for column in self.columns:
            if column.name.lower() in names:
                raise ValueError(f"column {column.name!r} is defined twice or is reserved")
            names.append(column.name.lower())
        return self

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)


Sink = Literal["sqlstore", "rethinkdb"]


class Subscription(_Strict):
    """A Pub/Sub subscription and how its worker writes the events it receives."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9._~%+-]{2,254}$")]
    topic: str
    entity: str
    sink: Sink
    ack_deadline_s: int = Field(60, ge=10, le=600)
    message_ordering: bool = True
    dead_letter_topic: str | None = None
    max_delivery_attempts: int = Field(10, ge=5, le=100)
    retry_min_backoff_s: int = Field(5, ge=0, le=600)
    retry_max_backoff_s: int = Field(300, ge=0, le=600)
    filter: str = ""
    max_outstanding_messages: int = Field(5000, gt=0)
    max_outstanding_bytes: int = Field(100 * 1024 * 1024, gt=0)
    batch_size: int = Field(500, gt=0, le=10_000)
    max_batch_latency_ms: int = Field(200, gt=0)
    #: Days a replayed failure-log entry is kept after its replay; 0 keeps it forever.
    #: Enforced by ``cutover subs failures purge`` (subscribers.retention).
    failure_retention_days_replayed: int = Field(30, ge=0, le=36_500)
    #: Days an open entry is kept after it was last seen failing; 0 (the default) keeps
    #: it forever. Even when set, open entries go only with ``purge --include-open``.
    failure_retention_days_open: int = Field(0, ge=0, le=36_500)

    @model_validator(mode="after")
    def _backoff_order(self) -> Subscription:
        if self.retry_min_backoff_s > self.retry_max_backoff_s:
            raise ValueError("retry_min_backoff_s must not exceed retry_max_backoff_s")
        return self


class Jobs(_Strict):
    """Per-client migration jobs (``[jobs]``): their topic, subscription and pacing.

    Not a ``[subscriptions.*]`` entry: its messages are jobs run by ``cutover jobs run``,
    never events for ``cutover subs run``. ``max_delivery_attempts`` is enforced by
    cutover itself (from each message's delivery attempt and its own count of failed
    runs), because servers differ: the local cloudbox server drops retry and
    dead-letter policies, and Google reports delivery attempts only with a dead-letter
    policy.
    """

    topic: str = "cutover-jobs"
    subscription: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9._~%+-]{2,254}$")] = (
        "cutover-jobs"
    )
    #: Seconds each extension of a job's message lease lasts; a worker that dies is
    #: redelivered within about this long.
    ack_deadline_s: int = Field(60, ge=10, le=600)
    max_delivery_attempts: int = Field(5, ge=5, le=100)
    retry_min_backoff_s: int = Field(10, ge=0, le=600)
    retry_max_backoff_s: int = Field(600, ge=0, le=600)
    #: Jobs one ``cutover jobs run`` process runs at once.
    concurrency: int = Field(1, ge=1, le=64)
    #: The job lease in the SQL store: taken over this long after its holder's last sign.
    lease_ttl_s: float = Field(60.0, ge=3, le=3600)
    #: How long one delivery of a job may run before it is handed back (it resumes
    #: from its checkpoint on redelivery).
    max_lease_s: int = Field(6 * 3600, ge=60)

    @model_validator(mode="after")
    def _backoff_order(self) -> Jobs:
        if self.retry_min_backoff_s > self.retry_max_backoff_s:
            raise ValueError("retry_min_backoff_s must not exceed retry_max_backoff_s")
        return self

    def as_subscription(self, entity: str = "") -> Subscription:
        """The jobs subscription in the subscription tools' terms (created by
        ``subscribers.manage``, failures kept in the same log). ``entity`` labels a
        failure; the sink is never used."""
        return Subscription(
            name=self.subscription,
            topic=self.topic,
            entity=entity,
            sink="sqlstore",
            ack_deadline_s=self.ack_deadline_s,
            message_ordering=False,
            max_delivery_attempts=self.max_delivery_attempts,
            retry_min_backoff_s=self.retry_min_backoff_s,
            retry_max_backoff_s=self.retry_max_backoff_s,
        )


class Config(_Strict):
    """The whole declarative file, cross-checked."""

    entities: dict[str, Entity]
    subscriptions: dict[str, Subscription] = {}
    jobs: Jobs | None = None
    source: Path | None = None

    @model_validator(mode="after")
    def _references(self) -> Config:
        for sub in self.subscriptions.values():
            if sub.entity not in self.entities:
                raise ValueError(
                    f"subscription {sub.name!r} names unknown entity {sub.entity!r} "
                    f"(known: {', '.join(sorted(self.entities)) or 'none'})"
                )
        tables = [e.sql_table.lower() for e in self.entities.values()]
        if len(tables) != len(set(tables)):
            raise ValueError("two entities share one sql_table")
        if self.jobs is not None:
            if self.jobs.subscription in self.subscriptions:
                raise ValueError(
                    f"jobs.subscription {self.jobs.subscription!r} is also a subscription"
                )
            if self.jobs.topic in {e.topic for e in self.entities.values()}:
                raise ValueError(f"jobs.topic {self.jobs.topic!r} is an entity's event topic")
        return self

    def jobs_or_error(self) -> Jobs:
        """The ``[jobs]`` section, or a clear error when the file has none."""
        if self.jobs is None:
            raise ConfigError(
                "no [jobs] section in the config file: declare the jobs topic and "
                'subscription, e.g. [jobs] topic = "cutover-jobs" subscription = "cutover-jobs"'
            )
        return self.jobs

    def entity(self, name: str) -> Entity:
        try:
            return self.entities[name]
        except KeyError:
            known = ", ".join(sorted(self.entities)) or "none"
            raise ConfigError(f"unknown entity {name!r} (known: {known})") from None

    def subscription(self, name: str) -> Subscription:
        try:
            return self.subscriptions[name]
        except KeyError:
            known = ", ".join(sorted(self.subscriptions)) or "none"
            raise ConfigError(f"unknown subscription {name!r} (known: {known})") from None


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """Turn the TOML shape (tables keyed by name, columns as name = type) into models."""
    entities = {}
    for name, body in (raw.get("entities") or {}).items():
        body = dict(body)
        columns = []
        for col_name, spec in (body.pop("columns", None) or {}).items():
            spec = {"type": spec} if isinstance(spec, str) else dict(spec)
            columns.append({"name": col_name, **spec})
        entities[name] = {"name": name, "topic": name, **body, "columns": columns}
    subscriptions = {
        name: {"name": name, **body} for name, body in (raw.get("subscriptions") or {}).items()
    }
    unknown = set(raw) - {"entities", "subscriptions", "jobs"}
    if unknown:
        raise ConfigError(f"unknown top-level section(s): {', '.join(sorted(unknown))}")
    jobs = {"jobs": raw["jobs"]} if "jobs" in raw else {}
    return {"entities": entities, "subscriptions": subscriptions, **jobs}


def _format(error: ValidationError, path: Path | str) -> str:
    lines = [f"{path}: invalid configuration"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        where = re.sub(r"\.columns\.(\d+)", lambda m: f".columns[{m.group(1)}]", where)
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def parse_config(text: str, *, source: Path | str = "<string>") -> Config:
    """Parse and validate the TOML text of a declarative file."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        data = _normalise(raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except (AttributeError, TypeError) as exc:
        raise ConfigError(f"{source}: wrong shape: {exc}") from None
    try:
        return Config.model_validate(
            {**data, "source": Path(source) if source != "<string>" else None}
        )
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None


def load_config(path: Path | str) -> Config:
    """Load the declarative file, failing with its path when it is missing or invalid."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: configuration file not found (set CUTOVER_CONFIG_FILE or run from the "
            "project folder)"
        ) from None
    return parse_config(text, source=path)
