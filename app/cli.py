"""``cutover serve``: run the read service with uvicorn."""

from __future__ import annotations

import click


@click.command("serve")
@click.option("--host", help="Bind address (default: CUTOVER_API_HOST, 127.0.0.1).")
@click.option("--port", type=int, help="Port (default: CUTOVER_API_PORT, 8080).")
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Worker processes; each creates its own Unleash client after the fork.",
)
@click.option("--log-level", default="info", show_default=True)
def serve(host: str | None, port: int | None, workers: int, log_level: str) -> None:
    """Serve GET /v1/{entity}/{client_id}/items[/{id}] from the store each client's
    read stage selects (flags: `cutover flags`), plus /metrics (and /healthz, /admin, /console
    when those areas are installed).

    Stage changes reach every worker within about two refresh intervals
    (CUTOVER_UNLEASH_REFRESH_INTERVAL_S). Shadow comparison is tuned with
    CUTOVER_SHADOW_SAMPLE_RATE, CUTOVER_SHADOW_MAX_CONCURRENCY and
    CUTOVER_NEW_COMPARE_SAMPLE_RATE. Each store's reads have their own threads and
    deadline (CUTOVER_READ_SQL_TIMEOUT_S, CUTOVER_READ_RETHINKDB_TIMEOUT_S,
    CUTOVER_READ_*_POOL_SIZE, CUTOVER_READ_QUEUE_SIZE): a hung store answers 503 for its
    own reads only. Ids in paths are percent-encoded segments (client/01 -> client%2F01).
    """
    import uvicorn

    from core.settings import Settings

    settings = Settings()
    uvicorn.run(
        "app.main:app_from_env",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        log_level=log_level,
    )
