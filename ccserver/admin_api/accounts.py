"""Accounts: create, list (direct or whole subtree), read, patch, soft delete, mass create, CSV
import with a per-row report and CSV export.

Every change is written to Postgres first and then applied to the live engine, so the next call
sees it at once; money (initial balances) goes through the engine and the ledger like any top-up.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import secrets
import time
from functools import partial
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType
from starlette.responses import Response

from ccserver.actors.account import (
    PARENT_KINDS,
    Account,
    AccountKind,
    Billing,
    CliPolicy,
    Status,
)
from ccserver.actors.hierarchy import HierarchyError
from ccserver.actors.messages import StopResult, Transfer
from ccserver.admin_api.app import Api, Call, Page, Route
from ccserver.admin_api.auth import Permission
from ccserver.admin_api.common import (
    Cursor,
    Limit,
    MoneyText,
    Number,
    money_in,
    money_out,
    page,
    parse_time,
    rfc3339,
    visible_account,
)
from ccserver.admin_api.problems import (
    ApiError,
    FieldError,
    FieldErrors,
    conflict,
    field_error,
    forbidden,
    invalid,
)
from ccserver.admin_api.validation import convert
from ccserver.ledger import store
from ccserver.ledger.writer import LedgerWrite
from ccserver.observability import get_logger

log = get_logger("ccserver.api.accounts")

Digits = Annotated[str, Meta(pattern=r"^[0-9]{1,32}$")]
ShortText = Annotated[str, Meta(max_length=200)]
Secret = Annotated[str, Meta(min_length=1, max_length=128)]
Pin = Annotated[str, Meta(pattern=r"^[0-9]{4,32}$")]
SipUser = Annotated[str, Meta(pattern=r"^[A-Za-z0-9._@+-]{1,64}$")]
TechPrefix = Annotated[str, Meta(pattern=r"^[0-9#*]{0,16}$")]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
Address = Annotated[str, Meta(min_length=1, max_length=64)]
Kind = Literal["customer", "reseller", "agent", "provider"]
ACCOUNT_NUMBER_DIGITS = 10
LIST_LENGTH_MAX = 1000
BULK_COUNT_MAX = 10_000


class Profile(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Contact and company details (ASTPP, VOS3000 and VoIPSwitch keep the same)."""

    first_name: ShortText | None = None
    last_name: ShortText | None = None
    company: ShortText | None = None
    email: ShortText | None = None
    phone: ShortText | None = None
    mobile: ShortText | None = None
    address: ShortText | None = None
    city: ShortText | None = None
    province: ShortText | None = None
    postal_code: ShortText | None = None
    country: ShortText | None = None
    timezone: ShortText | None = None
    language: ShortText | None = None
    tax_id: ShortText | None = None
    notes: Annotated[str, Meta(max_length=2000)] | None = None


class Tax(msgspec.Struct, forbid_unknown_fields=True):
    name: ShortText
    rate_pct: MoneyText = "0"
    fixed: MoneyText = "0"


class InvoiceSettings(msgspec.Struct, forbid_unknown_fields=True):
    cycle: Literal["monthly", "daily"] = "monthly"
    billing_day: Annotated[int, Meta(ge=1, le=28)] = 1
    prefix: Annotated[str, Meta(max_length=16)] = ""
    taxes: Annotated[list[Tax], Meta(max_length=10)] = msgspec.field(default_factory=list)
    email_invoices: bool = False
    zero_amount_invoices: bool = False
    note: Annotated[str, Meta(max_length=2000)] = ""


class AccountCreate(msgspec.Struct, forbid_unknown_fields=True):
    kind: Kind
    number: Number | None = None
    parent: Number | None = None
    billing: Literal["prepaid", "postpaid"] = "prepaid"
    credit_limit: MoneyText = "0"
    currency: Currency = "USD"
    rate_group: Annotated[int, Meta(ge=1)] | None = None
    max_concurrent: Annotated[int, Meta(ge=0, le=1_000_000)] = 0
    cps: Annotated[int, Meta(ge=0, le=100_000)] = 0
    password: Secret | None = None
    pin: Pin | None = None
    sip_username: SipUser | None = None
    tech_prefix: TechPrefix = ""
    ip_addresses: Annotated[list[Address], Meta(max_length=LIST_LENGTH_MAX)] = msgspec.field(
        default_factory=list
    )
    caller_ids: Annotated[list[Digits], Meta(max_length=LIST_LENGTH_MAX)] = msgspec.field(
        default_factory=list
    )
    cli_policy: Literal["any", "listed"] = "any"
    blocked_prefixes: Annotated[list[Digits], Meta(max_length=LIST_LENGTH_MAX)] = msgspec.field(
        default_factory=list
    )
    status: Literal["active", "suspended"] = "active"
    expires_at: Annotated[str, Meta(max_length=40)] | None = None
    valid_days: Annotated[int, Meta(ge=1, le=36_500)] | None = None
    low_balance_threshold: MoneyText | None = None
    profile: Profile = msgspec.field(default_factory=Profile)
    invoice_settings: InvoiceSettings = msgspec.field(default_factory=InvoiceSettings)
    balance: MoneyText | None = None  # an initial top-up from the parent


