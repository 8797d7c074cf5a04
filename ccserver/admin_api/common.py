"""What every route module needs: money and time at the edge, scope checks, pagination."""

from __future__ import annotations

import datetime
from typing import Annotated, Any

import msgspec

from ccserver.actors.account import Account
from ccserver.admin_api.app import LIST_LIMIT_MAX, Api, Call, Page
from ccserver.admin_api.problems import field_error, not_found
from ccserver.money import MoneyError, format_money, parse_money

MONEY_DECIMALS = 4
MoneyText = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[+-]?([0-9]{1,13}(\.[0-9]{1,6})?|\.[0-9]{1,6})$",
        description="a decimal amount, at most 6 decimals",
        examples=["12.5000"],
    ),
]
Number = Annotated[str, msgspec.Meta(pattern=r"^[0-9A-Za-z._-]{1,32}$", max_length=32)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=LIST_LIMIT_MAX)]
Cursor = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,19}$", max_length=19)]


def money_out(micros: int) -> str:
    return format_money(micros, MONEY_DECIMALS)


# One amount the API takes (a top-up, a balance, a credit limit) is at most a billion units:
# far above any real payment, and low enough that a full batch of them cannot overflow the
# ledger's bigint sums.
AMOUNT_MICROS_MAX = 10**15


def money_in(field: str, text: str, *, positive: bool = False, signed: bool = False) -> int:
    try:
        micros = parse_money(text)
    except MoneyError as error:
        raise field_error(field, str(error)) from None
    if abs(micros) > AMOUNT_MICROS_MAX:
        raise field_error(field, "must be at most 1000000000 in absolute value")
    if positive and micros <= 0:
        raise field_error(field, "must be greater than 0")
    if not signed and not positive and micros < 0:
        raise field_error(field, "must not be negative")
    return micros


def rfc3339(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(field: str, text: str) -> float:
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise field_error(field, "must be an RFC 3339 time, e.g. 2026-01-31T00:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def visible_account(api: Api, call: Call, number: str, what: str = "account") -> Account:
    """The account named `number` if the caller may see it; otherwise 404, never 403."""
    account = api.engine.hierarchy.find_number(number)
    if account is None or account.parent is None or not call.scope.sees(account):
        raise not_found(what)
    return account


def page(items: list[Any], limit: int, cursor_of: Any) -> Page:
    """`items` was fetched with limit + 1 rows: the extra one says there is a next page."""
    if len(items) > limit:
        items = items[:limit]
        return Page(items=items, next_cursor=str(cursor_of(items[-1])))
    return Page(items=items, next_cursor=None)


def idempotency_key(call: Call, default: str) -> str:
    """A client-chosen Idempotency-Key makes a retried POST apply once."""
    key = call.request.headers.get("idempotency-key", "").strip()
    if not key:
        return default
    if len(key) > 200:
        raise field_error("Idempotency-Key", "at most 200 characters")
    return f"client:{call.principal.id}:{key}"
