"""Start-up load: accounts, hierarchy, tariffs, balances and open calls, from Postgres into the
engine, before any front end opens. Calls found open are restored with their slots and exposure,
so a restart loses no call and frees no slot early."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from ccserver.actors.account import Account, AccountKind, Billing, CliPolicy, Status
from ccserver.actors.engine import Engine
from ccserver.actors.hierarchy import Hierarchy
from ccserver.rating.prefix_index import PrefixIndex
from ccserver.rating.tariff import Rate, RateGroup


class Snapshot(msgspec.Struct):
    accounts: list[Any]
    groups: list[Any]
    rates: list[Any]
    personal_rates: list[Any]
    sessions: list[Any]


async def fetch_snapshot(connection: Any) -> Snapshot:
    """Read everything the engine needs in one repeatable-read transaction (one instant)."""
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        accounts = await connection.fetch(
            """SELECT a.id, a.number, a.kind, a.parent_id, a.status, a.billing,
                      a.credit_limit_micros, a.currency, a.rate_group_id, a.max_concurrent, a.cps,
                      extract(epoch from a.expires_at)::float8 AS expires_at, a.password, a.pin,
                      a.sip_username, a.tech_prefix, a.ip_addresses, a.caller_ids, a.cli_policy,
                      a.blocked_prefixes, coalesce(b.balance_micros, 0) AS balance_micros
               FROM accounts a LEFT JOIN balances b ON b.ledger_account_id = a.id * 4
               WHERE a.status <> 'deleted'"""
        )
        groups = await connection.fetch(
            "SELECT id, name, owner_id, precision, rounding, markup_ppm FROM rate_groups"
        )
        rates = await connection.fetch(
            """SELECT rate_group_id, prefix, destination, connect_fee_micros, per_minute_micros,
                      free_seconds, first_increment_seconds, next_increment_seconds FROM rates"""
        )
        personal = await connection.fetch(
            """SELECT account_id, prefix, destination, connect_fee_micros, per_minute_micros,
                      free_seconds, first_increment_seconds, next_increment_seconds
               FROM account_rates"""
        )
        sessions = await connection.fetch(
            """SELECT nas, session_id, account_id, username, calling, called,
                      extract(epoch from started_at)::float8 AS started_at, authorized
               FROM sessions"""
        )
    return Snapshot(accounts, groups, rates, personal, sessions)


def build_engine(
    snapshot: Snapshot,
    *,
    clock: Callable[[], float] = time.time,
    max_call_seconds: int = 7200,
    hold_ttl_seconds: int = 60,
) -> Engine:
    groups: dict[int, RateGroup] = {}
    for row in snapshot.groups:
        groups[row["id"]] = RateGroup(
            row["id"],
            row["name"],
            row["owner_id"],
            row["precision"],
            row["rounding"],
            row["markup_ppm"],
        )
    for row in snapshot.rates:
        # The database's CHECK constraints already validated every rate.
        group = groups[row[0]]
        group.index.put(row[1], Rate(row[1], row[2], row[3], row[4], row[5], row[6], row[7]))

    hierarchy = Hierarchy()
    by_id = {row["id"]: row for row in snapshot.accounts}
    for row in _parents_first(snapshot.accounts, by_id):
        if row["parent_id"] is None:
            continue  # the operator, already the root
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
            balance_micros=row["balance_micros"],
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
    )
    engine.rate_groups = groups
    for row in snapshot.sessions:
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


def _parents_first(rows: list[Any], by_id: dict[int, Any]) -> list[Any]:
    ordered: list[Any] = []
    placed: set[int] = set()
    for row in rows:
        path = []
        node = row
        while node is not None and node["id"] not in placed:
            path.append(node)
            parent_id = node["parent_id"]
            node = by_id.get(parent_id) if parent_id is not None else None
            assert len(path) <= len(by_id), "cycle in the account hierarchy"
        for item in reversed(path):
            placed.add(item["id"])
            ordered.append(item)
    return ordered
