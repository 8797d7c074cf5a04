-- ccserver schema 3: no foreign keys on the tables the writer inserts calls into.
-- As on `transfers` (schema 1), a per-row foreign-key check costs more than the insert at group
-- commit rates, and each takes a KEY SHARE lock on the account's row that concurrent batches of
-- the same account's calls then share (a multixact). The account ids in a CDR or an open
-- session are the engine's, which loaded them from `accounts`, and accounts are never deleted
-- (only marked deleted), so the check can never fail.
ALTER TABLE cdrs DROP CONSTRAINT cdrs_account_id_fkey;
ALTER TABLE sessions DROP CONSTRAINT sessions_account_id_fkey;
