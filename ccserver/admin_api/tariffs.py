"""Rate groups and their rates: create and change tariffs, upsert rates, replace a whole deck
from CSV.

Postgres is the record and the engine's `rate_groups` the live copy: every write goes to the
database first, then to the live object, under the group's write lock so that the live copy
changes in the order the database did. A CSV replacement builds a new prefix index beside the old
one and swaps it in one assignment, so a call being rated sees the old deck or the new one, never
a mix.
"""

from __future__ import annotations

import csv
import heapq
import io
import operator
import weakref
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import asyncpg
import msgspec
import trio
from starlette.responses import Response

from ccserver.actors.account import AccountKind
from ccserver.admin_api.app import Api, Call, Page, Route
from ccserver.admin_api.auth import Permission, Role
from ccserver.admin_api.common import Cursor, Limit, Number, money_out, page, rfc3339
from ccserver.admin_api.problems import (
    ApiError,
    FieldError,
    conflict,
    forbidden,
    invalid,
    not_found,
)
from ccserver.ledger import store
from ccserver.money import MoneyError, Rounding, parse_money, percent_to_ppm
from ccserver.rating.prefix_index import PREFIX_DIGITS_MAX, is_digit_prefix
from ccserver.rating.tariff import INCREMENT_SECONDS_MAX, PPM, Rate, RateGroup, RateIndex

RATES_PER_REQUEST_MAX = 100_000  # JSON upsert; a bigger deck goes in as CSV
CSV_ROWS_MAX = 1_000_000  # the 64 MiB body bound allows about this many
ERRORS_REPORTED_MAX = 200  # a deck that is wrong everywhere answers with the first ones
CACHED_TEXTS_MAX = 100_000  # distinct amounts remembered while parsing one request
DESTINATION_CHARS_MAX = 200
MARKUP_PPM_MAX = 100 * PPM  # +10,000 %: beyond any real markup, well inside bigint
GROUP_NAME_CHARS_MAX = 100
LIST_LIMIT_DEFAULT = 100

CSV_COLUMNS = (
    "prefix",
    "destination",
    "connect_fee",
    "per_minute",
    "free_seconds",
    "first_increment",
    "next_increment",
)
CSV_COLUMNS_REQUIRED = frozenset(CSV_COLUMNS[:4])

# -- request and response bodies ---------------------------------------------------------------

GroupName = Annotated[str, msgspec.Meta(min_length=1, max_length=GROUP_NAME_CHARS_MAX)]
Precision = Annotated[
    int, msgspec.Meta(ge=0, le=6, description="decimals a charge is rounded to (0-6)")
]
PercentText = Annotated[
    str,
    msgspec.Meta(
        description="a percentage as a decimal string, at most 4 decimals, -100 or more",
        examples=["12.5"],
        max_length=24,
    ),
]
# Per-rate constraints are documented here but checked by `_check_rate`, which reports every bad
# row at once (a msgspec constraint would stop at the first).
PrefixText = Annotated[
    str,
    msgspec.Meta(
        description="the dialled digits this rate applies to (longest prefix wins)",
        extra_json_schema={"pattern": f"^[0-9]{{1,{PREFIX_DIGITS_MAX}}}$"},
        examples=["4420"],
    ),
]
RateMoneyText = Annotated[
    str,
    msgspec.Meta(
        description="a decimal amount, at most 6 decimals, not negative",
        extra_json_schema={"pattern": r"^([0-9]{1,13}(\.[0-9]{1,6})?|\.[0-9]{1,6})$"},
        examples=["0.0125"],
    ),
]
FreeSeconds = Annotated[
    int, msgspec.Meta(extra_json_schema={"minimum": 0, "maximum": INCREMENT_SECONDS_MAX})
]
IncrementSeconds = Annotated[
    int, msgspec.Meta(extra_json_schema={"minimum": 1, "maximum": INCREMENT_SECONDS_MAX})
]
PrefixCursor = Annotated[str, msgspec.Meta(pattern=f"^[0-9]{{1,{PREFIX_DIGITS_MAX}}}$")]


class RateGroupCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: GroupName
    owner: Number | None = None  # account number; default: the top of the caller's scope
    precision: Precision = 4
    rounding: Rounding = Rounding.UP
    markup_pct: PercentText = "0"


class RateGroupChange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: GroupName | msgspec.UnsetType = msgspec.UNSET
    precision: Precision | msgspec.UnsetType = msgspec.UNSET
    rounding: Rounding | msgspec.UnsetType = msgspec.UNSET
    markup_pct: PercentText | msgspec.UnsetType = msgspec.UNSET


class RateGroupView(msgspec.Struct, kw_only=True):
    id: int
    name: str
    owner: str | None  # account number; null: the operator's
    precision: int
    rounding: Rounding
    markup_pct: str
    rates: int  # how many rates the group holds
    created_at: str | None


class RateIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    prefix: PrefixText
    destination: str = ""
    connect_fee: RateMoneyText = "0"
    per_minute: RateMoneyText
    free_seconds: FreeSeconds = 0
    first_increment: IncrementSeconds = 1
    next_increment: IncrementSeconds = 1


class RatesUpsert(msgspec.Struct, forbid_unknown_fields=True):
    rates: Annotated[list[RateIn], msgspec.Meta(min_length=1, max_length=RATES_PER_REQUEST_MAX)]


class RateView(msgspec.Struct, kw_only=True):
    prefix: str
    destination: str
    connect_fee: str
    per_minute: str
    free_seconds: int
    first_increment: int
    next_increment: int


class RatesWritten(msgspec.Struct, kw_only=True):
    rate_group: int
    written: int  # rates inserted or changed by this request
    rates: int  # rates the group holds now


class GroupListQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Limit = LIST_LIMIT_DEFAULT
    cursor: Cursor | None = None


class RateListQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Limit = LIST_LIMIT_DEFAULT
    cursor: PrefixCursor | None = None  # the last prefix of the previous page
    prefix: PrefixCursor | None = None  # only rates whose prefix starts with these digits


# -- scope --------------------------------------------------------------------------------------


def _can_see(api: Api, call: Call, group: RateGroup) -> bool:
    if call.scope.unrestricted:
        return True
    if group.owner_id is None:
        # The operator's groups are what resellers buy at; every principal that sells (not a
        # customer) may see and assign them.
        return call.principal.role is not Role.CUSTOMER
    return call.scope.sees(api.engine.hierarchy.get(group.owner_id))


def _visible_group(api: Api, call: Call) -> RateGroup:
    group = api.engine.rate_groups.get(int(call.path["id"]))
    if group is None or not _can_see(api, call, group):
        raise not_found("rate group")
    return group


def _writable_group(api: Api, call: Call) -> RateGroup:
    call.require(Permission.RATE_GROUPS)
    group = _visible_group(api, call)
    if not call.scope.unrestricted and group.owner_id is None:
        raise forbidden("only operator staff change the operator's rate groups")
    return group


def _owner_id(api: Api, call: Call, number: str | None) -> int | None:
    """The owning account's id (None: the operator) for a new group, or a 422."""
    if number is None:
        if not call.scope.unrestricted and call.scope.root is None:
            raise invalid([FieldError("owner", "the token's scope account no longer exists")])
        owner = call.scope.top()
    else:
        found = api.engine.hierarchy.find_number(number)
        if found is None or not (call.scope.unrestricted or call.scope.sees(found)):
            raise invalid([FieldError("owner", "no such account")])
        owner = found
    if owner.kind is AccountKind.OPERATOR:
        return None
    if owner.kind is not AccountKind.RESELLER:
        raise invalid([FieldError("owner", "only the operator or a reseller owns rate groups")])
    return owner.id


