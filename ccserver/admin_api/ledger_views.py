"""Money and calls as the admin API shows them: top-ups, an account's transfers, live sessions
(with operator disconnect) and CDRs (JSON pages or CSV).

Top-ups go through the engine (the next call sees the money at once) and are acknowledged only
after the ledger has committed them. Sessions are read from the engine, the only place that
knows what is live; transfers and CDRs are read from Postgres. A scoped caller sees only its
subtree: a call, transfer or CDR level outside it is left out, and a named account outside it
answers 404.
"""

from __future__ import annotations

import base64
import binascii
import csv
import heapq
import io
import uuid
from typing import Annotated, Any

import msgspec
import trio
from msgspec import Meta
from starlette.responses import Response

from ccserver.actors.account import Account
from ccserver.actors.engine import EngineError
from ccserver.actors.messages import Transfer
from ccserver.actors.session import Session, SessionState
from ccserver.admin_api.app import LIST_LIMIT_MAX, Api, Call, Page, Route
from ccserver.admin_api.auth import Permission, Scope
from ccserver.admin_api.common import (
    Cursor,
    Limit,
    MoneyText,
    Number,
    idempotency_key,
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
    conflict,
    field_error,
    invalid,
    not_found,
)
from ccserver.ledger.writer import KIND_CODES, LedgerWrite, LedgerWriteError, ledger_account_id
from ccserver.money import MICROS_PER_UNIT

# One top-up is at most a billion units: far above any real payment, and far enough below the
# bigint range of the ledger that no sum of top-ups can overflow a balance in practice.
TOPUP_MICROS_MAX = 1_000_000_000 * MICROS_PER_UNIT
NOTE_LENGTH_MAX = 500
LIST_LIMIT_DEFAULT = 100
CSV_ROWS_MAX = 100_000
ROW_ID_MAX = 2**63 - 1  # bigint: a larger cursor can only mean "from the newest"
SESSION_ID_TEXT_MAX = 1024
LEDGER_KINDS = {code: kind for kind, code in KIND_CODES.items()}
assert LIST_LIMIT_DEFAULT <= LIST_LIMIT_MAX

# The shape is checked with the other query fields (so one 422 names them all); a date that
# fits the shape but does not exist (month 13) is caught when it is parsed.
TimeText = Annotated[
    str,
    Meta(
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?)?"
        r"(Z|[+-][0-9]{2}:[0-9]{2})?$",
        description="RFC 3339, e.g. 2026-01-31T00:00:00Z (UTC when no offset is given)",
        examples=["2026-01-31T00:00:00Z"],
    ),
]
TransferKind = Annotated[
    str, Meta(pattern=r"^[a-z_]{1,32}$", description="call | topup | adjustment")
]
LedgerKind = Annotated[str, Meta(pattern=r"^(balance|revenue|funding)$")]


# -- top-ups ------------------------------------------------------------------------------------


class TopupCreate(msgspec.Struct, forbid_unknown_fields=True):
    amount: MoneyText
    note: Annotated[str, Meta(max_length=NOTE_LENGTH_MAX)] = ""


class TopupOut(msgspec.Struct):
    id: int  # the transfer's id in the journal
    key: str  # its idempotency key
    account: str
    amount: str
    balance: str  # the account's posted balance after it
    note: str
    created_at: str | None


