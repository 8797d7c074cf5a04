"""POST/GET/DELETE /v1/tokens against a real `ccserver serve`: who may issue what, for whom, and
that an issued token works at once, survives a restart and stops working once revoked.

The accounts are written to the database before the server starts (the accounts endpoints are
built elsewhere), so the engine loads them like any others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from ccserver.ledger.store import AccountRow, create_account
from tests.server_harness import Server, ok, problem, running, start_server

# number -> (kind, parent number or None for the operator)
TREE = {
    "r1": ("reseller", None),
    "c1": ("customer", "r1"),
    "r1sub": ("reseller", "r1"),
    "c3": ("customer", "r1sub"),
    "r2": ("reseller", None),
    "c2": ("customer", "r2"),
}
RESELLER_PERMISSIONS = ["accounts", "payments_sub", "rate_groups", "tokens"]


async def _seed(database_url: str) -> dict[str, int]:
    connection = await asyncpg.connect(database_url)
    try:
        ids = {"operator": 1}
        for number, (kind, parent) in TREE.items():
            ids[number] = await create_account(
                connection,
                AccountRow(number=number, kind=kind, parent_id=ids[parent or "operator"]),
            )
        return ids
    finally:
        await connection.close()


class World:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.admin = server.client()
        self._clients: list[httpx.Client] = [self.admin]

    def client(self, token: str) -> httpx.Client:
        client = self.server.client(token)
        self._clients.append(client)
        return client

    def issue(self, role: str, scope: str | None = None, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"name": f"{role}-{scope}", "role": role, **extra}
        if scope is not None:
            body["scope"] = scope
        created: dict[str, Any] = ok(self.admin.post("/v1/tokens", json=body), 201)
        return created

    def close(self) -> None:
        for client in self._clients:
            client.close()


@pytest.fixture(scope="module")
def world(postgres_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    name = postgres_server.create_database()
    url = postgres_server.dsn(name)
    asyncio.run(_seed(url))
    server = start_server(url, tmp_path_factory.mktemp("tokens"))
    world = World(server)
    try:
        yield world
    finally:
        world.close()
        code = server.stop()
        postgres_server.drop_database(name)
    assert code == 0, server.log()


def test_issued_token_works_at_once_and_is_shown_only_on_creation(world: World) -> None:
    created = world.issue("reseller", "r1")
    assert created["token"].startswith("ccs_")
    assert created["role"] == "reseller" and created["scope"] == "r1"
    assert created["permissions"] == RESELLER_PERMISSIONS
    assert created["created_at"].endswith("Z")
    reseller = world.client(created["token"])
    listed = ok(reseller.get("/v1/tokens"))
    mine = [item for item in listed["items"] if item["id"] == created["id"]]
    assert mine == [{k: v for k, v in created.items() if k != "token"} | {"revoked_at": None}]
    # The token itself (or its digest) is never listed again.
    everything = ok(world.admin.get("/v1/tokens"))
    assert all("token" not in item and "token_sha256" not in item for item in everything["items"])
    assert created["token"] not in world.admin.get("/v1/tokens").text


def test_unknown_and_missing_tokens_are_401(world: World) -> None:
    problem(world.client("ccs_not-a-token").get("/v1/tokens"), 401)
    with httpx.Client(base_url=world.server.base_url) as anonymous:
        problem(anonymous.get("/v1/tokens"), 401)
        problem(anonymous.post("/v1/tokens", json={"name": "x", "role": "admin"}), 401)


def test_reseller_issues_below_itself_within_its_subtree(world: World) -> None:
    reseller = world.client(world.issue("reseller", "r1")["token"])
    customer = ok(
        reseller.post("/v1/tokens", json={"name": "c", "role": "customer", "scope": "c1"}), 201
    )
    assert customer["scope"] == "c1" and customer["permissions"] == []
    deep = ok(
        reseller.post("/v1/tokens", json={"name": "s", "role": "reseller", "scope": "r1sub"}), 201
    )
    assert deep["permissions"] == RESELLER_PERMISSIONS
    # Its own account is in its subtree too.
    ok(reseller.post("/v1/tokens", json={"name": "self", "role": "agent", "scope": "r1"}), 201)

    # A sibling's customer reads as no account at all.
    body = problem(
        reseller.post("/v1/tokens", json={"name": "x", "role": "customer", "scope": "c2"}), 422
    )
    assert body["errors"] == [{"field": "scope", "message": "no such account"}]
    for scope in ("r2", "nope", "operator"):
        body = problem(
            reseller.post("/v1/tokens", json={"name": "x", "role": "customer", "scope": scope}), 422
        )
        assert body["errors"] == [{"field": "scope", "message": "no such account"}]
    # Never above itself.
    body = problem(
        reseller.post("/v1/tokens", json={"name": "x", "role": "admin", "scope": "r1"}), 422
    )
    assert [e["field"] for e in body["errors"]] == ["role"]
    # Scoped roles need a scope; a scoped caller cannot issue an unscoped admin either.
    body = problem(reseller.post("/v1/tokens", json={"name": "x", "role": "customer"}), 422)
    assert [e["field"] for e in body["errors"]] == ["scope"]
    body = problem(reseller.post("/v1/tokens", json={"name": "x", "role": "admin"}), 422)
    assert {e["field"] for e in body["errors"]} == {"role", "scope"}

    # The new token sees only its subtree: the sub-reseller's list holds none of r1's tokens.
    sub = world.client(deep["token"])
    scopes = {item["scope"] for item in ok(sub.get("/v1/tokens"))["items"]}
    assert scopes == {"r1sub"}


def test_permissions_are_narrowed_to_role_and_caller(world: World) -> None:
    created = world.issue("agent", "r1", permissions=["accounts", "nas_clients", "tokens"])
    # An agent's role allows accounts and payments_sub; nas_clients and tokens are dropped.
    assert created["permissions"] == ["accounts"]
    narrow = world.issue("reseller", "r1", permissions=["tokens"])
    assert narrow["permissions"] == ["tokens"]
    narrow_client = world.client(narrow["token"])
    # It may issue tokens, but never with more than it holds itself.
    child = ok(
        narrow_client.post(
            "/v1/tokens",
            json={"name": "x", "role": "reseller", "scope": "r1sub",
                  "permissions": ["accounts", "tokens"]},
        ),
        201,
    )  # fmt: skip
    assert child["permissions"] == ["tokens"]
    implied = ok(
        narrow_client.post("/v1/tokens", json={"name": "y", "role": "agent", "scope": "c1"}), 201
    )
    assert implied["permissions"] == []
    empty = world.issue("admin", permissions=[])
    assert empty["permissions"] == []
    problem(world.client(empty["token"]).get("/v1/tokens"), 403)


def test_without_the_tokens_permission_is_403(world: World) -> None:
    customer = world.client(world.issue("customer", "c1")["token"])
    problem(customer.post("/v1/tokens", json={"name": "x", "role": "customer", "scope": "c1"}), 403)
    problem(customer.get("/v1/tokens"), 403)
    agent = world.client(world.issue("agent", "r1")["token"])
    problem(agent.get("/v1/tokens"), 403)


def test_every_bad_field_is_reported_at_once(world: World) -> None:
    body = problem(
        world.admin.post(
            "/v1/tokens",
            json={"name": "", "role": "super_admin", "scope": "bad number!", "permissions": ["x"],
                  "colour": "red"},
        ),
        422,
    )  # fmt: skip
    fields = {error["field"] for error in body["errors"]}
    assert {"name", "role", "scope", "colour"} <= fields
    assert any(field.startswith("permissions") for field in fields)
    problem(
        world.admin.post("/v1/tokens", content=b"{", headers={"content-type": "application/json"}),
        422,
    )
    body = problem(world.admin.post("/v1/tokens", json={}), 422)
    assert {e["field"] for e in body["errors"]} == {"name", "role"}


def test_operator_staff_issue_unscoped_admins(world: World) -> None:
    admin = world.issue("admin")
    assert admin["scope"] is None
    staff = world.client(admin["token"])
    # An unscoped admin sees every token, its own and those of every subtree.
    scopes = {item["scope"] for item in ok(staff.get("/v1/tokens?limit=1000"))["items"]}
    assert {None, "r1", "c1"} <= scopes
    ok(staff.post("/v1/tokens", json={"name": "a2", "role": "admin"}), 201)
    # A scoped admin is not operator staff: no unscoped tokens from it.
    scoped = world.client(world.issue("admin", "r2")["token"])
    problem(scoped.post("/v1/tokens", json={"name": "a3", "role": "admin"}), 422)
    ok(scoped.post("/v1/tokens", json={"name": "a3", "role": "admin", "scope": "c2"}), 201)


def test_list_pages_newest_first(world: World) -> None:
    for _ in range(3):
        world.issue("customer", "c3")
    sub = world.client(world.issue("reseller", "r1sub")["token"])
    seen: list[int] = []
    cursor = None
    while True:
        url = "/v1/tokens?limit=2" + (f"&cursor={cursor}" if cursor else "")
        listed = ok(sub.get(url))
        assert len(listed["items"]) <= 2
        seen.extend(item["id"] for item in listed["items"])
        cursor = listed["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) >= 4
    body = problem(sub.get("/v1/tokens?limit=0&cursor=x&colour=red"), 422)
    assert {e["field"] for e in body["errors"]} == {"limit", "cursor", "colour"}


def test_revoke_stops_the_token_at_once(world: World) -> None:
    reseller = world.client(world.issue("reseller", "r1")["token"])
    customer_token = ok(
        reseller.post("/v1/tokens", json={"name": "c", "role": "customer", "scope": "c1"}), 201
    )
    customer = world.client(customer_token["token"])
    other = world.issue("customer", "c2")
    assert ok(world.client(other["token"]).get("/v1/sessions"))["items"] == []

    # Out of scope (a sibling's customer) or unknown: 404, and nothing is revoked.
    problem(reseller.delete(f"/v1/tokens/{other['id']}"), 404)
    for bad in ("999999999", "abc", "0", "99999999999999999999"):
        problem(reseller.delete(f"/v1/tokens/{bad}"), 404)
    ok(world.client(other["token"]).get("/v1/sessions"))

    ok(customer.get("/v1/sessions"))
    assert reseller.delete(f"/v1/tokens/{customer_token['id']}").status_code == 204
    problem(customer.get("/v1/sessions"), 401)
    # Revoking twice is harmless.
    assert reseller.delete(f"/v1/tokens/{customer_token['id']}").status_code == 204
    listed = ok(world.admin.get("/v1/tokens?revoked=true&limit=1000"))["items"]
    revoked = [item for item in listed if item["id"] == customer_token["id"]]
    assert revoked and revoked[0]["revoked_at"] is not None
    active = ok(world.admin.get("/v1/tokens?limit=1000"))["items"]
    assert customer_token["id"] not in {item["id"] for item in active}

    # A token of a higher role inside the subtree is visible but not the reseller's to revoke.
    scoped_admin = world.issue("admin", "r1")
    problem(reseller.delete(f"/v1/tokens/{scoped_admin['id']}"), 403)
    # Operator staff's own (unscoped) tokens are invisible to scoped callers.
    staff = world.issue("admin")
    problem(reseller.delete(f"/v1/tokens/{staff['id']}"), 404)
    customer_without_rights = world.client(world.issue("customer", "c1")["token"])
    problem(customer_without_rights.delete(f"/v1/tokens/{staff['id']}"), 403)


def test_tokens_survive_a_restart_and_revocations_too(database_url: str, tmp_path: Path) -> None:
    asyncio.run(_seed(database_url))
    with running(database_url, tmp_path / "first") as server, server.client() as admin:
        kept = ok(
            admin.post("/v1/tokens", json={"name": "k", "role": "reseller", "scope": "r1"}), 201
        )
        gone = ok(
            admin.post("/v1/tokens", json={"name": "g", "role": "customer", "scope": "c1"}), 201
        )
        assert admin.delete(f"/v1/tokens/{gone['id']}").status_code == 204

    with (
        running(database_url, tmp_path / "second") as server,
        server.client(kept["token"]) as reseller,
        server.client(gone["token"]) as customer,
    ):
        listed = ok(reseller.get("/v1/tokens"))["items"]
        assert [item["id"] for item in listed] == [kept["id"]]
        assert listed[0]["permissions"] == RESELLER_PERMISSIONS
        problem(customer.get("/v1/tokens"), 401)
        # The restored principal keeps its scope: its subtree, nothing else.
        problem(
            reseller.post("/v1/tokens", json={"name": "x", "role": "customer", "scope": "c2"}),
            422,
        )


def test_openapi_documents_the_token_routes(world: World) -> None:
    document = ok(world.admin.get("/openapi.json"))
    create = document["paths"]["/v1/tokens"]["post"]
    assert "201" in create["responses"] and "403" in create["responses"]
    schema = document["components"]["schemas"]["TokenCreate"]
    assert set(schema["properties"]) == {"name", "role", "scope", "permissions"}
    assert "delete" in document["paths"]["/v1/tokens/{id}"]