_write_locks: weakref.WeakKeyDictionary[Api, dict[int, trio.Lock]] = weakref.WeakKeyDictionary()


def _write_lock(api: Api, group_id: int) -> trio.Lock:
    """Writes to one group are serialized so the live copy follows the database's order."""
    locks = _write_locks.setdefault(api, {})
    lock = locks.get(group_id)
    if lock is None:
        lock = locks[group_id] = trio.Lock()
    return lock


# -- rate groups --------------------------------------------------------------------------------


def _markup_ppm(text: str, errors: list[FieldError]) -> int:
    try:
        ppm = percent_to_ppm(text)
    except MoneyError as error:
        errors.append(FieldError("markup_pct", str(error).replace("amount", "percentage", 1)))
        return 0
    if ppm < -PPM:
        errors.append(FieldError("markup_pct", "must not be below -100"))
    elif ppm > MARKUP_PPM_MAX:
        errors.append(FieldError("markup_pct", "must not be above 10000"))
    return ppm


def _check_name(name: str, errors: list[FieldError]) -> str:
    stripped = name.strip()
    if not stripped:
        errors.append(FieldError("name", "must not be blank"))
    return stripped


def _view(group: RateGroup, owner_number: str | None, created_at: float | None) -> RateGroupView:
    return RateGroupView(
        id=group.id,
        name=group.name,
        owner=owner_number,
        precision=group.precision,
        rounding=group.rounding,
        markup_pct=money_out(group.markup_ppm * 100),
        rates=len(group.index),
        created_at=rfc3339(created_at),
    )


async def _fetch_group_facts(
    connection: Any, ids: Sequence[int]
) -> dict[int, tuple[str | None, float]]:
    """Owner numbers (also of deleted owners) and creation times, which the engine lacks."""
    rows = await connection.fetch(
        """SELECT g.id, a.number, extract(epoch from g.created_at)::float8 AS created_at
           FROM rate_groups g LEFT JOIN accounts a ON a.id = g.owner_id
           WHERE g.id = ANY($1::bigint[])""",
        list(ids),
    )
    return {row["id"]: (row["number"], row["created_at"]) for row in rows}


async def _views(api: Api, groups: list[RateGroup]) -> list[RateGroupView]:
    facts = await api.bridge.run(_fetch_group_facts, [group.id for group in groups])
    views = []
    for group in groups:
        owner_number, created_at = facts.get(group.id, (None, None))
        views.append(_view(group, owner_number, created_at))
    return views


async def _insert_group(
    connection: Any, name: str, owner_id: int | None, precision: int, rounding: str, markup: int
) -> int | None:
    try:
        return await store.create_rate_group(
            connection,
            name,
            owner_id=owner_id,
            precision=precision,
            rounding=rounding,
            markup_ppm=markup,
        )
    except asyncpg.UniqueViolationError:
        return None


async def create_group(api: Api, call: Call) -> RateGroupView:
    call.require(Permission.RATE_GROUPS)
    body: RateGroupCreate = call.body
    errors: list[FieldError] = []
    name = _check_name(body.name, errors)
    markup_ppm = _markup_ppm(body.markup_pct, errors)
    try:
        owner_id = _owner_id(api, call, body.owner)
    except ApiError as error:
        errors.extend(error.errors)
        owner_id = None
    if errors:
        raise invalid(errors)
    group_id = await api.bridge.run(
        _insert_group, name, owner_id, body.precision, body.rounding.value, markup_ppm
    )
    if group_id is None:
        raise conflict(f"the owner already has a rate group named {name!r}")
    assert group_id not in api.engine.rate_groups
    group = RateGroup(
        group_id,
        name,
        owner_id,
        body.precision,
        body.rounding,
        markup_ppm,
        space=api.engine.rate_space,
    )
    api.engine.rate_groups[group_id] = group
    return (await _views(api, [group]))[0]