async def create_topup(api: Api, call: Call) -> TopupOut:
    account = visible_account(api, call, call.path["number"])
    # Crediting one's own account and crediting the accounts one manages are separate rights.
    if not call.scope.unrestricted and account is call.scope.top():
        call.require(Permission.PAYMENTS_SELF)
    else:
        call.require(Permission.PAYMENTS_SUB)
    body: TopupCreate = call.body
    amount_micros = money_in("amount", body.amount, positive=True)
    if amount_micros > TOPUP_MICROS_MAX:
        raise field_error("amount", f"at most {money_out(TOPUP_MICROS_MAX)}")
    key = idempotency_key(call, default=f"topup:{uuid.uuid4()}")
    try:
        result = api.engine.topup(account.id, amount_micros, key, body.note)
    except EngineError as error:
        raise field_error("amount", str(error)) from None
    if result.duplicate and not _is_topup_of(result.transfers, account, amount_micros):
        raise _key_reused()
    try:
        applied = await api.commit(LedgerWrite(transfers=result.transfers))
    except LedgerWriteError:
        # Refused for good (not a transient outage, which the writer retries): the money is not
        # in the ledger, so it must not stay in memory either.
        if not result.duplicate:
            _shift_balance(api, account, -amount_micros)
        raise
    balance_micros = result.balance_micros
    if not applied and not result.duplicate:
        # The ledger had this key committed before, but the engine did not remember it: the
        # process restarted since, and the balance it loaded already holds that top-up. The
        # engine has just applied it a second time in memory; undo that.
        _shift_balance(api, account, -amount_micros)
        balance_micros = account.balance_micros
    elif applied and result.duplicate:
        # The engine had seen the key, so it did not apply it now, yet this write is the one
        # that landed: the first attempt was refused (and undone above), or lost the race to
        # this retry in a concurrent batch (and undid itself just above). Apply it once, now.
        _shift_balance(api, account, amount_micros)
        balance_micros = account.balance_micros
    row = await api.bridge.run(_fetch_transfer, key)
    assert row is not None, "a committed transfer is in the journal"
    if (
        row["credit_account_id"] != ledger_account_id(account.id, "balance")
        or row["amount_micros"] != amount_micros
        or row["kind"] != "topup"
    ):
        raise _key_reused()
    return TopupOut(
        id=row["id"],
        key=key,
        account=account.number,
        amount=money_out(amount_micros),
        balance=money_out(balance_micros),
        note=row["reference"],
        created_at=rfc3339(row["created_at"]),
    )


def _is_topup_of(transfers: tuple[Transfer, ...], account: Account, amount_micros: int) -> bool:
    return (
        len(transfers) == 1
        and transfers[0].kind == "topup"
        and transfers[0].credit_account_id == account.id
        and transfers[0].amount_micros == amount_micros
    )


def _key_reused() -> ApiError:
    return conflict("this Idempotency-Key was used for a different request")


def _shift_balance(api: Api, account: Account, delta_micros: int) -> None:
    account.balance_micros += delta_micros
    # Less money can bring the account's depletion forward: its deadline is recomputed now.
    api.engine._reschedule(account, int(api.engine.clock() * 1000))


async def _fetch_transfer(connection: Any, key: str) -> Any:
    return await connection.fetchrow(
        """SELECT id, credit_account_id, amount_micros, kind, reference,
                  extract(epoch from created_at)::float8 AS created_at
           FROM transfers WHERE idempotency_key = $1""",
        key,
    )


# -- an account's transfers ---------------------------------------------------------------------


class TransferQuery(msgspec.Struct, forbid_unknown_fields=True):
    from_: TimeText | None = msgspec.field(default=None, name="from")  # created_at >= from
    to: TimeText | None = None  # created_at < to
    kind: TransferKind | None = None
    ledger: LedgerKind | None = None  # only this one of the account's ledger accounts
    limit: Limit = LIST_LIMIT_DEFAULT
    cursor: Cursor | None = None


class TransferItem(msgspec.Struct):
    id: int
    key: str
    created_at: str | None
    kind: str  # call | topup | adjustment
    ledger_account: str  # which of the account's ledger accounts: balance | revenue | funding
    direction: str  # credit | debit, as that ledger account sees it
    amount: str
    counterparty: str | None  # the other side's account number, when the caller sees it
    counterparty_ledger_account: str
    reference: str