class AccountPatch(msgspec.Struct, forbid_unknown_fields=True):
    billing: Literal["prepaid", "postpaid"] | UnsetType = UNSET
    credit_limit: MoneyText | UnsetType = UNSET
    currency: Currency | UnsetType = UNSET
    rate_group: Annotated[int, Meta(ge=1)] | UnsetType | None = UNSET
    max_concurrent: Annotated[int, Meta(ge=0, le=1_000_000)] | UnsetType = UNSET
    cps: Annotated[int, Meta(ge=0, le=100_000)] | UnsetType = UNSET
    password: Secret | UnsetType | None = UNSET
    pin: Pin | UnsetType | None = UNSET
    sip_username: SipUser | UnsetType | None = UNSET
    tech_prefix: TechPrefix | UnsetType = UNSET
    ip_addresses: Annotated[list[Address], Meta(max_length=LIST_LENGTH_MAX)] | UnsetType = UNSET
    caller_ids: Annotated[list[Digits], Meta(max_length=LIST_LENGTH_MAX)] | UnsetType = UNSET
    cli_policy: Literal["any", "listed"] | UnsetType = UNSET
    blocked_prefixes: Annotated[list[Digits], Meta(max_length=LIST_LENGTH_MAX)] | UnsetType = UNSET
    status: Literal["active", "suspended"] | UnsetType = UNSET
    expires_at: Annotated[str, Meta(max_length=40)] | UnsetType | None = UNSET
    valid_days: Annotated[int, Meta(ge=1, le=36500)] | UnsetType | None = UNSET
    low_balance_threshold: MoneyText | UnsetType | None = UNSET
    profile: Profile | UnsetType = UNSET
    invoice_settings: InvoiceSettings | UnsetType = UNSET


class AccountOut(msgspec.Struct):
    number: str
    kind: str
    parent: str | None
    status: str
    billing: str
    credit_limit: str
    currency: str
    rate_group: int | None
    max_concurrent: int
    cps: int
    sip_username: str | None
    tech_prefix: str
    ip_addresses: list[str]
    caller_ids: list[str]
    cli_policy: str
    blocked_prefixes: list[str]
    expires_at: str | None
    valid_days: int | None
    low_balance_threshold: str | None
    profile: Profile
    invoice_settings: InvoiceSettings
    has_password: bool
    has_pin: bool
    balance: str
    available: str
    active_calls: int
    created_at: str | None


class AccountQuery(msgspec.Struct, forbid_unknown_fields=True):
    parent: Number | None = None
    scope: Literal["direct", "all"] = "all"
    kind: Kind | None = None
    status: Literal["active", "suspended", "deleted"] | None = None
    q: Annotated[str, Meta(max_length=100)] | None = None
    limit: Limit = 100
    cursor: Cursor | None = None


class ExportQuery(msgspec.Struct, forbid_unknown_fields=True):
    parent: Number | None = None
    scope: Literal["direct", "all"] = "all"
    kind: Kind | None = None
    status: Literal["active", "suspended", "deleted"] | None = None
    q: Annotated[str, Meta(max_length=100)] | None = None


class BulkCreate(msgspec.Struct, forbid_unknown_fields=True):
    count: Annotated[int, Meta(ge=1, le=BULK_COUNT_MAX)]
    number_prefix: Annotated[str, Meta(pattern=r"^[0-9]{0,18}$")] = ""
    number_length: Annotated[int, Meta(ge=4, le=20)] = 10
    pins: bool = False
    pin_length: Annotated[int, Meta(ge=4, le=12)] = 6
    kind: Kind = "customer"
    parent: Number | None = None
    billing: Literal["prepaid", "postpaid"] = "prepaid"
    credit_limit: MoneyText = "0"
    currency: Currency = "USD"
    rate_group: Annotated[int, Meta(ge=1)] | None = None
    max_concurrent: Annotated[int, Meta(ge=0, le=1_000_000)] = 0
    cps: Annotated[int, Meta(ge=0, le=100_000)] = 0
    valid_days: Annotated[int, Meta(ge=1, le=36_500)] | None = None
    balance: MoneyText | None = None


