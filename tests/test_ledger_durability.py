"""Durability of the group-commit writer against real Postgres: a writer process killed with
SIGKILL mid-stream and replayed, and a Postgres outage the writer must ride out on its own."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from ccserver.actors.messages import Transfer
from ccserver.ledger.bridge import Bridge
from ccserver.ledger.check import check_ledger
from ccserver.ledger.embedded import DATABASE_NAME, EmbeddedPostgres, ensure_database
from ccserver.ledger.migrate import migrate
from ccserver.ledger.writer import LedgerWrite, Writer
from ccserver.observability import REGISTRY
from tests.ledger_world import seed

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "ledger_crash_child.py"

CRASH_WRITES = 3_000
CRASH_TASKS = 50


class ChildRun:
    def __init__(self) -> None:
        self.acks: list[tuple[str, str]] = []  # (key, "applied" | "replay") in order printed
        self.acks_at_kill: int | None = None
        self.done = False
        self.returncode: int | None = None


async def run_child(database_url: str, stderr_path: Path, kill_after: int | None) -> ChildRun:
    """Run tests/ledger_crash_child.py; SIGKILL it once it has printed `kill_after` acks."""
    run = ChildRun()
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [
                sys.executable,
                str(CHILD),
                database_url,
                "--count",
                str(CRASH_WRITES),
                "--tasks",
                str(CRASH_TASKS),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
            env=env,
        )
        try:
            assert process.stdout is not None
            pending = b""
            while True:
                chunk = await process.stdout.receive_some(65536)
                if not chunk:
                    break  # EOF: the child exited (or was killed and its pipe drained)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    words = line.decode().split()
                    if words == ["done"]:
                        run.done = True
                        continue
                    assert len(words) == 3 and words[0] == "ack", line
                    assert words[2] in ("applied", "replay"), line
                    run.acks.append((words[1], words[2]))
                if (
                    kill_after is not None
                    and run.acks_at_kill is None
                    and len(run.acks) >= kill_after
                ):
                    process.kill()  # SIGKILL: no cleanup, no flush, mid-commit if it may
                    run.acks_at_kill = len(run.acks)
            # Lines already in the pipe when the kill landed were printed after their write()
            # returned: they are acknowledgements too, and are kept.
            run.returncode = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
    return run


async def keys_and_amounts(bridge: Bridge) -> dict[str, int]:
    rows = await bridge.run(
        lambda c: c.fetch("SELECT idempotency_key, amount_micros FROM transfers")
    )
    keys = [row["idempotency_key"] for row in rows]
    assert len(keys) == len(set(keys)), "an idempotency key is in the journal twice"
    return {row["idempotency_key"]: row["amount_micros"] for row in rows}


async def balance_of(bridge: Bridge, ledger_account_id: int) -> int:
    value = await bridge.run(
        lambda c: c.fetchval(
            "SELECT balance_micros FROM balances WHERE ledger_account_id = $1", ledger_account_id
        )
    )
    return int(value)


def amount_of(key: str) -> int:
    return int(key[1:]) + 1


async def test_a_killed_writer_loses_no_acknowledged_write_and_replays_exactly_once(
    database_url: str, tmp_path: Path
) -> None:
    every_key = {f"w{n}" for n in range(CRASH_WRITES)}
    async with Bridge(database_url) as bridge:
        ids = await seed(bridge)
        customer_balance = ids["c1"] * 4  # ledger account of kind balance
        reseller_funding = ids["r1"] * 4 + 2  # ledger account of kind funding

        kill_after = random.randint(300, 1500)
        with trio.fail_after(45):
            first = await run_child(database_url, tmp_path / "first.stderr", kill_after)
        stderr = (tmp_path / "first.stderr").read_text()
        print(
            f"crash test: kill after {kill_after} acks; acks read at kill {first.acks_at_kill}, "
            f"acks in total {len(first.acks)}"
        )
        assert first.acks_at_kill is not None, f"child ended before the kill\n{stderr}"
        assert first.returncode == -signal.SIGKILL, stderr
        assert not first.done and len(first.acks) < CRASH_WRITES
        first_keys = [key for key, _ in first.acks]
        assert len(first_keys) == len(set(first_keys))
        # A fresh database: everything the first child wrote was new.
        assert {status for _, status in first.acks} == {"applied"}

        # After the crash: every acknowledged write is committed, and the ledger is consistent
        # (whatever was in flight at the kill is wholly there or wholly absent).
        after_crash = await keys_and_amounts(bridge)
        assert set(first_keys) <= set(after_crash)
        assert set(after_crash) <= every_key
        assert all(amount == amount_of(key) for key, amount in after_crash.items())
        crashed_sum = sum(after_crash.values())
        assert await balance_of(bridge, customer_balance) == crashed_sum
        assert await balance_of(bridge, reseller_funding) == -crashed_sum
        report = await bridge.run(check_ledger)
        assert report.clean, report.render()

        with trio.fail_after(45):
            second = await run_child(database_url, tmp_path / "second.stderr", None)
        stderr = (tmp_path / "second.stderr").read_text()
        assert second.returncode == 0, stderr
        assert second.done
        second_keys = [key for key, _ in second.acks]
        assert len(second_keys) == CRASH_WRITES and set(second_keys) == every_key
        replayed = {key for key, status in second.acks if status == "replay"}
        applied = {key for key, status in second.acks if status == "applied"}
        # Acknowledged before the crash: a replay now, not applied a second time. Committed but
        # not yet acknowledged at the kill: a replay as well. Never committed: applied now.
        assert set(first_keys) <= replayed
        assert replayed == set(after_crash)
        assert applied == every_key - set(after_crash)
        print(
            f"crash test: committed at the kill {len(after_crash)}, "
            f"replayed {len(replayed)}, applied on replay {len(applied)}"
        )

        final = await keys_and_amounts(bridge)
        assert set(final) == every_key
        assert all(amount == amount_of(key) for key, amount in final.items())
        total = CRASH_WRITES * (CRASH_WRITES + 1) // 2
        assert await balance_of(bridge, customer_balance) == total
        assert await balance_of(bridge, reseller_funding) == -total
        report = await bridge.run(check_ledger)
        assert report.clean, report.render()
        assert report.transfers == CRASH_WRITES


OUTAGE_WRITES = 2_000
OUTAGE_TASKS = 20
OUTAGE_AFTER_SECONDS = 0.5
OUTAGE_SECONDS = 3.0


async def test_the_writer_rides_out_a_postgres_outage() -> None:
    # A server of its own, so that stopping it disturbs no other test. Not under pytest's
    # basetemp: every pytest session that starts (another run on this machine, say) resets
    # /tmp/pytest-of-<user> to 0700, and when run as root the server runs as another user who
    # then cannot reach its data directory to start again. The path is short too: the Unix
    # socket lives in the data directory.
    root = Path(tempfile.mkdtemp(prefix="ccserver-outage-"))
    embedded = EmbeddedPostgres(root)
    try:
        dsn = await trio.to_thread.run_sync(embedded.start)
        async with Bridge(embedded.admin_dsn(), pool_max=1) as admin:
            await admin.run(ensure_database, DATABASE_NAME)
        async with Bridge(dsn) as bridge:
            await bridge.run(migrate)
            ids = await seed(bridge)
            retries_before = REGISTRY.get_sample_value("ccserver_ledger_retries_total") or 0.0
            writer = Writer(bridge, retry_seconds_max=0.5)
            outcomes: dict[str, bool] = {}
            numbers = iter(range(OUTAGE_WRITES))
            timeline: dict[str, Any] = {}

            async def produce() -> None:
                for n in numbers:
                    transfer = Transfer(
                        f"o{n}",
                        debit_account_id=ids["r1"],
                        debit_kind="funding",
                        credit_account_id=ids["c1"],
                        credit_kind="balance",
                        amount_micros=n + 1,
                        kind="topup",
                        reference="",
                    )
                    outcome = await writer.write(LedgerWrite(transfers=(transfer,)))
                    outcomes[transfer.idempotency_key] = outcome.applied
                    # Paced so that writes are still coming before, during and after the outage.
                    await trio.sleep(0.02)

            async def outage() -> None:
                await trio.sleep(OUTAGE_AFTER_SECONDS)
                timeline["done_at_stop"] = len(outcomes)
                started = time.monotonic()
                await trio.to_thread.run_sync(embedded.stop)
                timeline["stop_seconds"] = time.monotonic() - started
                timeline["done_when_down"] = len(outcomes)
                await trio.sleep(OUTAGE_SECONDS)
                timeline["done_while_down"] = len(outcomes) - timeline["done_when_down"]
                started = time.monotonic()
                await trio.to_thread.run_sync(embedded.start)
                timeline["start_seconds"] = time.monotonic() - started
                timeline["restarted"] = time.monotonic()

            began = time.monotonic()
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(writer.run)
                    async with trio.open_nursery() as work:
                        work.start_soon(outage)
                        for _ in range(OUTAGE_TASKS):
                            work.start_soon(produce)
                    writer.close()
            ended = time.monotonic()
            retries = (REGISTRY.get_sample_value("ccserver_ledger_retries_total") or 0.0) - (
                retries_before
            )
            print(
                f"outage test: {timeline['done_at_stop']} writes done at the stop, "
                f"{timeline['done_while_down']} while down, stop took "
                f"{timeline['stop_seconds']:.2f} s, start {timeline['start_seconds']:.2f} s, "
                f"all done {ended - timeline['restarted']:.2f} s after the restart "
                f"({ended - began:.2f} s in all), {retries:.0f} retries, "
                f"{writer.committed_batches} commits"
            )

            # The outage really happened in the middle of the stream.
            assert 0 < timeline["done_at_stop"] < OUTAGE_WRITES
            assert timeline["done_when_down"] < OUTAGE_WRITES
            assert timeline["done_while_down"] == 0  # nothing is acknowledged with no database
            assert retries > 0
            # Every write came back applied (an ambiguous commit is recognised as ours), and
            # each exactly once.
            assert len(outcomes) == OUTAGE_WRITES
            replays = sorted(key for key, applied in outcomes.items() if not applied)
            if replays:
                rows = await bridge.run(
                    lambda c: c.fetch(
                        "SELECT idempotency_key, batch_id FROM transfers"
                        " WHERE idempotency_key = ANY($1)",
                        replays,
                    )
                )
                pytest.fail(
                    f"{len(replays)} writes committed by this writer came back as replays: "
                    f"{[dict(row) for row in rows][:5]}"
                )
            rows = await bridge.run(
                lambda c: c.fetchrow(
                    """SELECT count(*) AS n, count(DISTINCT idempotency_key) AS keys,
                              coalesce(sum(amount_micros), 0) AS total FROM transfers"""
                )
            )
            total = OUTAGE_WRITES * (OUTAGE_WRITES + 1) // 2
            assert rows["n"] == rows["keys"] == OUTAGE_WRITES
            assert rows["total"] == total
            assert await balance_of(bridge, ids["c1"] * 4) == total
            assert await balance_of(bridge, ids["r1"] * 4 + 2) == -total
            report = await bridge.run(check_ledger)
            assert report.clean, report.render()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(embedded.stop)
        shutil.rmtree(root, ignore_errors=True)
