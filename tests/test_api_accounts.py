"""Accounts over real HTTP against a running server: create, list, scopes, patch, delete, mass
create, CSV import and export."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import httpx

from tests.server_harness import Server, ok, problem


def create(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    return ok(api.post("/v1/accounts", json=fields), 201)  # type: ignore[no-any-return]


def token_for(api: httpx.Client, role: str, scope: str | None, **extra: Any) -> str:
    body: dict[str, Any] = {"name": f"{role}-{scope}", "role": role, **extra}
    if scope is not None:
        body["scope"] = scope
    return str(ok(api.post("/v1/tokens", json=body), 201)["token"])


def two_resellers(api: httpx.Client) -> None:
    create(api, number="r1", kind="reseller", balance="100")
    create(api, number="r2", kind="reseller")
    create(api, number="c1", kind="customer", parent="r1", password="pw1", balance="5")
    create(api, number="c2", kind="customer", parent="r2", password="pw2")


def test_create_returns_the_account_without_secrets(api: httpx.Client) -> None:
    create(api, number="r1", kind="reseller", balance="100")
    account = create(
        api,
        number="5550001",
        kind="customer",
        parent="r1",
        billing="postpaid",
        credit_limit="25.5",
        password="secret",
        pin="123456",
        max_concurrent=3,
        cps=2,
        ip_addresses=["10.1.0.0/24"],
        caller_ids=["15550001"],
        blocked_prefixes=["1900"],
        profile={"company": "Acme", "email": "ops@acme.test"},
        invoice_settings={"cycle": "monthly", "billing_day": 5},
        balance="12.5",
    )
    assert account["number"] == "5550001" and account["parent"] == "r1"
    assert account["credit_limit"] == "25.5000" and account["balance"] == "12.5000"
    assert account["available"] == "38.0000"  # postpaid: balance + credit limit
    assert account["has_password"] and account["has_pin"]
    assert "password" not in account and "pin" not in account
    assert account["profile"] == {"company": "Acme", "email": "ops@acme.test"}
    # The parent paid for the initial balance out of the credit it issues.
    assert ok(api.get("/v1/accounts/r1"))["balance"] == "100.0000"
    generated = create(api, kind="customer", parent="r1")
    assert len(generated["number"]) == 10 and generated["number"].isdigit()


def test_invalid_create_lists_every_bad_field(api: httpx.Client) -> None:
    body = problem(
        api.post(
            "/v1/accounts",
            json={"kind": "emperor", "billing": "weird", "cps": -1, "bogus": True},
        ),
        422,
    )
    fields = {error["field"] for error in body["errors"]}
    assert fields == {"kind", "billing", "cps", "bogus"}
    body = problem(
        api.post(
            "/v1/accounts",
            json={"kind": "customer", "credit_limit": "1.1234567", "ip_addresses": ["nope"]},
        ),
        422,
    )
    assert {e["field"] for e in body["errors"]} == {"credit_limit"}
    problem(api.post("/v1/accounts", json={"kind": "customer", "parent": "nobody"}), 422)
    create(api, number="dup", kind="customer")
    problem(api.post("/v1/accounts", json={"kind": "customer", "number": "dup"}), 422)
    create(api, number="s1", kind="customer", sip_username="alice")
    problem(api.post("/v1/accounts", json={"kind": "customer", "sip_username": "alice"}), 409)
    problem(api.post("/v1/accounts", content=b"{not json", headers={"Content-Type": "x"}), 422)
    problem(api.get("/v1/accounts/nobody"), 404)
    problem(httpx.get(str(api.base_url) + "/v1/accounts"), 401)


def test_list_direct_and_subtree_with_filters_and_cursor(api: httpx.Client) -> None:
    two_resellers(api)
    for n in range(5):
        create(api, number=f"c1{n}", kind="customer", parent="r1", profile={"company": f"co{n}"})
    direct = ok(api.get("/v1/accounts", params={"scope": "direct"}))
    assert {item["number"] for item in direct["items"]} == {"r1", "r2"}
    subtree = ok(api.get("/v1/accounts", params={"parent": "r1", "kind": "customer"}))
    assert len(subtree["items"]) == 6 and subtree["next_cursor"] is None
    first = ok(api.get("/v1/accounts", params={"parent": "r1", "limit": 4}))
    assert len(first["items"]) == 4 and first["next_cursor"] is not None
    rest = ok(
        api.get("/v1/accounts", params={"parent": "r1", "limit": 4, "cursor": first["next_cursor"]})
    )
    numbers = [i["number"] for i in first["items"]] + [i["number"] for i in rest["items"]]
    assert len(numbers) == 6 == len(set(numbers)) and rest["next_cursor"] is None
    found = ok(api.get("/v1/accounts", params={"q": "co3"}))
    assert [i["number"] for i in found["items"]] == ["c13"]
    problem(api.get("/v1/accounts", params={"limit": 0}), 422)
    problem(api.get("/v1/accounts", params={"scope": "sideways"}), 422)


def test_a_reseller_token_sees_only_its_subtree(server: Server, api: httpx.Client) -> None:
    two_resellers(api)
    with server.client(token_for(api, "reseller", "r1")) as r1:
        assert ok(r1.get("/v1/accounts/c1"))["number"] == "c1"
        problem(r1.get("/v1/accounts/c2"), 404)
        problem(r1.get("/v1/accounts/r2"), 404)
        problem(r1.patch("/v1/accounts/c2", json={"cps": 1}), 404)
        problem(r1.delete("/v1/accounts/c2"), 404)
        listed = ok(r1.get("/v1/accounts"))
        assert {i["number"] for i in listed["items"]} == {"c1"}
        # A reseller creates under itself by default, and never under a sibling.
        assert create(r1, number="c3", kind="customer")["parent"] == "r1"
        problem(r1.post("/v1/accounts", json={"kind": "customer", "parent": "r2"}), 422)
    with server.client(token_for(api, "customer", "c1")) as c1:
        assert ok(c1.get("/v1/accounts/c1"))["balance"] == "5.0000"
        problem(c1.get("/v1/accounts/r1"), 404)
        problem(c1.get("/v1/accounts/c3"), 404)
        problem(c1.post("/v1/accounts", json={"kind": "customer"}), 403)


def test_an_agent_creates_customers_but_no_rate_groups(server: Server, api: httpx.Client) -> None:
    two_resellers(api)
    with server.client(token_for(api, "agent", "r1")) as agent:
        assert create(agent, number="a1", kind="customer")["parent"] == "r1"
        problem(agent.post("/v1/accounts", json={"kind": "reseller"}), 403)
        problem(agent.post("/v1/rate-groups", json={"name": "mine"}), 403)


def test_patch_changes_limits_and_credentials_at_once(api: httpx.Client) -> None:
    two_resellers(api)
    changed = ok(
        api.patch(
            "/v1/accounts/c1",
            json={
                "max_concurrent": 7,
                "cps": 3,
                "billing": "postpaid",
                "credit_limit": "10",
                "ip_addresses": ["192.0.2.1"],
                "status": "suspended",
                "profile": {"company": "New"},
            },
        )
    )
    assert changed["max_concurrent"] == 7 and changed["cps"] == 3
    assert changed["available"] == "15.0000" and changed["status"] == "suspended"
    assert changed["ip_addresses"] == ["192.0.2.1"] and changed["profile"] == {"company": "New"}
    body = problem(api.patch("/v1/accounts/c1", json={"cps": "fast", "rate_group": 999}), 422)
    assert {e["field"] for e in body["errors"]} == {"cps"}
    problem(api.patch("/v1/accounts/c1", json={"rate_group": 999}), 422)
    problem(api.patch("/v1/accounts/c2", json={"ip_addresses": ["192.0.2.1"]}), 409)


def test_soft_delete_keeps_history_and_frees_identifiers(api: httpx.Client) -> None:
    two_resellers(api)
    create(api, number="gone", kind="customer", parent="r1", sip_username="bob", balance="1")
    assert api.delete("/v1/accounts/gone").status_code == 204
    problem(api.get("/v1/accounts/gone"), 404)
    deleted = ok(api.get("/v1/accounts", params={"status": "deleted"}))
    assert [i["number"] for i in deleted["items"]] == ["gone"]
    create(api, number="again", kind="customer", sip_username="bob")  # the device is free again
    problem(api.delete("/v1/accounts/r1"), 409)  # it has sub-accounts


def test_mass_create_with_pins(api: httpx.Client) -> None:
    two_resellers(api)
    result = ok(
        api.post(
            "/v1/accounts/bulk",
            json={
                "count": 20,
                "number_prefix": "77",
                "number_length": 8,
                "pins": True,
                "parent": "r1",
                "balance": "2",
            },
        ),
        201,
    )
    assert result["count"] == 20
    numbers = {card["number"] for card in result["accounts"]}
    assert len(numbers) == 20
    assert all(n.startswith("77") and len(n) == 8 for n in numbers)
    assert all(len(card["pin"]) == 6 for card in result["accounts"])
    one = ok(api.get(f"/v1/accounts/{sorted(numbers)[0]}"))
    assert one["has_pin"] and one["balance"] == "2.0000" and one["parent"] == "r1"
    body = problem(
        api.post(
            "/v1/accounts/bulk", json={"count": 200, "number_prefix": "9", "number_length": 3}
        ),
        422,
    )
    assert body["errors"][0]["field"] == "number_length"
    body = problem(
        api.post(
            "/v1/accounts/bulk", json={"count": 20, "number_prefix": "999", "number_length": 4}
        ),
        422,
    )
    assert body["errors"] == [
        {"field": "count", "message": "only 10 numbers left with this prefix and length"}
    ]


IMPORT_CSV = """number,kind,parent,billing,credit_limit,max_concurrent,ip_addresses,profile.company
i1,customer,r1,prepaid,0,2,,Good One
i2,customer,r1,postpaid,15.5,1,10.9.0.0/16,Good Two
i3,customer,r1,weird,0,1,,Bad Billing
i4,customer,nobody,prepaid,0,1,,Bad Parent
i1,customer,r1,prepaid,0,1,,Duplicate
i6,customer,r1,prepaid,1.1234567,x,,Bad Money And Limit
"""


def test_csv_import_reports_every_row(api: httpx.Client) -> None:
    two_resellers(api)
    report = ok(
        api.post("/v1/accounts/import", content=IMPORT_CSV, headers={"Content-Type": "text/csv"})
    )
    assert report["created"] == 2 and report["failed"] == 4
    rows = {row["row"]: row for row in report["rows"]}
    assert rows[2]["status"] == rows[3]["status"] == "created"
    assert rows[4]["errors"] == [{"field": "billing", "message": "Invalid enum value 'weird'"}]
    assert rows[5]["errors"] == [{"field": "parent", "message": "no such account"}]
    assert rows[6]["errors"] == [{"field": "number", "message": "is taken"}]
    assert {e["field"] for e in rows[7]["errors"]} == {"credit_limit", "max_concurrent"}
    assert ok(api.get("/v1/accounts/i2"))["credit_limit"] == "15.5000"
    problem(
        api.post(
            "/v1/accounts/import", content="numbr,kind\n", headers={"Content-Type": "text/csv"}
        ),
        422,
    )
    problem(api.post("/v1/accounts/import", json={"number": "x"}), 415)


def test_export_round_trips_through_import(
    api: httpx.Client, postgres_server: Any, tmp_path: Path
) -> None:
    two_resellers(api)
    create(
        api,
        number="e1",
        kind="customer",
        parent="r1",
        billing="postpaid",
        credit_limit="3",
        caller_ids=["15551234", "15551235"],
        blocked_prefixes=["1900"],
        profile={"company": "Export, Inc.", "city": "Leeds"},
    )
    create(api, number="e2", kind="customer", parent="r1", sip_username="e2dev", cps=4)
    exported = api.get("/v1/accounts/export", params={"parent": "r1", "kind": "customer"}).text
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert [row["number"] for row in rows] == ["c1", "e1", "e2"]
    assert (
        rows[1]["caller_ids"] == "15551234 15551235"
        and rows[1]["profile.company"] == "Export, Inc."
    )
    # A second server with its own empty database takes the export as its import.
    other_db = postgres_server.create_database()
    other = Server(postgres_server.dsn(other_db), tmp_path / "other")
    (tmp_path / "other").mkdir()
    other.start()
    try:
        with other.client() as api2:
            create(api2, number="r1", kind="reseller")
            report = ok(
                api2.post(
                    "/v1/accounts/import", content=exported, headers={"Content-Type": "text/csv"}
                )
            )
            assert report["created"] == 3, report
            again = api2.get(
                "/v1/accounts/export", params={"parent": "r1", "kind": "customer"}
            ).text

        def strip_balance(text: str) -> list[dict[str, str]]:
            return [
                {k: v for k, v in row.items() if k != "balance"}
                for row in csv.DictReader(io.StringIO(text))
            ]

        assert strip_balance(again) == strip_balance(exported)
    finally:
        assert other.stop() == 0
        postgres_server.drop_database(other_db)
