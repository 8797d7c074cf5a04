"""Top-ups, transfers, live sessions and CDRs over real HTTP against `ccserver serve`.

Accounts, open calls (the `sessions` table, restored into the engine at start-up), old journal
entries and CDRs are written to the database before the server starts: the accounts endpoints
and the RADIUS front end are built elsewhere. Not covered here, for want of a RADIUS front end:
a session in the `authorized` state (an authorization awaiting its Start) and a CDR written by a
real call stop.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from ccserver.ledger.store import AccountRow, create_account, create_rate_group, upsert_rates
from ccserver.rating.tariff import Rate
from tests.server_harness import Server, ok, problem, running, start_server

MICROS = 1_000_000
# number -> (kind, parent number or None for the operator)
TREE = {
    "r1": ("reseller", None),
    "c1": ("customer", "r1"),
    "t1": ("customer", "r1"),
    "t2": ("customer", "r1"),
    "r1sub": ("reseller", "r1"),
    "c3": ("customer", "r1sub"),
    "r2": ("reseller", None),
    "c2": ("customer", "r2"),
    "bulk": ("customer", "r2"),
}
WEIRD_SESSION_ID = "call/1 ?&=%#ü"
OPEN_CALLS = [
    ("nas-a", WEIRD_SESSION_ID, "c1"),
    ("nas-a", "call-3", "c3"),
    ("nas-b", "call-2", "c2"),
]
# (session id, customer, [(level, cost in micros)], start time)
CDRS = [
    ("cdr-a", "c1", [("c1", 120_000), ("r1", 80_000)], "2026-01-10T10:00:00+00:00"),
    ("cdr-b", "c3", [("c3", 300_000), ("r1sub", 200_000), ("r1", 100_000)],
     "2026-01-11T10:00:00+00:00"),
    ("cdr-c", "c2", [("c2", 500_000), ("r2", 400_000)], "2026-01-12T10:00:00+00:00"),
]  # fmt: skip
BULK_CDRS = 100_001  # one over the CSV cap, all in 2020
SINCE_2026 = "from=2026-01-01T00:00:00Z"


def run_sql(database_url: str, go: Any) -> Any:
    async def main() -> Any:
        connection = await asyncpg.connect(database_url)
        try:
            return await go(connection)
        finally:
            await connection.close()

    return asyncio.run(main())


async def _create_tree(connection: Any, tree: dict[str, tuple[str, str | None]]) -> dict[str, int]:
    # A free tariff and a credit limit: restored calls cost nothing and never deplete anyone.
    group = await create_rate_group(connection, "free")
    await upsert_rates(
        connection,
        group,
        [Rate(prefix="1", destination="NANP", connect_fee_micros=0, per_minute_micros=0)],
    )
    ids = {"operator": 1}
    for number, (kind, parent) in tree.items():
        ids[number] = await create_account(
            connection,
            AccountRow(
                number=number,
                kind=kind,
                parent_id=ids[parent or "operator"],
                billing="postpaid",
                credit_limit_micros=100 * MICROS,
                rate_group_id=group,
            ),
        )
    return ids


async def _seed(connection: Any) -> dict[str, int]:
    ids = await _create_tree(connection, TREE)
    for nas, session_id, number in OPEN_CALLS:
        await connection.execute(
            """INSERT INTO sessions (nas, session_id, account_id, username, calling, called,
                                     started_at)
               VALUES ($1, $2, $3, $4, '15550001', '15559999', now() - interval '30 seconds')""",
            nas,
            session_id,
            ids[number],
            number,
        )
    for session_id, number, levels, start in CDRS:
        await _insert_cdr(connection, ids, session_id, number, levels, start)
    await connection.execute(
        """INSERT INTO cdrs (nas, session_id, account_id, level_account_ids, called, start_time,
                             stop_time, duration_seconds, billable_seconds, cost_micros, levels)
           SELECT 'nas-bulk', 'b' || g, $1, ARRAY[$1, $2]::bigint[], '1555',
                  timestamptz '2020-01-01Z' + g * interval '1 second',
                  timestamptz '2020-01-01Z' + (g + 60) * interval '1 second',
                  60, 60, 1000, $3::jsonb
           FROM generate_series(1, $4::int) AS g""",
        ids["bulk"],
        ids["r2"],
        json.dumps(
            [
                _level(ids, "bulk", 1000, "1555", 60),
                _level(ids, "r2", 500, "1555", 60),
            ]
        ),
        BULK_CDRS,
    )
    # An old call charge, as the ledger writer would have posted it: c1 pays r1, r1 pays the
    # operator, and the balances move with it.
    for key, debit, credit, amount in (
        ("call:nas-a/old:c1", ids["c1"] * 4, ids["r1"] * 4 + 1, 120_000),
        ("call:nas-a/old:r1", ids["r1"] * 4, 1 * 4 + 1, 80_000),
    ):
        await connection.execute(
            """INSERT INTO transfers (debit_account_id, credit_account_id, amount_micros, kind,
                                      reference, idempotency_key, batch_id, created_at)
               VALUES ($1, $2, $3, 'call', 'nas-a/old', $4, 1, '2026-01-10T10:05:00Z')""",
            debit,
            credit,
            amount,
            key,
        )
        await connection.execute(
            """UPDATE balances SET balance_micros = balance_micros + CASE
                   WHEN ledger_account_id = $1 THEN -$3::bigint ELSE $3::bigint END
               WHERE ledger_account_id IN ($1, $2)""",
            debit,
            credit,
            amount,
        )
    return ids


def _level(ids: dict[str, int], number: str, cost: int, prefix: str, seconds: int) -> Any:
    return {
        "account_id": ids[number],
        "account_number": number,
        "prefix": prefix,
        "cost_micros": cost,
        "billable_seconds": seconds,
    }


async def _insert_cdr(
    connection: Any,
    ids: dict[str, int],
    session_id: str,
    number: str,
    levels: list[tuple[str, int]],
    start: str,
) -> None:
    await connection.execute(
        """INSERT INTO cdrs (nas, session_id, account_id, level_account_ids, calling, called,
                             start_time, stop_time, duration_seconds, billable_seconds,
                             cost_micros, levels, disconnect_cause)
           VALUES ('nas-a', $1, $2, $3, '15550001', '15559999', $4::timestamptz,
                   $4::timestamptz + interval '65 seconds', 65, 66, $5, $6::jsonb, 'normal')""",
        session_id,
        ids[number],
        [ids[level] for level, _ in levels],
        asyncpg_time(start),
        levels[0][1],
        json.dumps([_level(ids, level, cost, "1555", 66) for level, cost in levels]),
    )


def asyncpg_time(text: str) -> Any:
    import datetime

    return datetime.datetime.fromisoformat(text)


class World:
    def __init__(self, server: Server, database_url: str, ids: dict[str, int]) -> None:
        self.server = server
        self.database_url = database_url
        self.ids = ids
        self.admin = server.client()
        self._clients: list[httpx.Client] = [self.admin]
        self.tokens: dict[str, httpx.Client] = {}

    def client_for(self, name: str, role: str, scope: str) -> httpx.Client:
        created = ok(
            self.admin.post("/v1/tokens", json={"name": name, "role": role, "scope": scope}), 201
        )
        client = self.server.client(created["token"])
        self._clients.append(client)
        self.tokens[name] = client
        return client

    def ledger_balance(self, number: str) -> int:
        ledger_id = self.ids[number] * 4
        return int(
            run_sql(
                self.database_url,
                lambda c: c.fetchval(
                    "SELECT balance_micros FROM balances WHERE ledger_account_id = $1", ledger_id
                ),
            )
        )

    def close(self) -> None:
        for client in self._clients:
            client.close()


@pytest.fixture(scope="module")
def world(postgres_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    name = postgres_server.create_database()
    url = postgres_server.dsn(name)
    ids = run_sql(url, _seed)
    server = start_server(url, tmp_path_factory.mktemp("ledger_views"))
    world = World(server, url, ids)
    try:
        for name_, role, scope in (
            ("r1", "reseller", "r1"),
            ("r1sub", "reseller", "r1sub"),
            ("r2", "reseller", "r2"),
            ("c1", "customer", "c1"),
            ("r1-admin", "admin", "r1"),
        ):
            world.client_for(name_, role, scope)
        yield world
    finally:
        world.close()
        code = server.stop()
        postgres_server.drop_database(name)
    assert code == 0, server.log()


def walk(client: httpx.Client, url: str, limit: int) -> list[Any]:
    """Every item of a list endpoint, a page of `limit` at a time."""
    items: list[Any] = []
    cursor = None
    separator = "&" if "?" in url else "?"
    for _ in range(1000):
        page = ok(
            client.get(f"{url}{separator}limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        )
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pages never end")


# -- top-ups ------------------------------------------------------------------------------------


def test_topup_credits_the_account_once_committed(world: World) -> None:
    before = world.ledger_balance("t1")
    created = ok(
        world.admin.post("/v1/accounts/t1/topups", json={"amount": "10.5", "note": "cash"}), 201
    )
    assert created["amount"] == "10.5000" and created["account"] == "t1"
    assert created["note"] == "cash" and created["created_at"].endswith("Z")
    assert created["balance"] == "10.5000"
    # Acknowledged means committed: the ledger already holds it.
    assert world.ledger_balance("t1") == before + 10_500_000
    again = ok(world.admin.post("/v1/accounts/t1/topups", json={"amount": "0.000001"}), 201)
    assert again["balance"] == "10.500001" and again["id"] > created["id"]
    assert again["key"].startswith("topup:") and again["key"] != created["key"]
    listed = ok(world.admin.get("/v1/accounts/t1/transfers?kind=topup"))["items"]
    assert [item["id"] for item in listed] == [again["id"], created["id"]]
    assert listed[1] | {"created_at": None} == {
        "id": created["id"],
        "key": created["key"],
        "created_at": None,
        "kind": "topup",
        "ledger_account": "balance",
        "direction": "credit",
        "amount": "10.5000",
        "counterparty": "r1",
        "counterparty_ledger_account": "funding",
        "reference": "cash",
    }


def test_who_may_top_up_what(world: World) -> None:
    r1, c1, r2 = world.tokens["r1"], world.tokens["c1"], world.tokens["r2"]
    before = world.ledger_balance("t1")
    # A reseller credits its customers (payments_sub) ...
    ok(r1.post("/v1/accounts/t1/topups", json={"amount": "1"}), 201)
    ok(r1.post("/v1/accounts/c3/topups", json={"amount": "1"}), 201)
    # ... but not itself (payments_self is not a reseller's), nor anyone outside its subtree.
    problem(r1.post("/v1/accounts/r1/topups", json={"amount": "1"}), 403)
    for number in ("c2", "r2", "operator", "nope"):
        problem(r1.post(f"/v1/accounts/{number}/topups", json={"amount": "1"}), 404)
    # A customer token holds no payment rights; an account it cannot see is 404 first.
    problem(c1.post("/v1/accounts/c1/topups", json={"amount": "1"}), 403)
    problem(c1.post("/v1/accounts/t1/topups", json={"amount": "1"}), 404)
    problem(r2.post("/v1/accounts/t1/topups", json={"amount": "1"}), 404)
    # An admin scoped to r1 has payments_self: it may credit r1 itself.
    ok(world.tokens["r1-admin"].post("/v1/accounts/r1/topups", json={"amount": "2"}), 201)
    assert world.ledger_balance("t1") == before + MICROS


def test_bad_topups_are_422_naming_every_field(world: World) -> None:
    before = world.ledger_balance("t1")
    for amount, message in (
        ("0", "must be greater than 0"),
        ("-5", "must be greater than 0"),
        ("1000000000.000001", "at most 1000000000"),
    ):
        body = problem(world.admin.post("/v1/accounts/t1/topups", json={"amount": amount}), 422)
        assert [error["field"] for error in body["errors"]] == ["amount"]
        assert message in body["errors"][0]["message"]
    body = problem(
        world.admin.post(
            "/v1/accounts/t1/topups", json={"amount": "1.2345678", "note": "x" * 501, "colour": 1}
        ),
        422,
    )
    assert {error["field"] for error in body["errors"]} == {"amount", "note", "colour"}
    body = problem(world.admin.post("/v1/accounts/t1/topups", json={}), 422)
    assert body["errors"] == [{"field": "amount", "message": "is required"}]
    problem(world.admin.post("/v1/accounts/t1/topups", json=["1"]), 422)
    assert world.ledger_balance("t1") == before


def test_idempotency_key_applies_a_retry_once(world: World) -> None:
    before = world.ledger_balance("t2")
    headers = {"Idempotency-Key": "order-17"}
    first = ok(
        world.admin.post("/v1/accounts/t2/topups", json={"amount": "5"}, headers=headers), 201
    )
    retry = ok(
        world.admin.post("/v1/accounts/t2/topups", json={"amount": "5"}, headers=headers), 201
    )
    assert retry == first
    assert world.ledger_balance("t2") == before + 5 * MICROS
    # The same key for something else is a client bug, not a second payment.
    problem(world.admin.post("/v1/accounts/t2/topups", json={"amount": "6"}, headers=headers), 409)
    problem(world.admin.post("/v1/accounts/t1/topups", json={"amount": "5"}, headers=headers), 409)
    # Keys belong to their principal: another caller's "order-17" is its own payment.
    other = ok(
        world.tokens["r1"].post("/v1/accounts/t2/topups", json={"amount": "5"}, headers=headers),
        201,
    )
    assert other["id"] != first["id"]
    assert world.ledger_balance("t2") == before + 10 * MICROS
    body = problem(
        world.admin.post(
            "/v1/accounts/t2/topups", json={"amount": "5"}, headers={"Idempotency-Key": "k" * 201}
        ),
        422,
    )
    assert body["errors"][0]["field"] == "Idempotency-Key"


def test_a_retry_after_a_restart_is_not_applied_twice(database_url: str, tmp_path: Path) -> None:
    ids = run_sql(
        database_url, lambda c: _create_tree(c, {"r": ("reseller", None), "c": ("customer", "r")})
    )
    headers = {"Idempotency-Key": "payment-1"}
    with running(database_url, tmp_path / "first") as server, server.client() as admin:
        first = ok(admin.post("/v1/accounts/c/topups", json={"amount": "7"}, headers=headers), 201)
        assert first["balance"] == "7.0000"

    # A new process remembers no keys; the ledger does.
    with running(database_url, tmp_path / "second") as server, server.client() as admin:
        retry = ok(admin.post("/v1/accounts/c/topups", json={"amount": "7"}, headers=headers), 201)
        assert retry["id"] == first["id"] and retry["balance"] == "7.0000"
        # The engine's balance was put back: the next top-up starts from 7, not 14.
        after = ok(admin.post("/v1/accounts/c/topups", json={"amount": "1"}), 201)
        assert after["balance"] == "8.0000"
        problem(admin.post("/v1/accounts/c/topups", json={"amount": "8"}, headers=headers), 409)
        again = ok(admin.post("/v1/accounts/c/topups", json={"amount": "1"}), 201)
        assert again["balance"] == "9.0000"
    balance = run_sql(
        database_url,
        lambda c: c.fetchval(
            "SELECT balance_micros FROM balances WHERE ledger_account_id = $1", ids["c"] * 4
        ),
    )
    assert balance == 9 * MICROS


# -- transfers ----------------------------------------------------------------------------------


def test_transfers_of_an_account_newest_first_with_filters(world: World) -> None:
    topup = ok(world.admin.post("/v1/accounts/c1/topups", json={"amount": "3"}), 201)
    items = walk(world.admin, "/v1/accounts/c1/transfers", 1000)
    assert items[0]["id"] == topup["id"]
    created = [item["created_at"] for item in items]
    assert created == sorted(created, reverse=True)
    call = next(item for item in items if item["kind"] == "call")
    assert call | {"id": 0} == {
        "id": 0,
        "key": "call:nas-a/old:c1",
        "created_at": "2026-01-10T10:05:00Z",
        "kind": "call",
        "ledger_account": "balance",
        "direction": "debit",
        "amount": "0.1200",
        "counterparty": "r1",
        "counterparty_ledger_account": "revenue",
        "reference": "nas-a/old",
    }
    assert [item["id"] for item in walk(world.admin, "/v1/accounts/c1/transfers", 1)] == [
        item["id"] for item in items
    ]
    calls = ok(world.admin.get("/v1/accounts/c1/transfers?kind=call"))["items"]
    assert [item["key"] for item in calls] == ["call:nas-a/old:c1"]
    january = ok(
        world.admin.get(
            "/v1/accounts/c1/transfers?from=2026-01-10T10:05:00Z&to=2026-01-10T10:05:01Z"
        )
    )
    assert [item["key"] for item in january["items"]] == ["call:nas-a/old:c1"]
    assert ok(world.admin.get("/v1/accounts/c1/transfers?to=2026-01-10T10:05:00Z"))["items"] == []

    # r1's side: the call credited its revenue, its funding paid for the top-up of c1.
    r1_items = walk(world.admin, "/v1/accounts/r1/transfers", 1000)
    revenue = [item for item in r1_items if item["ledger_account"] == "revenue"]
    assert [(item["direction"], item["amount"], item["counterparty"]) for item in revenue] == [
        ("credit", "0.1200", "c1")
    ]
    funding = walk(world.admin, "/v1/accounts/r1/transfers?ledger=funding", 1000)
    assert {item["ledger_account"] for item in funding} == {"funding"}
    assert topup["id"] in {item["id"] for item in funding if item["direction"] == "debit"}
    operator_side = [item for item in r1_items if item["counterparty"] == "operator"]
    assert [item["amount"] for item in operator_side if item["kind"] == "call"] == ["0.0800"]


def test_transfers_respect_scope(world: World) -> None:
    r1, r2, c1 = world.tokens["r1"], world.tokens["r2"], world.tokens["c1"]
    # A customer sees its own entries; its reseller is not its to see.
    own = walk(c1, "/v1/accounts/c1/transfers", 1000)
    assert own and {item["counterparty"] for item in own} == {None}
    by_reseller = walk(r1, "/v1/accounts/c1/transfers", 1000)
    assert [item["id"] for item in by_reseller] == [item["id"] for item in own]
    assert {item["counterparty"] for item in by_reseller} == {"r1"}
    # The reseller sees the operator side of its own account as anonymous too.
    assert None in {item["counterparty"] for item in walk(r1, "/v1/accounts/r1/transfers", 1000)}
    ok(r1.get("/v1/accounts/c3/transfers"))
    for client, number in ((r1, "c2"), (r2, "c1"), (c1, "t1"), (c1, "r1"), (r1, "operator")):
        problem(client.get(f"/v1/accounts/{number}/transfers"), 404)


def test_transfers_query_is_validated(world: World) -> None:
    body = problem(world.admin.get("/v1/accounts/c1/transfers?from=yesterday&to=soon"), 422)
    assert {error["field"] for error in body["errors"]} == {"from", "to"}
    body = problem(world.admin.get("/v1/accounts/c1/transfers?from=2026-13-01&to=2026-02-30"), 422)
    assert {error["field"] for error in body["errors"]} == {"from", "to"}
    body = problem(
        world.admin.get("/v1/accounts/c1/transfers?ledger=cash&limit=1001&cursor=-1&colour=red"),
        422,
    )
    assert {error["field"] for error in body["errors"]} == {"ledger", "limit", "cursor", "colour"}
    # A cursor that names no entry is an empty page, not an error.
    assert (
        ok(world.admin.get("/v1/accounts/c1/transfers?cursor=9999999999999999999"))["items"] == []
    )


# -- sessions -----------------------------------------------------------------------------------


def _sessions(client: httpx.Client, query: str = "") -> list[Any]:
    return walk(client, "/v1/sessions" + query, 1000)


def test_sessions_list_live_calls_within_scope(world: World) -> None:
    everything = _sessions(world.admin)
    by_account = {item["account"]: item for item in everything}
    assert set(by_account) == {"c1", "c2", "c3"}
    first = by_account["c1"]
    assert first["nas"] == "nas-a" and first["session_id"] == WEIRD_SESSION_ID
    assert first["state"] == "active" and first["levels"] == ["c1", "r1"]
    assert first["calling"] == "15550001" and first["called"] == "15559999"
    assert first["started_at"].endswith("Z") and first["elapsed_seconds"] >= 29
    # The id is the documented base64url of [nas, session id], safe in a URL path.
    padded = first["id"] + "=" * (-len(first["id"]) % 4)
    assert json.loads(base64.urlsafe_b64decode(padded)) == ["nas-a", WEIRD_SESSION_ID]
    assert by_account["c3"]["levels"] == ["c3", "r1sub", "r1"]
    assert [item["id"] for item in walk(world.admin, "/v1/sessions", 1)] == [
        item["id"] for item in everything
    ]

    # A reseller sees its subtree's calls; each level above its own stays hidden.
    assert {item["account"] for item in _sessions(world.tokens["r1"])} == {"c1", "c3"}
    sub = _sessions(world.tokens["r1sub"])
    assert [(item["account"], item["levels"]) for item in sub] == [("c3", ["c3", "r1sub"])]
    assert [(item["account"], item["levels"]) for item in _sessions(world.tokens["c1"])] == [
        ("c1", ["c1"])
    ]
    assert [item["account"] for item in _sessions(world.tokens["r2"])] == ["c2"]
    assert [item["account"] for item in _sessions(world.tokens["r1"], "?account=r1sub")] == ["c3"]
    assert _sessions(world.admin, "?account=t1") == []
    for client, number in (
        (world.tokens["r1"], "c2"),
        (world.tokens["c1"], "r1"),
        (world.admin, "nope"),
    ):
        problem(client.get(f"/v1/sessions?account={number}"), 404)
    body = problem(world.admin.get("/v1/sessions?limit=0&cursor=x&colour=1"), 422)
    assert {error["field"] for error in body["errors"]} == {"limit", "cursor", "colour"}


def test_delete_session_asks_the_nas_to_end_the_call(world: World) -> None:
    by_account = {item["account"]: item for item in _sessions(world.admin)}
    target = by_account["c1"]
    assert not target["disconnect_requested"]
    # Another reseller's customer: as if it did not exist.
    problem(world.tokens["r2"].delete(f"/v1/sessions/{target['id']}"), 404)
    problem(world.tokens["r1sub"].delete(f"/v1/sessions/{target['id']}"), 404)
    for bad in ("nope", "e30", "WyJuYXMtYSIsICJub3BlIl0", "%25%25"):
        problem(world.admin.delete(f"/v1/sessions/{bad}"), 404)
    asked = ok(world.tokens["r1"].delete(f"/v1/sessions/{target['id']}"), 202)
    assert asked == {
        "id": target["id"],
        "nas": "nas-a",
        "session_id": WEIRD_SESSION_ID,
        "reason": "operator",
    }
    # The call stays listed until the NAS reports its stop; the request is on record.
    listed = {item["account"]: item for item in _sessions(world.admin)}
    assert listed["c1"]["disconnect_requested"] and not listed["c3"]["disconnect_requested"]
    # Its own customer may hang up its call too (asking again is harmless).
    ok(world.tokens["c1"].delete(f"/v1/sessions/{target['id']}"), 202)
    # The request reached the protocol side (logged there, whichever front end takes it).
    deadline = time.monotonic() + 5
    while not _disconnects_logged(world.server.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _disconnects_logged(world.server.log()), world.server.log()[-2000:]


def _disconnects_logged(log: str) -> bool:
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if (
            str(entry.get("event", "")).startswith("disconnect")
            and entry.get("session") == WEIRD_SESSION_ID
            and entry.get("reason") == "operator"
        ):
            return True
    return False


# -- CDRs ---------------------------------------------------------------------------------------


def _cdrs(client: httpx.Client, query: str = SINCE_2026) -> list[Any]:
    return walk(client, "/v1/cdrs?" + query, 1000)


def _levels(item: Any) -> list[tuple[str, str]]:
    return [(level["account"], level["cost"]) for level in item["levels"]]


def test_cdrs_show_each_caller_its_subtree_and_its_levels(world: World) -> None:
    everything = _cdrs(world.admin)
    assert [item["session_id"] for item in everything] == ["cdr-c", "cdr-b", "cdr-a"]
    b = everything[1]
    assert (
        b["account"] == "c3" and b["cost"] == "0.3000" and b["start_time"] == "2026-01-11T10:00:00Z"
    )
    assert b["stop_time"] == "2026-01-11T10:01:05Z" and b["duration_seconds"] == 65
    assert b["billable_seconds"] == 66 and b["disconnect_cause"] == "normal" and b["authorized"]
    assert _levels(b) == [("c3", "0.3000"), ("r1sub", "0.2000"), ("r1", "0.1000")]
    assert b["levels"][0] == {
        "account": "c3",
        "prefix": "1555",
        "cost": "0.3000",
        "billable_seconds": 66,
    }

    r1 = _cdrs(world.tokens["r1"])
    assert [item["session_id"] for item in r1] == ["cdr-b", "cdr-a"]
    assert _levels(r1[0]) == [("c3", "0.3000"), ("r1sub", "0.2000"), ("r1", "0.1000")]
    sub = _cdrs(world.tokens["r1sub"])
    assert [(item["session_id"], _levels(item)) for item in sub] == [
        ("cdr-b", [("c3", "0.3000"), ("r1sub", "0.2000")])
    ]
    mine = _cdrs(world.tokens["c1"])
    assert [(item["session_id"], _levels(item)) for item in mine] == [("cdr-a", [("c1", "0.1200")])]
    assert [item["session_id"] for item in _cdrs(world.tokens["r2"])] == ["cdr-c"]
    # Without a time filter the reseller's bulk history follows, oldest last.
    r2_page = ok(world.tokens["r2"].get("/v1/cdrs?limit=3"))
    assert [item["session_id"] for item in r2_page["items"]] == [
        "cdr-c",
        f"b{BULK_CDRS}",
        f"b{BULK_CDRS - 1}",
    ]
    assert r2_page["next_cursor"] is not None


def test_cdr_filters_and_pages(world: World) -> None:
    assert [item["session_id"] for item in _cdrs(world.admin, SINCE_2026 + "&account=r1sub")] == [
        "cdr-b"
    ]
    assert [
        item["session_id"] for item in _cdrs(world.tokens["r1"], SINCE_2026 + "&account=c1")
    ] == ["cdr-a"]
    assert [item["session_id"] for item in _cdrs(world.tokens["c1"], "account=c1")] == ["cdr-a"]
    window = "from=2026-01-10T10:00:00Z&to=2026-01-11T10:00:00Z"
    assert [item["session_id"] for item in _cdrs(world.admin, window)] == ["cdr-a"]
    assert [item["id"] for item in walk(world.admin, "/v1/cdrs?" + SINCE_2026, 1)] == [
        item["id"] for item in _cdrs(world.admin)
    ]
    for client, number in (
        (world.tokens["r1"], "c2"),
        (world.tokens["c1"], "r1"),
        (world.tokens["r2"], "c3"),
    ):
        problem(client.get(f"/v1/cdrs?account={number}"), 404)
    body = problem(world.admin.get("/v1/cdrs?from=yesterday&to=soon&limit=5000"), 422)
    assert {error["field"] for error in body["errors"]} == {"from", "to", "limit"}


def test_cdrs_as_csv(world: World) -> None:
    response = world.tokens["r1"].get("/v1/cdrs?" + SINCE_2026, headers={"Accept": "text/csv"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert "x-next-cursor" not in response.headers
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["session_id"] for row in rows] == ["cdr-b", "cdr-a"]
    assert rows[0]["cost"] == "0.3000" and rows[0]["levels"] == "c3=0.3000;r1sub=0.2000;r1=0.1000"
    assert rows[0]["start_time"] == "2026-01-11T10:00:00Z" and rows[0]["authorized"] == "true"
    customer = world.tokens["c1"].get("/v1/cdrs", headers={"Accept": "text/csv"})
    assert [row["levels"] for row in csv.DictReader(io.StringIO(customer.text))] == ["c1=0.1200"]
    assert response.text.splitlines()[0].split(",")[:4] == [
        "id",
        "start_time",
        "stop_time",
        "account",
    ]


def test_cdr_csv_stops_at_its_cap_and_says_where_to_go_on(world: World) -> None:
    headers = {"Accept": "text/csv"}
    response = world.admin.get("/v1/cdrs?account=bulk", headers=headers)
    assert response.status_code == 200
    lines = response.text.splitlines()
    assert len(lines) == 1 + 100_000
    cursor = response.headers["x-next-cursor"]
    rest = world.admin.get(f"/v1/cdrs?account=bulk&cursor={cursor}", headers=headers)
    assert [row["session_id"] for row in csv.DictReader(io.StringIO(rest.text))] == ["b1"]
    assert "x-next-cursor" not in rest.headers


def test_openapi_documents_these_routes(world: World) -> None:
    document = ok(world.admin.get("/openapi.json"))
    paths = document["paths"]
    assert "201" in paths["/v1/accounts/{number}/topups"]["post"]["responses"]
    assert "202" in paths["/v1/sessions/{id}"]["delete"]["responses"]
    cdrs = paths["/v1/cdrs"]["get"]
    assert "text/csv" in cdrs["responses"]["200"]["content"]
    assert {p["name"] for p in cdrs["parameters"]} == {"account", "from", "to", "limit", "cursor"}
    assert {"TopupCreate", "TransferItem", "SessionItem", "CdrItem"} <= set(
        document["components"]["schemas"]
    )
