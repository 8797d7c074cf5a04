"""The admin API as a whole: schemathesis against /openapi.json (no 5xx, every response as the
document says), metrics that move, readiness, and a SIGTERM in the middle of writes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.radius_world import metric
from tests.server_harness import Server, ok, sigterm_during


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    server: Server, api: httpx.Client
) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.skip("schemathesis is not installed in this environment")
    ok(api.post("/v1/accounts", json={"number": "r1", "kind": "reseller", "balance": "10"}), 201)
    done = subprocess.run(
        [
            st, "run", f"{server.base_url}/openapi.json",
            "-H", f"Authorization: Bearer {server.token}",
            "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,"
            "content_type_conformance",
            "--max-examples", "8",
            "--seed", "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )  # fmt: skip
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert '"api_error"' not in server.log()


def test_metrics_count_api_requests(server: Server, api: httpx.Client) -> None:
    before = metric(server, "ccserver_requests_total", protocol="http", type="get_account")
    for _ in range(3):
        api.get("/v1/accounts/nobody")
    after = metric(server, "ccserver_requests_total", protocol="http", type="get_account")
    assert after - before == 3
    text = httpx.get(server.base_url + "/metrics").text
    for name in (
        "ccserver_request_seconds_bucket",
        "ccserver_active_calls",
        "ccserver_ledger_commit_seconds_bucket",
        "ccserver_ledger_queue_depth",
    ):
        assert name in text, name


def test_readiness_means_every_listener_answers(database_url: str, tmp_path: Path) -> None:
    running = Server(database_url, tmp_path)
    running.start()  # returns at the first 200 from /readyz
    try:
        from tests.radius_world import RadiusClient

        # Ready means the RADIUS sockets are open too: an unknown client is dropped (no answer)
        # rather than refused by the kernel (which would raise ECONNREFUSED on the next recv).
        client = RadiusClient(running.auth_port)
        try:
            client.sock.sendto(b"\x01\x00\x00\x14" + bytes(16), ("127.0.0.1", running.auth_port))
            time.sleep(0.2)
            assert metric(running, "ccserver_dropped_packets_total", reason="unknown_client") == 1
        finally:
            client.close()
    finally:
        assert running.stop() == 0
    log = running.log()
    assert log.index('"event": "ready"') > log.index('"event": "radius_listening"')
    assert log.index('"event": "engine_loaded"') < log.index('"event": "ready"')


def test_sigterm_during_a_stream_of_writes_loses_no_acknowledged_write(
    database_url: str, tmp_path: Path
) -> None:
    running = Server(database_url, tmp_path)
    running.start()
    with running.client() as api:
        ok(api.post("/v1/accounts", json={"number": "c1", "kind": "customer"}), 201)
    acknowledged: list[str] = []

    def writer(worker: int, stop: threading.Event) -> None:
        with running.client() as api:
            n = 0
            while not stop.is_set():
                key = f"w{worker}-{n}"
                n += 1
                try:
                    response = api.post(
                        "/v1/accounts/c1/topups",
                        json={"amount": "0.01"},
                        headers={"Idempotency-Key": key},
                    )
                except httpx.HTTPError:
                    return
                if response.status_code == 201:
                    acknowledged.append(key)

    sigterm_during(running, writer)
    assert len(acknowledged) > 20

    async def committed() -> tuple[int, Any]:
        connection = await asyncpg.connect(database_url)
        try:
            count = await connection.fetchval(
                "SELECT count(*) FROM transfers WHERE kind = 'topup' AND amount_micros = 10000"
            )
            balance = await connection.fetchval(
                """SELECT balance_micros FROM balances b
                   JOIN accounts a ON b.ledger_account_id = a.id * 4 WHERE a.number = 'c1'"""
            )
            return count, balance
        finally:
            await connection.close()

    import asyncio

    count, balance = asyncio.run(committed())
    assert count >= len(acknowledged)
    assert balance == count * 10_000
    check = subprocess.run(
        [sys.executable, "-m", "ccserver", "check-ledger"],
        env=running.env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout
