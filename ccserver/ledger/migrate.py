"""Plain SQL migrations, applied in order, each in its own transaction, recorded with a checksum.

An applied migration whose file has changed is an error, never silently skipped: the database
would no longer be what the code expects.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from typing import Any

import msgspec

MIGRATION_NAME_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Any number, as long as every ccserver process agrees on it.
MIGRATION_LOCK_ID = 0x63637376


class MigrationError(RuntimeError):
    """The database's schema history disagrees with the migrations shipped."""


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def shipped_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("ccserver.ledger.migrations").iterdir():
        match = MIGRATION_NAME_RE.match(entry.name)
        if match is not None:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    assert len(set(versions)) == len(versions), "two migrations share a version"
    return found


async def migrate(connection: Any, migrations: list[Migration] | None = None) -> list[str]:
    """Apply what is missing; return the names applied. `connection` is an asyncpg connection."""
    migrations = shipped_migrations() if migrations is None else migrations
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await connection.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await connection.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {row["version"]: row for row in rows}
        shipped = {migration.version for migration in migrations}
        unknown = sorted(set(applied) - shipped)
        if unknown:
            raise MigrationError(
                f"database has migrations this version does not know: {unknown}; "
                "is it newer than this ccserver?"
            )
        done = []
        for migration in migrations:
            row = applied.get(migration.version)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.name} was changed after it was applied "
                        f"(checksum {row['checksum'][:12]} in the database, "
                        f"{migration.checksum[:12]} shipped)"
                    )
                continue
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(migration.name)
        return done
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
