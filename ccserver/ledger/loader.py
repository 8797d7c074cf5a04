"""Start-up load: accounts, hierarchy, tariffs, balances and open calls, from Postgres into the
engine, before any front end opens. Calls found open are restored with their slots and exposure,
so a restart loses no call and frees no slot early.

Written for a million accounts and a million rates, which take seconds, not minutes:
- the tables are read as of one instant on READ_CONNECTIONS connections at once, each importing
  the first one's snapshot: the server's backends scan and send while this process decodes;
- rows are read by position, with as few values per row as can be (asyncpg makes an object of
  each), and the balances as two arrays;
- the engine's objects are built by their bulk paths: `Account.restored`,
  `Hierarchy.add_restored`, a prefix index filled by one update;
- the cycle collector is paused meanwhile: the load only allocates, and each full collection it
  used to trigger walked every object built so far, to find nothing to free.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import time
from collections.abc import Callable, Iterator
from itertools import groupby
from operator import itemgetter
from typing import Any

import asyncpg
import msgspec

from ccserver.actors.account import Account, AccountKind, Billing, CliPolicy, Status
from ccserver.actors.engine import Engine
from ccserver.actors.hierarchy import Hierarchy
from ccserver.observability import get_logger
from ccserver.rating.prefix_index import PrefixIndex
from ccserver.rating.tariff import Rate, RateGroup, RateSpace

# Connections a parallel read uses: the one given and three it opens with the DSN for the read
# only, reading the two halves of the accounts, the rates, and the rest.
READ_CONNECTIONS = 4
CONNECT_TIMEOUT_SECONDS = 5.0
log = get_logger("ccserver.ledger.loader")
_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f]+(-[0-9A-Fa-f]+)*\Z")

# Column positions of _ACCOUNTS_SQL: rows are read by position (by name costs a lookup each).
_ID, _NUMBER, _PARENT, _ENUMS, _CREDIT_LIMIT, _GROUP, _MAX_CONCURRENT, _CPS = range(8)
_EXPIRES_AT, _PASSWORD, _PIN, _SIP, _TECH_PREFIX, _IP_ADDRESSES, _CALLER_IDS = range(8, 15)
_BLOCKED = 15

# Per row, asyncpg builds an object for every value but NULL; the fewer the cheaper. So the enum
# columns and the currency come as one text, which few accounts differ in and which is converted
# once per distinct value (see _AccountEnums); empty arrays come as NULL.
_ACCOUNTS_SQL = """
    SELECT id, number, parent_id,
           kind || '/' || status || '/' || billing || '/' || cli_policy || '/' || currency,
           credit_limit_micros, rate_group_id, max_concurrent, cps,
           extract(epoch from expires_at)::float8, password, pin, sip_username, tech_prefix,
           nullif(ip_addresses, '{}'), nullif(caller_ids, '{}'), nullif(blocked_prefixes, '{}')
    FROM accounts WHERE status <> 'deleted'"""
# The accounts in two halves, for two connections: the rows in the pages before a page given as
# a tid "(page,0)", and the rows from it on. One after the other, they are the rows in the order
# one scan of the table gives them.
_ACCOUNTS_HEAD_SQL = _ACCOUNTS_SQL + " AND ctid < $1::text::tid"
_ACCOUNTS_TAIL_SQL = _ACCOUNTS_SQL + " AND ctid >= $1::text::tid"
_ACCOUNTS_PAGES_SQL = "SELECT pg_relation_size('accounts') / current_setting('block_size')::int"
# Only the balance kind of ledger account (id = account id * 4), and only where it is not 0, the
# engine's default: joined to the accounts they cost the server a hash of every balance. Two
# arrays rather than rows: asyncpg decodes an array of a million in a third of the time.
_BALANCES_SQL = """
    SELECT array_agg(ledger_account_id / 4), array_agg(balance_micros) FROM balances
    WHERE ledger_account_id % 4 = 0 AND balance_micros <> 0"""
_GROUPS_SQL = "SELECT id, name, owner_id, precision, rounding, markup_ppm FROM rate_groups"
_RATES_SQL = """
    SELECT rate_group_id, prefix, destination, connect_fee_micros, per_minute_micros,
           free_seconds, first_increment_seconds, next_increment_seconds FROM rates"""
_PERSONAL_RATES_SQL = """
    SELECT account_id, prefix, destination, connect_fee_micros, per_minute_micros,
           free_seconds, first_increment_seconds, next_increment_seconds FROM account_rates"""
_SESSIONS_SQL = """
    SELECT nas, session_id, account_id, username, calling, called,
           extract(epoch from started_at)::float8, authorized
    FROM sessions"""


class Snapshot(msgspec.Struct):
    accounts: list[Any]  # rows of _ACCOUNTS_SQL
    groups: list[Any]  # rows of _GROUPS_SQL
    rates: list[Any]  # rows of _RATES_SQL
    personal_rates: list[Any]  # rows of _PERSONAL_RATES_SQL
    sessions: list[Any]  # rows of _SESSIONS_SQL
    balances: dict[int, int]  # balance_micros by account id, where not 0


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: for bulk loads that allocate millions of objects and
    free none of them (each collection they trigger walks all of them, to find nothing)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            # Everything allocated meanwhile moves to the oldest generation, as two collections
            # would have moved what survives them, without walking it twice (a second each, for
            # a million accounts): the next full collection still looks at all of it. Not when
            # something is frozen, which unfreeze would thaw.
            gc.freeze()
            gc.unfreeze()
        if was_enabled:
            gc.enable()


async def fetch_snapshot(connection: Any, dsn: str | None = None) -> Snapshot:
    """Read everything the engine needs as of one instant (one repeatable-read snapshot).

    With `dsn` (the one `connection` came from), the read is spread over READ_CONNECTIONS
    connections that import this one's snapshot (`SET TRANSACTION SNAPSHOT`): the same instant,
    read sooner. Should they fail to open (no connection slot left, say), it is all read on
    `connection`, as without `dsn`.
    """
    with _collector_paused():
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            if dsn is None:
                return await _read_on_one(connection)
            snapshot_id = await connection.fetchval("SELECT pg_export_snapshot()")
            assert _SNAPSHOT_ID.match(snapshot_id), snapshot_id
            extra = await _connect(dsn, READ_CONNECTIONS - 1)
            if not extra:
                return await _read_on_one(connection)
            try:
                snapshot = await _read_in_parallel(connection, extra, snapshot_id)
            except BaseException:
                for other in extra:
                    other.terminate()  # it may be in the middle of a query
                raise
            await asyncio.gather(*(other.close() for other in extra), return_exceptions=True)
            return snapshot


async def _connect(dsn: str, count: int) -> list[Any]:
    """`count` connections to `dsn`, or none (and a warning) if any of them fails to open."""
    opened = await asyncio.gather(
        *(asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_SECONDS) for _ in range(count)),
        return_exceptions=True,
    )
    connections = [item for item in opened if isinstance(item, asyncpg.Connection)]
    if len(connections) == count:
        return connections
    await asyncio.gather(*(item.close() for item in connections), return_exceptions=True)
    failure = next(item for item in opened if isinstance(item, BaseException))
    if not isinstance(failure, Exception):
        raise failure  # a cancellation, not a failure to connect
    log.warning("load_on_one_connection", error=repr(failure))
    return []


async def _read_on_one(connection: Any) -> Snapshot:
    accounts = await connection.fetch(_ACCOUNTS_SQL)
    rates = await connection.fetch(_RATES_SQL)
    groups, personal, sessions, balances = await _read_rest(connection)
    return Snapshot(accounts, groups, rates, personal, sessions, balances)


async def _read_in_parallel(connection: Any, extra: list[Any], snapshot_id: str) -> Snapshot:
    async def in_snapshot(other: Any) -> None:
        # The exporting transaction stays open until every read here is done.
        await other.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        await other.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")

    await asyncio.gather(*(in_snapshot(other) for other in extra))
    # Any page splits the table in two halves that together are all of it: the size need not be
    # exact (the table may grow meanwhile, with rows this snapshot does not see).
    middle = f"({await connection.fetchval(_ACCOUNTS_PAGES_SQL) // 2},0)"
    async with asyncio.TaskGroup() as tasks:
        head = tasks.create_task(connection.fetch(_ACCOUNTS_HEAD_SQL, middle))
        tail = tasks.create_task(extra[0].fetch(_ACCOUNTS_TAIL_SQL, middle))
        rates = tasks.create_task(extra[1].fetch(_RATES_SQL))
        rest = tasks.create_task(_read_rest(extra[2]))
    accounts = head.result()
    accounts += tail.result()
    groups, personal, sessions, balances = rest.result()
    return Snapshot(accounts, groups, rates.result(), personal, sessions, balances)


def _rates_by_group(rows: list[Any]) -> dict[int, dict[str, Rate]]:
    """Rate values by group and prefix. A tariff is written at once (an import, a COPY), so its
    rates mostly come one group after another: a dict comprehension for each run of them."""
    by_group: dict[int, dict[str, Rate]] = {}
    for group_id, run in groupby(rows, itemgetter(0)):
        # row[1:] is (prefix, ..., next_increment_seconds): Rate's fields, in order.
        rates = {row[1]: Rate(*row[1:]) for row in run}
        if group_id in by_group:
            by_group[group_id].update(rates)
        else:
            by_group[group_id] = rates
    return by_group


async def _read_rest(connection: Any) -> tuple[list[Any], list[Any], list[Any], dict[int, int]]:
    groups = await connection.fetch(_GROUPS_SQL)
    personal = await connection.fetch(_PERSONAL_RATES_SQL)
    sessions = await connection.fetch(_SESSIONS_SQL)
    account_ids, amounts = await connection.fetchrow(_BALANCES_SQL)
    balances = dict(zip(account_ids or (), amounts or (), strict=True))
    return groups, personal, sessions, balances


def build_engine(
    snapshot: Snapshot,
    *,
    clock: Callable[[], float] = time.time,
    max_call_seconds: int = 7200,
    hold_ttl_seconds: int = 60,
) -> Engine:
    with _collector_paused():
        space = RateSpace()
        groups: dict[int, RateGroup] = {}
        for row in snapshot.groups:
            groups[row[0]] = RateGroup(row[0], row[1], row[2], row[3], row[4], row[5], space)
        for group_id, rates in _rates_by_group(snapshot.rates).items():
            # The database's CHECK constraints already validated every rate.
            groups[group_id].index.update(rates)
        hierarchy = Hierarchy()
        hierarchy.add_restored(
            _restored_accounts(snapshot.accounts, hierarchy.by_id, snapshot.balances, groups)
        )
        for row in snapshot.personal_rates:
            owner = hierarchy.get(row[0])
            if owner is None:
                continue
            if owner.personal_rates is None:
                owner.personal_rates = PrefixIndex()
            owner.personal_rates.put(
                row[1], Rate(row[1], row[2], row[3], row[4], row[5], row[6], row[7])
            )
        engine = Engine(
            hierarchy,
            clock=clock,
            max_call_seconds=max_call_seconds,
            hold_ttl_seconds=hold_ttl_seconds,
            rate_space=space,
        )
        engine.rate_groups = groups
        restore = engine.restore_session
        for row in snapshot.sessions:
            restore(
                row[0],
                row[1],
                row[2],
                username=row[3],
                calling=row[4],
                called=row[5],
                started_at=row[6],
                authorized=row[7],
            )
        return engine


def _restored_accounts(
    rows: list[Any],
    built: dict[int, Account],
    balances: dict[int, int],
    groups: dict[int, RateGroup],
) -> Iterator[Account]:
    """The account of each row but the operator's, parents first (see _parents_first)."""
    enums = _AccountEnums()
    restored = Account.restored
    balance_of = balances.get
    group_of = groups.get
    for row, parent in _parents_first(rows, built):
        account_id = row[_ID]
        group_id = row[_GROUP]
        ip_addresses = row[_IP_ADDRESSES]
        caller_ids = row[_CALLER_IDS]
        kind, status, billing, cli_policy, currency = enums[row[_ENUMS]]
        account = restored(
            account_id,
            row[_NUMBER],
            kind,
            parent,
            status,
            billing,
            row[_CREDIT_LIMIT],
            balance_of(account_id, 0),
            currency,
            group_of(group_id) if group_id else None,
            row[_MAX_CONCURRENT],
            row[_CPS],
            row[_EXPIRES_AT],
            row[_PASSWORD],
            row[_PIN],
            row[_SIP],
            tuple(ip_addresses) if ip_addresses else (),
            row[_TECH_PREFIX],
            tuple(caller_ids) if caller_ids else (),
            cli_policy,
        )
        blocked = row[_BLOCKED]
        if blocked:
            account.set_blocked_prefixes(tuple(blocked))
        yield account