async def list_groups(api: Api, call: Call) -> Page:
    query: GroupListQuery = call.query
    after = int(query.cursor) if query.cursor is not None else 0
    candidates: Iterable[RateGroup] = (
        group
        for group in api.engine.rate_groups.values()
        if group.id > after and _can_see(api, call, group)
    )
    groups = heapq.nsmallest(query.limit + 1, candidates, key=lambda group: group.id)
    listed = page(groups, query.limit, lambda group: group.id)
    listed.items = await _views(api, listed.items)
    return listed


async def get_group(api: Api, call: Call) -> RateGroupView:
    return (await _views(api, [_visible_group(api, call)]))[0]


async def _update_group(
    connection: Any, group_id: int, name: str, precision: int, rounding: str, markup: int
) -> bool:
    try:
        await connection.execute(
            """UPDATE rate_groups SET name = $2, precision = $3, rounding = $4, markup_ppm = $5
               WHERE id = $1""",
            group_id,
            name,
            precision,
            rounding,
            markup,
        )
    except asyncpg.UniqueViolationError:
        return False
    return True


async def change_group(api: Api, call: Call) -> RateGroupView:
    group = _writable_group(api, call)
    body: RateGroupChange = call.body
    errors: list[FieldError] = []
    new_name = None if body.name is msgspec.UNSET else _check_name(body.name, errors)
    new_markup_ppm = None
    if body.markup_pct is not msgspec.UNSET:
        new_markup_ppm = _markup_ppm(body.markup_pct, errors)
    if errors:
        raise invalid(errors)
    async with _write_lock(api, group.id):
        # Unchanged fields are read under the lock: a concurrent change to them is kept.
        name = group.name if new_name is None else new_name
        markup_ppm = group.markup_ppm if new_markup_ppm is None else new_markup_ppm
        precision = group.precision if body.precision is msgspec.UNSET else body.precision
        rounding = group.rounding if body.rounding is msgspec.UNSET else body.rounding
        if not await api.bridge.run(
            _update_group, group.id, name, precision, rounding.value, markup_ppm
        ):
            raise conflict(f"the owner already has a rate group named {name!r}")
        # No await between these: the next call rated sees all of the change or none of it.
        group.name = name
        group.precision = precision
        group.rounding = rounding
        group.markup_ppm = markup_ppm
    return (await _views(api, [group]))[0]


# -- rates ----------------------------------------------------------------------------------------

_MONEY_MESSAGE = "must be a decimal amount from 0 to 1000, at most 6 decimals"
_SECONDS_MESSAGE = "must be a whole number of seconds"
_INVALID = -1  # a cached parse that failed: every valid amount and count is >= 0

Problems = list[tuple[str, str]]  # (column, message) of one rate


# A rate's connect fee and per-minute price are at most 1,000 units: no real tariff comes near,
# and with it the longest call RADIUS can report (2^32 s) still costs less than a bigint holds.
RATE_MICROS_MAX = 1_000_000_000


