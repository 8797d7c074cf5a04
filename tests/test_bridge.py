"""The asyncpg bridge: asyncpg on an asyncio loop stepped by trio, in trio's thread, against a
real Postgres."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import asyncpg
import pytest
import trio

from ccserver.ledger.bridge import Bridge
from ccserver.ledger.writer import _TRANSIENT


async def test_calls_run_in_trios_thread_and_start_no_thread(database_url: str) -> None:
    threads_before = threading.active_count()
    async with Bridge(database_url) as bridge:

        async def where(connection: Any) -> tuple[int, int]:
            return threading.get_ident(), await connection.fetchval("SELECT 41 + 1")

        ident, answer = await bridge.run(where)
        assert answer == 42
        assert ident == threading.get_ident()
        assert threading.active_count() == threads_before


async def test_timers_and_wakeups_from_other_threads_reach_the_loop(database_url: str) -> None:
    async with Bridge(database_url) as bridge:

        async def wait_for_both(connection: Any) -> str:
            await asyncio.sleep(0.05)  # a timer of the loop: trio wakes it at its deadline
            loop = asyncio.get_running_loop()
            future: asyncio.Future[str] = loop.create_future()
            # The loop's self-pipe: a write from another thread makes its selector readable.
            threading.Timer(0.05, loop.call_soon_threadsafe, (future.set_result, "woken")).start()
            return await future

        with trio.fail_after(10):
            assert await bridge.run(wait_for_both) == "woken"


async def test_errors_come_back_as_themselves(database_url: str) -> None:
    async with Bridge(database_url) as bridge:
        with pytest.raises(asyncpg.UndefinedTableError):
            await bridge.run(lambda c: c.fetch("SELECT * FROM no_such_table"))
        assert await bridge.run(lambda c: c.fetchval("SELECT 1")) == 1


async def sleeps_running(bridge: Bridge) -> int:
    return await bridge.run(
        lambda c: c.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'"
        )
    )


async def test_cancelling_the_trio_side_cancels_the_query(database_url: str) -> None:
    async with Bridge(database_url, pool_max=1) as bridge:
        with trio.fail_after(20):
            with trio.move_on_after(0.3) as waited:
                await bridge.run(lambda c: c.execute("SELECT pg_sleep(30)"))
            assert waited.cancelled_caught
            # The only connection is back in the pool, usable, with nothing left running.
            assert await sleeps_running(bridge) == 0


async def test_concurrent_calls_share_the_pool(database_url: str) -> None:
    async with Bridge(database_url, pool_max=4) as bridge:
        answers: list[int] = []

        async def one(n: int) -> None:
            answers.append(await bridge.run(lambda c: c.fetchval("SELECT $1::int", n)))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for n in range(40):
                    nursery.start_soon(one, n)
        assert sorted(answers) == list(range(40))


async def test_start_sends_the_query_before_returning(database_url: str) -> None:
    async with Bridge(database_url, inflight_max=1) as bridge:
        assert await bridge.run(lambda c: c.fetchval("SELECT 1")) == 1  # the pool is up
        taken_up: list[str] = []

        async def fn(connection: Any) -> int:
            taken_up.append("query sent")
            return await connection.fetchval("SELECT 6 * 7")

        call = bridge.start(fn)
        # No checkpoint yet: the loop took the call up within start().
        assert taken_up == ["query sent"]
        with pytest.raises(trio.WouldBlock):
            bridge.start(fn)  # the one slot is taken, and nothing was started for it
        assert taken_up == ["query sent"]
        assert await call.result() == 42
        assert await bridge.run(fn) == 42  # the slot is back


async def test_a_started_call_cancelled_while_awaited_cancels_the_query(
    database_url: str,
) -> None:
    async with Bridge(database_url, pool_max=1, inflight_max=1) as bridge:
        with trio.fail_after(20):
            call = bridge.start(lambda c: c.execute("SELECT pg_sleep(30)"))
            with trio.move_on_after(0.3) as waited:
                await call.result()
            assert waited.cancelled_caught
            # The slot and the only connection are back, nothing left running.
            assert await sleeps_running(bridge) == 0


async def test_kept_connections_skip_the_pool_and_a_broken_one_is_replaced(
    database_url: str,
) -> None:
    pid = "SELECT pg_backend_pid()"
    bridge = Bridge(database_url, pool_max=2)
    await bridge.open()
    held: list[int] = []

    async def hold(connection: Any) -> None:
        held.append(await connection.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.2)"))

    try:
        with trio.fail_after(20):
            kept = await bridge.run(lambda c: c.fetchval(pid), keep=True)
            # Out of the pool: a plain call gets the pool's other connection, while the next
            # kept call gets the kept one again.
            assert await bridge.run(lambda c: c.fetchval(pid)) != kept
            assert await bridge.run(lambda c: c.fetchval(pid), keep=True) == kept
            # Its backend goes away. The next kept call either fails (as the ledger writer's
            # transient errors do), if the loop had not yet seen the connection close, or runs
            # on another connection; either way the closed one is not kept.
            await bridge.run(lambda c: c.execute("SELECT pg_terminate_backend($1)", kept))
            try:
                first: int | None = await bridge.run(lambda c: c.fetchval(pid), keep=True)
            except _TRANSIENT:
                first = None
            replacement = await bridge.run(lambda c: c.fetchval(pid), keep=True)
            assert replacement != kept
            assert first in (None, replacement)
            assert await bridge.run(lambda c: c.fetchval(pid), keep=True) == replacement
            # A kept connection seen closed while kept is not used: the call gets another.
            await bridge.run(lambda c: c.execute("SELECT pg_terminate_backend($1)", replacement))
            await trio.sleep(0.2)  # the loop reads the end of that connection meanwhile
            fresh = await bridge.run(lambda c: c.fetchval(pid), keep=True)
            assert fresh not in (kept, replacement)
            # Two at once: two kept connections, both used again afterwards.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: bridge.run(hold, keep=True))
                nursery.start_soon(lambda: bridge.run(hold, keep=True))
            assert len(set(held)) == 2
            for _ in range(4):
                await bridge.run(hold, keep=True)
            assert len(set(held)) == 2
    finally:
        await bridge.close()
    # Closing gave the kept connections back to the pool, which closed them.
    async with Bridge(database_url) as other:
        with trio.fail_after(20):
            query = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])"
            while await other.run(lambda c: c.fetchval(query, sorted(set(held)))):
                await trio.sleep(0.05)


async def test_a_call_wakes_the_driver_only_for_a_sooner_timer(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Bridge(database_url) as bridge:
        with trio.fail_after(20):
            await bridge.run(lambda c: c.fetchval("SELECT 1"), keep=True)
            await trio.sleep(0.05)  # the driver is waiting on the loop's selector again
            loop = bridge._loop
            assert loop is not None
            wakes: list[bool] = []
            wake = loop._wake
            monkeypatch.setattr(loop, "_wake", lambda: (wakes.append(True), wake()))
            for _ in range(20):
                await bridge.run(lambda c: c.fetchval("SELECT 1"), keep=True)
            # Nothing the driver waits for changed: it was not woken (each wake costs a
            # cancelled scope), yet every answer came back through it.
            assert wakes == []

            async def sleep_then_answer(connection: Any) -> int:
                await asyncio.sleep(0.05)  # a timer sooner than any the driver waits for
                return 7

            assert await bridge.run(sleep_then_answer) == 7
            assert wakes