def _parents_first(rows: list[Any], built: dict[int, Account]) -> Iterator[tuple[Any, Account]]:
    """Each account row but the operator's with its parent, parents first: the consumer adds
    each row's account to `built` (the hierarchy's accounts by id) before it asks for the next.

    Rows come in the table's order, in which a parent mostly precedes its children. A row whose
    parent is not built yet (the parent's row was updated since, and moved to the end) brings
    its ancestors that are not built yet first, top down.
    """
    rows_by_id: dict[int, Any] = {}  # filled at the first row whose parent is not built yet
    pulled: set[int] = set()  # ids of the rows built ahead of their turn
    for row in rows:
        parent_id = row[_PARENT]
        if parent_id is None:
            continue  # the operator, already the root
        if pulled and row[_ID] in pulled:
            continue
        parent = built.get(parent_id)
        if parent is not None:
            yield row, parent
            continue
        if not rows_by_id:
            rows_by_id = {item[_ID]: item for item in rows}
        path = [row]
        node = rows_by_id.get(parent_id)
        while node is not None and node[_ID] not in built:
            path.append(node)
            assert len(path) <= len(rows_by_id), "cycle in the account hierarchy"
            parent_id = node[_PARENT]
            node = rows_by_id.get(parent_id) if parent_id is not None else None
        for item in reversed(path):
            if item[_PARENT] is None:
                continue  # an operator row other than the root's: its children fail below
            parent = built.get(item[_PARENT])
            assert parent is not None, f"account {item[_ID]} has no parent in the hierarchy"
            pulled.add(item[_ID])
            yield item, parent


class _AccountEnums(dict[str, tuple[AccountKind, Status, Billing, CliPolicy, str]]):
    """(kind, status, billing, cli policy, currency) of an account row's _ENUMS text, converted
    once per distinct text (an enum class call is slow). As many as distinct combinations in the
    table: a few, a few hundred with many currencies."""

    def __missing__(self, text: str) -> tuple[AccountKind, Status, Billing, CliPolicy, str]:
        # The first four are words of their CHECK constraints, without a "/"; the currency,
        # last, may have one.
        kind, status, billing, cli_policy, currency = text.split("/", 4)
        value = self[text] = (
            AccountKind(kind),
            Status(status),
            Billing(billing),
            CliPolicy(cli_policy),
            currency,
        )
        return value
