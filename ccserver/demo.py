"""`ccserver serve --demo`: seed a small operator into an empty database, print what to try.

Seeded before the engine loads, through the same store functions the API uses, so the demo data
is ordinary data: an operator rate group, a reseller with its own rate group, a prepaid and a
postpaid customer, a NAS client 127.0.0.1 with secret `testing123`, and a demo token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ccserver.actors.messages import Transfer
from ccserver.admin_api.auth import Permission, Role, new_token, token_digest
from ccserver.config import Config
from ccserver.ledger.bridge import Bridge
from ccserver.ledger.store import AccountRow, create_account, create_rate_group, upsert_rates
from ccserver.ledger.writer import LedgerWrite, commit_now
from ccserver.money import parse_money
from ccserver.rating.tariff import Rate

DEMO_SECRET = "testing123"
RESELLER, PREPAID, POSTPAID = "1000", "1001", "1002"
PASSWORDS = {PREPAID: "demo1001", POSTPAID: "demo1002"}


def _rates(markup: str) -> list[Rate]:
    factor = parse_money(markup)
    table = [
        ("1", "USA/Canada", "0.0100"),
        ("44", "United Kingdom", "0.0200"),
        ("4420", "United Kingdom London", "0.0150"),
        ("447", "United Kingdom mobile", "0.0800"),
        ("33", "France", "0.0250"),
        ("49", "Germany", "0.0200"),
    ]
    return [
        Rate(prefix, name, 0, parse_money(price) * factor // 1_000_000, 0, 1, 1)
        for prefix, name, price in table
    ]


async def seed_demo(bridge: Bridge) -> str | None:
    """Seed if the database holds nothing but the operator; return the demo token if seeded."""

    async def go(connection: Any) -> str | None:
        if await connection.fetchval("SELECT count(*) FROM accounts") > 1:
            return None
        wholesale = await create_rate_group(connection, "operator wholesale")
        await upsert_rates(connection, wholesale, _rates("1"))
        reseller = await create_account(
            connection,
            AccountRow(
                number=RESELLER,
                kind="reseller",
                parent_id=1,
                rate_group_id=wholesale,
                profile={"company": "Demo Reseller Ltd"},
            ),
        )
        retail = await create_rate_group(connection, "reseller retail", owner_id=reseller)
        await upsert_rates(connection, retail, _rates("1.5"))
        prepaid = await create_account(
            connection,
            AccountRow(
                number=PREPAID,
                kind="customer",
                parent_id=reseller,
                rate_group_id=retail,
                password=PASSWORDS[PREPAID],
                max_concurrent=2,
                profile={"first_name": "Pat", "last_name": "Prepaid"},
            ),
        )
        await create_account(
            connection,
            AccountRow(
                number=POSTPAID,
                kind="customer",
                parent_id=reseller,
                billing="postpaid",
                credit_limit_micros=parse_money("50"),
                rate_group_id=retail,
                password=PASSWORDS[POSTPAID],
                profile={"first_name": "Paul", "last_name": "Postpaid"},
            ),
        )
        await connection.execute(
            """INSERT INTO nas_clients (name, address, secret) VALUES ('local', '127.0.0.1', $1)""",
            DEMO_SECRET,
        )
        token = new_token()
        principal = await connection.fetchval(
            """INSERT INTO principals (name, role, permissions) VALUES ('demo', $1, $2::jsonb)
               RETURNING id""",
            Role.SUPER_ADMIN.value,
            "[" + ",".join(f'"{p.value}"' for p in Permission) + "]",
        )
        await connection.execute(
            "INSERT INTO tokens (principal_id, token_sha256) VALUES ($1, $2)",
            principal,
            token_digest(token),
        )
        ids = {"reseller": reseller, "prepaid": prepaid}
        connection_ids.update(ids)
        return token

    connection_ids: dict[str, int] = {}
    token = await bridge.run(go)
    if token is None:
        return None
    topups = [
        Transfer("demo:topup:reseller", 1, "funding", connection_ids["reseller"], "balance",
                 parse_money("100"), "topup", "demo"),
        Transfer("demo:topup:prepaid", connection_ids["reseller"], "funding",
                 connection_ids["prepaid"], "balance", parse_money("10"), "topup", "demo"),
    ]  # fmt: skip
    await commit_now(bridge, [LedgerWrite(transfers=tuple(topups))])
    return token


def remember_demo_token(data_dir: str, token: str | None) -> str | None:
    """Keep the demo token beside the embedded database (mode 0600), so that every later
    `make run` can print it again: only its digest is in the database."""
    path = Path(data_dir) / "demo-token"
    if token is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(token + "\n")
        return token
    return path.read_text().strip() if path.exists() else None


def instructions(config: Config, token: str | None, radius: bool) -> str:
    api = f"http://{config.admin_api.listen}"
    auth_token = token or "<the demo token printed when the demo data was first seeded>"
    header = f'-H "Authorization: Bearer {auth_token}"'
    lines = [
        "",
        "ccserver demo is running.",
        f"  admin API: {api}   metrics: {api}/metrics   OpenAPI: {api}/openapi.json",
        f"  demo token: {auth_token}",
        "",
        "Accounts and balances:",
        f"  curl -s {header} {api}/v1/accounts",
        f"  curl -s {header} {api}/v1/accounts/{PREPAID}",
        "Top up the prepaid customer by 5.00:",
        f"  curl -s {header} -H 'Content-Type: application/json' "
        f'-d \'{{"amount": "5.00"}}\' {api}/v1/accounts/{PREPAID}/topups',
        "Its transfers (refills and charges):",
        f"  curl -s {header} {api}/v1/accounts/{PREPAID}/transfers",
    ]
    if radius:
        auth = config.radius.auth_listen
        acct = config.radius.acct_listen
        lines += [
            "",
            "Authorize a call to London (Access-Accept with Session-Timeout):",
            f"  echo 'User-Name={PREPAID},User-Password={PASSWORDS[PREPAID]},"
            f"Called-Station-Id=442071234567,Acct-Session-Id=demo-1,"
            f"Message-Authenticator=0x00' | radclient -x {auth} auth {DEMO_SECRET}",
            "Start and stop it after 60 s:",
            f"  echo 'Acct-Status-Type=Start,User-Name={PREPAID},Acct-Session-Id=demo-1,"
            f"Called-Station-Id=442071234567' | radclient -x {acct} acct {DEMO_SECRET}",
            f"  echo 'Acct-Status-Type=Stop,User-Name={PREPAID},Acct-Session-Id=demo-1,"
            f"Called-Station-Id=442071234567,Acct-Session-Time=60' "
            f"| radclient -x {acct} acct {DEMO_SECRET}",
            "Then the balance and the call record:",
            f"  curl -s {header} {api}/v1/accounts/{PREPAID}",
            f"  curl -s {header} '{api}/v1/cdrs?account={PREPAID}'",
        ]
    return "\n".join(lines) + "\n"
