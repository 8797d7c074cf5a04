"""Shared fixtures: one Postgres server per test session (the embedded one unless
CCSERVER_TEST_DATABASE_URL names another), and a fresh, migrated database per test that asks."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from ccserver import compiled
from ccserver.ledger.embedded import EmbeddedPostgres
from ccserver.ledger.migrate import migrate

TEMPLATE = "ccserver_test_template"


def pytest_report_header() -> str:
    return f"ccserver engine: {compiled.STATE}"


class PostgresServer:
    """A Postgres server the tests may create and drop databases on."""

    def __init__(self, admin_dsn: str, dsn_for: object, embedded: EmbeddedPostgres | None) -> None:
        self.admin_dsn = admin_dsn
        self._dsn_for = dsn_for
        self.embedded = embedded

    def dsn(self, database: str) -> str:
        return self._dsn_for(database)  # type: ignore[operator,no-any-return]

    def run(self, sql: str) -> None:
        async def go() -> None:
            connection = await asyncpg.connect(self.admin_dsn)
            try:
                await connection.execute(sql)
            finally:
                await connection.close()

        asyncio.run(go())

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.run(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
        return name

    def drop_database(self, name: str) -> None:
        self.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _dsn_with_database(url: str, database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    url = os.environ.get("CCSERVER_TEST_DATABASE_URL")
    embedded = None
    if url:
        server = PostgresServer(url, lambda name: _dsn_with_database(url, name), None)
    else:
        # Not under pytest's basetemp: the server runs as another user (when tests run as
        # root), and pytest resets basetemp's permissions when another session starts.
        directory = Path(tempfile.mkdtemp(prefix="ccserver-test-pg-"))
        directory.chmod(0o755)
        embedded = EmbeddedPostgres(directory)
        embedded.start()
        server = PostgresServer(embedded.admin_dsn(), embedded.dsn, embedded)
    server.run(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
    server.run(f'CREATE DATABASE "{TEMPLATE}"')

    async def prepare() -> None:
        connection = await asyncpg.connect(server.dsn(TEMPLATE))
        try:
            await migrate(connection)
        finally:
            await connection.close()

    asyncio.run(prepare())
    yield server
    if embedded is not None:
        embedded.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database with every migration applied; dropped afterwards."""
    name = postgres_server.create_database()
    yield postgres_server.dsn(name)
    postgres_server.drop_database(name)


@pytest.fixture
def tmp_data_dir(tmp_path: Path) -> Path:
    return tmp_path


from tests.server_harness import api, server  # noqa: E402, F401  (fixtures for end-to-end tests)
