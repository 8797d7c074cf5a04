"""The group-commit writer: whatever is waiting goes into one transaction, then every waiter wakes.

Callers `await writer.write(item)`, or queue it with `writer.enqueue(item, on_done)` and are
called back; the item joins a bounded queue (a full queue makes callers wait: that is the
backpressure, and the accounting front end then does not read, so the NAS retries). One task
takes every item waiting, up to `batch_max`, commits them in one transaction and only after
COMMIT tells each waiter whether its write was applied now or had been committed before (same
idempotency key). When Postgres is unreachable the batch is kept and retried with backoff;
nothing is dropped and nothing is applied twice.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

import asyncpg
import msgspec
import trio

from ccserver.actors.messages import Cdr, Transfer
from ccserver.ledger.array_literals import bool_array, float_array, int_array, text_array
from ccserver.ledger.bridge import Bridge, Call
from ccserver.observability import (
    COMMIT_STAGES,
    LEDGER_BATCH_SIZE,
    LEDGER_COMMIT_SECONDS,
    LEDGER_COMMIT_STAGE_SECONDS,
    LEDGER_QUEUE_DEPTH,
    LEDGER_RETRIES,
    child,
    get_logger,
)

log = get_logger("ccserver.ledger")

KIND_CODES = {"balance": 0, "revenue": 1, "funding": 2}
BATCH_MAX = 1000
COMMITS_IN_FLIGHT = 2


def ledger_account_id(account_id: int, kind: str) -> int:
    """The derived id of an account's ledger account (see migration 0001)."""
    return account_id * 4 + KIND_CODES[kind]


class OpenSession(msgspec.Struct, frozen=True):
    nas: str
    session_id: str
    account_id: int
    username: str
    calling: str
    called: str
    started_at: float
    authorized: bool = True


class LedgerWrite(msgspec.Struct, frozen=True):
    """One unit of durable work: all of it is committed in the same transaction, or none."""

    transfers: tuple[Transfer, ...] = ()
    cdr: Cdr | None = None
    open_session: OpenSession | None = None
    close_session: tuple[str, str] | None = None  # (nas, session id)


class WriteOutcome(msgspec.Struct, frozen=True):
    # False when every transfer (and the CDR) of the write had been committed before: a replay.
    applied: bool


class LedgerWriteError(RuntimeError):
    """A write Postgres refuses for a reason a retry cannot fix (a bug, or bad data)."""


_TRANSIENT = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # "cannot switch to state ...; another operation is in progress": the server ended the
    # session (shutdown, pg_terminate_backend) while the connection sat in the pool.
    asyncpg.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    # Two batches in flight replaying the same keys in different orders may deadlock; retrying
    # one of them resolves it.
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


def is_transient(error: BaseException) -> bool:
    return isinstance(error, _TRANSIENT)


class _Queued:
    """Writes queued or in flight, over every writer of the process: the queue-depth gauge reads
    it when scraped, so that a write does not pay for updating it."""

    count = 0


_queued = _Queued()
LEDGER_QUEUE_DEPTH.set_function(lambda: _queued.count)


# Called once a write queued with Writer.enqueue is committed (its outcome: on the asyncpg loop,
# in trio's thread, in the turn that read the COMMIT's answer) or refused (the error: from the
# writer's task). Synchronous trio calls are fine there; starting a call of the bridge is not.
OnDone = Callable[["WriteOutcome | None", "BaseException | None"], None]


class _Stamps:
    """When one attempt at a batch's commit passed each stage (time.perf_counter, which every
    thread reads alike): set by the writer's task and, on the asyncpg loop, by `_commit`.
    Observed for the attempt that committed; the earlier ones count in its `queued` time."""

    __slots__ = ("answered", "encoded", "sent", "taken")

    def __init__(self) -> None:
        self.sent = time.perf_counter()  # handed to the bridge
        self.taken = self.encoded = self.answered = self.sent

    def observe(self, oldest_arrival: float, resumed: float) -> None:
        durations = (
            self.sent - oldest_arrival,
            self.taken - self.sent,
            self.encoded - self.taken,
            self.answered - self.encoded,
            resumed - self.answered,
        )
        for stage, seconds in zip(COMMIT_STAGES, durations, strict=True):
            child(LEDGER_COMMIT_STAGE_SECONDS, stage).observe(seconds)


