"""Ledger benchmark: group-commit throughput and latency, and start-up load time.

Runs against a private embedded Postgres in a temporary directory (or CCSERVER_BENCH_DATABASE_URL).
Prints, in one run:
- committed transfers/s through the group-commit writer (closed loop, many concurrent writers),
  beside the reference of one transaction per write measured on the same server;
- commit latency p50/p99 with an open-loop load at half the measured maximum;
- start-up time: fetch + build the engine with --accounts accounts, --rates rates and --sessions
  open calls.
A benchmark prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import shutil
import tempfile
import time
from typing import Any

import trio
from host_cpu import host_shares, host_times

from ccserver.actors.messages import Transfer
from ccserver.ledger.bridge import Bridge
from ccserver.ledger.embedded import EmbeddedPostgres, ensure_database
from ccserver.ledger.loader import build_engine, fetch_snapshot
from ccserver.ledger.migrate import migrate
from ccserver.ledger.store import AccountRow, create_accounts_bulk, create_rate_group
from ccserver.ledger.writer import LedgerWrite, WriteOutcome, Writer
from ccserver.server import freeze_start_up_heap, tune_runtime

TARGET_TRANSFERS_PER_SECOND = 20_000


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def transfers_for(n: int, accounts: list[int]) -> tuple[Transfer, ...]:
    # A call at two levels: the customer pays its reseller, the reseller pays the operator.
    customer = accounts[n % len(accounts)]
    return (
        Transfer(f"c{n}:a", customer, "balance", 2, "revenue", 1_000 + n % 97, "call", f"b/{n}"),
        Transfer(f"c{n}:b", 2, "balance", 1, "revenue", 500 + n % 89, "call", f"b/{n}"),
    )


async def seed_small(bridge: Bridge) -> list[int]:
    rows = [AccountRow(id=2, number="bench-reseller", kind="reseller", parent_id=1)]
    rows += [
        AccountRow(id=10 + i, number=f"bench-{i}", kind="customer", parent_id=2)
        for i in range(1_000)
    ]
    await bridge.run(create_accounts_bulk, rows)
    return [row.id for row in rows[1:]]


async def bench_throughput(bridge: Bridge, accounts: list[int], writes: int) -> float:
    writer = Writer(bridge, batch_max=1000, queue_max=20_000)
    next_n = 0

    async def producer() -> None:
        nonlocal next_n
        while next_n < writes:
            n = next_n
            next_n += 1
            await writer.write(LedgerWrite(transfers=transfers_for(n, accounts)))

    host_before = host_times()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        started = time.perf_counter()
        async with trio.open_nursery() as producers:
            for _ in range(2_000):
                producers.start_soon(producer)
        elapsed = time.perf_counter() - started
        writer.close()
    rate = writes * 2 / elapsed
    print(
        f"group commit: {writes * 2:,} transfers in {elapsed:.2f} s = {rate:,.0f} transfers/s "
        f"in {writer.committed_batches} commits (target >= 20,000/s)"
        f"; host CPU time stolen {host_shares(host_before, host_times())['steal']:.1f}%"
    )
    return rate


async def bench_reference(bridge: Bridge, accounts: list[int], writes: int, base: int) -> float:
    """One transaction per write, 16 concurrent connections: what a naive writer gets."""

    async def one(connection: Any, n: int) -> None:
        async with connection.transaction():
            for t in transfers_for(n, accounts):
                await connection.execute(
                    """INSERT INTO transfers (debit_account_id, credit_account_id, amount_micros,
                           kind, reference, idempotency_key, batch_id)
                       VALUES ($1, $2, $3, $4, $5, $6, 0)""",
                    t.debit_account_id * 4,
                    t.credit_account_id * 4 + 1,
                    t.amount_micros,
                    t.kind,
                    t.reference,
                    "ref" + t.idempotency_key,
                )

    next_n = base

    async def worker() -> None:
        nonlocal next_n
        while next_n < base + writes:
            n = next_n
            next_n += 1
            await bridge.run(one, n)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(16):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - started
    rate = writes * 2 / elapsed
    print(f"reference, one commit per write: {rate:,.0f} transfers/s")
    return rate


async def bench_latency(
    bridge: Bridge, accounts: list[int], rate: float, seconds: float, base: int, what: str
) -> None:
    writer = Writer(bridge, batch_max=1000, queue_max=20_000)
    interval = 2.0 / rate  # writes of two transfers each, at `rate` transfers/s
    latencies: list[float] = []

    refused: list[BaseException] = []

    def committed(due: float, outcome: WriteOutcome | None, error: BaseException | None) -> None:
        # From when the write was due, not when it was sent: a late sender counts against us.
        latencies.append(trio.current_time() - due)
        if error is not None:
            refused.append(error)

    host_before = host_times()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        # Open loop: every millisecond, queue each write that has come due (a timer per write
        # would cost the sender more than the writer it measures). Queued as RADIUS accounting
        # queues them (Writer.enqueue): no task per write, the writer reports each commit.
        started = trio.current_time()
        n = 0
        while (now := trio.current_time()) - started < seconds:
            while (due := started + n * interval) <= now:
                item = LedgerWrite(transfers=transfers_for(base + n, accounts))
                await writer.enqueue(item, functools.partial(committed, due))
                n += 1
            await trio.sleep_until(max(due, now + 0.001))
        writer.close()
    print(
        f"open loop at {rate:,.0f} transfers/s ({what}) for {seconds:.0f} s: commit latency "
        f"p50 = {percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 = {percentile(latencies, 0.99) * 1000:.1f} ms (target p99 <= 20 ms)"
        f"; host CPU time stolen {host_shares(host_before, host_times())['steal']:.1f}%"
        + (f"; {len(refused)} writes refused, first: {refused[0]!r}" if refused else "")
    )


async def seed_large(bridge: Bridge, accounts: int, rates: int, sessions: int) -> None:
    """10 resellers and their customers under one rate group of `rates` random prefixes, and
    `sessions` open calls. The accounts and their ledger accounts are generated by the server
    (INSERT ... SELECT): sending a million rows, and a foreign-key check per row, took minutes."""

    async def go(connection: Any) -> None:
        async with connection.transaction():
            if await connection.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = user"):
                # The rows are valid by construction; a superuser may skip the per-row
                # foreign-key triggers (8 million of them). Others take the checked path.
                await connection.execute("SET LOCAL session_replication_role = replica")
            group = await create_rate_group(connection, "bench big")
            rng = random.Random(7)
            prefixes: set[str] = set()
            while len(prefixes) < rates:
                prefixes.add(str(rng.randrange(10**5, 10**10)))
            await connection.copy_records_to_table(
                "rates",
                columns=["rate_group_id", "prefix", "destination", "per_minute_micros"],
                records=[(group, p, "bench", 10_000 + int(p) % 90_000) for p in prefixes],
            )
            first = 1_000
            await connection.execute(
                """INSERT INTO accounts (id, number, kind, parent_id, rate_group_id, password)
                   SELECT 100 + i, 'r' || (100 + i), 'reseller', 1, $1::bigint, NULL
                   FROM generate_series(0, 9) AS i
                   UNION ALL
                   SELECT $2::bigint + i, (5000000000 + i)::text, 'customer', 100 + i % 10,
                          $1::bigint, 'pw'
                   FROM generate_series(0, $3::bigint - 11) AS i""",
                group,
                first,
                accounts,
            )
            await connection.execute(
                """INSERT INTO ledger_accounts (id, account_id, kind)
                   SELECT a.id * 4 + k, a.id, (ARRAY['balance', 'revenue', 'funding'])[k + 1]
                   FROM accounts AS a, generate_series(0, 2) AS k WHERE a.id <> 1"""
            )
            await connection.execute(
                """INSERT INTO balances (ledger_account_id)
                   SELECT id FROM ledger_accounts WHERE account_id <> 1"""
            )
            some = sorted(prefixes)[:1000]
            await connection.copy_records_to_table(
                "sessions",
                columns=["nas", "session_id", "account_id", "called", "started_at"],
                records=[
                    ("bench-nas", f"s{i}", first + i, some[i % 1000] + "1234", _now())
                    for i in range(sessions)
                ],
            )
        # Statistics, as a database in service has them (autovacuum would gather them soon,
        # perhaps in the middle of the measured load): plans for analyzed tables.
        await connection.execute("ANALYZE")

    await bridge.run(go)


def _now() -> Any:
    import datetime

    return datetime.datetime.now(datetime.UTC)


async def bench_startup(dsn: str, accounts: int, rates: int, sessions: int) -> None:
    async with Bridge(dsn) as bridge:
        started = time.perf_counter()
        await seed_large(bridge, accounts, rates, sessions)
        print(
            f"seeded {accounts:,} accounts, {rates:,} rates, {sessions:,} sessions "
            f"in {time.perf_counter() - started:.1f} s"
        )
    async with Bridge(dsn) as bridge:
        started = time.perf_counter()
        snapshot = await bridge.run(fetch_snapshot, bridge.dsn)
        fetched = time.perf_counter() - started
        engine = build_engine(snapshot)
        total = time.perf_counter() - started
    print(
        f"start-up load: {total:.1f} s ({fetched:.1f} s reading, {total - fetched:.1f} s building)"
        f" for {len(engine.hierarchy):,} accounts and {len(engine.sessions):,} open calls"
        " (target <= 15 s)"
    )


async def run(args: argparse.Namespace) -> None:
    tune_runtime()  # as `ccserver serve` runs
    url = os.environ.get("CCSERVER_BENCH_DATABASE_URL", "")
    directory = tempfile.mkdtemp(prefix="ccserver-ledger-bench-")
    embedded = None
    try:
        if url:
            dsn = big_dsn = url
        else:
            embedded = EmbeddedPostgres(directory)
            await trio.to_thread.run_sync(embedded.start)
            async with Bridge(embedded.admin_dsn()) as admin:
                await admin.run(ensure_database, "bench")
                await admin.run(ensure_database, "bench_startup")
            dsn, big_dsn = embedded.dsn("bench"), embedded.dsn("bench_startup")
        if args.only in ("all", "commit"):
            async with Bridge(dsn, pool_max=8) as bridge:
                await bridge.run(migrate)
                accounts = await seed_small(bridge)
                freeze_start_up_heap()  # as `ccserver serve` does once it has loaded
                rate = await bench_throughput(bridge, accounts, args.writes)
                reference = await bench_reference(bridge, accounts, args.writes // 10, 20_000_000)
                print(f"group commit / reference = {rate / reference:.1f}x")
                for base, load, what in (
                    (30_000_000, rate / 2, "half the measured maximum"),
                    (40_000_000, TARGET_TRANSFERS_PER_SECOND / 2, "half the target rate"),
                ):
                    await bench_latency(bridge, accounts, load, args.latency_seconds, base, what)
        if args.only in ("all", "startup") and args.accounts:
            async with Bridge(big_dsn) as bridge:
                await bridge.run(migrate)
            await bench_startup(big_dsn, args.accounts, args.rates, args.sessions)
    finally:
        if embedded is not None:
            await trio.to_thread.run_sync(embedded.stop)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writes", type=int, default=50_000, help="writes of 2 transfers each")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--rates", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument(
        "--only",
        choices=("all", "commit", "startup"),
        default="all",
        help="run only the group-commit part or only the start-up load",
    )
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
