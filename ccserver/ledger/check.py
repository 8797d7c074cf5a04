"""`ccserver check-ledger`: prove that balances equal the journal, that the ledger sums to zero and
that every CDR's charges are exactly its transfers."""

from __future__ import annotations

from typing import Any

import msgspec

REPORT_ROWS_MAX = 20


class LedgerReport(msgspec.Struct):
    transfers: int
    ledger_accounts: int
    cdrs: int
    total_micros: int
    balance_mismatches: list[dict[str, int]]
    cdr_mismatches: list[dict[str, Any]]

    @property
    def clean(self) -> bool:
        return self.total_micros == 0 and not self.balance_mismatches and not self.cdr_mismatches

    def render(self) -> str:
        lines = [
            f"transfers: {self.transfers}, ledger accounts: {self.ledger_accounts}, "
            f"cdrs: {self.cdrs}",
            f"sum of all balances: {self.total_micros} micro-units "
            + ("(ok)" if self.total_micros == 0 else "(MUST BE 0)"),
        ]
        for row in self.balance_mismatches:
            lines.append(
                f"balance mismatch: ledger account {row['ledger_account_id']} holds "
                f"{row['balance_micros']} but its transfers sum to {row['journal_micros']}"
            )
        for row in self.cdr_mismatches:
            lines.append(
                f"cdr mismatch: {row['reference']} level account {row['account_id']} "
                f"{row['side']}: {row['amount_micros']}"
            )
        lines.append("ledger is clean" if self.clean else "LEDGER IS NOT CLEAN")
        return "\n".join(lines)


async def check_ledger(connection: Any) -> LedgerReport:
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        mismatches = await connection.fetch(
            f"""WITH journal AS (
                    SELECT id, sum(amount) AS amount FROM (
                        SELECT credit_account_id AS id, amount_micros AS amount FROM transfers
                        UNION ALL
                        SELECT debit_account_id, -amount_micros FROM transfers) t
                    GROUP BY id)
                SELECT coalesce(b.ledger_account_id, j.id) AS ledger_account_id,
                       coalesce(b.balance_micros, 0) AS balance_micros,
                       coalesce(j.amount, 0)::bigint AS journal_micros
                FROM balances b FULL JOIN journal j ON j.id = b.ledger_account_id
                WHERE coalesce(b.balance_micros, 0) <> coalesce(j.amount, 0)
                ORDER BY 1 LIMIT {REPORT_ROWS_MAX}"""
        )
        total = await connection.fetchval("SELECT coalesce(sum(balance_micros), 0) FROM balances")
        cdr_rows = await connection.fetch(
            f"""WITH expected AS (
                    SELECT c.nas || '/' || c.session_id AS reference,
                           (l->>'account_id')::bigint AS account_id,
                           (l->>'cost_micros')::bigint AS amount_micros
                    FROM cdrs c, jsonb_array_elements(c.levels) l
                    WHERE (l->>'cost_micros')::bigint > 0),
                actual AS (
                    SELECT reference, debit_account_id / 4 AS account_id, amount_micros
                    FROM transfers WHERE kind = 'call')
                SELECT 'charged in cdr, no transfer' AS side, * FROM
                    (SELECT * FROM expected EXCEPT ALL SELECT * FROM actual) missing
                UNION ALL
                SELECT 'transfer without its cdr', * FROM
                    (SELECT * FROM actual EXCEPT ALL SELECT * FROM expected) extra
                LIMIT {REPORT_ROWS_MAX}"""
        )
        counts = await connection.fetchrow(
            """SELECT (SELECT count(*) FROM transfers) AS transfers,
                      (SELECT count(*) FROM ledger_accounts) AS ledger_accounts,
                      (SELECT count(*) FROM cdrs) AS cdrs"""
        )
    return LedgerReport(
        transfers=counts["transfers"],
        ledger_accounts=counts["ledger_accounts"],
        cdrs=counts["cdrs"],
        total_micros=int(total),
        balance_mismatches=[dict(row) for row in mismatches],
        cdr_mismatches=[dict(row) for row in cdr_rows],
    )
