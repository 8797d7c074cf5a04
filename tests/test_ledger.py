"""The ledger against a real Postgres: migrations, group commit, idempotency, start-up load and
check-ledger."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

import asyncpg
import pytest
import trio

from ccserver.actors.messages import (
    AccountingRequest,
    CallRequest,
    Grant,
    Pap,
    StopResult,
    Transfer,
)
from ccserver.ledger.bridge import Bridge
from ccserver.ledger.check import check_ledger
from ccserver.ledger.migrate import Migration, MigrationError, migrate, shipped_migrations
from ccserver.ledger.writer import LedgerWrite, LedgerWriteError, Writer
from tests.ledger_world import UNIT, load, open_session_of, seed


async def test_migrations_apply_from_empty_and_rerun_is_a_no_op(
    postgres_server: Any,
) -> None:
    name = f"empty_{uuid.uuid4().hex[:8]}"
    postgres_server.run(f'CREATE DATABASE "{name}"')
    try:
        async with Bridge(postgres_server.dsn(name)) as bridge:
            applied = await bridge.run(migrate)
            assert applied == [m.name for m in shipped_migrations()]
            assert await bridge.run(migrate) == []
            tables = await bridge.run(
                lambda c: c.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
                )
            )
            names = {row["tablename"] for row in tables}
            assert {"accounts", "transfers", "balances", "cdrs", "sessions", "rates"} <= names
    finally:
        postgres_server.drop_database(name)


async def test_a_changed_applied_migration_is_an_error(database_url: str) -> None:
    shipped = shipped_migrations()
    first = shipped[0]
    changed = [Migration(first.version, first.name, first.sql + "\n-- edited"), *shipped[1:]]
    async with Bridge(database_url) as bridge:
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await bridge.run(migrate, changed)
        with pytest.raises(MigrationError, match="does not know"):
            await bridge.run(migrate, [])


async def test_a_stop_is_persisted_as_cdr_transfers_and_balances_in_one_commit(
    database_url: str,
) -> None:
    async with Bridge(database_url) as bridge:
        ids = await seed(bridge)
        engine = await load(bridge)
        writer = Writer(bridge)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            topup = engine.topup(ids["c1"], 10 * UNIT, "topup-1")
            await writer.write(LedgerWrite(transfers=topup.transfers))
            topup = engine.topup(ids["r1"], 100 * UNIT, "topup-2")
            await writer.write(LedgerWrite(transfers=topup.transfers))
            grant = engine.authorize(
                CallRequest(
                    nas="nas1",
                    username="c1",
                    called="4420",
                    credential=Pap("secret"),
                    session_id="s1",
                )
            )
            assert isinstance(grant, Grant)
            engine.start(AccountingRequest(nas="nas1", session_id="s1"))
            outcome = await writer.write(open_session_of(engine, "nas1", "s1"))
            assert outcome.applied
            assert await bridge.run(lambda c: c.fetchval("SELECT count(*) FROM sessions")) == 1
            result = engine.stop(
                AccountingRequest(nas="nas1", session_id="s1", duration_seconds=30)
            )
            assert isinstance(result, StopResult)
            outcome = await writer.write(
                LedgerWrite(
                    transfers=result.transfers, cdr=result.cdr, close_session=("nas1", "s1")
                )
            )
            assert outcome.applied
            writer.close()

        rows = await bridge.run(
            lambda c: c.fetch(
                "SELECT ledger_account_id, balance_micros FROM balances WHERE balance_micros <> 0"
            )
        )
        balances = {row["ledger_account_id"]: row["balance_micros"] for row in rows}
        c1, r1 = ids["c1"], ids["r1"]
        assert balances[c1 * 4] == 10 * UNIT - 600_000  # 30 s at 1.20/min
        assert balances[r1 * 4] == 100 * UNIT - 300_000  # 30 s at 0.60/min
        assert balances[r1 * 4 + 1] == 600_000  # r1's revenue from c1
        assert balances[1 * 4 + 1] == 300_000  # the operator's revenue from r1
        assert sum(balances.values()) == 0
        cdr = await bridge.run(lambda c: c.fetchrow("SELECT * FROM cdrs"))
        assert cdr["cost_micros"] == 600_000 and cdr["duration_seconds"] == 30
        assert list(cdr["level_account_ids"]) == [c1, r1]
        assert await bridge.run(lambda c: c.fetchval("SELECT count(*) FROM sessions")) == 0
        report = await bridge.run(check_ledger)
        assert report.clean, report.render()
        assert report.transfers == 4 and report.cdrs == 1


async def test_a_duplicate_idempotency_key_is_applied_once(database_url: str) -> None:
    async with Bridge(database_url) as bridge:
        ids = await seed(bridge)
        engine = await load(bridge)
        writer = Writer(bridge)
        topup = engine.topup(ids["c1"], 5 * UNIT, "same-key")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            first = await writer.write(LedgerWrite(transfers=topup.transfers))
            again = await writer.write(LedgerWrite(transfers=topup.transfers))
            # Twice in one batch: the first is the write, the second a replay.
            outcomes: list[bool] = []

            async def write_one() -> None:
                outcomes.append((await writer.write(LedgerWrite(transfers=topup2))).applied)

            topup2 = engine.topup(ids["c2"], UNIT, "pair-key").transfers
            async with trio.open_nursery() as pair:
                pair.start_soon(write_one)
                pair.start_soon(write_one)
            writer.close()
        assert first.applied and not again.applied
        assert sorted(outcomes) == [False, True]
        balance = await bridge.run(
            lambda c: c.fetchval(
                "SELECT balance_micros FROM balances WHERE ledger_account_id = $1", ids["c1"] * 4
            )
        )
        assert balance == 5 * UNIT
        assert (await bridge.run(check_ledger)).clean


async def test_concurrent_writes_share_commits(database_url: str) -> None:
    async with Bridge(database_url) as bridge:
        ids = await seed(bridge)
        engine = await load(bridge)
        writer = Writer(bridge, batch_max=100)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            async with trio.open_nursery() as writers:
                for n in range(500):
                    transfers = engine.topup(ids["c1"], 1_000, f"k{n}").transfers
                    writers.start_soon(writer.write, LedgerWrite(transfers=transfers))
            writer.close()
        # 500 writes in batches of at most 100: at least 5 commits, far fewer than 500.
        assert 5 <= writer.committed_batches < 100
        count = await bridge.run(lambda c: c.fetchval("SELECT count(*) FROM transfers"))
        assert count == 500


async def test_a_refused_write_fails_alone(database_url: str) -> None:
    async with Bridge(database_url) as bridge:
        ids = await seed(bridge)
        engine = await load(bridge)
        writer = Writer(bridge)
        good = engine.topup(ids["c1"], 1_000, "good").transfers
        # A transfer to an account that does not exist violates a foreign key.
        broken = Transfer("bad", 1, "funding", 999_999, "balance", 5, "topup", "")
        results: dict[str, object] = {}

        async def attempt(name: str, item: LedgerWrite) -> None:
            try:
                results[name] = (await writer.write(item)).applied
            except LedgerWriteError as error:
                results[name] = error

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            async with trio.open_nursery() as both:
                both.start_soon(attempt, "bad", LedgerWrite(transfers=(broken,)))
                both.start_soon(attempt, "good", LedgerWrite(transfers=good))
            writer.close()
        assert results["good"] is True
        assert isinstance(results["bad"], LedgerWriteError)
        assert (await bridge.run(check_ledger)).clean


async def test_start_up_load_restores_open_calls_and_their_slots(database_url: str) -> None:
    async with Bridge(database_url) as bridge:
        ids = await seed(bridge)
        await bridge.run(
            lambda c: c.execute("UPDATE accounts SET max_concurrent = 1 WHERE id = $1", ids["r1"])
        )
        engine = await load(bridge)
        writer = Writer(bridge)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await writer.write(LedgerWrite(transfers=engine.topup(ids["c1"], UNIT, "t1").transfers))
            await writer.write(LedgerWrite(transfers=engine.topup(ids["c2"], UNIT, "t3").transfers))
            await writer.write(LedgerWrite(transfers=engine.topup(ids["r1"], UNIT, "t2").transfers))
            grant = engine.authorize(
                CallRequest(
                    nas="nas1",
                    username="c1",
                    called="4420",
                    credential=Pap("secret"),
                    session_id="s1",
                )
            )
            assert isinstance(grant, Grant)
            engine.start(AccountingRequest(nas="nas1", session_id="s1"))
            await writer.write(open_session_of(engine, "nas1", "s1"))
            writer.close()
        # A new process: the call is still up, so r1's one slot is still taken.
        restarted = await load(bridge)
        r1 = restarted.hierarchy.get(ids["r1"])
        c1 = restarted.hierarchy.get(ids["c1"])
        assert r1 is not None and c1 is not None
        assert r1.calls == 1 and c1.balance_micros == UNIT
        assert ("nas1", "s1") in restarted.sessions
        refused = restarted.authorize(
            CallRequest(nas="nas1", username="c2", called="4420", credential=Pap("secret"))
        )
        assert not isinstance(refused, Grant) and refused.reason.value == "concurrency_limit"
        result = restarted.stop(AccountingRequest(nas="nas1", session_id="s1", duration_seconds=10))
        assert isinstance(result, StopResult) and result.cdr.authorized
        assert r1.calls == 0
        restarted.check_invariants()


def test_check_ledger_command_reports_a_tampered_balance(database_url: str) -> None:
    async def tamper() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            await connection.execute(
                "UPDATE balances SET balance_micros = 7 WHERE ledger_account_id = 5"
            )
        finally:
            await connection.close()

    env = {"CCSERVER_DATABASE__URL": database_url, "PATH": "/usr/bin:/bin"}
    clean = subprocess.run(
        [sys.executable, "-m", "ccserver", "check-ledger"], env=env, capture_output=True, text=True
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "ledger is clean" in clean.stdout
    import asyncio

    asyncio.run(tamper())
    dirty = subprocess.run(
        [sys.executable, "-m", "ccserver", "check-ledger"], env=env, capture_output=True, text=True
    )
    assert dirty.returncode == 1
    assert "ledger account 5 holds 7 but its transfers sum to 0" in dirty.stdout
    assert "MUST BE 0" in dirty.stdout