class CreatedCard(msgspec.Struct):
    number: str
    pin: str | None = None


class BulkResult(msgspec.Struct):
    count: int
    accounts: list[CreatedCard]


class ImportRow(msgspec.Struct):
    row: int
    number: str | None
    status: Literal["created", "error"]
    errors: list[FieldError] = msgspec.field(default_factory=list)


class ImportReport(msgspec.Struct):
    created: int
    failed: int
    rows: list[ImportRow]


# -- helpers -----------------------------------------------------------------------------------


def _require_accounts(call: Call) -> None:
    call.require(Permission.ACCOUNTS)


def _parent_for(api: Api, call: Call, number: str | None) -> Account:
    if number is None:
        parent = call.scope.top()
    else:
        found = api.engine.hierarchy.find_number(number)
        if found is None or not (call.scope.sees(found) or found is call.scope.top()):
            raise field_error("parent", "no such account")
        parent = found
    if parent.kind not in PARENT_KINDS:
        raise field_error("parent", f"a {parent.kind.value} cannot have sub-accounts")
    return parent


def _check_rate_group(api: Api, parent: Account, group_id: int | None, field: str) -> None:
    """An account's rate group prices what it pays its parent: the parent (or one of its
    ancestors, or the operator) must own it."""
    if group_id is None:
        return
    group = api.engine.rate_groups.get(group_id)
    if group is None:
        raise field_error(field, "no such rate group")
    if group.owner_id is None:
        return
    owner = api.engine.hierarchy.get(group.owner_id)
    if owner is None or not api.engine.hierarchy.is_ancestor(owner, parent):
        raise field_error(field, "must be owned by the parent or one of its ancestors")


def _check_addresses(addresses: list[str], field: str) -> list[FieldError]:
    errors = []
    for index, text in enumerate(addresses):
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            errors.append(FieldError(f"{field}[{index}]", f"{text!r} is not an IP address or CIDR"))
    return errors


def _new_number(api: Api, length: int = ACCOUNT_NUMBER_DIGITS) -> str:
    taken = api.engine.hierarchy.by_number
    for _ in range(100):
        number = str(10 ** (length - 1) + secrets.randbelow(9 * 10 ** (length - 1)))
        if number not in taken:
            return number
    raise conflict("could not find a free account number")


def _account_out(api: Api, row: Any, account: Account | None) -> AccountOut:
    now_ms = int(api.engine.clock() * 1000)
    parent = api.engine.hierarchy.get(row["parent_id"]) if row["parent_id"] else None
    balance = account.balance_micros if account is not None else row["balance_micros"]
    return AccountOut(
        number=row["number"],
        kind=row["kind"],
        parent=parent.number if parent is not None and parent.parent is not None else None,
        status=row["status"],
        billing=row["billing"],
        credit_limit=money_out(row["credit_limit_micros"]),
        currency=row["currency"],
        rate_group=row["rate_group_id"],
        max_concurrent=row["max_concurrent"],
        cps=row["cps"],
        sip_username=row["sip_username"],
        tech_prefix=row["tech_prefix"],
        ip_addresses=list(row["ip_addresses"]),
        caller_ids=list(row["caller_ids"]),
        cli_policy=row["cli_policy"],
        blocked_prefixes=list(row["blocked_prefixes"]),
        expires_at=rfc3339(row["expires_at"]),
        valid_days=row["valid_days"],
        low_balance_threshold=(
            money_out(row["low_balance_threshold_micros"])
            if row["low_balance_threshold_micros"] is not None
            else None
        ),
        profile=msgspec.json.decode(row["profile"], type=Profile),
        invoice_settings=msgspec.json.decode(row["invoice_settings"], type=InvoiceSettings),
        has_password=row["password"] is not None,
        has_pin=row["pin"] is not None,
        balance=money_out(balance),
        available=money_out(account.available_micros(now_ms) if account is not None else 0),
        active_calls=account.calls if account is not None else 0,
        created_at=rfc3339(row["created_at"]),
    )


