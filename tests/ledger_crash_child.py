"""Child process of the crash test in test_ledger_durability.py (not a test module).

    python tests/ledger_crash_child.py DATABASE_URL [--count N] [--tasks T]

Writes top-ups w0 .. w{N-1} (amount n + 1 micro-units, from reseller r1's funding account to
customer c1's balance) through a Bridge and the group-commit Writer, T writes in flight at a
time, and prints `ack w{n} applied|replay` (flushed) each time a write() returns. The parent may
SIGKILL it at any moment; run again, it replays every write to the end and prints `done`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import trio

from ccserver.actors.messages import Transfer
from ccserver.ledger.bridge import Bridge
from ccserver.ledger.writer import LedgerWrite, Writer


async def account_id(bridge: Bridge, number: str) -> int:
    async def go(connection: Any) -> int:
        found = await connection.fetchval("SELECT id FROM accounts WHERE number = $1", number)
        assert found is not None, f"account {number} is not seeded"
        return int(found)

    return await bridge.run(go)


def topup(n: int, reseller: int, customer: int) -> LedgerWrite:
    transfer = Transfer(
        f"w{n}",
        debit_account_id=reseller,
        debit_kind="funding",
        credit_account_id=customer,
        credit_kind="balance",
        amount_micros=n + 1,
        kind="topup",
        reference="",
    )
    return LedgerWrite(transfers=(transfer,))


async def main(dsn: str, count: int, tasks: int) -> None:
    out = sys.stdout
    async with Bridge(dsn) as bridge:
        reseller = await account_id(bridge, "r1")
        customer = await account_id(bridge, "c1")
        writer = Writer(bridge)
        numbers = iter(range(count))

        async def produce() -> None:
            # Each task takes the next number as soon as its previous write is acknowledged.
            for n in numbers:
                outcome = await writer.write(topup(n, reseller, customer))
                out.write(f"ack w{n} {'applied' if outcome.applied else 'replay'}\n")
                out.flush()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            async with trio.open_nursery() as producers:
                for _ in range(tasks):
                    producers.start_soon(produce)
            writer.close()
    out.write("done\n")
    out.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--tasks", type=int, default=50)
    args = parser.parse_args()
    trio.run(main, args.dsn, args.count, args.tasks)
