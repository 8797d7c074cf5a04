"""asyncpg on an asyncio loop that a trio task steps, in trio's own thread; trio awaits it here.

asyncpg needs asyncio and the server runs on trio. The bridge owns an asyncio loop that never
runs by itself (`_SteppedLoop`): a trio task runs it whenever its selector is readable (a
Postgres socket has data) or its next timer is due, and the task that hands it a call runs it at
once. So asyncpg's callbacks run in the thread that runs everything else: a call costs no
hand-over between threads, and the commit path never waits for the GIL behind the engine.
`await bridge.run(fn, *args)` runs `fn(connection, *args)` on that loop and returns when it is
done; cancelling the trio task cancels the asyncpg call. `bridge.start(fn, *args)` does the same
without waiting: the loop takes the call up before it returns (no checkpoint on the way), and
`await call.result()` waits for it. At most `inflight_max` calls are in
flight: the rest wait on a trio semaphore (the bound is the backpressure).

A connection goes back to the pool reset (advisory locks released, LISTENs and settings undone:
one more round trip) unless the call says it leaves no session state behind (`reset=False`); an
open transaction is rolled back either way. A call with `keep=True` (the ledger writer's
single-statement commits) keeps its connection out of the pool for the next such call.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import selectors
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

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
        self._loop: _SteppedLoop | None = None
        self._pool: asyncpg.Pool | None = None
        self._nursery_manager: Any = None
        self._slots = trio.Semaphore(inflight_max)
        # Connections kept out of the pool between `keep=True` calls (see `start`).
        self._kept: list[asyncpg.Connection] = []

    # -- life cycle (called from trio) ----------------------------------------------------------

    async def open(self) -> None:
        """Start the loop's driver; `close` must be called from the same trio task."""
        assert self._loop is None
        loop = _SteppedLoop()
        manager = trio.open_nursery()
        nursery = await manager.__aenter__()
        nursery.start_soon(loop.drive)
        self._loop = loop
        self._nursery_manager = manager

    async def close(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with trio.CancelScope(shield=True):
            if self._pool is not None:
                pool = self._pool
                self._pool = None
                # Back to the pool first: it waits for every connection out of it to close.
                kept, self._kept = self._kept, []
                await self._submit(lambda: _release_all(pool, kept))
                try:
                    await self._submit(lambda: asyncio.wait_for(pool.close(), 5))
                except Exception:
                    await self._submit(lambda: _terminate_pool(pool))
            await self._submit(_shutdown_asyncgens)
        loop.stop()
        manager, self._nursery_manager = self._nursery_manager, None
        await manager.__aexit__(None, None, None)  # the driver returns at once
        loop.close()
        self._loop = None

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

    async def run(
        self, fn: Callable[..., Awaitable[T]], *args: Any, reset: bool = True, keep: bool = False
    ) -> T:
        """Run `fn(connection, *args)` on a pooled connection on the asyncpg loop.

        `reset=False`: `fn` leaves no session state (locks, LISTEN, SET, cursors) behind, so the
        connection skips the reset round trip on its way back to the pool.

        `keep=True` (implies `reset=False`): the connection is kept out of the pool for the next
        `keep=True` call instead of going back, which saves asyncpg's acquire and release (about
        50 us of CPU a call, in the thread that handles every request) on a hot path that runs
        one statement at a time, such as the ledger writer's commits. As many connections are
        kept as such calls ever ran at once; one that fails goes back to the pool (which closes
        it if it is broken) and the next call acquires another.
        """
        try:
            # A free slot is taken without a checkpoint: the call reaches the loop (and its query
            # Postgres) now, not after every other task has had a turn. Waiting for the answer
            # is the checkpoint.
            call = self.start(fn, *args, reset=reset, keep=keep)
        except trio.WouldBlock:
            await self._slots.acquire()
            call = self._start_holding_slot(fn, args, reset, keep)
        return await call.result()

    def start(
        self, fn: Callable[..., Awaitable[T]], *args: Any, reset: bool = True, keep: bool = False
    ) -> Call[T]:
        """Start `run`'s work now, from a trio task, without waiting for it: `fn` is taken up by
        the loop (its first query sent) before this returns, and `await call.result()` (which
        must follow, from any trio task) waits for the outcome. Raises trio.WouldBlock, having
        started nothing, when `inflight_max` calls are in flight."""
        self._slots.acquire_nowait()
        return self._start_holding_slot(fn, args, reset, keep)

    def _start_holding_slot(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], reset: bool, keep: bool
    ) -> Call[T]:
        async def on_loop() -> T:
            # Read by the pool's reset hook, which runs in this task's context.
            _SKIP_RESET.set(not reset or keep)
            pool = await self._ensure_pool()
            connection = await self._kept_connection(pool) if keep else None
            if connection is None:
                connection = await pool.acquire()
            try:
                result = await fn(connection, *args)
            except BaseException:
                with contextlib.suppress(Exception):
                    await pool.release(connection)
                raise
            if keep and self._pool is pool:
                self._kept.append(connection)
                return result
            # `fn` succeeded (its transaction, if any, is committed): a connection that breaks on
            # its way back to the pool (the server shutting down just after COMMIT) must not turn
            # that success into an error. asyncpg terminates it; the next acquire reconnects.
            with contextlib.suppress(Exception):
                await pool.release(connection)
            return result

        try:
            return self._start(on_loop, self._slots.release)
        except BaseException:
            self._slots.release()
            raise

    async def _kept_connection(self, pool: asyncpg.Pool) -> asyncpg.Connection | None:
        """A kept connection still open, or None. One closed while kept (its server went away
        and the loop saw it) is dropped: asyncpg has handed it back to the pool already (its
        methods raise InterfaceError then), or the pool gets it back now; either way the pool
        reconnects it when it is next acquired, as it does its own."""
        kept = self._kept
        while kept:
            connection = kept.pop()
            try:
                if not connection.is_closed():
                    return connection
            except asyncpg.InterfaceError:
                continue
            await _release_all(pool, [connection])
        return None

    def _start(
        self, make: Callable[[], Awaitable[T]], finished: Callable[[], None] | None = None
    ) -> Call[T]:
        loop = self._loop
        assert loop is not None, "bridge is not open"
        done = trio.Event()

        async def wrapped() -> T:
            try:
                return await make()
            finally:
                # In trio's thread, inside the driver's step of the loop: the waiter wakes at
                # trio's next scheduling round, without a callback of the loop in between.
                done.set()

        return Call(loop, loop.start(wrapped()), done, finished)

    async def _submit(self, make: Callable[[], Awaitable[T]]) -> T:
        return await self._start(make).result()