SELECT_ACCOUNT = """
    SELECT a.id, a.number, a.kind, a.parent_id, a.status, a.billing, a.credit_limit_micros,
           a.currency, a.rate_group_id, a.max_concurrent, a.cps,
           extract(epoch from a.expires_at)::float8 AS expires_at, a.valid_days, a.password, a.pin,
           a.sip_username, a.tech_prefix, a.ip_addresses, a.caller_ids, a.cli_policy,
           a.blocked_prefixes, a.low_balance_threshold_micros, a.profile::text AS profile,
           a.invoice_settings::text AS invoice_settings,
           extract(epoch from a.created_at)::float8 AS created_at,
           coalesce(b.balance_micros, 0) AS balance_micros
    FROM accounts a LEFT JOIN balances b ON b.ledger_account_id = a.id * 4
"""


async def _fetch_account(api: Api, account_id: int) -> Any:
    async def go(connection: Any) -> Any:
        return await connection.fetchrow(SELECT_ACCOUNT + " WHERE a.id = $1", account_id)

    return await api.bridge.run(go)


def _expiry(field: str, expires_at: str | None, valid_days: int | None, now: float) -> float | None:
    if expires_at is not None:
        return parse_time(field, expires_at)
    if valid_days is not None:
        return now + valid_days * 86_400
    return None


# -- create ------------------------------------------------------------------------------------


def _row_from_create(api: Api, call: Call, body: AccountCreate) -> tuple[store.AccountRow, Account]:
    """Validate a new account against the live hierarchy; return its row and parent."""
    parent = _parent_for(api, call, body.parent)
    errors = FieldErrors()
    errors.check(lambda: _check_rate_group(api, parent, body.rate_group, "rate_group"), None)
    errors.add(_check_addresses(body.ip_addresses, "ip_addresses"))
    credit_limit = errors.check(lambda: money_in("credit_limit", body.credit_limit), 0)
    low_balance = None
    if body.low_balance_threshold is not None:
        threshold = body.low_balance_threshold
        low_balance = errors.check(lambda: money_in("low_balance_threshold", threshold), None)
    if body.balance is not None:
        balance = body.balance
        errors.check(lambda: money_in("balance", balance), 0)
    expires = errors.check(
        lambda: _expiry("expires_at", body.expires_at, body.valid_days, time.time()), None
    )
    if body.number is not None and body.number in api.engine.hierarchy.by_number:
        errors.add([FieldError("number", "is taken")])
    errors.raise_if_any()
    row = store.AccountRow(
        number=body.number or _new_number(api),
        kind=body.kind,
        parent_id=parent.id,
        status=body.status,
        billing=body.billing,
        credit_limit_micros=credit_limit,
        currency=body.currency,
        rate_group_id=body.rate_group,
        max_concurrent=body.max_concurrent,
        cps=body.cps,
        expires_at=expires,
        valid_days=body.valid_days,
        password=body.password,
        pin=body.pin,
        sip_username=body.sip_username,
        tech_prefix=body.tech_prefix,
        ip_addresses=body.ip_addresses,
        caller_ids=body.caller_ids,
        cli_policy=body.cli_policy,
        blocked_prefixes=body.blocked_prefixes,
        low_balance_threshold_micros=low_balance,
        profile=msgspec.to_builtins(body.profile),
        invoice_settings=msgspec.to_builtins(body.invoice_settings),
    )
    return row, parent


def _live_account(api: Api, row: store.AccountRow, parent: Account) -> Account:
    account = Account(
        row.id,
        row.number,
        AccountKind(row.kind),
        parent,
        status=Status(row.status),
        billing=Billing(row.billing),
        credit_limit_micros=row.credit_limit_micros,
        currency=row.currency,
        rate_group=api.engine.rate_groups.get(row.rate_group_id) if row.rate_group_id else None,
        max_concurrent=row.max_concurrent,
        cps=row.cps,
        expires_at=row.expires_at,
        password=row.password,
        pin=row.pin,
        sip_username=row.sip_username,
        ip_addresses=tuple(row.ip_addresses),
        tech_prefix=row.tech_prefix,
        caller_ids=tuple(row.caller_ids),
        cli_policy=CliPolicy(row.cli_policy),
    )
    if row.blocked_prefixes:
        account.set_blocked_prefixes(tuple(row.blocked_prefixes))
    return account


def _check_identifiers_free(api: Api, account: Account) -> None:
    hierarchy = api.engine.hierarchy
    try:
        hierarchy._check_credentials_free(account)
    except HierarchyError as error:
        raise conflict(str(error)) from None


