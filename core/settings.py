"""The one typed settings object.

Every knob that differs between a laptop, CI and production lives here and is read
from ``CUTOVER_*`` environment variables (or ``.env`` / the file that
``cutover services up`` writes), so production targets are configured by settings
alone. Secrets are ``SecretStr``: they print as ``**********`` and are only unwrapped
at the moment a connection is opened.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

Dialect = Literal["mssql", "postgresql", "sqlite"]

#: Where ``cutover services up`` records the addresses of the servers it started.
SERVICES_ENV_FILE = ".cutover/services.env"


class Settings(BaseSettings):
    """Connection settings and tunables; see the README's configuration reference."""

    model_config = SettingsConfigDict(
        env_prefix="CUTOVER_",
        env_file=(SERVICES_ENV_FILE, ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
    )

    config_file: Path = Field(Path("cutover.toml"), description="Entities and subscriptions.")
    state_dir: Path = Field(Path(".cutover"), description="Local state: SQLite file, flag file.")

    # The new store (SQL Server in production).
    sql_dsn: SecretStr | None = Field(None, description="pyodbc connection string.")
    sql_dialect: Dialect | None = Field(None, description="Inferred from the DSN when unset.")

    # The old store.
    rethinkdb_host: str = "127.0.0.1"
    rethinkdb_port: int = 28015
    rethinkdb_user: str = "admin"
    rethinkdb_password: SecretStr = SecretStr("")
    rethinkdb_timeout_s: float = 10.0

    # Pub/Sub.
    pubsub_project: str = "cutover-local"
    pubsub_emulator_host: str | None = Field(
        None, description="host:port of a local Pub/Sub server; unset means real Google Cloud."
    )

    # Unleash. No URL means the embedded file backend.
    unleash_url: str | None = None
    unleash_admin_token: SecretStr | None = None
    unleash_backend_token: SecretStr | None = None
    unleash_environment: str = "development"
    unleash_project: str = "default"
    unleash_refresh_interval_s: float = Field(
        0.5, gt=0, description="How often each process fetches flags; bounds stage propagation."
    )
    unleash_request_timeout_s: float = 3.0

    # The service.
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    admin_token: SecretStr | None = None

    # Cutover gate: how old a clean verification may be before `flags set ... new`.
    gate_max_verification_age_s: int = 24 * 3600

    # Per-client migration jobs published by the read API (README: "Per-client jobs").
    first_use_jobs: bool = Field(
        False,
        description="The read API publishes a client's migration job the first time it "
        "serves that client while its ledger is not verified (the demo turns it on).",
    )
    first_use_jobs_window_s: float = Field(
        3600.0,
        gt=0,
        description="A client's job is published at most once per window, over every API "
        "process (a row in the SQL store).",
    )
    # Cutover gate: the shadow evidence `new` needs per client (flags.evidence).
    gate_min_shadow_comparisons: int = Field(
        0,
        ge=0,
        description="Shadow comparisons a client needs in the window before `new` (0: none).",
    )
    gate_max_shadow_mismatch_rate: float = Field(
        0.001,
        ge=0.0,
        le=1.0,
        description="Largest share of a client's comparisons that may mismatch (1: any).",
    )
    gate_shadow_window_s: int = Field(
        7 * 86400, ge=60, description="How far back shadow evidence counts (whole buckets)."
    )

    # Rollout guardrails and the plan's lease (flags.rollout; README: "Rollout").
    rollout_max_mismatch_rate: float = Field(
        0.001,
        ge=0.0,
        le=1.0,
        description="A wave rolls back when its clients' shadow mismatch rate exceeds this.",
    )
    rollout_min_comparisons: int = Field(
        1, ge=1, description="Comparisons of a wave's clients before its mismatch rate counts."
    )
    rollout_max_error_rate: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="A wave rolls back when the 5xx share of its clients' responses exceeds this.",
    )
    rollout_min_responses: int = Field(
        100, ge=1, description="Responses to a wave's clients before its 5xx rate counts."
    )
    rollout_tick_s: float = Field(
        10.0,
        gt=0.0,
        le=300.0,
        description="How often a running plan evaluates its guardrails and renews its lease.",
    )
    rollout_lease_ttl_s: float = Field(
        60.0,
        ge=1.0,
        description="A `rollout run` that dies is taken over this long after its last renewal.",
    )

    # Reads and shadow comparison (the read service).
    shadow_sample_rate: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of `shadow` reads compared against the SQL store in the background.",
    )
    new_compare_sample_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of `new` reads compared against RethinkDB (0 = off).",
    )
    shadow_max_concurrency: int = Field(
        2, ge=1, le=64, description="Comparison threads per process."
    )
    shadow_queue_size: int = Field(
        256, ge=1, description="Comparisons waiting for a thread; beyond it they are dropped."
    )
    shadow_recheck_delay_s: float = Field(
        0.5,
        ge=0.0,
        le=30.0,
        description="A difference is re-read after this delay and recorded only if it persists.",
    )
    shadow_evidence_flush_s: float = Field(
        5.0,
        gt=0.0,
        le=300.0,
        description="How often each process adds its comparison counts to the SQL store.",
    )
    shadow_evidence_bucket_s: int = Field(
        3600, ge=60, le=86400, description="Time bucket of the counts: a window's resolution."
    )
    read_default_limit: int = Field(100, ge=1, description="Items per page when none is asked.")
    read_max_limit: int = Field(1000, ge=1, description="Largest page a caller may ask for.")
    read_sql_timeout_s: float = Field(
        5.0, gt=0, le=300, description="Deadline of one read from the SQL store (then 503)."
    )
    read_rethinkdb_timeout_s: float = Field(
        5.0, gt=0, le=300, description="Deadline of one read from RethinkDB (then 503)."
    )
    read_sql_pool_size: int = Field(
        16, ge=1, le=256, description="Threads (and connections) serving SQL store reads."
    )
    read_rethinkdb_pool_size: int = Field(
        16, ge=1, le=256, description="Threads (and connections) serving RethinkDB reads."
    )
    read_queue_size: int = Field(
        64, ge=0, description="Reads of one store waiting for a thread; beyond it: 503 at once."
    )

    @cached_property
    def dialect(self) -> Dialect:
        """The SQL dialect: explicit, else inferred from the DSN's driver, else SQLite."""
        if self.sql_dialect:
            return self.sql_dialect
        if self.sql_dsn is None:
            return "sqlite"
        return infer_dialect(self.sql_dsn.get_secret_value())

    @property
    def sqlite_path(self) -> Path:
        return self.state_dir / "cutover.db"

    def sql_connection_string(self) -> str:
        """The pyodbc connection string; the embedded default is a SQLite file."""
        if self.sql_dsn is not None:
            return self.sql_dsn.get_secret_value()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return f"DRIVER={{SQLite3}};Database={self.sqlite_path.resolve()}"


def infer_dialect(dsn: str) -> Dialect:
    """Guess the dialect from an ODBC connection string's DRIVER."""
    match = re.search(r"driver\s*=\s*\{?([^;}]*)", dsn, re.IGNORECASE)
    driver = (match.group(1) if match else dsn).lower()
    if "sqlite" in driver:
        return "sqlite"
    if "postgres" in driver or "psqlodbc" in driver:
        return "postgresql"
    return "mssql"