class _Waiter:
    __slots__ = ("arrived", "done", "error", "item", "on_done", "outcome")

    def __init__(self, item: LedgerWrite, on_done: OnDone | None = None) -> None:
        self.item = item
        self.on_done = on_done
        self.done = trio.Event() if on_done is None else None
        self.outcome: WriteOutcome | None = None
        self.error: BaseException | None = None
        self.arrived = time.perf_counter()

    def finish(self) -> None:
        if self.done is not None:
            self.done.set()
            return
        assert self.on_done is not None
        try:
            self.on_done(self.outcome, self.error)
        except Exception:
            # A bug in one caller's continuation must not stop the writer waking the others.
            log.exception("ledger_on_done_failed")


class Writer:
    def __init__(
        self,
        bridge: Bridge,
        *,
        batch_max: int = BATCH_MAX,
        queue_max: int = 10_000,
        retry_seconds_max: float = 5.0,
    ) -> None:
        assert 0 < batch_max <= 100_000
        self.bridge = bridge
        self.batch_max = batch_max
        self.retry_seconds_max = retry_seconds_max
        self._send, self._receive = trio.open_memory_channel[_Waiter](queue_max)
        self.committed_batches = 0

    async def write(self, item: LedgerWrite) -> WriteOutcome:
        """Queue `item` and return once it is committed (or known committed before)."""
        waiter = _Waiter(item)
        await self._queue(waiter)
        # Once queued, the write will be committed even if this caller is cancelled; the caller
        # just stops waiting for the news.
        assert waiter.done is not None
        await waiter.done.wait()
        if waiter.error is not None:
            raise LedgerWriteError(str(waiter.error)) from waiter.error
        assert waiter.outcome is not None
        return waiter.outcome

    async def enqueue(self, item: LedgerWrite, on_done: OnDone) -> None:
        """Queue `item` and return without waiting for its commit (waiting for room only when
        the queue is full): `on_done` is called after COMMIT with the outcome, or with the error
        if the write is refused (see OnDone). It must not block; what it raises is logged. For
        callers that answer from the commit (RADIUS accounting), with no task of their own per
        write."""
        await self._queue(_Waiter(item, on_done))

    async def _queue(self, waiter: _Waiter) -> None:
        try:
            self._send.send_nowait(waiter)  # the usual case: no scheduling round trip here
        except trio.WouldBlock:
            await self._send.send(waiter)  # full: wait for room (backpressure)
        _queued.count += 1

    def close(self) -> None:
        """No more writes: the writer commits what is queued, then `run` returns."""
        self._send.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        receive = self._receive
        # Two commits in flight: while Postgres commits one batch, the next one is gathered and
        # sent. Concurrent batches are safe: a key present in both is applied by one of them
        # (the unique index makes the other wait, then skip it), and balances are updated in
        # ascending id order, so two commits cannot deadlock on them. Once a slot is free and
        # writes wait, they are taken and their statement sent in the same turn of trio: every
        # checkpoint on the way (trio's primitives yield even when they need not wait) would
        # put the batch behind the requests being handled, up to a millisecond each.
        in_flight = trio.CapacityLimiter(COMMITS_IN_FLIGHT)
        async with trio.open_nursery() as nursery:
            while True:
                token = object()
                try:
                    in_flight.acquire_on_behalf_of_nowait(token)
                except trio.WouldBlock:
                    await in_flight.acquire_on_behalf_of(token)
                try:
                    try:
                        first = receive.receive_nowait()
                    except trio.WouldBlock:
                        first = await receive.receive()
                except trio.EndOfChannel:
                    in_flight.release_on_behalf_of(token)
                    break
                batch = [first]
                while len(batch) < self.batch_max:
                    try:
                        batch.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                commit = _BatchCommit(self, batch, _SlotRelease(in_flight, token, len(batch)))
                nursery.start_soon(commit.run, commit.start())


class _SlotRelease:
    """Frees a batch's commit slot once, whichever comes first: its waiters told, or its task
    done (a failed or split batch)."""

    __slots__ = ("count", "in_flight", "token")

    def __init__(self, in_flight: trio.CapacityLimiter, token: object, count: int) -> None:
        self.in_flight: trio.CapacityLimiter | None = in_flight
        self.token = token
        self.count = count

    def __call__(self) -> None:
        if self.in_flight is not None:
            self.in_flight.release_on_behalf_of(self.token)
            self.in_flight = None
            _queued.count -= self.count