async def _insert(api: Api, row: store.AccountRow, parent: Account) -> Account:
    probe = _live_account(api, row, parent)
    parent.children -= 1  # the probe counted itself as a child
    _check_identifiers_free(api, probe)
    try:
        row.id = await api.bridge.run(store.create_account, row)
    except Exception as error:
        if type(error).__name__ == "UniqueViolationError":
            raise conflict(f"an account with these identifiers exists: {error}") from None
        raise
    account = _live_account(api, row, parent)
    try:
        api.engine.hierarchy.add(account)
    except HierarchyError as error:  # lost a race with another request for the same identifier
        parent.children -= 1
        raise conflict(str(error)) from None
    return account


async def _initial_balance(api: Api, account: Account, text: str | None) -> None:
    if text is None:
        return
    micros = money_in("balance", text)
    if micros:
        result = api.engine.topup(account.id, micros, f"initial:{account.id}", "initial balance")
        await api.commit(LedgerWrite(transfers=result.transfers))


async def create_account(api: Api, call: Call) -> AccountOut:
    _require_accounts(call)
    body: AccountCreate = call.body
    if call.principal.role == "agent" and body.kind != "customer":
        raise forbidden("agents create customers only")
    row, parent = _row_from_create(api, call, body)
    account = await _insert(api, row, parent)
    await _initial_balance(api, account, body.balance)
    log.info("account_created", number=account.number, principal=call.principal.name)
    return _account_out(api, await _fetch_account(api, account.id), account)


# -- read --------------------------------------------------------------------------------------


async def get_account(api: Api, call: Call) -> AccountOut:
    account = visible_account(api, call, call.path["number"])
    return _account_out(api, await _fetch_account(api, account.id), account)


def _list_sql(api: Api, call: Call, query: AccountQuery | ExportQuery) -> tuple[str, list[Any]]:
    parent = _parent_for(api, call, query.parent) if query.parent else call.scope.top()
    args: list[Any] = [parent.id]
    if query.scope == "direct":
        where = ["a.parent_id = $1"]
        prefix = ""
    else:
        prefix = """WITH RECURSIVE sub(id) AS (
                        SELECT id FROM accounts WHERE parent_id = $1
                        UNION ALL
                        SELECT c.id FROM accounts c JOIN sub ON c.parent_id = sub.id) """
        where = ["a.id IN (SELECT id FROM sub)"]
    if query.kind is not None:
        args.append(query.kind)
        where.append(f"a.kind = ${len(args)}")
    if query.status is not None:
        args.append(query.status)
        where.append(f"a.status = ${len(args)}")
    else:
        where.append("a.status <> 'deleted'")
    if query.q:
        args.append(f"%{query.q}%")
        n = len(args)
        where.append(
            f"(a.number ILIKE ${n} OR a.sip_username ILIKE ${n} OR a.profile::text ILIKE ${n})"
        )
    return prefix + SELECT_ACCOUNT + " WHERE " + " AND ".join(where), args


async def list_accounts(api: Api, call: Call) -> Page:
    query: AccountQuery = call.query
    sql, args = _list_sql(api, call, query)
    if query.cursor is not None:
        args.append(int(query.cursor))
        sql += f" AND a.id > ${len(args)}"
    args.append(query.limit + 1)
    sql += f" ORDER BY a.id LIMIT ${len(args)}"

    async def go(connection: Any) -> Any:
        return await connection.fetch(sql, *args)

    rows = await api.bridge.run(go)
    hierarchy = api.engine.hierarchy
    items = [(row["id"], _account_out(api, row, hierarchy.get(row["id"]))) for row in rows]
    result = page(items, query.limit, lambda item: item[0])
    return Page(items=[item for _, item in result.items], next_cursor=result.next_cursor)


# -- patch and delete --------------------------------------------------------------------------