class _RateChecker:
    """Turns edge values into Rates, appending every problem of a row.

    A deck repeats a few amounts and increments on most of its rows, so each distinct text is
    parsed once per import; this keeps 100,000 rows well under a second.
    """

    def __init__(self) -> None:
        self._micros: dict[str, int] = {}
        self._seconds: dict[str, int] = {}

    def micros(self, column: str, text: str, problems: Problems) -> int:
        micros = self._micros.get(text)
        if micros is None:
            try:
                micros = parse_money(text)
            except MoneyError:
                micros = _INVALID
            if micros < 0 or micros > RATE_MICROS_MAX:
                micros = _INVALID
            if len(self._micros) < CACHED_TEXTS_MAX:
                self._micros[text] = micros
        if micros == _INVALID:
            problems.append((column, f"{_MONEY_MESSAGE} (got {text!r})"))
            return 0
        return micros

    def seconds(self, column: str, text: str, default: int, problems: Problems) -> int:
        """A count of seconds from a CSV cell; empty means the default."""
        if not text:
            return default
        seconds = self._seconds.get(text)
        if seconds is None:
            seconds = int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else -1
            if len(self._seconds) < CACHED_TEXTS_MAX:
                self._seconds[text] = seconds
        if seconds == _INVALID:
            problems.append((column, f"{_SECONDS_MESSAGE} (got {text!r})"))
            return default
        return seconds

    @staticmethod
    def rate(
        prefix: str,
        destination: str,
        connect_fee_micros: int,
        per_minute_micros: int,
        free_seconds: int,
        first_increment: int,
        next_increment: int,
        problems: Problems,
    ) -> Rate:
        if not is_digit_prefix(prefix):
            problems.append(("prefix", f"must be 1-{PREFIX_DIGITS_MAX} digits (got {prefix!r})"))
        if len(destination) > DESTINATION_CHARS_MAX:
            problems.append(("destination", f"at most {DESTINATION_CHARS_MAX} characters"))
        if not 0 <= free_seconds <= INCREMENT_SECONDS_MAX:
            problems.append(("free_seconds", f"must be 0-{INCREMENT_SECONDS_MAX}"))
        if not 1 <= first_increment <= INCREMENT_SECONDS_MAX:
            problems.append(("first_increment", f"must be 1-{INCREMENT_SECONDS_MAX}"))
        if not 1 <= next_increment <= INCREMENT_SECONDS_MAX:
            problems.append(("next_increment", f"must be 1-{INCREMENT_SECONDS_MAX}"))
        return Rate(
            prefix,
            destination,
            connect_fee_micros,
            per_minute_micros,
            free_seconds,
            first_increment,
            next_increment,
        )


class _Errors:
    """Field errors up to a bound, and how many more there were."""

    def __init__(self) -> None:
        self.items: list[FieldError] = []
        self.dropped = 0

    def add(self, field: str, message: str) -> None:
        if len(self.items) < ERRORS_REPORTED_MAX:
            self.items.append(FieldError(field, message))
        else:
            self.dropped += 1

    def raise_if_any(self, what: str) -> None:
        if not self.items:
            return
        errors = list(self.items)
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
        if self.dropped:
            errors.append(FieldError("body", f"and {self.dropped} more errors"))
            detail += f"; and {self.dropped} more errors"
        raise invalid(errors, f"{what}: {detail}")


def rates_from_json(items: list[RateIn]) -> list[Rate]:
    """The rates of a JSON upsert, or a 422 naming every bad field of every bad rate."""
    check = _RateChecker()
    errors = _Errors()
    rates = []
    first_seen: dict[str, int] = {}
    for position, item in enumerate(items):
        problems: Problems = []
        rate = check.rate(
            item.prefix,
            item.destination,
            check.micros("connect_fee", item.connect_fee, problems),
            check.micros("per_minute", item.per_minute, problems),
            item.free_seconds,
            item.first_increment,
            item.next_increment,
            problems,
        )
        earlier = first_seen.setdefault(item.prefix, position)
        if earlier != position:
            # One statement cannot upsert a prefix twice; which one was meant is the user's call.
            problems.append(("prefix", f"{item.prefix} is also in rates[{earlier}]"))
        for column, message in problems:
            errors.add(f"rates[{position}].{column}", message)
        rates.append(rate)
    errors.raise_if_any("no rate was written")
    return rates


def _header(row: list[str]) -> dict[str, int]:
    names = [cell.strip().lower() for cell in row]
    errors: list[FieldError] = []
    for name in names:
        if name not in CSV_COLUMNS:
            errors.append(FieldError("row 1", f"unknown column {name!r}"))
    for name in CSV_COLUMNS:
        if names.count(name) > 1:
            errors.append(FieldError("row 1", f"column {name} appears twice"))
    for name in CSV_COLUMNS:
        if name in CSV_COLUMNS_REQUIRED and name not in names:
            errors.append(FieldError("row 1", f"missing column {name}"))
    if errors:
        raise invalid(
            errors,
            "the first row must name the columns: " + ",".join(CSV_COLUMNS) + " (the last three "
            "optional); " + "; ".join(e.message for e in errors),
        )
    return {name: names.index(name) for name in names}