async def list_transfers(api: Api, call: Call) -> Page:
    account = visible_account(api, call, call.path["number"])
    query: TransferQuery = call.query
    start, end = _time_range(query.from_, query.to)
    kinds = [query.ledger] if query.ledger is not None else list(KIND_CODES)
    ledger_ids = [ledger_account_id(account.id, kind) for kind in kinds]
    rows = await api.bridge.run(
        _fetch_transfers, ledger_ids, query.kind, start, end, _cursor(query.cursor), query.limit + 1
    )
    owned = set(ledger_ids)
    hierarchy = api.engine.hierarchy
    items = []
    for row in rows:
        debit = row["debit_account_id"] in owned
        mine, other = (
            (row["debit_account_id"], row["credit_account_id"])
            if debit
            else (row["credit_account_id"], row["debit_account_id"])
        )
        party = hierarchy.get(other // 4)
        items.append(
            TransferItem(
                id=row["id"],
                key=row["idempotency_key"],
                created_at=rfc3339(row["created_at_epoch"]),
                kind=row["kind"],
                ledger_account=LEDGER_KINDS[mine % 4],
                direction="debit" if debit else "credit",
                amount=money_out(row["amount_micros"]),
                counterparty=party.number if party is not None and call.scope.sees(party) else None,
                counterparty_ledger_account=LEDGER_KINDS[other % 4],
                reference=row["reference"],
            )
        )
    return page(items, query.limit, lambda item: item.id)


class _Sql:
    """Numbered parameters for a statement built from the filters actually given: a filter left
    out is left out of the plan too (no `$n IS NULL OR ...` for the planner to see through)."""

    def __init__(self) -> None:
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"


async def _fetch_transfers(
    connection: Any,
    ledger_ids: list[int],
    kind: str | None,
    start: float | None,
    end: float | None,
    cursor: int | None,
    limit: int,
) -> list[Any]:
    sql = _Sql()
    filters = []
    if kind is not None:
        filters.append(f"kind = {sql.arg(kind)}")
    if start is not None:
        filters.append(f"created_at >= to_timestamp({sql.arg(start)})")
    if end is not None:
        filters.append(f"created_at < to_timestamp({sql.arg(end)})")
    if cursor is not None:
        last = await connection.fetchrow(
            "SELECT created_at, id FROM transfers WHERE id = $1", cursor
        )
        if last is None:
            return []
        at, row_id = sql.arg(last["created_at"]), sql.arg(last["id"])
        filters.append(f"created_at <= {at} AND (created_at, id) < ({at}, {row_id})")
    bound = sql.arg(limit)
    # One branch per (ledger account, side): each is a backward scan of its (account,
    # created_at) index that stops after `limit` rows, however long the account's history.
    branches = []
    for ledger_id in ledger_ids:
        placeholder = sql.arg(ledger_id)
        for column in ("debit_account_id", "credit_account_id"):
            where = " AND ".join([f"{column} = {placeholder}", *filters])
            branches.append(
                f"""(SELECT id, debit_account_id, credit_account_id, amount_micros, kind,
                            reference, idempotency_key, created_at
                     FROM transfers WHERE {where}
                     ORDER BY created_at DESC, id DESC LIMIT {bound})"""
            )
    statement = f"""SELECT *, extract(epoch from created_at)::float8 AS created_at_epoch
        FROM ({" UNION ALL ".join(branches)}) AS touching
        ORDER BY created_at DESC, id DESC LIMIT {bound}"""
    return list(await connection.fetch(statement, *sql.args))


# -- live sessions ------------------------------------------------------------------------------


class SessionQuery(msgspec.Struct, forbid_unknown_fields=True):
    account: Number | None = None  # only calls through this account (its subtree)
    limit: Limit = LIST_LIMIT_DEFAULT
    cursor: Cursor | None = None


# The engine's session key (NAS, Acct-Session-Id) as unpadded base64url of a JSON array of
# strings: it survives any character a NAS puts in a session id (a slash, a space, a '#') and
# goes as is into a URL path.
SessionIdText = Annotated[
    str,
    Meta(
        description="base64url (unpadded) of the JSON array [nas, session id]; "
        "use it as is in DELETE /v1/sessions/{id}",
        examples=["WyJuYXMtYSIsImNhbGwtMSJd"],
    ),
]


class SessionItem(msgspec.Struct):
    id: SessionIdText
    account: str
    nas: str
    session_id: str  # empty while an authorization waits for its accounting Start
    username: str
    calling: str
    called: str
    state: str  # authorized (holds placed, not started) | active
    created_at: str | None  # when it was authorized (or first reported)
    started_at: str | None  # when it was answered; null while only authorized
    elapsed_seconds: int
    granted_seconds: int | None
    levels: list[str]  # the chain, customer first, as far as the caller sees it
    disconnect_requested: bool


class DisconnectRequested(msgspec.Struct):
    id: SessionIdText
    nas: str
    session_id: str
    reason: str


def session_id_text(key: tuple[str, ...]) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(list(key))).rstrip(b"=").decode()


