"""A small world in Postgres for ledger tests: operator -> reseller r1 -> customers c1, c2."""

from __future__ import annotations

from typing import Any

from ccserver.actors.engine import Engine
from ccserver.ledger.bridge import Bridge
from ccserver.ledger.loader import build_engine, fetch_snapshot
from ccserver.ledger.store import AccountRow, create_account, create_rate_group, upsert_rates
from ccserver.ledger.writer import LedgerWrite, OpenSession
from ccserver.rating.tariff import Rate

UNIT = 1_000_000


async def seed(bridge: Bridge) -> dict[str, int]:
    async def go(connection: Any) -> dict[str, int]:
        op_group = await create_rate_group(connection, "operator retail")
        await upsert_rates(connection, op_group, [Rate("44", "UK", 0, 600_000)])
        r1 = await create_account(
            connection,
            AccountRow(number="r1", kind="reseller", parent_id=1, rate_group_id=op_group),
        )
        r_group = await create_rate_group(connection, "r1 retail", owner_id=r1)
        await upsert_rates(connection, r_group, [Rate("44", "UK", 0, 1_200_000)])
        ids = {"r1": r1, "op_group": op_group, "r_group": r_group}
        for number in ("c1", "c2"):
            ids[number] = await create_account(
                connection,
                AccountRow(
                    number=number,
                    kind="customer",
                    parent_id=r1,
                    rate_group_id=r_group,
                    password="secret",
                ),
            )
        return ids

    return await bridge.run(go)


async def load(bridge: Bridge, clock: Any = None) -> Engine:
    snapshot = await bridge.run(fetch_snapshot)
    if clock is None:
        return build_engine(snapshot)
    return build_engine(snapshot, clock=clock)


def open_session_of(engine: Engine, nas: str, session_id: str) -> LedgerWrite:
    session = engine.sessions[(nas, session_id)]
    return LedgerWrite(
        open_session=OpenSession(
            nas=nas,
            session_id=session_id,
            account_id=session.account.id,
            username=session.username,
            calling=session.calling,
            called=session.called,
            started_at=session.start_ms / 1000,
        )
    )
