"""Reaching Postgres: the configured DSN, or the embedded server started in `data_dir`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ccserver.config import DatabaseConfig
from ccserver.ledger.bridge import Bridge
from ccserver.ledger.embedded import DATABASE_NAME, EmbeddedPostgres, ensure_database
from ccserver.ledger.migrate import migrate


@asynccontextmanager
async def open_database(
    config: DatabaseConfig, *, run_migrations: bool = True
) -> AsyncIterator[Bridge]:
    """Yield an open bridge to a migrated database; stop the embedded server on the way out."""
    embedded: EmbeddedPostgres | None = None
    dsn = config.url
    try:
        if not dsn:
            embedded = EmbeddedPostgres(config.data_dir)
            dsn = await trio.to_thread.run_sync(embedded.start)
            async with Bridge(embedded.admin_dsn(), pool_max=1) as admin:
                await admin.run(ensure_database, DATABASE_NAME)
        async with Bridge(dsn) as bridge:
            if run_migrations:
                await bridge.run(migrate)
            yield bridge
    finally:
        if embedded is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(embedded.stop)
