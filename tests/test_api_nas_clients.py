"""NAS clients over real HTTP against a running server, and the live table the RADIUS server
looks source addresses up in."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ccserver.admin_api.app import Api, create_app
from ccserver.admin_api.auth import TokenStore
from ccserver.admin_api.nas_clients import NasClient, NasTable, load_nas_clients, nas_table
from ccserver.config import AdminApiConfig, Config
from ccserver.ledger.bridge import Bridge
from ccserver.ledger.loader import build_engine, fetch_snapshot
from tests.server_harness import Server, ok, problem
from tests.test_api_tariffs import seed_principals


@dataclass
class World:
    server: Server
    admin: httpx.Client
    tokens: dict[str, str]

    def client(self, who: str) -> httpx.Client:
        return self.server.client(self.tokens[who])


@pytest.fixture(scope="module")
def world(postgres_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    name = postgres_server.create_database()
    dsn = postgres_server.dsn(name)
    tokens = asyncio.run(
        seed_principals(
            dsn,
            [
                ("reseller_r1", "reseller", "r1"),
                ("customer_c1", "customer", "c1"),
                ("admin_r3", "admin", "r3"),  # scoped, but holds the nas_clients permission
            ],
        )
    )
    server = Server(dsn, tmp_path_factory.mktemp("nas"))
    server.start()
    try:
        with server.client() as admin:
            yield World(server, admin, tokens)
    finally:
        code = server.stop()
        postgres_server.drop_database(name)
        assert code == 0, server.log()


def fields_of(body: dict[str, Any]) -> set[str]:
    return {error["field"] for error in body["errors"]}


def test_create_get_list_delete(world: World) -> None:
    api = world.admin
    created = ok(
        api.post(
            "/v1/nas-clients",
            json={"name": "sbc-1", "address": "192.0.2.10", "secret": "s3cret"},
        ),
        201,
    )
    assert created["name"] == "sbc-1" and created["address"] == "192.0.2.10"
    assert (created["coa_port"], created["require_message_authenticator"]) == (3799, True)
    assert created["secret_set"] is True and "secret" not in created
    assert created["created_at"].endswith("Z")
    block = ok(
        api.post(
            "/v1/nas-clients",
            json={
                "name": "pop.lon_2",
                "address": "198.51.100.7/24",  # host bits are cleared, as FreeRADIUS does
                "secret": "x" * 128,
                "coa_port": 1700,
                "require_message_authenticator": False,
            },
        ),
        201,
    )
    assert block["address"] == "198.51.100.0/24"
    assert (block["coa_port"], block["require_message_authenticator"]) == (1700, False)
    v6 = ok(
        api.post("/v1/nas-clients", json={"name": "v6", "address": "2001:db8::/32", "secret": "k"}),
        201,
    )
    assert v6["address"] == "2001:db8::/32"

    assert ok(api.get("/v1/nas-clients/sbc-1")) == created
    names = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        listed = ok(api.get("/v1/nas-clients", params=params))
        assert len(listed["items"]) <= 2
        assert all("secret" not in item for item in listed["items"])
        names += [item["name"] for item in listed["items"]]
        cursor = listed["next_cursor"]
        if cursor is None:
            break
    assert names[:3] == ["sbc-1", "pop.lon_2", "v6"]

    response = api.delete("/v1/nas-clients/sbc-1")
    assert response.status_code == 204 and response.content == b""
    assert problem(api.get("/v1/nas-clients/sbc-1"), 404)["type"].endswith("/not-found")
    problem(api.delete("/v1/nas-clients/sbc-1"), 404)
    # The name and the address are free again.
    ok(
        api.post(
            "/v1/nas-clients",
            json={"name": "sbc-1", "address": "192.0.2.10/32", "secret": "again"},
        ),
        201,
    )


def test_bad_fields_are_all_reported(world: World) -> None:
    body = problem(
        world.admin.post(
            "/v1/nas-clients",
            json={
                "name": "bad name!",
                "address": "192.0.2.1",
                "secret": "",
                "coa_port": 70000,
                "require_message_authenticator": "yes",
                "shared": 1,
            },
        ),
        422,
    )
    assert fields_of(body) == {
        "name",
        "secret",
        "coa_port",
        "require_message_authenticator",
        "shared",
    }
    body = problem(world.admin.post("/v1/nas-clients", json={}), 422)
    assert fields_of(body) == {"name", "address", "secret"}
    body = problem(
        world.admin.post(
            "/v1/nas-clients", json={"name": "ok", "address": "s" * 129, "secret": "s" * 129}
        ),
        422,
    )
    assert fields_of(body) == {"address", "secret"}
    for address in ("300.1.1.1", "192.0.2.0/33", "sbc.example.com", "10.0.0.1 10.0.0.2"):
        body = problem(
            world.admin.post(
                "/v1/nas-clients", json={"name": "bad-addr", "address": address, "secret": "k"}
            ),
            422,
        )
        assert fields_of(body) == {"address"}, address
    problem(world.admin.get("/v1/nas-clients/bad-addr"), 404)


def test_duplicates_conflict(world: World) -> None:
    ok(
        world.admin.post(
            "/v1/nas-clients", json={"name": "dup", "address": "203.0.113.5", "secret": "k"}
        ),
        201,
    )
    body = problem(
        world.admin.post(
            "/v1/nas-clients", json={"name": "dup", "address": "203.0.113.6", "secret": "k"}
        ),
        409,
    )
    assert body["type"].endswith("/conflict") and "dup" in body["detail"]
    body = problem(
        world.admin.post(
            "/v1/nas-clients", json={"name": "dup-2", "address": "203.0.113.5/32", "secret": "k"}
        ),
        409,
    )
    assert "203.0.113.5" in body["detail"]
    # A wider block around it is a different client: the most specific one wins.
    ok(
        world.admin.post(
            "/v1/nas-clients", json={"name": "dup-net", "address": "203.0.113.0/24", "secret": "k"}
        ),
        201,
    )


def test_only_operator_staff_or_the_permission_manage_nas_clients(world: World) -> None:
    body = {"name": "scoped", "address": "192.0.2.200", "secret": "k"}
    for who in ("reseller_r1", "customer_c1"):
        with world.client(who) as client:
            for response in (
                client.post("/v1/nas-clients", json=body),
                client.get("/v1/nas-clients"),
                client.get("/v1/nas-clients/anything"),
                client.delete("/v1/nas-clients/anything"),
            ):
                assert problem(response, 403)["type"].endswith("/forbidden"), who
    with world.client("admin_r3") as admin:
        ok(admin.post("/v1/nas-clients", json=body), 201)
        ok(admin.get("/v1/nas-clients/scoped"))
        assert admin.delete("/v1/nas-clients/scoped").status_code == 204
    problem(httpx.get(world.server.base_url + "/v1/nas-clients"), 401)
    document = ok(httpx.get(world.server.base_url + "/openapi.json"))
    assert {"get", "delete"} <= set(document["paths"]["/v1/nas-clients/{name}"])
    schema = document["components"]["schemas"]["NasClientView"]
    assert "secret" not in schema["properties"] and "secret_set" in schema["properties"]


# -- the live table -------------------------------------------------------------------------------


def client(name: str, network: str) -> NasClient:
    import ipaddress

    return NasClient(name, ipaddress.ip_network(network), b"k")


def test_the_table_finds_the_most_specific_block() -> None:
    table = NasTable()
    table.replace_all(
        [
            client("wide", "10.0.0.0/8"),
            client("narrow", "10.1.0.0/16"),
            client("host", "10.1.2.3/32"),
            client("v6", "2001:db8::/32"),
            client("everyone-v6", "::/0"),
        ]
    )
    assert table.find("10.1.2.3").name == "host"  # type: ignore[union-attr]
    assert table.find("10.1.2.4").name == "narrow"  # type: ignore[union-attr]
    assert table.find("10.200.0.1").name == "wide"  # type: ignore[union-attr]
    assert table.find("::ffff:10.1.2.3").name == "host"  # type: ignore[union-attr]
    assert table.find("2001:db8::1").name == "v6"  # type: ignore[union-attr]
    assert table.find("2001:db9::1").name == "everyone-v6"  # type: ignore[union-attr]
    assert table.find("192.0.2.1") is None
    assert table.find("not an address") is None
    assert table.remove("host") is not None and table.remove("host") is None
    assert table.find("10.1.2.3").name == "narrow"  # type: ignore[union-attr]
    table.remove("narrow")
    table.remove("wide")
    assert table.find("10.1.2.3") is None and len(table) == 2


async def test_the_api_keeps_the_live_table_and_start_up_reloads_it(database_url: str) -> None:
    async with Bridge(database_url) as bridge:
        engine = build_engine(await bridge.run(fetch_snapshot))
        config = Config(admin_api=AdminApiConfig(bootstrap_token="live-token"))
        api = Api(engine, None, bridge, config, TokenStore())  # type: ignore[arg-type]
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(api)),
            base_url="http://api",
            headers={"Authorization": "Bearer live-token"},
        ) as http:
            body = {"name": "edge", "address": "192.0.2.0/28", "secret": "tøp", "coa_port": 3800}
            ok(await http.post("/v1/nas-clients", json=body), 201)
            ok(
                await http.post(
                    "/v1/nas-clients", json={"name": "gone", "address": "::1", "secret": "k"}
                ),
                201,
            )
            table = nas_table(api)
            assert api.nas_clients is table  # type: ignore[attr-defined]
            found = table.find("192.0.2.9")
            assert found is not None and found.name == "edge"
            assert (found.secret, found.coa_port) == ("tøp".encode(), 3800)
            assert table.find("::1") is not None
            response = await http.delete("/v1/nas-clients/gone")
            assert response.status_code == 204
            assert table.find("::1") is None

        # Start-up: a fresh Api loads the same table from the database.
        restarted = Api(engine, None, bridge, config, TokenStore())  # type: ignore[arg-type]
        loaded = await load_nas_clients(restarted)
        assert restarted.nas_clients is loaded  # type: ignore[attr-defined]
        assert [c.name for c in loaded.clients()] == ["edge"]
        assert loaded.find("192.0.2.15") == found
        assert loaded.find("192.0.2.16") is None