class _BatchCommit:
    """One batch's commit: attempts (retried while Postgres is unreachable), then its waiters
    told. Split into single writes when Postgres refuses the batch for a reason other than its
    reachability, so that one bad write does not sink the others."""

    def __init__(
        self,
        writer: Writer,
        batch: list[_Waiter],
        release: _SlotRelease | None = None,
        batch_id: int = 0,
    ) -> None:
        self.writer = writer
        self.batch = batch
        self.release = release
        # Kept when a batch is split: an earlier attempt may have committed it.
        self.batch_id = batch_id or random.getrandbits(62) + 1
        self.told = False
        self.stamps = _Stamps()

    def _attempt_args(self) -> tuple[Any, ...]:
        self.stamps = _Stamps()
        return (_commit, self.batch_id, [w.item for w in self.batch], self.stamps, self.complete)

    def start(self) -> Call[list[bool]] | None:
        """The first attempt, sent now (None when the bridge is at its bound: `run` sends it)."""
        try:
            return self.writer.bridge.start(*self._attempt_args(), keep=True)
        except trio.WouldBlock:
            return None

    def complete(self, outcomes: list[bool]) -> None:
        # Called by `_commit` on the asyncpg loop, in the turn of trio that read Postgres's
        # answer: the waiters are told (Accounting-Responses sent) and the commit slot freed
        # then, not one or two turns later when this task and the writer's are resumed, each
        # behind whatever requests trio is handling.
        self.told = True
        now = time.perf_counter()
        batch = self.batch
        self.writer.committed_batches += 1
        LEDGER_BATCH_SIZE.observe(len(batch))
        self.stamps.observe(batch[0].arrived, now)
        for waiter, applied in zip(batch, outcomes, strict=True):
            waiter.outcome = WriteOutcome(applied)
            LEDGER_COMMIT_SECONDS.observe(now - waiter.arrived)
            waiter.finish()
        if self.release is not None:
            self.release()

    async def run(self, first: Call[list[bool]] | None = None) -> None:
        try:
            await self._attempts(first)
        finally:
            if self.release is not None:
                self.release()

    async def _attempts(self, first: Call[list[bool]] | None) -> None:
        writer = self.writer
        delay = 0.05
        while True:
            try:
                if first is not None:
                    call, first = first, None
                    await call.result()
                else:
                    await writer.bridge.run(*self._attempt_args(), keep=True)
            except Exception as error:
                if self.told:
                    raise  # committed and told: what failed after that is a bug, not a retry
                if is_transient(error):
                    LEDGER_RETRIES.inc()
                    log.warning(
                        "ledger_retry", error=repr(error), batch=len(self.batch), delay=delay
                    )
                    await trio.sleep(delay)
                    delay = min(delay * 2, writer.retry_seconds_max)
                    continue
                if len(self.batch) > 1:
                    # One bad write must not sink the others: commit them one by one.
                    for waiter in self.batch:
                        await _BatchCommit(writer, [waiter], batch_id=self.batch_id).run()
                    return
                log.error("ledger_write_refused", error=repr(error))
                self.batch[0].error = error
                self.batch[0].finish()
                return
            assert self.told
            return


# ccserver_commit's parameters after the batch id (as migration 0001 declared them), in order:
# each is a column of the batch, sent as one array literal (ccserver.ledger.array_literals) and
# cast to its type in the statement.
_COMMIT_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (name, sql_type)
    for names, sql_type in (
        ("t_item", "integer[]"),
        ("t_debit t_credit t_amount", "bigint[]"),
        ("t_kind t_reference t_key", "text[]"),
        ("c_item", "integer[]"),
        ("c_nas c_session", "text[]"),
        ("c_account", "bigint[]"),
        ("c_levels c_calling c_called", "text[]"),
        ("c_start c_stop", "float8[]"),
        ("c_duration c_billable", "integer[]"),
        ("c_cost", "bigint[]"),
        ("c_levels_json c_cause", "text[]"),
        ("c_authorized", "boolean[]"),
        ("o_nas o_session", "text[]"),
        ("o_account", "bigint[]"),
        ("o_username o_calling o_called", "text[]"),
        ("o_started", "float8[]"),
        ("o_authorized", "boolean[]"),
        ("x_nas x_session", "text[]"),
    )
    for name in names.split()
)
_LITERAL_OF: dict[str, Callable[[Any], str]] = {
    "integer[]": int_array,
    "bigint[]": int_array,
    "text[]": text_array,
    "float8[]": float_array,
    "boolean[]": bool_array,
}
# The columns that are one field of each CDR or opened session, as (column, field).
_CDR_FIELDS = (
    ("c_nas", "nas"),
    ("c_session", "session_id"),
    ("c_account", "account_id"),
    ("c_calling", "calling"),
    ("c_called", "called"),
    ("c_start", "start_time"),
    ("c_stop", "stop_time"),
    ("c_duration", "duration_seconds"),
    ("c_billable", "billable_seconds"),
    ("c_cost", "cost_micros"),
    ("c_cause", "disconnect_cause"),
    ("c_authorized", "authorized"),
)
_OPENED_FIELDS = (
    ("o_nas", "nas"),
    ("o_session", "session_id"),
    ("o_account", "account_id"),
    ("o_username", "username"),
    ("o_calling", "calling"),
    ("o_called", "called"),
    ("o_started", "started_at"),
    ("o_authorized", "authorized"),
)
# A CDR's levels as the JSON of its `levels` column: msgspec encodes the structs directly, 16x
# faster than json.dumps of their builtins (in the thread that handles every request).
_LEVELS_JSON = msgspec.json.Encoder()
# Named arguments: each literal goes to the parameter of its name.
_COMMIT_SQL = "SELECT ccserver_commit($1::bigint, {})".format(
    ", ".join(
        f"{name} => ${number}::text::{sql_type}"
        for number, (name, sql_type) in enumerate(_COMMIT_COLUMNS, start=2)
    )
)