async def patch_account(api: Api, call: Call) -> AccountOut:
    _require_accounts(call)
    account = visible_account(api, call, call.path["number"])
    if account is call.scope.top() and not call.scope.unrestricted:
        raise forbidden("an account cannot change its own limits")
    body: AccountPatch = call.body
    changes: dict[str, Any] = {}
    errors = FieldErrors()
    assert account.parent is not None
    for name in ("billing", "currency", "max_concurrent", "cps", "password", "pin", "cli_policy",
                 "status", "valid_days", "sip_username", "tech_prefix", "caller_ids",
                 "ip_addresses", "blocked_prefixes"):  # fmt: skip
        value = getattr(body, name)
        if value is not UNSET:
            changes[name] = value
    # A failed check leaves a placeholder in `changes`: raise_if_any below refuses them all.
    if body.rate_group is not UNSET:
        parent, group = account.parent, body.rate_group
        errors.check(lambda: _check_rate_group(api, parent, group, "rate_group"), None)
        changes["rate_group_id"] = group
    for name in ("credit_limit", "low_balance_threshold"):
        value = getattr(body, name)
        if value is not UNSET:
            changes[f"{name}_micros"] = (
                None if value is None else errors.check(partial(money_in, name, value), None)
            )
    if body.expires_at is not UNSET:
        expires_at = body.expires_at
        changes["expires_at"] = (
            None
            if expires_at is None
            else errors.check(lambda: parse_time("expires_at", expires_at), None)
        )
    if body.ip_addresses is not UNSET:
        errors.add(_check_addresses(body.ip_addresses, "ip_addresses"))
    if body.profile is not UNSET:
        changes["profile"] = msgspec.json.encode(body.profile).decode()
    if body.invoice_settings is not UNSET:
        changes["invoice_settings"] = msgspec.json.encode(body.invoice_settings).decode()
    errors.raise_if_any()
    if not changes:
        return await get_account(api, call)
    identifiers = {"sip_username", "caller_ids", "ip_addresses"} & changes.keys()
    if identifiers:
        sip = changes.get("sip_username", account.sip_username)
        callers = tuple(changes.get("caller_ids", account.caller_ids))
        addresses = tuple(changes.get("ip_addresses", account.ip_addresses))
        try:
            api.engine.hierarchy.check_credentials_free(sip, callers, addresses, account)
        except HierarchyError as error:
            raise conflict(str(error)) from None
    await _update_row(api, account.id, changes)
    disconnects = _apply_live(api, account, changes)
    api.send_disconnects(disconnects)
    log.info(
        "account_changed",
        number=account.number,
        fields=sorted(k for k in changes if k not in ("password", "pin")),
        principal=call.principal.name,
    )
    return _account_out(api, await _fetch_account(api, account.id), account)


_CASTS = {"expires_at": "to_timestamp({})", "profile": "{}::jsonb", "invoice_settings": "{}::jsonb"}


async def _update_row(api: Api, account_id: int, changes: dict[str, Any]) -> None:
    names = sorted(changes)
    sets = ", ".join(
        f"{name} = {_CASTS.get(name, '{}').format(f'${i + 2}')}" for i, name in enumerate(names)
    )
    sql = f"UPDATE accounts SET {sets}, updated_at = now() WHERE id = $1"

    async def go(connection: Any) -> None:
        await connection.execute(sql, account_id, *[changes[name] for name in names])

    try:
        await api.bridge.run(go)
    except Exception as error:
        if type(error).__name__ == "UniqueViolationError":
            raise conflict(str(error)) from None
        raise


def _apply_live(api: Api, account: Account, changes: dict[str, Any]) -> list[Any]:
    """Apply a committed change to the live account: the next call sees it."""
    if "billing" in changes:
        account.billing = Billing(changes["billing"])
    if "credit_limit_micros" in changes:
        account.credit_limit_micros = changes["credit_limit_micros"]
    if "currency" in changes:
        account.currency = changes["currency"]
    if "rate_group_id" in changes:
        group_id = changes["rate_group_id"]
        account.rate_group = api.engine.rate_groups.get(group_id) if group_id else None
    if "max_concurrent" in changes:
        account.max_concurrent = changes["max_concurrent"]
    if "cps" in changes:
        account.set_cps(changes["cps"])
    if "password" in changes:
        account.password = changes["password"]
    if "pin" in changes:
        account.pin = changes["pin"]
    if "cli_policy" in changes:
        account.cli_policy = CliPolicy(changes["cli_policy"])
    if "tech_prefix" in changes:
        account.tech_prefix = changes["tech_prefix"]
    if "blocked_prefixes" in changes:
        account.set_blocked_prefixes(tuple(changes["blocked_prefixes"]))
    if "expires_at" in changes:
        account.expires_at = changes["expires_at"]
    if {"sip_username", "caller_ids", "ip_addresses"} & changes.keys():
        api.engine.hierarchy.set_credentials(
            account,
            sip_username=changes.get("sip_username", account.sip_username),
            caller_ids=tuple(changes.get("caller_ids", account.caller_ids)),
            ip_addresses=tuple(changes.get("ip_addresses", account.ip_addresses)),
        )
    if "status" in changes:
        return api.engine.set_status(account, Status(changes["status"]))
    return []