def parse_rates_csv(body: bytes) -> list[Rate]:
    """A whole rate deck from CSV, or a 422 naming every bad row (by its line in the file)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise invalid([FieldError("body", f"not UTF-8 text: {error}")]) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header_row = next(reader, None)
    except csv.Error as error:
        raise invalid([FieldError("row 1", str(error))]) from None
    if header_row is None:
        raise invalid([FieldError("body", "empty: the first row must name the columns")])
    columns = _header(header_row)
    width = len(header_row)
    # An absent optional column reads the empty cell appended to every row.
    cells_of = operator.itemgetter(*(columns.get(name, width) for name in CSV_COLUMNS))
    check = _RateChecker()
    errors = _Errors()
    rates: list[Rate] = []
    first_seen: dict[str, int] = {}
    while True:
        try:
            row = next(reader, None)
        except csv.Error as error:
            errors.add(f"row {reader.line_num}", str(error))
            break
        if row is None:
            break
        line = reader.line_num
        if len(row) != width:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line
            errors.add(f"row {line}", f"has {len(row)} fields, the header has {width}")
            continue
        if len(rates) >= CSV_ROWS_MAX:
            raise invalid([FieldError(f"row {line}", f"at most {CSV_ROWS_MAX} rates per file")])
        row.append("")
        prefix, destination, connect_fee, per_minute, free, first, step = cells_of(row)
        problems: Problems = []
        rate = check.rate(
            prefix.strip(),
            destination.strip(),
            check.micros("connect_fee", connect_fee.strip(), problems),
            check.micros("per_minute", per_minute.strip(), problems),
            check.seconds("free_seconds", free.strip(), 0, problems),
            check.seconds("first_increment", first.strip(), 1, problems),
            check.seconds("next_increment", step.strip(), 1, problems),
            problems,
        )
        earlier = first_seen.setdefault(rate.prefix, line)
        if earlier != line:
            problems.append(("prefix", f"{rate.prefix} is also on row {earlier}"))
        if problems:
            for column, message in problems:
                errors.add(f"row {line}", f"{column} {message}")
        else:
            rates.append(rate)
    errors.raise_if_any("nothing was changed (rows are lines of the file, the header is row 1)")
    return rates


def _index_of(rates: list[Rate]) -> RateIndex:
    index = RateIndex()  # of no group yet: the group takes it on the event loop
    for rate in rates:
        index.put(rate.prefix, rate)
    return index


def _parse_and_index(body: bytes) -> tuple[list[Rate], RateIndex]:
    rates = parse_rates_csv(body)
    return rates, _index_of(rates)


async def upsert_rates(api: Api, call: Call) -> RatesWritten:
    group = _writable_group(api, call)
    body: RatesUpsert = call.body
    # Validating 100,000 rows takes a while: off the event loop, so calls keep being answered.
    rates = await trio.to_thread.run_sync(rates_from_json, body.rates)
    async with _write_lock(api, group.id):
        await api.bridge.run(store.upsert_rates, group.id, rates)
        for rate in rates:
            group.put(rate)
    return RatesWritten(rate_group=group.id, written=len(rates), rates=len(group.index))


async def replace_rates(api: Api, call: Call) -> RatesWritten:
    group = _writable_group(api, call)
    body: bytes = call.body
    assert isinstance(body, bytes)
    rates, index = await trio.to_thread.run_sync(_parse_and_index, body)
    async with _write_lock(api, group.id):
        await api.bridge.run(store.replace_rates, group.id, rates)
        group.index = index  # one assignment: the old deck or the new one, never a mix
    return RatesWritten(rate_group=group.id, written=len(rates), rates=len(index))


async def _fetch_rates(
    connection: Any, group_id: int, after: str | None, starting: str | None, limit: int | None
) -> list[Any]:
    return list(
        await connection.fetch(
            """SELECT prefix, destination, connect_fee_micros, per_minute_micros, free_seconds,
                      first_increment_seconds, next_increment_seconds
               FROM rates
               WHERE rate_group_id = $1
                 AND ($2::text IS NULL OR prefix > $2)
                 AND ($3::text IS NULL OR starts_with(prefix, $3))
               ORDER BY prefix
               LIMIT $4""",
            group_id,
            after,
            starting,
            limit,
        )
    )


def _rate_view(row: Any) -> RateView:
    return RateView(
        prefix=row[0],
        destination=row[1],
        connect_fee=money_out(row[2]),
        per_minute=money_out(row[3]),
        free_seconds=row[4],
        first_increment=row[5],
        next_increment=row[6],
    )


def rates_csv(rows: list[Any]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(
            (row[0], row[1], money_out(row[2]), money_out(row[3]), row[4], row[5], row[6])
        )
    return out.getvalue().encode()


def _wants_csv(call: Call) -> bool:
    accept = call.request.headers.get("accept", "")
    return any(part.split(";")[0].strip() == "text/csv" for part in accept.split(","))


async def list_rates(api: Api, call: Call) -> Page | Response:
    group = _visible_group(api, call)
    query: RateListQuery = call.query
    if _wants_csv(call):
        # The whole deck (narrowed by `prefix`), the format PUT takes back.
        rows = await api.bridge.run(_fetch_rates, group.id, None, query.prefix, None)
        return Response(
            await trio.to_thread.run_sync(rates_csv, rows),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="rate-group-{group.id}.csv"'},
        )
    rows = await api.bridge.run(_fetch_rates, group.id, query.cursor, query.prefix, query.limit + 1)
    listed = page(rows, query.limit, lambda row: row[0])
    listed.items = [_rate_view(row) for row in listed.items]
    return listed


_GROUP = "/v1/rate-groups/{id:int}"

ROUTES: list[Route] = [
    Route("POST", "/v1/rate-groups", create_group, "rate_groups_create",
          "Create a rate group (a tariff)", body=RateGroupCreate, response=RateGroupView,
          status=201, errors=(401, 403, 409, 422)),
    Route("GET", "/v1/rate-groups", list_groups, "rate_groups_list",
          "Rate groups the caller sees: its subtree's and the operator's",
          query=GroupListQuery, listing=RateGroupView, errors=(401, 422)),
    Route("GET", _GROUP, get_group, "rate_groups_get", "One rate group",
          response=RateGroupView, errors=(401, 404)),
    Route("PATCH", _GROUP, change_group, "rate_groups_change",
          "Change a rate group; the next call is rated with the change",
          body=RateGroupChange, response=RateGroupView, errors=(401, 403, 404, 409, 422)),
    Route("POST", _GROUP + "/rates", upsert_rates, "rate_groups_rates_upsert",
          "Insert or change rates by prefix; every bad row is reported and none is written",
          body=RatesUpsert, response=RatesWritten, errors=(401, 403, 404, 422)),
    Route("PUT", _GROUP + "/rates", replace_rates, "rate_groups_rates_replace",
          "Replace every rate of the group from CSV (prefix,destination,connect_fee,per_minute,"
          "free_seconds,first_increment,next_increment), all or nothing",
          response=RatesWritten, csv_request=True, errors=(401, 403, 404, 422)),
    Route("GET", _GROUP + "/rates", list_rates, "rate_groups_rates_list",
          "The group's rates by prefix (JSON pages, or the whole deck with Accept: text/csv)",
          query=RateListQuery, listing=RateView, csv_response=True, errors=(401, 404, 422)),
]  # fmt: skip