async def _commit(
    connection: Any,
    batch_id: int,
    items: Sequence[LedgerWrite],
    stamps: _Stamps | None = None,
    complete: Callable[[list[bool]], None] | None = None,
) -> list[bool]:
    """Apply a batch in one transaction; return, per item, whether it was applied now, after
    passing the same list to `complete` (called on the asyncpg loop, once COMMIT is answered).

    One statement, one round trip: `ccserver_commit` (migration 0002) inserts the transfers
    (ON CONFLICT DO NOTHING), moves the balances, inserts the CDRs, opens and closes sessions,
    and names the writes something was applied for.
    """
    if stamps is not None:
        stamps.taken = time.perf_counter()
    # A key seen twice in one batch: the first occurrence is the write, the rest are replays.
    seen_keys: set[str] = set()
    t_item: list[int] = []
    t_debit: list[int] = []
    t_credit: list[int] = []
    t_amount: list[int] = []
    t_kind: list[str] = []
    t_reference: list[str] = []
    t_key: list[str] = []
    c_item: list[int] = []
    cdrs: list[Cdr] = []
    opened: list[OpenSession] = []
    closed: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        for transfer in item.transfers:
            key = transfer.idempotency_key
            if key not in seen_keys:
                seen_keys.add(key)
                t_item.append(index)
                t_debit.append(ledger_account_id(transfer.debit_account_id, transfer.debit_kind))
                t_credit.append(ledger_account_id(transfer.credit_account_id, transfer.credit_kind))
                t_amount.append(transfer.amount_micros)
                t_kind.append(transfer.kind)
                t_reference.append(transfer.reference)
                t_key.append(key)
        if item.cdr is not None:
            c_item.append(index)
            cdrs.append(item.cdr)
        if item.open_session is not None:
            opened.append(item.open_session)
        if item.close_session is not None:
            closed.append(item.close_session)
    columns: dict[str, list[Any]] = {
        "t_item": t_item,
        "t_debit": t_debit,
        "t_credit": t_credit,
        "t_amount": t_amount,
        "t_kind": t_kind,
        "t_reference": t_reference,
        "t_key": t_key,
        "c_item": c_item,
        "c_levels": [",".join(str(level.account_id) for level in c.levels) for c in cdrs],
        "c_levels_json": [_LEVELS_JSON.encode(c.levels).decode() for c in cdrs],
        "x_nas": [nas for nas, _ in closed],
        "x_session": [sid for _, sid in closed],
    }
    for column, field in _CDR_FIELDS:
        columns[column] = list(map(attrgetter(field), cdrs))
    for column, field in _OPENED_FIELDS:
        columns[column] = list(map(attrgetter(field), opened))
    assert len(columns) == len(_COMMIT_COLUMNS)
    literals = [_LITERAL_OF[sql_type](columns[name]) for name, sql_type in _COMMIT_COLUMNS]
    if stamps is not None:
        stamps.encoded = time.perf_counter()
    applied_items = await connection.fetchval(_COMMIT_SQL, batch_id, *literals)
    if stamps is not None:
        stamps.answered = time.perf_counter()
    applied = [not item.transfers for item in items]
    for index in applied_items:
        applied[index] = True
    for index, item in enumerate(items):
        session_only = not item.transfers and item.cdr is None
        if session_only and (item.open_session is not None or item.close_session is not None):
            applied[index] = True
    if complete is not None:
        complete(applied)
    return applied


async def commit_now(bridge: Bridge, items: Sequence[LedgerWrite]) -> list[bool]:
    """Commit writes in one transaction without the queue (seeding before the writer runs)."""
    return await bridge.run(_commit, random.getrandbits(62) + 1, list(items), reset=False)
