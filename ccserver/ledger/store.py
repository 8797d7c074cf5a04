"""Rows of the configuration tables (accounts, rate groups, rates, NAS clients) and the SQL that
reads and writes them. Functions take an asyncpg connection and run on the bridge's loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ccserver.rating.tariff import Rate


class AccountRow(msgspec.Struct, kw_only=True):
    id: int = 0  # 0: take the next from the sequence
    number: str
    kind: str
    parent_id: int | None
    status: str = "active"
    billing: str = "prepaid"
    credit_limit_micros: int = 0
    currency: str = "USD"
    rate_group_id: int | None = None
    max_concurrent: int = 0
    cps: int = 0
    expires_at: float | None = None
    valid_days: int | None = None
    password: str | None = None
    pin: str | None = None
    sip_username: str | None = None
    tech_prefix: str = ""
    ip_addresses: list[str] = msgspec.field(default_factory=list)
    caller_ids: list[str] = msgspec.field(default_factory=list)
    cli_policy: str = "any"
    blocked_prefixes: list[str] = msgspec.field(default_factory=list)
    low_balance_threshold_micros: int | None = None
    profile: dict[str, Any] = msgspec.field(default_factory=dict)
    invoice_settings: dict[str, Any] = msgspec.field(default_factory=dict)


ACCOUNT_COLUMNS = (
    "id, number, kind, parent_id, status, billing, credit_limit_micros, currency, rate_group_id, "
    "max_concurrent, cps, extract(epoch from expires_at)::float8 AS expires_at, valid_days, "
    "password, pin, sip_username, tech_prefix, ip_addresses, caller_ids, cli_policy, "
    "blocked_prefixes, low_balance_threshold_micros, profile::text AS profile, "
    "invoice_settings::text AS invoice_settings"
)


def account_row(record: Any) -> AccountRow:
    data = dict(record)
    data["profile"] = msgspec.json.decode(data["profile"])
    data["invoice_settings"] = msgspec.json.decode(data["invoice_settings"])
    return msgspec.convert(data, AccountRow)


async def create_account(connection: Any, row: AccountRow) -> int:
    """Insert an account with its three ledger accounts and their zero balances."""
    async with connection.transaction():
        account_id = row.id or await connection.fetchval("SELECT nextval('accounts_id_seq')")
        await connection.execute(
            """INSERT INTO accounts (id, number, kind, parent_id, status, billing,
                   credit_limit_micros, currency, rate_group_id, max_concurrent, cps, expires_at,
                   valid_days, password, pin, sip_username, tech_prefix, ip_addresses, caller_ids,
                   cli_policy, blocked_prefixes, low_balance_threshold_micros, profile,
                   invoice_settings)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, to_timestamp($12), $13, $14,
                   $15, $16, $17, $18, $19, $20, $21, $22, $23::jsonb, $24::jsonb)""",
            account_id,
            row.number,
            row.kind,
            row.parent_id,
            row.status,
            row.billing,
            row.credit_limit_micros,
            row.currency,
            row.rate_group_id,
            row.max_concurrent,
            row.cps,
            row.expires_at,
            row.valid_days,
            row.password,
            row.pin,
            row.sip_username,
            row.tech_prefix,
            row.ip_addresses,
            row.caller_ids,
            row.cli_policy,
            row.blocked_prefixes,
            row.low_balance_threshold_micros,
            msgspec.json.encode(row.profile).decode(),
            msgspec.json.encode(row.invoice_settings).decode(),
        )
        await _create_ledger_accounts(connection, [account_id])
    return int(account_id)


async def _create_ledger_accounts(connection: Any, account_ids: Sequence[int]) -> None:
    await connection.execute(
        """INSERT INTO ledger_accounts (id, account_id, kind)
           SELECT a * 4 + k, a, (ARRAY['balance', 'revenue', 'funding'])[k + 1]
           FROM unnest($1::bigint[]) AS a, generate_series(0, 2) AS k;
        """,
        list(account_ids),
    )
    await connection.execute(
        """INSERT INTO balances (ledger_account_id)
           SELECT a * 4 + k FROM unnest($1::bigint[]) AS a, generate_series(0, 2) AS k""",
        list(account_ids),
    )


async def create_accounts_bulk(connection: Any, rows: Sequence[AccountRow]) -> list[int]:
    """Insert many accounts in one transaction with COPY (mass creation, demo data, benchmarks)."""
    async with connection.transaction():
        missing = sum(1 for row in rows if not row.id)
        fresh = iter(
            await connection.fetchval(
                "SELECT array_agg(nextval('accounts_id_seq')) FROM generate_series(1, $1)", missing
            )
            or []
        )
        ids = [row.id or next(fresh) for row in rows]
        await connection.copy_records_to_table(
            "accounts",
            columns=[
                "id", "number", "kind", "parent_id", "status", "billing", "credit_limit_micros",
                "currency", "rate_group_id", "max_concurrent", "cps", "password", "pin",
                "sip_username", "tech_prefix", "ip_addresses", "caller_ids", "cli_policy",
                "blocked_prefixes",
            ],
            records=[
                (
                    account_id, row.number, row.kind, row.parent_id, row.status, row.billing,
                    row.credit_limit_micros, row.currency, row.rate_group_id, row.max_concurrent,
                    row.cps, row.password, row.pin, row.sip_username, row.tech_prefix,
                    row.ip_addresses, row.caller_ids, row.cli_policy, row.blocked_prefixes,
                )
                for account_id, row in zip(ids, rows, strict=True)
            ],
        )  # fmt: skip
        await _create_ledger_accounts(connection, ids)
    return ids


async def create_rate_group(
    connection: Any,
    name: str,
    *,
    owner_id: int | None = None,
    precision: int = 4,
    rounding: str = "up",
    markup_ppm: int = 0,
) -> int:
    return int(
        await connection.fetchval(
            """INSERT INTO rate_groups (name, owner_id, precision, rounding, markup_ppm)
               VALUES ($1, $2, $3, $4, $5) RETURNING id""",
            name,
            owner_id,
            precision,
            rounding,
            markup_ppm,
        )
    )


def _rate_records(group_id: int, rates: Sequence[Rate]) -> list[tuple[Any, ...]]:
    return [
        (
            group_id,
            r.prefix,
            r.destination,
            r.connect_fee_micros,
            r.per_minute_micros,
            r.free_seconds,
            r.first_increment_seconds,
            r.next_increment_seconds,
        )
        for r in rates
    ]


RATE_COLUMNS = [
    "rate_group_id",
    "prefix",
    "destination",
    "connect_fee_micros",
    "per_minute_micros",
    "free_seconds",
    "first_increment_seconds",
    "next_increment_seconds",
]


async def upsert_rates(connection: Any, group_id: int, rates: Sequence[Rate]) -> None:
    async with connection.transaction():
        await connection.execute(
            "CREATE TEMP TABLE rates_in (LIKE rates INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        await connection.copy_records_to_table(
            "rates_in", columns=RATE_COLUMNS, records=_rate_records(group_id, rates)
        )
        await connection.execute(
            """INSERT INTO rates SELECT * FROM rates_in
               ON CONFLICT (rate_group_id, prefix) DO UPDATE SET
                   destination = EXCLUDED.destination,
                   connect_fee_micros = EXCLUDED.connect_fee_micros,
                   per_minute_micros = EXCLUDED.per_minute_micros,
                   free_seconds = EXCLUDED.free_seconds,
                   first_increment_seconds = EXCLUDED.first_increment_seconds,
                   next_increment_seconds = EXCLUDED.next_increment_seconds"""
        )


async def replace_rates(connection: Any, group_id: int, rates: Sequence[Rate]) -> None:
    async with connection.transaction():
        await connection.execute("DELETE FROM rates WHERE rate_group_id = $1", group_id)
        await connection.copy_records_to_table(
            "rates", columns=RATE_COLUMNS, records=_rate_records(group_id, rates)
        )
