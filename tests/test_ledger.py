"""The ledger against a real Postgres: migrations, group commit, idempotency, start-up load and
check-ledger."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
import trio

from ccserver.actors.account import (
    NUM_BITS,
    NUM_MASK,
    Account,
    AccountKind,
    Billing,
    CliPolicy,
    CpsWindow,
    Status,
)
from ccserver.actors.engine import Engine
from ccserver.actors.hierarchy import Hierarchy, HierarchyError
from ccserver.actors.messages import (
    AccountingRequest,
    CallRequest,
    Grant,
    Pap,
    StopResult,
    Transfer,
)
from ccserver.actors.session import LevelCharge, Session
from ccserver.ledger.bridge import Bridge
from ccserver.ledger.check import check_ledger
from ccserver.ledger.loader import READ_CONNECTIONS, build_engine, fetch_snapshot
from ccserver.ledger.migrate import Migration, MigrationError, migrate, shipped_migrations
from ccserver.ledger.store import (
    AccountRow,
    create_account,
    create_accounts_bulk,
    create_rate_group,
    upsert_rates,
)
from ccserver.ledger.writer import LedgerWrite, LedgerWriteError, OpenSession, Writer, _commit
from ccserver.observability import COMMIT_STAGES, REGISTRY
from ccserver.rating.prefix_index import PrefixIndex
from ccserver.rating.tariff import PricedRate, Rate, RateGroup
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
            # The writer's function plans by index and keeps its plans (schemas 4 and 5).
            config = await bridge.run(
                lambda c: c.fetchval(
                    "SELECT proconfig FROM pg_proc WHERE proname = 'ccserver_commit'"
                )
            )
            assert set(config) == {"enable_seqscan=off", "plan_cache_mode=force_generic_plan"}
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


async def write_topups(bridge: Bridge, count: int, batch_max: int) -> Writer:
    """`count` top-ups of a seeded customer written at once through a writer; return it."""
    ids = await seed(bridge)
    engine = await load(bridge)
    writer = Writer(bridge, batch_max=batch_max)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        async with trio.open_nursery() as writers:
            for n in range(count):
                transfers = engine.topup(ids["c1"], 1_000, f"k{n}").transfers
                writers.start_soon(writer.write, LedgerWrite(transfers=transfers))
        writer.close()
    return writer


async def test_concurrent_writes_share_commits(database_url: str) -> None:
    async with Bridge(database_url) as bridge:
        writer = await write_topups(bridge, 500, batch_max=100)
        # 500 writes in batches of at most 100: at least 5 commits, far fewer than 500.
        assert 5 <= writer.committed_batches < 100
        count = await bridge.run(lambda c: c.fetchval("SELECT count(*) FROM transfers"))
        assert count == 500


async def test_each_commit_is_timed_stage_by_stage(database_url: str) -> None:
    def stages() -> dict[str, tuple[float, float]]:  # stage: (observations, seconds)
        return {
            stage: tuple(  # type: ignore[misc]
                REGISTRY.get_sample_value(
                    f"ccserver_ledger_commit_stage_seconds_{part}", {"stage": stage}
                )
                or 0.0
                for part in ("count", "sum")
            )
            for stage in COMMIT_STAGES
        }

    def commit_seconds() -> float:
        return REGISTRY.get_sample_value("ccserver_ledger_commit_seconds_sum") or 0.0

    before, commit_before = stages(), commit_seconds()
    async with Bridge(database_url) as bridge:
        writer = await write_topups(bridge, 100, batch_max=20)
    after = stages()
    added = {
        stage: (after[stage][0] - before[stage][0], after[stage][1] - before[stage][1])
        for stage in COMMIT_STAGES
    }
    for stage, (count, seconds) in added.items():
        assert count == writer.committed_batches, stage  # one observation per batch
        assert seconds >= 0.0, stage
    assert added["statement"][1] > 0.0  # a round trip to Postgres takes time
    # A batch's stages add up to the wait of its oldest write, one of the writes timed whole.
    total = sum(seconds for _, seconds in added.values())
    assert 0.0 < total <= commit_seconds() - commit_before + 1e-9


@pytest.mark.parametrize(
    "make_broken",
    [
        # A transfer to an account that does not exist violates a foreign key.
        lambda ids: Transfer("bad", 1, "funding", 999_999, "balance", 5, "topup", ""),
        # Postgres text cannot hold NUL.
        lambda ids: Transfer("bad", 1, "funding", ids["c1"], "balance", 5, "topup", "a\x00b"),
    ],
    ids=["unknown-account", "nul-in-text"],
)
async def test_a_refused_write_fails_alone(
    database_url: str, make_broken: Callable[[dict[str, int]], Transfer]
) -> None:
    async with Bridge(database_url) as bridge:
        ids = await seed(bridge)
        engine = await load(bridge)
        writer = Writer(bridge)
        good = engine.topup(ids["c1"], 1_000, "good").transfers
        broken = make_broken(ids)
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


# -- the start-up load at scale: its bulk paths build what the one-by-one paths built ----------

CLOCK_NOW = 1_700_000_000.0


async def seed_varied(bridge: Bridge) -> dict[str, int]:
    """Every field an account can have, nested resellers whose rows the table gives after their
    children's (updated after them), a deleted account, two tariffs whose rates come
    interleaved, personal rates, balances and open calls (one of them with no rate)."""

    async def go(connection: Any) -> dict[str, int]:
        g1 = await create_rate_group(connection, "retail")
        g2 = await create_rate_group(
            connection, "wholesale", precision=2, rounding="half_up", markup_ppm=150_000
        )
        await upsert_rates(connection, g1, [Rate("44", "UK", 0, 600_000)])
        await upsert_rates(
            connection,
            g2,
            [
                Rate("44", "UK", 10_000, 900_000, 5, 30, 6),
                Rate("33", "FR", 0, 1),
                Rate("1", "US", 0, 150_000),
            ],
        )
        await upsert_rates(
            connection, g1, [Rate("4420", "London", 0, 500_000), Rate("1", "US", 0, 100_000)]
        )
        ids = {"g1": g1, "g2": g2}
        ids["r1"] = await create_account(
            connection,
            AccountRow(
                number="r1",
                kind="reseller",
                parent_id=1,
                rate_group_id=g1,
                billing="postpaid",
                credit_limit_micros=50 * UNIT,
                currency="EUR",
                max_concurrent=5,
                cps=3,
            ),
        )
        ids["r2"] = await create_account(
            connection,
            AccountRow(number="r2", kind="reseller", parent_id=ids["r1"], rate_group_id=g2),
        )
        ids["c1"] = await create_account(
            connection,
            AccountRow(
                number="c1",
                kind="customer",
                parent_id=ids["r2"],
                rate_group_id=g2,
                password="secret",
                pin="1234",
                sip_username="c1sip",
                caller_ids=["4930111", "4930112"],
                cli_policy="listed",
                ip_addresses=["10.0.0.0/24"],
                tech_prefix="99#",
                blocked_prefixes=["900", "901"],
                expires_at=CLOCK_NOW + 86_400.5,
            ),
        )
        ids["c2"] = await create_account(
            connection,
            AccountRow(number="c2", kind="customer", parent_id=ids["r1"], status="suspended"),
        )
        ids["a1"] = await create_account(
            connection,
            AccountRow(number="a1", kind="agent", parent_id=ids["r1"], rate_group_id=g1),
        )
        ids["p1"] = await create_account(
            connection, AccountRow(number="p1", kind="provider", parent_id=1, currency="a/b")
        )
        await create_account(
            connection, AccountRow(number="gone", kind="customer", parent_id=1, status="deleted")
        )
        # Enough accounts for a table of several pages, that a parallel read splits.
        await create_accounts_bulk(
            connection,
            [
                AccountRow(number=f"bulk{n}", kind="customer", parent_id=ids["r2"], cps=n % 3)
                for n in range(150)
            ],
        )
        # An update writes a new row version at the end of the table: the resellers now come
        # after their children in a scan.
        await connection.execute("UPDATE accounts SET cps = cps WHERE number IN ('r2', 'r1')")
        await connection.executemany(
            "INSERT INTO account_rates (account_id, prefix, destination, per_minute_micros)"
            " VALUES ($1, $2, $3, $4)",
            [(ids["c2"], "4420", "London", 300_000), (ids["c1"], "1", "US", 200_000)],
        )
        for name, balance in (("r1", -7 * UNIT), ("c1", 3 * UNIT), ("a1", 1)):
            await connection.execute(
                "UPDATE balances SET balance_micros = $2 WHERE ledger_account_id = $1",
                ids[name] * 4,
                balance,
            )
        await connection.executemany(
            "INSERT INTO sessions (nas, session_id, account_id, calling, called, started_at,"
            " authorized) VALUES ('nas1', $1, $2, '4930111', $3, to_timestamp($4), $5)",
            [
                ("s1", ids["c1"], "442071234567", CLOCK_NOW - 90.25, True),
                ("s2", ids["c2"], "442071234567", CLOCK_NOW - 5, False),
                ("s3", ids["c1"], "12125550100", CLOCK_NOW - 1, True),
                ("s4", ids["a1"], "777", CLOCK_NOW - 1, True),  # no rate: not restored
            ],
        )
        return ids

    return await bridge.run(go)


def reference_engine(rows: dict[str, Any]) -> Engine:
    """The engine as the start-up load built it one account, one rate at a time (through
    `Account()`, `Hierarchy.add` and `PrefixIndex.put`), from rows read by name."""
    groups = {
        row["id"]: RateGroup(
            row["id"], row["name"], row["owner_id"], row["precision"], row["rounding"],
            row["markup_ppm"],
        )
        for row in rows["groups"]
    }  # fmt: skip
    for row in rows["rates"]:
        groups[row[0]].index.put(row[1], Rate(*row[1:]))
    hierarchy = Hierarchy()
    by_id = {row["id"]: row for row in rows["accounts"]}
    ordered: list[Any] = []
    placed: set[int] = set()
    for row in rows["accounts"]:
        path = []
        node = row
        while node is not None and node["id"] not in placed:
            path.append(node)
            node = by_id.get(node["parent_id"])
        for item in reversed(path):
            placed.add(item["id"])
            ordered.append(item)
    for row in ordered:
        if row["parent_id"] is None:
            continue
        parent = hierarchy.get(row["parent_id"])
        assert parent is not None
        account = Account(
            row["id"],
            row["number"],
            AccountKind(row["kind"]),
            parent,
            status=Status(row["status"]),
            billing=Billing(row["billing"]),
            credit_limit_micros=row["credit_limit_micros"],
            balance_micros=rows["balances"].get(row["id"] * 4, 0),
            currency=row["currency"],
            rate_group=groups.get(row["rate_group_id"]) if row["rate_group_id"] else None,
            max_concurrent=row["max_concurrent"],
            cps=row["cps"],
            expires_at=row["expires_at"],
            password=row["password"],
            pin=row["pin"],
            sip_username=row["sip_username"],
            ip_addresses=tuple(row["ip_addresses"]),
            tech_prefix=row["tech_prefix"],
            caller_ids=tuple(row["caller_ids"]),
            cli_policy=CliPolicy(row["cli_policy"]),
        )
        if row["blocked_prefixes"]:
            account.set_blocked_prefixes(tuple(row["blocked_prefixes"]))
        hierarchy.add(account)
    for row in rows["personal"]:
        owner = hierarchy.get(row[0])
        assert owner is not None
        if owner.personal_rates is None:
            owner.personal_rates = PrefixIndex()
        owner.personal_rates.put(row[1], Rate(*row[1:]))
    engine = Engine(hierarchy, clock=lambda: CLOCK_NOW)
    engine.rate_groups = groups
    for row in rows["sessions"]:
        engine.restore_session(
            row["nas"],
            row["session_id"],
            row["account_id"],
            username=row["username"],
            calling=row["calling"],
            called=row["called"],
            started_at=row["started_at"],
            authorized=row["authorized"],
        )
    return engine


async def read_by_name(connection: Any) -> dict[str, Any]:
    """What the start-up load reads, by name, in the order of the table (as the load reads it:
    joined to the balances, the order was whatever the join's plan made it)."""
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        return {
            "accounts": await connection.fetch(
                """SELECT *, extract(epoch from expires_at)::float8 AS expires_at
                   FROM accounts WHERE status <> 'deleted'"""
            ),
            "balances": dict(
                await connection.fetch(
                    "SELECT ledger_account_id, balance_micros FROM balances"
                    " WHERE ledger_account_id % 4 = 0"
                )
            ),
            "groups": await connection.fetch("SELECT * FROM rate_groups"),
            "rates": await connection.fetch(
                "SELECT rate_group_id, prefix, destination, connect_fee_micros,"
                " per_minute_micros, free_seconds, first_increment_seconds,"
                " next_increment_seconds FROM rates"
            ),
            "personal": await connection.fetch(
                "SELECT account_id, prefix, destination, connect_fee_micros,"
                " per_minute_micros, free_seconds, first_increment_seconds,"
                " next_increment_seconds FROM account_rates"
            ),
            "sessions": await connection.fetch(
                "SELECT *, extract(epoch from started_at)::float8 AS started_at FROM sessions"
            ),
        }


def plain(value: Any) -> Any:
    """`value` as plain data, each engine object it refers to by that object's id: two engines
    then compare by content, not by identity."""
    if isinstance(value, Account):
        return ("account", value.id)
    if isinstance(value, RateGroup):
        return ("group", value.id)
    if isinstance(value, PrefixIndex):
        return ("index", sorted(value.items()), value._lengths, value._lengths_count)
    if isinstance(value, CpsWindow):
        return ("cps", value.limit, list(value._ring))
    if isinstance(value, LevelCharge | Session | PricedRate):
        fields = [name for name in fields_of(type(value)) if name != "session"]
        return {name: plain(getattr(value, name)) for name in fields}
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def fields_of(cls: type) -> tuple[str, ...]:
    """The slots of an engine class, or the attributes mypyc compiled them to."""
    return getattr(cls, "__slots__", None) or cls.__mypyc_attrs__  # type: ignore[attr-defined]


def account_content(account: Account) -> dict[str, Any]:
    return {name: plain(getattr(account, name)) for name in fields_of(Account)}


def group_content(group: RateGroup) -> Any:
    return (
        group.id, group.name, group.owner_id, group.precision, group.rounding, group.markup_ppm,
        plain(group.index), sorted(group._priced), group._generation,
    )  # fmt: skip


def engine_content(engine: Engine) -> dict[str, Any]:
    hierarchy = engine.hierarchy
    return {
        "accounts": [account_content(account) for account in hierarchy],
        "by_number": plain(list(hierarchy.by_number.items())),
        "by_sip": plain(hierarchy.by_sip),
        "by_ani": plain(hierarchy.by_ani),
        "by_ip": plain(hierarchy.by_ip._by_key),
        "ip_lengths": hierarchy.by_ip._lengths,
        "groups": {key: group_content(group) for key, group in engine.rate_groups.items()},
        "sessions": plain(engine.sessions),
        "session_seq": engine._session_seq,
        "hold_expiries": [(at >> NUM_BITS, at & NUM_MASK) for at in engine._hold_expiries],
        "deadlines": engine._deadlines,
        "deadline_live": engine._deadline_live,
        "joins": plain(engine._joins),
    }


def assert_same_engine(built: Engine, reference: Engine) -> None:
    for mine, theirs in zip(built.hierarchy, reference.hierarchy, strict=True):
        assert account_content(mine) == account_content(theirs), mine
    assert engine_content(built) == engine_content(reference)
    built.check_invariants()


async def test_the_start_up_load_builds_the_engine_it_built_one_account_at_a_time(
    database_url: str,
) -> None:
    async with Bridge(database_url) as bridge:
        ids = await seed_varied(bridge)
        reference = reference_engine(await bridge.run(read_by_name))
        pages = await bridge.run(
            lambda c: c.fetchval(
                "SELECT pg_relation_size('accounts') / current_setting('block_size')::int"
            )
        )
        assert pages >= 3
        for snapshot in (
            await bridge.run(fetch_snapshot),
            await bridge.run(fetch_snapshot, database_url),
        ):
            engine = build_engine(snapshot, clock=lambda: CLOCK_NOW)
            assert_same_engine(engine, reference)
    # What a user of the engine sees of it, beyond equal to the reference: the loaded world.
    assert len(engine.hierarchy) == 157  # the operator and 156 accounts; not the deleted one
    assert set(engine.sessions) == {("nas1", "s1"), ("nas1", "s2"), ("nas1", "s3")}
    r1, r2, c1 = (engine.hierarchy.get(ids[name]) for name in ("r1", "r2", "c1"))
    assert r1 is not None and r2 is not None and c1 is not None
    assert c1.parent is r2 and r2.parent is r1 and c1.chain() == [c1, r2, r1]
    assert (r1.balance_micros, c1.balance_micros, r1.floor_micros) == (
        -7 * UNIT,
        3 * UNIT,
        -50 * UNIT,
    )
    assert r1.calls == 3 and c1.calls == 2 and c1.blocked_prefixes() == ("900", "901")
    assert engine.hierarchy.by_ani["4930112"] is c1
    assert engine.hierarchy.by_ip.find("10.0.0.7") is c1
    assert engine.rate_groups[ids["g1"]].lookup("442071") == Rate("4420", "London", 0, 500_000)
    p1 = engine.hierarchy.get(ids["p1"])
    assert p1 is not None and p1.currency == "a/b"


async def test_a_parallel_read_is_one_instant(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extra connections open after the first one took its snapshot, and a write commits
    in between: none of them sees it."""
    async with Bridge(database_url) as bridge:
        ids = await seed_varied(bridge)
        connect = asyncpg.connect
        connects = 0
        written_at: list[bool] = []  # the write is committed

        async def connect_after_a_write(dsn: str, **options: Any) -> Any:
            nonlocal connects
            connects += 1
            if connects == 1:
                writer = await connect(dsn)
                await writer.execute(
                    "UPDATE balances SET balance_micros = 42 WHERE ledger_account_id = $1",
                    ids["c1"] * 4,
                )
                await writer.execute(
                    "INSERT INTO sessions (nas, session_id, account_id, called, started_at)"
                    " VALUES ('nas1', 'late', $1, '4420', now())",
                    ids["c1"],
                )
                await writer.execute(
                    "INSERT INTO rates (rate_group_id, prefix, per_minute_micros)"
                    " VALUES ($1, '49', 1)",
                    ids["g1"],
                )
                await writer.close()
                written_at.append(True)
            while not written_at:
                await asyncio.sleep(0.01)
            return await connect(dsn, **options)

        monkeypatch.setattr(asyncpg, "connect", connect_after_a_write)
        before = build_engine(await bridge.run(fetch_snapshot, database_url))
        monkeypatch.undo()
        after = build_engine(await bridge.run(fetch_snapshot, database_url))
    assert connects == READ_CONNECTIONS - 1
    c1_before, c1_after = before.hierarchy.get(ids["c1"]), after.hierarchy.get(ids["c1"])
    assert c1_before is not None and c1_after is not None
    assert (c1_before.balance_micros, c1_after.balance_micros) == (3 * UNIT, 42)
    assert ("nas1", "late") not in before.sessions and ("nas1", "late") in after.sessions
    assert before.rate_groups[ids["g1"]].lookup("4930") is None
    assert after.rate_groups[ids["g1"]].lookup("4930") is not None


async def test_a_parallel_read_that_cannot_connect_reads_on_one_connection(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Bridge(database_url) as bridge:
        await seed_varied(bridge)
        reference = reference_engine(await bridge.run(read_by_name))
        connect = asyncpg.connect
        attempts = 0

        async def second_one_fails(dsn: str, **options: Any) -> Any:
            nonlocal attempts
            attempts += 1
            if attempts == 2:
                raise OSError("too many clients")
            return await connect(dsn, **options)

        monkeypatch.setattr(asyncpg, "connect", second_one_fails)
        snapshot = await bridge.run(fetch_snapshot, database_url)
        monkeypatch.undo()
        others = -1
        with trio.move_on_after(5):
            while others:  # a closed connection's server process exits a moment later
                others = await bridge.run(
                    lambda c: c.fetchval(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
                await trio.sleep(0.05)
    assert attempts == READ_CONNECTIONS - 1
    assert_same_engine(build_engine(snapshot, clock=lambda: CLOCK_NOW), reference)
    assert others == 0  # the connections that did open are closed


def test_a_restored_account_is_the_account_init_builds() -> None:
    """Every slot of `Account.restored` is `Account()`'s, chain cached or not."""
    hierarchy = Hierarchy()
    group = RateGroup(1, "g")
    reseller = Account(2, "r", AccountKind.RESELLER, hierarchy.operator, cps=5)
    hierarchy.add(reseller)
    fields: dict[str, Any] = {
        "status": Status.SUSPENDED,
        "billing": Billing.POSTPAID,
        "credit_limit_micros": 7 * UNIT,
        "balance_micros": -3,
        "currency": "EUR",
        "rate_group": group,
        "max_concurrent": 4,
        "cps": 2,
        "expires_at": 1.5,
        "password": "pw",
        "pin": "12",
        "sip_username": "sip",
        "ip_addresses": ("10.0.0.1",),
        "tech_prefix": "9#",
        "caller_ids": ("49",),
        "cli_policy": CliPolicy.LISTED,
    }
    built = Account(3, "c", AccountKind.CUSTOMER, reseller, **fields)
    built.chain_tuple()
    restored = Account.restored(3, "c", AccountKind.CUSTOMER, reseller, *fields.values())
    assert account_content(restored) == account_content(built)
    assert reseller.children == 2
    default = Account.restored(
        4, "d", AccountKind.CUSTOMER, hierarchy.operator, Status.ACTIVE, Billing.PREPAID, 0, 0,
        "USD", None, 0, 0, None, None, None, None, (), "", (), CliPolicy.ANY,
    )  # fmt: skip
    assert account_content(default) == account_content(
        Account(4, "d", AccountKind.CUSTOMER, hierarchy.operator).chain_tuple()[0]
    )


async def test_a_caller_id_of_two_accounts_fails_the_start_up_load(database_url: str) -> None:
    """Caller IDs are not unique in the ledger: the load refuses a second holder, as `add`."""
    async with Bridge(database_url) as bridge:
        await seed_varied(bridge)
        await bridge.run(
            lambda c: create_account(
                c,
                AccountRow(number="c9", kind="customer", parent_id=1, caller_ids=["4930112"]),
            )
        )
        snapshot = await bridge.run(fetch_snapshot, database_url)
    with pytest.raises(HierarchyError, match="caller ID 4930112 belongs to account c1"):
        build_engine(snapshot)


def test_an_account_number_twice_is_refused_in_bulk() -> None:
    hierarchy = Hierarchy()
    fields = (Status.ACTIVE, Billing.PREPAID, 0, 0, "USD", None, 0, 0, None, None, None, None)
    tail = ((), "", (), CliPolicy.ANY)
    operator = hierarchy.operator
    first = Account.restored(2, "same", AccountKind.CUSTOMER, operator, *fields, *tail)
    second = Account.restored(3, "same", AccountKind.CUSTOMER, operator, *fields, *tail)
    with pytest.raises(HierarchyError, match="came twice"):
        hierarchy.add_restored([first, second])


async def test_the_commit_function_finds_sessions_by_key_whatever_its_cached_plan_saw(
    database_url: str,
) -> None:
    """Sessions are inserted at every Start and deleted at every Stop: between vacuums the table
    is mostly dead rows. A generic plan cached while the table was small scanned it whole at
    every batch (a stop's commit then slowed with every dead row); migration 4 keeps the cached
    plans on the index."""
    plans: list[str] = []

    async def job(connection: Any) -> None:
        await connection.execute("LOAD 'auto_explain'")
        for setting in (
            "auto_explain.log_min_duration = 0",
            "auto_explain.log_nested_statements = on",
            "client_min_messages = log",
        ):
            await connection.execute(f"SET {setting}")

        def listen(_connection: Any, message: Any) -> None:
            plans.append(message.message)

        connection.add_log_listener(listen)
        account = await connection.fetchval("SELECT id FROM accounts ORDER BY id LIMIT 1")

        def opened(sid: str) -> OpenSession:
            return OpenSession("nas1", sid, account, "u", "1", "44", 1.0)

        # Calls up: a few hundred, as the statistics last saw the table.
        await connection.execute(
            "INSERT INTO sessions (nas, session_id, account_id, username, calling, called,"
            " started_at) SELECT 'nas1', 'up' || n, $1, 'u', '1', '44', now()"
            " FROM generate_series(1, 500) AS n",
            account,
        )
        await connection.execute("ANALYZE sessions")
        # More batches than the plan cache tries custom plans for (5) before it settles.
        for n in range(8):
            sids = [f"a{n}.{i}" for i in range(10)]
            await _commit(connection, n + 1, [LedgerWrite(open_session=opened(s)) for s in sids])
            closes = [LedgerWrite(close_session=("nas1", s)) for s in sids]
            await _commit(connection, n + 100, closes)
        # Then the table grows (the dead rows of calls that ended), with no ANALYZE in between.
        await connection.execute(
            "INSERT INTO sessions (nas, session_id, account_id, username, calling, called,"
            " started_at) SELECT 'nas2', 'b' || n, $1, 'u', '1', '44', now()"
            " FROM generate_series(1, 20000) AS n",
            account,
        )
        await connection.execute("DELETE FROM sessions WHERE nas = 'nas2'")
        await _commit(connection, 500, [LedgerWrite(open_session=opened("last"))])
        plans.clear()
        await _commit(connection, 501, [LedgerWrite(close_session=("nas1", "last"))])
        connection.remove_log_listener(listen)

    async with Bridge(database_url) as bridge:
        superuser = "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        if not await bridge.run(lambda c: c.fetchval(superuser)):
            pytest.skip("LOAD 'auto_explain' needs a superuser (CCSERVER_TEST_DATABASE_URL)")
        await seed(bridge)
        await bridge.run(job)
        assert await bridge.run(lambda c: c.fetchval("SELECT count(*) FROM sessions")) == 500
    deletes = [plan for plan in plans if "DELETE FROM sessions" in plan]
    assert deletes, plans
    assert "sessions_pkey" in deletes[0], deletes[0]  # an index scan, plain or bitmap
    assert "Seq Scan on sessions" not in deletes[0], deletes[0]