def session_key_of(text: str) -> tuple[str, ...] | None:
    if not text or len(text) > SESSION_ID_TEXT_MAX:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return tuple(msgspec.json.decode(raw, type=list[str]))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        return None


async def list_sessions(api: Api, call: Call) -> Page:
    query: SessionQuery = call.query
    scope = call.scope
    hierarchy = api.engine.hierarchy
    under = visible_account(api, call, query.account) if query.account is not None else None
    cursor = _cursor(query.cursor)

    def wanted(session: Session) -> bool:
        if cursor is not None and session.num >= cursor:
            return False
        if under is not None:
            return hierarchy.is_ancestor(under, session.account)
        # The customer is the lowest level of its chain: whoever sees any level sees it.
        return scope.sees(session.account)

    now_ms = int(api.engine.clock() * 1000)
    # Newest first by the engine's sequence number, which is also the cursor: one pass over the
    # live calls per page, keeping only a page's worth.
    chosen = heapq.nlargest(
        query.limit + 1,
        (s for s in api.engine.sessions.values() if wanted(s)),
        key=lambda s: s.num,
    )
    numbered = [(s.num, _session_item(s, scope, now_ms)) for s in chosen]
    paged = page(numbered, query.limit, lambda pair: pair[0])
    return Page(items=[item for _, item in paged.items], next_cursor=paged.next_cursor)