class Call(Generic[T]):
    """A call of the bridge under way (Bridge.start): `await result()` once, from a trio task."""

    def __init__(
        self,
        loop: _SteppedLoop,
        task: asyncio.Task[T],
        done: trio.Event,
        finished: Callable[[], None] | None,
    ) -> None:
        self._loop = loop
        self._task = task
        self._done = done
        self._finished = finished

    async def result(self) -> T:
        try:
            try:
                await self._done.wait()
            except BaseException:
                # Cancelled on the trio side: cancel the asyncpg call too, and wait for it to
                # stop so that its connection goes back to the pool in a known state.
                self._loop.cancel(self._task)
                with trio.CancelScope(shield=True):
                    await self._done.wait()
                raise
            return self._task.result()
        finally:
            if self._finished is not None:
                self._finished()


class _SteppedLoop:
    """An asyncio selector loop run a few iterations at a time, by trio tasks.

    The loop is woken three ways: its selector's descriptor (an epoll descriptor: readable when
    one of the loop's sockets is ready, or its self-pipe, written by `call_soon_threadsafe`),
    polled by `drive`; its earliest timer, as `drive`'s deadline; and `start`, which a trio task
    calls to hand it a coroutine, and which runs the loop at once in that task (the coroutine's
    query is sent before `start` returns). Each time, the loop runs until nothing is ready or for
    STEPS_MAX iterations or RUN_SECONDS_MAX: a reply from Postgres is read, its waiting coroutine
    resumed and the result handed back in one turn of trio, not in one turn per iteration; and a
    large result (rows arrive 256 KiB at a time, each parsed in one iteration) does not hold up
    the requests trio has waiting for longer than that."""

    STEPS_MAX = 16
    RUN_SECONDS_MAX = 0.001

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self.loop = asyncio.SelectorEventLoop(self._selector)
        self._waiting: trio.CancelScope | None = None
        # The loop time of the timer `drive` waits for; read only while `_waiting` is set.
        self._waiting_until = math.inf
        self._stopping = False

    def start(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = self.loop.create_task(coroutine)
        self._run_and_wake()
        return task

    def cancel(self, task: asyncio.Task[Any]) -> None:
        task.cancel()
        self._run_and_wake()

    def stop(self) -> None:
        self._stopping = True
        self._wake()

    def close(self) -> None:
        self.loop.close()

    def _wake(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()

    def _run_and_wake(self) -> None:
        """Run the loop now, from a trio task; wake `drive` only if what it waits for has
        changed: callbacks still ready, or a timer due before the one it waits for. (Waking it
        for nothing, at each call, costs a cancelled scope and a new one: 20-30 us.) New sockets
        need no wake: they are in the selector, whose descriptor `drive` waits on."""
        more = self._run()
        scheduled = self.loop._scheduled  # type: ignore[attr-defined]
        if more or (scheduled and scheduled[0].when() < self._waiting_until):
            self._wake()

    def _run(self) -> bool:
        """Iterate until nothing is ready, at most STEPS_MAX times; True if more is ready.

        Each iteration: the callbacks ready at its start, then one poll without waiting (the
        stop scheduled first ends `run_forever` after it). Called only from trio tasks, so never
        while the loop runs already: what runs on the loop runs inside a trio task and may call
        trio's synchronous functions (the ledger writer tells its waiters there), but never
        starts a call of the bridge."""
        loop = self.loop
        # The loop's queue of ready callbacks, read only: asyncio has no public view of it.
        ready = loop._ready  # type: ignore[attr-defined]
        until = time.perf_counter() + self.RUN_SECONDS_MAX
        for _ in range(self.STEPS_MAX):
            loop.call_soon(loop.stop)
            loop.run_forever()
            if not ready:
                return False
            if time.perf_counter() > until:
                break
        return True

    async def drive(self) -> None:
        loop = self.loop
        fileno = self._selector.fileno()
        while not self._stopping:
            if self._run():
                await trio.lowlevel.checkpoint()  # more to do: after the others have had a turn
                continue
            # The loop's timers, read only (cancelled ones included: waking early for one costs
            # an empty iteration).
            scheduled = loop._scheduled  # type: ignore[attr-defined]
            deadline = until = math.inf
            if scheduled:
                until = scheduled[0].when()
                deadline = trio.current_time() + max(0.0, until - loop.time())
            with trio.CancelScope(deadline=deadline) as waiting:
                self._waiting = waiting
                self._waiting_until = until
                await trio.lowlevel.wait_readable(fileno)
            self._waiting = None


async def _shutdown_asyncgens() -> None:
    await asyncio.get_running_loop().shutdown_asyncgens()


_SKIP_RESET: contextvars.ContextVar[bool] = contextvars.ContextVar("skip_reset", default=False)


async def _reset_session(connection: asyncpg.Connection) -> None:
    """The pool's reset hook (after asyncpg rolled back any open transaction): the default
    reset query, unless the call that used the connection said there is nothing to reset."""
    if not _SKIP_RESET.get():
        query = connection.get_reset_query()
        if query:
            await connection.execute(query)


async def _release_all(pool: asyncpg.Pool, connections: list[asyncpg.Connection]) -> None:
    for connection in connections:
        with contextlib.suppress(Exception):
            await pool.release(connection)


async def _terminate_pool(pool: asyncpg.Pool) -> None:
    pool.terminate()