async def delete_account(api: Api, call: Call) -> Response:
    """Soft delete: live calls are ended and charged, the account leaves the engine, its
    devices, IP maps and caller IDs are released; its history stays."""
    _require_accounts(call)
    account = visible_account(api, call, call.path["number"])
    if account is call.scope.top() and not call.scope.unrestricted:
        raise forbidden("an account cannot delete itself")
    if account.children:
        raise conflict("the account has sub-accounts; delete or move them first")
    disconnects = api.engine.set_status(account, Status.DELETED)
    api.send_disconnects(disconnects)
    results = end_calls(api, account)
    for result in results:
        await api.commit(
            LedgerWrite(
                transfers=result.transfers,
                cdr=result.cdr,
                close_session=(result.cdr.nas, result.cdr.session_id),
            )
        )

    async def go(connection: Any) -> None:
        await connection.execute(
            """UPDATE accounts SET status = 'deleted', deleted_at = now(), updated_at = now(),
                   sip_username = NULL, ip_addresses = '{}', caller_ids = '{}',
                   blocked_prefixes = '{}'
               WHERE id = $1""",
            account.id,
        )

    await api.bridge.run(go)
    api.engine.hierarchy.remove(account)
    log.info("account_deleted", number=account.number, principal=call.principal.name)
    return Response(status_code=204)


def end_calls(api: Api, account: Account) -> list[StopResult]:
    """End every call through `account` now, charging what was used."""
    return api.engine.end_calls_through(account, "account-deleted")


# -- mass create, import, export ---------------------------------------------------------------


async def bulk_create(api: Api, call: Call) -> BulkResult:
    _require_accounts(call)
    body: BulkCreate = call.body
    if call.principal.role == "agent" and body.kind != "customer":
        raise forbidden("agents create customers only")
    if len(body.number_prefix) >= body.number_length:
        raise field_error("number_prefix", "must be shorter than number_length")
    parent = _parent_for(api, call, body.parent)
    _check_rate_group(api, parent, body.rate_group, "rate_group")
    credit_limit = money_in("credit_limit", body.credit_limit)
    balance = money_in("balance", body.balance) if body.balance is not None else 0
    free_digits = body.number_length - len(body.number_prefix)
    taken = api.engine.hierarchy.by_number
    in_use = sum(
        1 for n in taken if len(n) == body.number_length and n.startswith(body.number_prefix)
    )
    capacity = 10**free_digits - in_use
    if body.count > capacity:
        raise field_error("count", f"only {capacity} numbers left with this prefix and length")
    numbers: set[str] = set()
    while len(numbers) < body.count:
        tail = "".join(secrets.choice("0123456789") for _ in range(free_digits))
        number = body.number_prefix + tail
        if number not in taken:
            numbers.add(number)
    expires = _expiry("valid_days", None, body.valid_days, time.time())
    cards = [
        CreatedCard(
            number,
            "".join(secrets.choice("0123456789") for _ in range(body.pin_length))
            if body.pins
            else None,
        )
        for number in sorted(numbers)
    ]
    rows = [
        store.AccountRow(
            number=card.number,
            kind=body.kind,
            parent_id=parent.id,
            billing=body.billing,
            credit_limit_micros=credit_limit,
            currency=body.currency,
            rate_group_id=body.rate_group,
            max_concurrent=body.max_concurrent,
            cps=body.cps,
            pin=card.pin,
            expires_at=expires,
            valid_days=body.valid_days,
        )
        for card in cards
    ]
    try:
        ids = await api.bridge.run(store.create_accounts_bulk, rows)
    except Exception as error:
        if type(error).__name__ == "UniqueViolationError":
            raise conflict("a generated number was taken meanwhile; try again") from None
        raise
    transfers: list[Transfer] = []
    for account_id, row in zip(ids, rows, strict=True):
        row.id = account_id
        account = api.engine.hierarchy.add(_live_account(api, row, parent))
        if balance:
            transfers.extend(
                api.engine.topup(account.id, balance, f"initial:{account.id}", "initial").transfers
            )
    if transfers:
        await api.commit(LedgerWrite(transfers=tuple(transfers)))
    log.info("accounts_mass_created", count=len(cards), principal=call.principal.name)
    return BulkResult(count=len(cards), accounts=cards)


EXPORT_COLUMNS = [
    "number", "kind", "parent", "status", "billing", "credit_limit", "currency", "rate_group",
    "max_concurrent", "cps", "sip_username", "tech_prefix", "ip_addresses", "caller_ids",
    "cli_policy", "blocked_prefixes", "expires_at", "low_balance_threshold",
    *[f"profile.{name}" for name in Profile.__struct_fields__],
    "balance",
]  # fmt: skip
READ_ONLY_COLUMNS = {"balance", "status"}


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(value)
    return str(value)


