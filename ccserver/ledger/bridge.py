"""asyncpg on its own asyncio loop in one dedicated thread; trio awaits it through this bridge.

asyncpg needs asyncio and the server runs on trio. The bridge owns a thread running an asyncio
loop and an asyncpg pool. `await bridge.run(fn, *args)` runs `fn(connection, *args)` there and
wakes the trio task when it is done; cancelling the trio task cancels the asyncpg call. At most
`inflight_max` calls are in flight: the rest wait on a trio semaphore (the bound is the
backpressure).

A connection goes back to the pool reset (advisory locks released, LISTENs and settings undone:
one more round trip) unless the call says it leaves no session state behind (`reset=False`, the
ledger writer's single-statement commit); an open transaction is rolled back either way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import trio

T = TypeVar("T")

INFLIGHT_MAX = 64


class Bridge:
    def __init__(
        self,
        dsn: str,
        *,
        pool_min: int = 1,
        pool_max: int = 4,
        inflight_max: int = INFLIGHT_MAX,
        connect_timeout_seconds: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self._pool_min = pool_min
        self._pool_max = pool_max
        self._connect_timeout = connect_timeout_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: asyncpg.Pool | None = None
        self._thread: threading.Thread | None = None
        self._slots = trio.Semaphore(inflight_max)

    # -- life cycle (called from trio) ----------------------------------------------------------

    async def open(self) -> None:
        assert self._thread is None
        ready = threading.Event()

        def run_loop() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run_loop, name="asyncpg-bridge", daemon=True)
        self._thread.start()
        await trio.to_thread.run_sync(ready.wait)

    async def close(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if self._pool is not None:
            pool = self._pool
            self._pool = None
            with trio.CancelScope(shield=True):
                try:
                    await self._submit(lambda: asyncio.wait_for(pool.close(), 5))
                except Exception:
                    await self._submit(lambda: _terminate_pool(pool))
        loop.call_soon_threadsafe(loop.stop)
        thread = self._thread
        assert thread is not None
        await trio.to_thread.run_sync(thread.join)
        self._loop = None
        self._thread = None

    async def __aenter__(self) -> Bridge:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- calls ----------------------------------------------------------------------------------

    async def _ensure_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._pool_min,
                max_size=self._pool_max,
                timeout=self._connect_timeout,
                command_timeout=None,
                reset=_reset_session,
            )
        return self._pool

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any, reset: bool = True) -> T:
        """Run `fn(connection, *args)` on a pooled connection on the asyncpg loop.

        `reset=False`: `fn` leaves no session state (locks, LISTEN, SET, cursors) behind, so the
        connection skips the reset round trip on its way back to the pool.
        """

        async def on_loop() -> T:
            # Read by the pool's reset hook, which runs in this task's context.
            _SKIP_RESET.set(not reset)
            pool = await self._ensure_pool()
            connection = await pool.acquire()
            try:
                result = await fn(connection, *args)
            except BaseException:
                with contextlib.suppress(Exception):
                    await pool.release(connection)
                raise
            # `fn` succeeded (its transaction, if any, is committed): a connection that breaks on
            # its way back to the pool (the server shutting down just after COMMIT) must not turn
            # that success into an error. asyncpg terminates it; the next acquire reconnects.
            with contextlib.suppress(Exception):
                await pool.release(connection)
            return result

        async with self._slots:
            return await self._submit(on_loop)

    async def _submit(self, make: Callable[[], Awaitable[T]]) -> T:
        loop = self._loop
        assert loop is not None, "bridge is not open"
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        async def wrapped() -> T:
            return await make()

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(wrapped(), loop)
        future.add_done_callback(lambda _: _wake(token, done))
        try:
            await done.wait()
        except BaseException:
            # Cancelled on the trio side: cancel the asyncpg call too, and wait for it to stop
            # so that its connection goes back to the pool in a known state.
            future.cancel()
            with trio.CancelScope(shield=True):
                await done.wait()
            raise
        return future.result()


def _wake(token: trio.lowlevel.TrioToken, done: trio.Event) -> None:
    with contextlib.suppress(trio.RunFinishedError):
        token.run_sync_soon(done.set)


_SKIP_RESET: contextvars.ContextVar[bool] = contextvars.ContextVar("skip_reset", default=False)


async def _reset_session(connection: asyncpg.Connection) -> None:
    """The pool's reset hook (after asyncpg rolled back any open transaction): the default
    reset query, unless the call that used the connection said there is nothing to reset."""
    if not _SKIP_RESET.get():
        query = connection.get_reset_query()
        if query:
            await connection.execute(query)


async def _terminate_pool(pool: asyncpg.Pool) -> None:
    pool.terminate()
