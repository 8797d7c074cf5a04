"""Rate groups and rates over real HTTP against a running server: create, list, scopes, change,
upsert, CSV replace and export; and, in process, that every change reaches the live engine."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from ccserver.actors.account import Account, AccountKind
from ccserver.admin_api.app import Api, create_app
from ccserver.admin_api.auth import ROLE_PERMISSIONS, Role, TokenStore
from ccserver.config import AdminApiConfig, Config
from ccserver.ledger.bridge import Bridge
from ccserver.ledger.loader import build_engine, fetch_snapshot
from ccserver.ledger.store import AccountRow, create_account
from tests.server_harness import Server, ok, problem

# -- a shared world: one server for the module, principals made in SQL before it starts ----------


@dataclass
class World:
    server: Server
    admin: httpx.Client
    tokens: dict[str, str]  # principal name -> bearer token

    def client(self, who: str) -> httpx.Client:
        return self.server.client(self.tokens[who])


async def seed_principals(dsn: str, principals: list[tuple[str, str, str | None]]) -> dict:
    """Accounts r1 (reseller) > r2 (reseller), c1 (customer); r3 (reseller); and a token for
    each (name, role, scope number). Tokens are loaded at start-up, so this runs before it."""
    connection = await asyncpg.connect(dsn)
    try:
        ids = {"operator": 1}
        for number, kind, parent in [
            ("r1", "reseller", "operator"),
            ("r2", "reseller", "r1"),
            ("c1", "customer", "r1"),
            ("r3", "reseller", "operator"),
        ]:
            ids[number] = await create_account(
                connection, AccountRow(number=number, kind=kind, parent_id=ids[parent])
            )
        tokens = {}
        for name, role, scope in principals:
            permissions = sorted(p.value for p in ROLE_PERMISSIONS[Role(role)])
            principal_id = await connection.fetchval(
                """INSERT INTO principals (name, role, scope_account_id, permissions)
                   VALUES ($1, $2, $3, $4::jsonb) RETURNING id""",
                name,
                role,
                ids[scope] if scope else None,
                json.dumps(permissions),
            )
            token = "ccs_" + secrets.token_urlsafe(24)
            await connection.execute(
                "INSERT INTO tokens (principal_id, token_sha256) VALUES ($1, $2)",
                principal_id,
                hashlib.sha256(token.encode()).digest(),
            )
            tokens[name] = token
        return tokens
    finally:
        await connection.close()


PRINCIPALS = [
    ("reseller_r1", "reseller", "r1"),
    ("reseller_r2", "reseller", "r2"),
    ("reseller_r3", "reseller", "r3"),
    ("agent_r1", "agent", "r1"),
    ("customer_c1", "customer", "c1"),
]


@pytest.fixture(scope="module")
def world(postgres_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    name = postgres_server.create_database()
    dsn = postgres_server.dsn(name)
    tokens = asyncio.run(seed_principals(dsn, PRINCIPALS))
    server = Server(dsn, tmp_path_factory.mktemp("tariffs"))
    server.start()
    try:
        with server.client() as admin:
            yield World(server, admin, tokens)
    finally:
        code = server.stop()
        postgres_server.drop_database(name)
        assert code == 0, server.log()


def new_group(client: httpx.Client, name: str, **fields: Any) -> dict[str, Any]:
    return ok(client.post("/v1/rate-groups", json={"name": name, **fields}), 201)  # type: ignore


def fields_of(body: dict[str, Any]) -> set[str]:
    return {error["field"] for error in body["errors"]}


def csv_of(rows: list[tuple[Any, ...]], header: str = "") -> str:
    head = header or "prefix,destination,connect_fee,per_minute,free_seconds,first_increment,"
    head += "" if header else "next_increment"
    return head + "\n" + "\n".join(",".join(str(cell) for cell in row) for row in rows) + "\n"


def put_csv(client: httpx.Client, group_id: int, text: str) -> httpx.Response:
    return client.put(
        f"/v1/rate-groups/{group_id}/rates",
        content=text.encode(),
        headers={"Content-Type": "text/csv"},
    )


# -- rate groups -----------------------------------------------------------------------------------


def test_create_with_defaults_then_get_and_list(world: World) -> None:
    group = new_group(world.admin, "retail-defaults")
    assert group["owner"] is None  # staff: the operator's
    assert (group["precision"], group["rounding"], group["markup_pct"]) == (4, "up", "0.0000")
    assert group["rates"] == 0 and group["created_at"].endswith("Z")
    assert ok(world.admin.get(f"/v1/rate-groups/{group['id']}")) == group
    tuned = new_group(
        world.admin, "retail-tuned", owner="r1", precision=2, rounding="half_up", markup_pct="12.5"
    )
    assert (tuned["owner"], tuned["precision"], tuned["rounding"]) == ("r1", 2, "half_up")
    assert tuned["markup_pct"] == "12.5000"

    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1} | ({"cursor": cursor} if cursor else {})
        listed = ok(world.admin.get("/v1/rate-groups", params=params))
        assert len(listed["items"]) <= 1
        seen += [item["id"] for item in listed["items"]]
        cursor = listed["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and {group["id"], tuned["id"]} <= set(seen)


def test_create_reports_every_bad_field(world: World) -> None:
    body = problem(
        world.admin.post(
            "/v1/rate-groups",
            json={"name": "", "precision": 7, "rounding": "sideways", "colour": "red"},
        ),
        422,
    )
    assert body["type"].endswith("/invalid-request")
    assert fields_of(body) == {"name", "precision", "rounding", "colour"}
    body = problem(
        world.admin.post(
            "/v1/rate-groups", json={"name": "  ", "markup_pct": "-100.5", "owner": "c1"}
        ),
        422,
    )
    assert fields_of(body) == {"name", "markup_pct", "owner"}
    body = problem(
        world.admin.post("/v1/rate-groups", json={"name": "x", "markup_pct": "1.23456"}), 422
    )
    assert fields_of(body) == {"markup_pct"}
    body = problem(world.admin.post("/v1/rate-groups", json={"name": "x", "owner": "nobody"}), 422)
    assert body["errors"] == [{"field": "owner", "message": "no such account"}]
    problem(world.admin.post("/v1/rate-groups", content=b"{not json"), 422)


def test_a_name_is_unique_per_owner(world: World) -> None:
    new_group(world.admin, "same-name")
    body = problem(world.admin.post("/v1/rate-groups", json={"name": "same-name"}), 409)
    assert body["type"].endswith("/conflict")
    new_group(world.admin, "same-name", owner="r3")  # another owner: fine


def test_a_reseller_creates_groups_for_itself_and_its_sub_resellers_only(world: World) -> None:
    with world.client("reseller_r1") as r1:
        own = new_group(r1, "r1-own")
        assert own["owner"] == "r1"
        assert new_group(r1, "r1-for-r2", owner="r2")["owner"] == "r2"
        for outside in ("r3", "operator", "c1"):
            body = problem(r1.post("/v1/rate-groups", json={"name": "x", "owner": outside}), 422)
            assert fields_of(body) == {"owner"}


def test_each_principal_sees_its_subtree_and_the_operators_groups(world: World) -> None:
    operator = new_group(world.admin, "visible-operator")
    r1_group = new_group(world.admin, "visible-r1", owner="r1")
    r2_group = new_group(world.admin, "visible-r2", owner="r2")
    r3_group = new_group(world.admin, "visible-r3", owner="r3")

    def listed(client: httpx.Client) -> set[int]:
        return {item["id"] for item in ok(client.get("/v1/rate-groups?limit=1000"))["items"]}

    expected = {
        "reseller_r1": {operator["id"], r1_group["id"], r2_group["id"]},
        "reseller_r2": {operator["id"], r2_group["id"]},
        "reseller_r3": {operator["id"], r3_group["id"]},
        "agent_r1": {operator["id"], r1_group["id"], r2_group["id"]},
        "customer_c1": set(),
    }
    everything = {operator["id"], r1_group["id"], r2_group["id"], r3_group["id"]}
    for who, visible in expected.items():
        with world.client(who) as client:
            assert listed(client) & everything == visible, who
            for group_id in everything - visible:
                problem(client.get(f"/v1/rate-groups/{group_id}"), 404)
                problem(client.get(f"/v1/rate-groups/{group_id}/rates"), 404)
                if who.startswith("reseller"):
                    problem(client.patch(f"/v1/rate-groups/{group_id}", json={"name": "y"}), 404)
            for group_id in visible:
                assert ok(client.get(f"/v1/rate-groups/{group_id}"))["id"] == group_id


def test_writes_need_the_rate_groups_permission(world: World) -> None:
    group = new_group(world.admin, "agent-target", owner="r1")
    path = f"/v1/rate-groups/{group['id']}"
    with world.client("agent_r1") as agent:
        for response in (
            agent.post("/v1/rate-groups", json={"name": "agent-made"}),
            agent.patch(path, json={"precision": 2}),
            agent.post(path + "/rates", json={"rates": [{"prefix": "1", "per_minute": "1"}]}),
            put_csv(agent, group["id"], csv_of([("1", "x", "0", "1", 0, 1, 1)])),
        ):
            assert problem(response, 403)["type"].endswith("/forbidden")
        ok(agent.get(path))  # reading is fine
    with world.client("reseller_r1") as r1:
        operator = new_group(world.admin, "operator-readonly")
        response = r1.patch(f"/v1/rate-groups/{operator['id']}", json={"name": "mine"})
        assert problem(response, 403)["type"].endswith("/forbidden")
        ok(r1.patch(path, json={"precision": 2}))
    problem(httpx.get(world.server.base_url + "/v1/rate-groups"), 401)


def test_unknown_groups_answer_404(world: World) -> None:
    for path in ("/v1/rate-groups/999999", "/v1/rate-groups/999999/rates", "/v1/rate-groups/x"):
        assert problem(world.admin.get(path), 404)["type"].endswith("/not-found")
    problem(world.admin.patch("/v1/rate-groups/999999", json={"name": "z"}), 404)
    problem(
        world.admin.post(
            "/v1/rate-groups/999999/rates", json={"rates": [{"prefix": "1", "per_minute": "1"}]}
        ),
        404,
    )
    problem(put_csv(world.admin, 999999, csv_of([("1", "x", "0", "1", 0, 1, 1)])), 404)


def test_patch_changes_what_is_given(world: World) -> None:
    group = new_group(world.admin, "patch-me")
    path = f"/v1/rate-groups/{group['id']}"
    changed = ok(world.admin.patch(path, json={"precision": 2, "markup_pct": "-5"}))
    assert (changed["precision"], changed["markup_pct"], changed["name"]) == (
        2,
        "-5.0000",
        "patch-me",
    )
    changed = ok(world.admin.patch(path, json={"rounding": "down", "name": "patched"}))
    assert (changed["rounding"], changed["precision"], changed["name"]) == ("down", 2, "patched")
    assert ok(world.admin.get(path)) == changed
    body = problem(
        world.admin.patch(path, json={"precision": -1, "rounding": 3, "owner": "r1"}), 422
    )
    assert fields_of(body) == {"precision", "rounding", "owner"}
    body = problem(world.admin.patch(path, json={"name": " ", "markup_pct": "-101"}), 422)
    assert fields_of(body) == {"name", "markup_pct"}
    new_group(world.admin, "taken-name")
    problem(world.admin.patch(path, json={"name": "taken-name"}), 409)
    assert ok(world.admin.get(path)) == changed  # nothing changed by the failures


# -- rates -----------------------------------------------------------------------------------------


def test_upsert_rates_by_prefix_and_list_them(world: World) -> None:
    group = new_group(world.admin, "upsert")
    path = f"/v1/rate-groups/{group['id']}/rates"
    written = ok(
        world.admin.post(
            path,
            json={
                "rates": [
                    {"prefix": "44", "destination": "UK", "per_minute": "0.02"},
                    {"prefix": "4420", "destination": "London", "connect_fee": "0.01",
                     "per_minute": "0.015", "free_seconds": 5, "first_increment": 30,
                     "next_increment": 6},
                    {"prefix": "1", "destination": "NANP", "per_minute": "0.005"},
                ]
            },
        )
    )  # fmt: skip
    assert written == {"rate_group": group["id"], "written": 3, "rates": 3}
    written = ok(
        world.admin.post(
            path,
            json={
                "rates": [
                    {"prefix": "44", "destination": "UK fixed", "per_minute": "0.025"},
                    {"prefix": "33", "destination": "France", "per_minute": "0.012345"},
                ]
            },
        )
    )
    assert (written["written"], written["rates"]) == (2, 4)
    assert ok(world.admin.get(f"/v1/rate-groups/{group['id']}"))["rates"] == 4

    first = ok(world.admin.get(path, params={"limit": 2}))
    assert [rate["prefix"] for rate in first["items"]] == ["1", "33"]
    assert first["items"][1]["per_minute"] == "0.012345"  # every digit kept, never rounded
    rest = ok(world.admin.get(path, params={"limit": 2, "cursor": first["next_cursor"]}))
    assert [rate["prefix"] for rate in rest["items"]] == ["44", "4420"]
    assert rest["next_cursor"] is None
    assert rest["items"][0] == {
        "prefix": "44", "destination": "UK fixed", "connect_fee": "0.0000",
        "per_minute": "0.0250", "free_seconds": 0, "first_increment": 1, "next_increment": 1,
    }  # fmt: skip
    assert rest["items"][1] == {
        "prefix": "4420", "destination": "London", "connect_fee": "0.0100",
        "per_minute": "0.0150", "free_seconds": 5, "first_increment": 30, "next_increment": 6,
    }  # fmt: skip
    filtered = ok(world.admin.get(path, params={"prefix": "44"}))
    assert [rate["prefix"] for rate in filtered["items"]] == ["44", "4420"]
    assert ok(world.admin.get(path, params={"prefix": "9"}))["items"] == []
    body = problem(world.admin.get(path, params={"limit": 0, "prefix": "4x"}), 422)
    assert fields_of(body) == {"limit", "prefix"}


def test_upsert_reports_every_bad_rate_and_writes_none(world: World) -> None:
    group = new_group(world.admin, "upsert-bad")
    path = f"/v1/rate-groups/{group['id']}/rates"
    ok(world.admin.post(path, json={"rates": [{"prefix": "44", "per_minute": "0.02"}]}))
    body = problem(
        world.admin.post(
            path,
            json={
                "rates": [
                    {"prefix": "49", "per_minute": "0.03"},
                    {"prefix": "4a", "per_minute": "0.03"},
                    {"prefix": "50", "per_minute": "-1"},
                    {"prefix": "51", "per_minute": "1", "connect_fee": "0.1234567"},
                    {"prefix": "52", "per_minute": "1", "first_increment": 0},
                    {"prefix": "53", "per_minute": "1", "next_increment": 86401},
                    {"prefix": "54", "per_minute": "1", "free_seconds": -1},
                    {"prefix": "49", "per_minute": "0.04"},
                    {"prefix": "1" * 33, "per_minute": "x"},
                ]
            },
        ),
        422,
    )
    assert fields_of(body) == {
        "rates[1].prefix",
        "rates[2].per_minute",
        "rates[3].connect_fee",
        "rates[4].first_increment",
        "rates[5].next_increment",
        "rates[6].free_seconds",
        "rates[7].prefix",
        "rates[8].prefix",
        "rates[8].per_minute",
    }
    assert (
        "rates[0]" in next(e for e in body["errors"] if e["field"] == "rates[7].prefix")["message"]
    )
    # Shapes msgspec checks: a missing field, a number for a money string, an unknown field.
    for bad, field, words in (
        ({"prefix": "1"}, "rates[0]", "per_minute"),
        ({"prefix": "1", "per_minute": 0.5}, "rates[0].per_minute", "str"),
        ({"prefix": "1", "per_minute": "1", "rate": 2}, "rates[0]", "rate"),
    ):
        body = problem(world.admin.post(path, json={"rates": [bad]}), 422)
        assert fields_of(body) == {field}, body
        assert words in body["errors"][0]["message"]
    assert fields_of(problem(world.admin.post(path, json={"rates": []}), 422)) == {"rates"}
    listed = ok(world.admin.get(path))["items"]
    assert [(rate["prefix"], rate["per_minute"]) for rate in listed] == [("44", "0.0200")]


def test_csv_replaces_every_rate_and_exports_the_same(world: World) -> None:
    group = new_group(world.admin, "csv-replace")
    path = f"/v1/rate-groups/{group['id']}/rates"
    ok(world.admin.post(path, json={"rates": [{"prefix": "999", "per_minute": "9"}]}))
    text = csv_of(
        [
            ("44", "UK", "0", "0.02", 0, 1, 1),
            ("4420", '"London, central"', "0.01", "0.015", 5, 30, 6),
            ("1", "", "0", "0.005", "", "", ""),
        ]
    )
    written = ok(put_csv(world.admin, group["id"], text))
    assert (written["written"], written["rates"]) == (3, 3)
    rates = {rate["prefix"]: rate for rate in ok(world.admin.get(path))["items"]}
    assert set(rates) == {"1", "44", "4420"}  # 999 is gone
    assert rates["4420"]["destination"] == "London, central"
    assert (rates["1"]["free_seconds"], rates["1"]["first_increment"]) == (0, 1)

    exported = world.admin.get(path, headers={"Accept": "text/csv"})
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(exported.text)))
    assert rows[0] == [
        "prefix", "destination", "connect_fee", "per_minute", "free_seconds",
        "first_increment", "next_increment",
    ]  # fmt: skip
    assert rows[1:] == [
        ["1", "", "0.0000", "0.0050", "0", "1", "1"],
        ["44", "UK", "0.0000", "0.0200", "0", "1", "1"],
        ["4420", "London, central", "0.0100", "0.0150", "5", "30", "6"],
    ]
    # What GET exports, PUT takes back unchanged.
    assert ok(put_csv(world.admin, group["id"], exported.text))["rates"] == 3
    again = world.admin.get(path, headers={"Accept": "text/csv"}).text
    assert again == exported.text

    # The last three columns are optional; columns may come in any order.
    short = "per_minute,prefix,connect_fee,destination\n0.1,7,0,Russia\n"
    assert ok(put_csv(world.admin, group["id"], short))["rates"] == 1
    only = ok(world.admin.get(path))["items"]
    assert only == [
        {"prefix": "7", "destination": "Russia", "connect_fee": "0.0000", "per_minute": "0.1000",
         "free_seconds": 0, "first_increment": 1, "next_increment": 1},
    ]  # fmt: skip


def test_a_bad_csv_names_every_bad_row_and_changes_nothing(world: World) -> None:
    group = new_group(world.admin, "csv-bad")
    path = f"/v1/rate-groups/{group['id']}/rates"
    ok(put_csv(world.admin, group["id"], csv_of([("44", "UK", "0", "0.02", 0, 1, 1)])))
    text = csv_of(
        [
            ("33", "France", "0", "0.02", 0, 1, 1),  # row 2: fine
            ("3x", "France", "0", "0.02", 0, 1, 1),  # row 3
            ("34", "Spain", "zero", "0.02", 0, 1, 1),  # row 4
            ("35", "Italy", "0", "0.02", 0, 0, 1),  # row 5
            ("36", "Malta", "0", "0.02", "two", 1, 1),  # row 6
            ("33", "France again", "0", "0.02", 0, 1, 1),  # row 7: duplicate of row 2
            ("37", "too", "few"),  # row 8
        ]
    )
    body = problem(put_csv(world.admin, group["id"], text), 422)
    messages = [f"{e['field']}: {e['message']}" for e in body["errors"]]
    assert [m.split(":")[0] for m in messages] == [f"row {n}" for n in (3, 4, 5, 6, 7, 8)]
    assert messages[0].startswith("row 3: prefix ")
    assert messages[1].startswith("row 4: connect_fee ")
    assert messages[2].startswith("row 5: first_increment ")
    assert messages[3].startswith("row 6: free_seconds ")
    assert "row 2" in messages[4]
    assert "row 3: prefix" in body["detail"]
    # Header problems.
    for header, message in (
        ("prefix,destination,per_minute", "missing column connect_fee"),
        ("prefix,destination,connect_fee,per_minute,colour", "unknown column 'colour'"),
    ):
        body = problem(put_csv(world.admin, group["id"], header + "\n1,x,0,1,red\n"), 422)
        assert message in body["detail"]
    problem(put_csv(world.admin, group["id"], ""), 422)
    problem(world.admin.put(path, content=b"\xff\xfe", headers={"Content-Type": "text/csv"}), 422)
    response = world.admin.put(path, json={"rates": []})
    assert problem(response, 415)["status"] == 415
    # Nothing changed.
    listed = ok(world.admin.get(path))["items"]
    assert [(rate["prefix"], rate["per_minute"]) for rate in listed] == [("44", "0.0200")]


def test_a_hundred_thousand_rates_import_in_seconds(world: World) -> None:
    group = new_group(world.admin, "big-deck")
    rows = [
        (f"{1000000 + n}", f"Destination {n % 500}", "0", f"0.{n % 10000:04d}", 0, 60, 6)
        for n in range(100_000)
    ]
    text = csv_of(rows)
    started = time.perf_counter()
    written = ok(put_csv(world.admin, group["id"], text))
    import_seconds = time.perf_counter() - started
    assert (written["written"], written["rates"]) == (100_000, 100_000)
    started = time.perf_counter()
    exported = world.admin.get(
        f"/v1/rate-groups/{group['id']}/rates", headers={"Accept": "text/csv"}
    )
    export_seconds = time.perf_counter() - started
    assert exported.text.count("\n") == 100_001
    print(
        f"\n100,000 rates: CSV import {import_seconds:.2f} s ({len(text) / 1e6:.1f} MB), "
        f"export {export_seconds:.2f} s"
    )
    assert import_seconds < 30  # a guard against a pathology, not a benchmark
    page = ok(world.admin.get(f"/v1/rate-groups/{group['id']}/rates?limit=3&prefix=10999"))
    assert [rate["prefix"] for rate in page["items"]] == ["1099900", "1099901", "1099902"]


def test_the_openapi_document_describes_the_routes(world: World) -> None:
    document = ok(httpx.get(world.server.base_url + "/openapi.json"))
    paths = document["paths"]
    assert {"get", "post"} <= set(paths["/v1/rate-groups"])
    assert {"get", "patch"} <= set(paths["/v1/rate-groups/{id}"])
    assert {"get", "post", "put"} <= set(paths["/v1/rate-groups/{id}/rates"])
    assert "text/csv" in paths["/v1/rate-groups/{id}/rates"]["put"]["requestBody"]["content"]
    schemas = document["components"]["schemas"]
    assert {"RateGroupCreate", "RateGroupView", "RateIn", "RateView"} <= set(schemas)
    assert schemas["RateIn"]["properties"]["prefix"]["pattern"] == "^[0-9]{1,32}$"


# -- in process: the live engine follows every change -------------------------------------------


@pytest.fixture
async def live(database_url: str) -> AsyncIterator[tuple[Api, httpx.AsyncClient]]:
    async with Bridge(database_url) as bridge:
        engine = build_engine(await bridge.run(fetch_snapshot))
        config = Config(admin_api=AdminApiConfig(bootstrap_token="live-token"))
        api = Api(engine, None, bridge, config, TokenStore())  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=create_app(api))
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://api",
            headers={"Authorization": "Bearer live-token"},
        ) as client:
            yield api, client


async def test_changes_reach_the_live_engine_at_once(
    live: tuple[Api, httpx.AsyncClient], database_url: str, tmp_path: Path
) -> None:
    api, client = live
    response = await client.post("/v1/rate-groups", json={"name": "live", "precision": 4})
    group_id = ok(response, 201)["id"]
    group = api.engine.rate_groups[group_id]
    customer = Account(99, "live-customer", AccountKind.CUSTOMER, api.engine.hierarchy.operator)
    customer.rate_group = group

    body = {"rates": [{"prefix": "44", "per_minute": "0.01", "first_increment": 60}]}
    ok(await client.post(f"/v1/rate-groups/{group_id}/rates", json=body))
    rate = customer.lookup_rate("447700900123")
    assert rate is not None and rate.per_minute_micros == 10_000
    assert group.cost_micros(rate, 1) == 10_000  # one minute at 0.01

    ok(await client.patch(f"/v1/rate-groups/{group_id}", json={"markup_pct": "50"}))
    assert group.cost_micros(rate, 1) == 15_000
    ok(await client.patch(f"/v1/rate-groups/{group_id}", json={"precision": 2}))
    assert group.cost_micros(rate, 1) == 20_000  # 0.015 rounded up to cents
    ok(await client.patch(f"/v1/rate-groups/{group_id}", json={"rounding": "down"}))
    assert group.cost_micros(rate, 1) == 10_000

    # A replacement swaps the index: a call rated before keeps the rate it was rated with.
    old_index = group.index
    response = await client.put(
        f"/v1/rate-groups/{group_id}/rates",
        content=b"prefix,destination,connect_fee,per_minute\n4477,UK mobile,0,0.1\n",
        headers={"Content-Type": "text/csv"},
    )
    ok(response)
    assert group.index is not old_index and old_index.longest_match("447700") is rate
    new_rate = customer.lookup_rate("447700900123")
    assert new_rate is not None and new_rate.prefix == "4477"
    assert customer.lookup_rate("442079460000") is None  # 44 went with the old deck

    # A bad replacement changes neither the database nor the live index.
    current = group.index
    response = await client.put(
        f"/v1/rate-groups/{group_id}/rates",
        content=b"prefix,destination,connect_fee,per_minute\nxx,bad,0,0.1\n",
        headers={"Content-Type": "text/csv"},
    )
    problem(response, 422)
    assert group.index is current

    # What a restart would load equals what is live.
    reloaded = build_engine(await api.bridge.run(fetch_snapshot)).rate_groups[group_id]
    assert (reloaded.precision, reloaded.rounding, reloaded.markup_ppm) == (2, "down", 500_000)
    assert dict(reloaded.index.items()) == dict(group.index.items())