async def export_accounts(api: Api, call: Call) -> Response:
    query: ExportQuery = call.query
    sql, args = _list_sql(api, call, query)

    async def go(connection: Any) -> Any:
        return await connection.fetch(sql + " ORDER BY a.id", *args)

    rows = await api.bridge.run(go)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    hierarchy = api.engine.hierarchy
    for row in rows:
        item = _account_out(api, row, hierarchy.get(row["id"]))
        data = msgspec.to_builtins(item)
        profile = data.pop("profile")
        writer.writerow(
            [
                _csv_value(profile.get(column[8:]))
                if column.startswith("profile.")
                else _csv_value(data.get(column))
                for column in EXPORT_COLUMNS
            ]
        )
    return Response(out.getvalue(), media_type="text/csv")


def _create_from_csv(record: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    profile: dict[str, str] = {}
    for column, raw in record.items():
        value = (raw or "").strip()
        if column is None or column in READ_ONLY_COLUMNS or value == "":
            continue
        if column.startswith("profile."):
            profile[column[8:]] = value
        elif column in ("ip_addresses", "caller_ids", "blocked_prefixes"):
            data[column] = value.split()
        elif column in ("max_concurrent", "cps", "rate_group", "valid_days"):
            data[column] = int(value) if value.isdigit() else value
        else:
            data[column] = value
    if profile:
        data["profile"] = profile
    return data


async def import_accounts(api: Api, call: Call) -> ImportReport:
    """CSV in, one report line per row: good rows are created, bad rows say why."""
    _require_accounts(call)
    text = call.body.decode("utf-8-sig", errors="replace")
    try:
        records = list(csv.DictReader(io.StringIO(text, newline="")))
        fieldnames = list(records[0].keys()) if records else next(csv.reader([text]), [])
    except csv.Error as error:
        raise invalid([FieldError("body", f"not valid CSV: {error}")]) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    unknown = [c for c in reader.fieldnames or [] if c not in [*EXPORT_COLUMNS, "password", "pin"]]
    if unknown or not reader.fieldnames:
        raise invalid([FieldError("header", f"unknown columns: {', '.join(unknown)}")])
    report: list[ImportRow] = []
    del fieldnames
    for index, record in enumerate(records, start=2):  # row 1 is the header
        data = _create_from_csv(record)
        number = data.get("number")
        try:
            body = convert(AccountCreate, data)
            if call.principal.role == "agent" and body.kind != "customer":
                raise forbidden("agents create customers only")
            row, parent = _row_from_create(api, call, body)
            account = await _insert(api, row, parent)
            report.append(ImportRow(index, account.number, "created"))
        except ApiError as error:
            errors = error.errors or [FieldError("row", error.detail or error.title)]
            report.append(ImportRow(index, number, "error", errors))
    created = sum(1 for r in report if r.status == "created")
    log.info("accounts_imported", created=created, principal=call.principal.name)
    return ImportReport(created=created, failed=len(report) - created, rows=report)


ROUTES: list[Route] = [
    Route("POST", "/v1/accounts", create_account, "create_account", "Create an account",
          body=AccountCreate, response=AccountOut, status=201, errors=(401, 403, 409, 422)),
    Route("GET", "/v1/accounts", list_accounts, "list_accounts",
          "List accounts (direct children or the whole subtree)", query=AccountQuery,
          listing=AccountOut, errors=(401, 422)),
    Route("POST", "/v1/accounts/bulk", bulk_create, "bulk_create_accounts",
          "Mass-create accounts (calling cards)", body=BulkCreate, response=BulkResult,
          status=201, errors=(401, 403, 409, 422)),
    Route("POST", "/v1/accounts/import", import_accounts, "import_accounts",
          "Create accounts from CSV; one report line per row", csv_request=True,
          response=ImportReport, errors=(401, 403, 415, 422)),
    Route("GET", "/v1/accounts/export", export_accounts, "export_accounts",
          "Accounts as CSV, with the list filters", query=ExportQuery, csv_response=True,
          errors=(401, 422)),
    Route("GET", "/v1/accounts/{number}", get_account, "get_account", "An account",
          response=AccountOut, errors=(401, 404)),
    Route("PATCH", "/v1/accounts/{number}", patch_account, "patch_account",
          "Change an account; the next call sees it", body=AccountPatch, response=AccountOut,
          errors=(401, 403, 404, 409, 422)),
    Route("DELETE", "/v1/accounts/{number}", delete_account, "delete_account",
          "Soft-delete an account: ends its calls, keeps its history", status=204,
          errors=(401, 403, 404, 409)),
]  # fmt: skip
