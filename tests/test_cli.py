"""The command line beside a running server: `ccserver token create`, and the embedded Postgres
shared by two processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg

from ccserver.ledger.embedded import SERVER_SETTINGS, EmbeddedPostgres
from tests.server_harness import Server, ok, problem


def ccserver(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ccserver", *args],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_token_create_works_at_once_against_a_running_server(server: Server) -> None:
    with server.client() as admin:
        reseller = ok(
            admin.post("/v1/accounts", json={"kind": "reseller", "billing": "prepaid"}), 201
        )
        customer = ok(
            admin.post(
                "/v1/accounts",
                json={"kind": "customer", "billing": "prepaid", "parent": reseller["number"]},
            ),
            201,
        )
        other = ok(admin.post("/v1/accounts", json={"kind": "reseller", "billing": "prepaid"}), 201)

    made = ccserver(server, "token", "create", "--name", "ops", "--role", "super_admin")
    assert made.returncode == 0, made.stderr
    staff_token = made.stdout.strip()
    assert staff_token.startswith("ccs_") and "\n" not in staff_token
    assert "shown only once" in made.stderr and "super_admin" in made.stderr
    with server.client(staff_token) as staff:
        ok(staff.get(f"/v1/accounts/{other['number']}"))
        ok(
            staff.post(
                "/v1/nas-clients", json={"name": "gw", "address": "127.0.0.9", "secret": "s"}
            ),
            201,
        )

    made = ccserver(
        server,
        "token",
        "create",
        "--name",
        "r1",
        "--role",
        "reseller",
        "--scope",
        reseller["number"],
    )
    assert made.returncode == 0, made.stderr
    with server.client(made.stdout.strip()) as scoped:
        ok(scoped.get(f"/v1/accounts/{customer['number']}"))
        problem(scoped.get(f"/v1/accounts/{other['number']}"), 404)
        problem(
            scoped.post(
                "/v1/nas-clients", json={"name": "x", "address": "10.0.0.1", "secret": "s"}
            ),
            403,
        )

    # The token lives in the database: a restarted server still knows it.
    with server.client() as admin:
        listed = ok(admin.get("/v1/tokens"))["items"]
    assert {item["name"] for item in listed} >= {"ops", "r1"}


def test_token_create_refuses_bad_arguments_naming_them(server: Server) -> None:
    missing_scope = ccserver(server, "token", "create", "--name", "c", "--role", "customer")
    assert missing_scope.returncode == 2
    assert "--scope" in missing_scope.stderr and missing_scope.stdout == ""

    no_account = ccserver(
        server, "token", "create", "--name", "c", "--role", "customer", "--scope", "404404"
    )
    assert no_account.returncode == 2 and "--scope" in no_account.stderr
    root = ccserver(
        server, "token", "create", "--name", "c", "--role", "admin", "--scope", "operator"
    )
    assert root.returncode == 2 and "--scope" in root.stderr

    bad_role = ccserver(server, "token", "create", "--name", "c", "--role", "emperor")
    assert bad_role.returncode == 2 and "--role" in bad_role.stderr

    # A token that was never issued stays refused (and is not looked up on every request).
    with server.client("ccs_not-a-token") as stranger:
        for _ in range(3):
            problem(stranger.get("/v1/accounts"), 401)


async def _fetchval(dsn: str, sql: str) -> object:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


def test_a_second_process_on_the_embedded_postgres_does_not_stop_it(tmp_path: Path) -> None:
    first = EmbeddedPostgres(tmp_path)
    first.start()
    try:
        assert first.started_here
        second = EmbeddedPostgres(tmp_path)  # e.g. `ccserver migrate` beside `serve`
        second.start()
        assert not second.started_here
        second.stop()
        assert asyncio.run(_fetchval(first.dsn("postgres"), "SELECT 1")) == 1
    finally:
        first.stop()
    assert not (tmp_path / "pgdata" / "postmaster.pid").exists()


def test_the_embedded_postgres_runs_with_its_settings_after_a_restart(tmp_path: Path) -> None:
    for _ in range(2):  # made, then found in its data dir
        embedded = EmbeddedPostgres(tmp_path)
        embedded.start()
        try:
            for name, value in SERVER_SETTINGS.items():
                assert asyncio.run(_fetchval(embedded.admin_dsn(), f"SHOW {name}")) == value
        finally:
            embedded.stop()