def _session_item(session: Session, scope: Scope, now_ms: int) -> SessionItem:
    active = session.state is SessionState.ACTIVE
    return SessionItem(
        id=session_id_text(session.key),
        account=session.account.number,
        nas=session.nas,
        session_id=session.session_id,
        username=session.username,
        calling=session.calling,
        called=session.called,
        state="active" if active else "authorized",
        created_at=rfc3339(session.created_ms / 1000),
        started_at=rfc3339(session.start_ms / 1000) if active else None,
        elapsed_seconds=max(0, (now_ms - session.start_ms) // 1000) if active else 0,
        granted_seconds=session.granted_seconds,
        levels=[c.account.number for c in session.levels if scope.sees(c.account)],
        disconnect_requested=session.disconnect_requested,
    )


async def disconnect_session(api: Api, call: Call) -> DisconnectRequested:
    key = session_key_of(call.path["id"])
    session = api.engine.sessions.get(key) if key is not None else None
    # Only an answered call can be hung up; an authorization alone lapses by itself.
    if (
        key is None
        or session is None
        or session.state is not SessionState.ACTIVE
        or not call.scope.sees(session.account)
    ):
        raise not_found("active session")
    event = api.engine.disconnect(key, "operator")
    assert event is not None, "an active session can always be asked to disconnect"
    api.send_disconnects([event])
    return DisconnectRequested(
        id=call.path["id"], nas=event.nas, session_id=event.session_id, reason=event.reason
    )


# -- CDRs ---------------------------------------------------------------------------------------


class CdrQuery(msgspec.Struct, forbid_unknown_fields=True):
    account: Number | None = None  # only calls through this account (its subtree)
    from_: TimeText | None = msgspec.field(default=None, name="from")  # start_time >= from
    to: TimeText | None = None  # start_time < to
    limit: Limit = LIST_LIMIT_DEFAULT
    cursor: Cursor | None = None


class CdrLevel(msgspec.Struct):
    account: str
    prefix: str
    cost: str  # what this level pays its parent for the call
    billable_seconds: int


class CdrItem(msgspec.Struct):
    id: int
    account: str
    nas: str
    session_id: str
    calling: str
    called: str
    start_time: str | None
    stop_time: str | None
    duration_seconds: int
    billable_seconds: int
    cost: str  # what the customer pays
    levels: list[CdrLevel]  # the chain, customer first, as far as the caller sees it
    disconnect_cause: str
    authorized: bool


class _StoredLevel(msgspec.Struct):
    account_id: int
    account_number: str
    prefix: str
    cost_micros: int
    billable_seconds: int


_decode_levels = msgspec.json.Decoder(list[_StoredLevel]).decode
CSV_COLUMNS = [
    "id", "start_time", "stop_time", "account", "nas", "session_id", "calling", "called",
    "duration_seconds", "billable_seconds", "cost", "disconnect_cause", "authorized", "levels",
]  # fmt: skip


async def list_cdrs(api: Api, call: Call) -> Page | Response:
    query: CdrQuery = call.query
    scope = call.scope
    start, end = _time_range(query.from_, query.to)
    # A CDR belongs to every level of its chain; what a scoped caller sees is what passed
    # through its scope account (the GIN index on level_account_ids answers `@>`).
    contains: list[int] = []
    if query.account is not None:
        contains.append(visible_account(api, call, query.account).id)
    root: int | None = None
    if not scope.unrestricted:
        if scope.root is None:  # its scope account was deleted: it sees nothing
            return Page(items=[], next_cursor=None)
        root = scope.root.id
        if root not in contains:
            contains.append(root)
    as_csv = "text/csv" in call.request.headers.get("accept", "")
    limit = CSV_ROWS_MAX if as_csv else query.limit
    rows = await api.bridge.run(_fetch_cdrs, contains, start, end, _cursor(query.cursor), limit + 1)
    if as_csv:
        more = len(rows) > limit
        rows = rows[:limit]
        # Up to CSV_ROWS_MAX rows of formatting: off the trio thread, so requests keep flowing.
        text = await trio.to_thread.run_sync(_cdr_csv, rows, root)
        headers = {"Content-Disposition": 'attachment; filename="cdrs.csv"'}
        if more:
            # Over the cap: the client goes on from here, like with a next page.
            headers["X-Next-Cursor"] = str(rows[-1]["id"])
        return Response(text, media_type="text/csv; charset=utf-8", headers=headers)
    items = [_cdr_item(row, root) for row in rows]
    return page(items, query.limit, lambda item: item.id)


def _visible_levels(levels: list[_StoredLevel], root: int | None) -> list[_StoredLevel]:
    """The chain is customer first: a scoped caller sees it up to its own scope account."""
    if root is None:
        return levels
    for index, level in enumerate(levels):
        if level.account_id == root:
            return levels[: index + 1]
    return []


def _cdr_item(row: Any, root: int | None) -> CdrItem:
    levels = _visible_levels(_decode_levels(row["levels"]), root)
    return CdrItem(
        id=row["id"],
        account=row["account_number"],
        nas=row["nas"],
        session_id=row["session_id"],
        calling=row["calling"],
        called=row["called"],
        start_time=rfc3339(row["start_time"]),
        stop_time=rfc3339(row["stop_time"]),
        duration_seconds=row["duration_seconds"],
        billable_seconds=row["billable_seconds"],
        cost=money_out(row["cost_micros"]),
        levels=[
            CdrLevel(
                account=level.account_number,
                prefix=level.prefix,
                cost=money_out(level.cost_micros),
                billable_seconds=level.billable_seconds,
            )
            for level in levels
        ],
        disconnect_cause=row["disconnect_cause"],
        authorized=row["authorized"],
    )


def _cdr_csv(rows: list[Any], root: int | None) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        levels = _visible_levels(_decode_levels(row["levels"]), root)
        writer.writerow(
            [
                row["id"],
                rfc3339(row["start_time"]),
                rfc3339(row["stop_time"]),
                row["account_number"],
                row["nas"],
                row["session_id"],
                row["calling"],
                row["called"],
                row["duration_seconds"],
                row["billable_seconds"],
                money_out(row["cost_micros"]),
                row["disconnect_cause"],
                "true" if row["authorized"] else "false",
                # Each visible level as number=cost, customer first.
                ";".join(f"{lv.account_number}={money_out(lv.cost_micros)}" for lv in levels),
            ]
        )
    return out.getvalue()


async def _fetch_cdrs(
    connection: Any,
    contains: list[int],
    start: float | None,
    end: float | None,
    cursor: int | None,
    limit: int,
) -> list[Any]:
    sql = _Sql()
    filters = []
    if contains:
        filters.append(f"c.level_account_ids @> {sql.arg(contains)}::bigint[]")
    if start is not None:
        filters.append(f"c.start_time >= to_timestamp({sql.arg(start)})")
    if end is not None:
        filters.append(f"c.start_time < to_timestamp({sql.arg(end)})")
    if cursor is not None:
        last = await connection.fetchrow("SELECT start_time, id FROM cdrs WHERE id = $1", cursor)
        if last is None:
            return []
        at, row_id = sql.arg(last["start_time"]), sql.arg(last["id"])
        filters.append(f"c.start_time <= {at} AND (c.start_time, c.id) < ({at}, {row_id})")
    where = f"WHERE {' AND '.join(filters)}" if filters else ""
    statement = f"""
        SELECT c.id, c.nas, c.session_id, a.number AS account_number, c.calling, c.called,
               extract(epoch from c.start_time)::float8 AS start_time,
               extract(epoch from c.stop_time)::float8 AS stop_time,
               c.duration_seconds, c.billable_seconds, c.cost_micros, c.levels::text AS levels,
               c.disconnect_cause, c.authorized
        FROM cdrs c JOIN accounts a ON a.id = c.account_id
        {where}
        ORDER BY c.start_time DESC, c.id DESC LIMIT {sql.arg(limit)}"""
    return list(await connection.fetch(statement, *sql.args))


# -- shared -------------------------------------------------------------------------------------


def _time_range(start_text: str | None, end_text: str | None) -> tuple[float | None, float | None]:
    """Both bounds parsed, every bad one reported at once."""
    errors: list[FieldError] = []

    def one(field: str, text: str | None) -> float | None:
        if text is None:
            return None
        try:
            return parse_time(field, text)
        except ApiError as error:
            errors.extend(error.errors)
            return None

    start, end = one("from", start_text), one("to", end_text)
    if errors:
        raise invalid(errors)
    return start, end


def _cursor(text: str | None) -> int | None:
    return min(int(text), ROW_ID_MAX) if text is not None else None


ROUTES: list[Route] = [
    Route("POST", "/v1/accounts/{number}/topups", create_topup, "create_topup",
          "Credit an account from its parent; answered once committed to the ledger (an "
          "Idempotency-Key header makes a retry apply once)",
          body=TopupCreate, response=TopupOut, status=201, errors=(401, 403, 404, 409, 422)),
    Route("GET", "/v1/accounts/{number}/transfers", list_transfers, "list_transfers",
          "The journal entries touching an account's ledger accounts, newest first",
          query=TransferQuery, listing=TransferItem),
    Route("GET", "/v1/sessions", list_sessions, "list_sessions",
          "Calls in progress the caller sees, newest first (live engine state)",
          query=SessionQuery, listing=SessionItem),
    Route("DELETE", "/v1/sessions/{id}", disconnect_session, "disconnect_session",
          "Ask the NAS to end an active call (RADIUS Disconnect / Diameter ASR)",
          response=DisconnectRequested, status=202, errors=(401, 404)),
    Route("GET", "/v1/cdrs", list_cdrs, "list_cdrs",
          f"Call records the caller sees, newest first; Accept: text/csv gives CSV "
          f"(at most {CSV_ROWS_MAX} rows, X-Next-Cursor when there are more)",
          query=CdrQuery, listing=CdrItem, csv_response=True),
]  # fmt: skip
