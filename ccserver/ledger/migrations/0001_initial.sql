-- ccserver schema 1: accounts and tariffs, the double-entry ledger, calls, principals.
-- Money is bigint micro-units everywhere; times are timestamptz (UTC).

CREATE TABLE rate_groups (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    owner_id    bigint,                       -- the account that sells with it (NULL: operator)
    precision   smallint NOT NULL DEFAULT 4 CHECK (precision BETWEEN 0 AND 6),
    rounding    text NOT NULL DEFAULT 'up' CHECK (rounding IN ('up', 'down', 'half_up')),
    markup_ppm  bigint NOT NULL DEFAULT 0 CHECK (markup_ppm >= -1000000),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX rate_groups_owner_name ON rate_groups (coalesce(owner_id, 0), name);

CREATE TABLE rates (
    rate_group_id            bigint NOT NULL REFERENCES rate_groups (id) ON DELETE CASCADE,
    prefix                   text NOT NULL CHECK (prefix ~ '^[0-9]{1,32}$'),
    destination              text NOT NULL DEFAULT '',
    connect_fee_micros       bigint NOT NULL DEFAULT 0 CHECK (connect_fee_micros >= 0),
    per_minute_micros        bigint NOT NULL CHECK (per_minute_micros >= 0),
    free_seconds             integer NOT NULL DEFAULT 0 CHECK (free_seconds BETWEEN 0 AND 86400),
    first_increment_seconds  integer NOT NULL DEFAULT 1 CHECK (first_increment_seconds BETWEEN 1 AND 86400),
    next_increment_seconds   integer NOT NULL DEFAULT 1 CHECK (next_increment_seconds BETWEEN 1 AND 86400),
    PRIMARY KEY (rate_group_id, prefix)
);

CREATE TABLE accounts (
    id                          bigint PRIMARY KEY,
    number                      text NOT NULL UNIQUE,
    kind                        text NOT NULL
        CHECK (kind IN ('operator', 'reseller', 'customer', 'agent', 'provider')),
    parent_id                   bigint REFERENCES accounts (id),
    status                      text NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'suspended', 'deleted')),
    billing                     text NOT NULL DEFAULT 'prepaid' CHECK (billing IN ('prepaid', 'postpaid')),
    credit_limit_micros         bigint NOT NULL DEFAULT 0 CHECK (credit_limit_micros >= 0),
    currency                    text NOT NULL DEFAULT 'USD',
    rate_group_id               bigint REFERENCES rate_groups (id),
    max_concurrent              integer NOT NULL DEFAULT 0 CHECK (max_concurrent >= 0),
    cps                         integer NOT NULL DEFAULT 0 CHECK (cps >= 0),
    expires_at                  timestamptz,
    valid_days                  integer CHECK (valid_days > 0),
    first_used_at               timestamptz,
    password                    text,
    pin                         text,
    sip_username                text UNIQUE,
    tech_prefix                 text NOT NULL DEFAULT '',
    ip_addresses                text[] NOT NULL DEFAULT '{}',
    caller_ids                  text[] NOT NULL DEFAULT '{}',
    cli_policy                  text NOT NULL DEFAULT 'any' CHECK (cli_policy IN ('any', 'listed')),
    blocked_prefixes            text[] NOT NULL DEFAULT '{}',
    low_balance_threshold_micros bigint,
    profile                     jsonb NOT NULL DEFAULT '{}',
    invoice_settings            jsonb NOT NULL DEFAULT '{}',
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    deleted_at                  timestamptz,
    CHECK ((kind = 'operator') = (parent_id IS NULL))
);
CREATE INDEX accounts_parent ON accounts (parent_id);
CREATE SEQUENCE accounts_id_seq START 2 OWNED BY accounts.id;
ALTER TABLE rate_groups ADD FOREIGN KEY (owner_id) REFERENCES accounts (id);

-- A personal rate of one account beats its rate group's.
CREATE TABLE account_rates (
    account_id               bigint NOT NULL REFERENCES accounts (id),
    prefix                   text NOT NULL CHECK (prefix ~ '^[0-9]{1,32}$'),
    destination              text NOT NULL DEFAULT '',
    connect_fee_micros       bigint NOT NULL DEFAULT 0 CHECK (connect_fee_micros >= 0),
    per_minute_micros        bigint NOT NULL CHECK (per_minute_micros >= 0),
    free_seconds             integer NOT NULL DEFAULT 0,
    first_increment_seconds  integer NOT NULL DEFAULT 1 CHECK (first_increment_seconds >= 1),
    next_increment_seconds   integer NOT NULL DEFAULT 1 CHECK (next_increment_seconds >= 1),
    PRIMARY KEY (account_id, prefix)
);

-- Ledger accounts. The id is derived: account id * 4 + kind code (balance 0, revenue 1,
-- funding 2), so a transfer needs no lookup to name its accounts.
CREATE TABLE ledger_accounts (
    id          bigint PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts (id),
    kind        text NOT NULL CHECK (kind IN ('balance', 'revenue', 'funding')),
    UNIQUE (account_id, kind),
    CHECK (id = account_id * 4 + CASE kind WHEN 'balance' THEN 0 WHEN 'revenue' THEN 1 ELSE 2 END)
);

-- Credits minus debits of each ledger account, updated in the transaction of its transfers.
CREATE TABLE balances (
    ledger_account_id  bigint PRIMARY KEY REFERENCES ledger_accounts (id),
    balance_micros     bigint NOT NULL DEFAULT 0
);

-- No foreign keys on the journal: per-row FK triggers cost more than the insert itself at
-- group-commit rates. The writer updates `balances` (which has its FK) in the same transaction,
-- so a transfer naming an unknown ledger account still aborts its commit.
CREATE TABLE transfers (
    id                 bigserial PRIMARY KEY,
    debit_account_id   bigint NOT NULL,
    credit_account_id  bigint NOT NULL,
    amount_micros      bigint NOT NULL CHECK (amount_micros > 0),
    kind               text NOT NULL,
    reference          text NOT NULL DEFAULT '',
    idempotency_key    text NOT NULL UNIQUE,
    batch_id           bigint NOT NULL,       -- the writer's commit that applied it
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (debit_account_id <> credit_account_id)
);
CREATE INDEX transfers_debit_time ON transfers (debit_account_id, created_at);
CREATE INDEX transfers_credit_time ON transfers (credit_account_id, created_at);

CREATE TABLE nas_clients (
    id                             bigserial PRIMARY KEY,
    name                           text NOT NULL UNIQUE,
    address                        cidr NOT NULL,
    secret                         text NOT NULL,
    coa_port                       integer NOT NULL DEFAULT 3799 CHECK (coa_port BETWEEN 1 AND 65535),
    require_message_authenticator  boolean NOT NULL DEFAULT true,
    created_at                     timestamptz NOT NULL DEFAULT now()
);

-- Calls in progress, so that a restart restores their slots and exposure.
CREATE TABLE sessions (
    nas          text NOT NULL,
    session_id   text NOT NULL,
    account_id   bigint NOT NULL REFERENCES accounts (id),
    username     text NOT NULL DEFAULT '',
    calling      text NOT NULL DEFAULT '',
    called       text NOT NULL DEFAULT '',
    started_at   timestamptz NOT NULL,
    authorized   boolean NOT NULL DEFAULT true,
    PRIMARY KEY (nas, session_id)
);
CREATE INDEX sessions_account ON sessions (account_id);

CREATE TABLE cdrs (
    id                 bigserial PRIMARY KEY,
    nas                text NOT NULL,
    session_id         text NOT NULL,
    account_id         bigint NOT NULL REFERENCES accounts (id),
    level_account_ids  bigint[] NOT NULL,       -- the chain, customer first
    calling            text NOT NULL DEFAULT '',
    called             text NOT NULL DEFAULT '',
    start_time         timestamptz NOT NULL,
    stop_time          timestamptz NOT NULL,
    duration_seconds   integer NOT NULL CHECK (duration_seconds >= 0),
    billable_seconds   integer NOT NULL CHECK (billable_seconds >= 0),
    cost_micros        bigint NOT NULL CHECK (cost_micros >= 0),
    levels             jsonb NOT NULL,          -- [{account_id, number, prefix, cost_micros, billable_seconds}]
    disconnect_cause   text NOT NULL DEFAULT '',
    authorized         boolean NOT NULL DEFAULT true,
    invoice_id         bigint,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (nas, session_id)
);
CREATE INDEX cdrs_account_time ON cdrs (account_id, start_time);
CREATE INDEX cdrs_levels ON cdrs USING gin (level_account_ids);
CREATE INDEX cdrs_time ON cdrs (start_time);

-- The ledger writer's whole batch in one call (one round trip, one transaction). Transfers come
-- deduplicated by key, each with the index of its write in the batch (t_item); CDRs likewise
-- (c_item). Returns the indexes of the writes something was applied for: a transfer inserted now
-- or by an earlier attempt of this very batch (same batch_id: the connection died after COMMIT),
-- or a CDR inserted now. Balances are updated from the inserted transfers in ascending id order,
-- so two concurrent batches cannot deadlock on them. Each statement of a plpgsql function takes
-- its own snapshot (read committed), as separate statements from the client would.
CREATE FUNCTION ccserver_commit(
    p_batch_id bigint,
    t_item integer[], t_debit bigint[], t_credit bigint[], t_amount bigint[], t_kind text[],
    t_reference text[], t_key text[],
    c_item integer[], c_nas text[], c_session text[], c_account bigint[], c_levels text[],
    c_calling text[], c_called text[], c_start float8[], c_stop float8[], c_duration integer[],
    c_billable integer[], c_cost bigint[], c_levels_json text[], c_cause text[],
    c_authorized boolean[],
    o_nas text[], o_session text[], o_account bigint[], o_username text[], o_calling text[],
    o_called text[], o_started float8[], o_authorized boolean[],
    x_nas text[], x_session text[]
) RETURNS integer[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    applied integer[] := '{}';
    inserted bigint;
    cdr_items integer[];
BEGIN
    IF cardinality(t_key) > 0 THEN
        WITH ins AS (
            INSERT INTO transfers (debit_account_id, credit_account_id, amount_micros, kind,
                                   reference, idempotency_key, batch_id)
            SELECT d, c, a, k, r, i, p_batch_id
            FROM unnest(t_debit, t_credit, t_amount, t_kind, t_reference, t_key)
                AS t(d, c, a, k, r, i)
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING debit_account_id, credit_account_id, amount_micros
        ), moved AS (
            INSERT INTO balances (ledger_account_id, balance_micros)
            SELECT id, sum(delta)::bigint
            FROM (SELECT debit_account_id, -amount_micros FROM ins
                  UNION ALL
                  SELECT credit_account_id, amount_micros FROM ins) AS m(id, delta)
            GROUP BY id
            ORDER BY id
            ON CONFLICT (ledger_account_id)
            DO UPDATE SET balance_micros = balances.balance_micros + EXCLUDED.balance_micros
        )
        SELECT count(*) INTO inserted FROM ins;
        IF inserted = cardinality(t_key) THEN
            applied := t_item;
        ELSE
            -- Keys already present: ours if an earlier attempt of this batch committed them.
            SELECT coalesce(array_agg(t.n), '{}') INTO applied
            FROM unnest(t_key, t_item) AS t(k, n)
            JOIN transfers ON transfers.idempotency_key = t.k AND transfers.batch_id = p_batch_id;
        END IF;
    END IF;
    IF cardinality(c_item) > 0 THEN
        WITH ins AS (
            INSERT INTO cdrs (nas, session_id, account_id, level_account_ids, calling, called,
                              start_time, stop_time, duration_seconds, billable_seconds,
                              cost_micros, levels, disconnect_cause, authorized)
            SELECT n, s, a, string_to_array(l, ',')::bigint[], cg, cd, to_timestamp(st),
                   to_timestamp(et), d, b, c, j::jsonb, dc, z
            FROM unnest(c_nas, c_session, c_account, c_levels, c_calling, c_called, c_start,
                        c_stop, c_duration, c_billable, c_cost, c_levels_json, c_cause,
                        c_authorized)
                AS x(n, s, a, l, cg, cd, st, et, d, b, c, j, dc, z)
            ON CONFLICT (nas, session_id) DO NOTHING
            RETURNING nas, session_id
        )
        SELECT coalesce(array_agg(x.i), '{}') INTO cdr_items
        FROM unnest(c_nas, c_session, c_item) AS x(n, s, i)
        JOIN ins ON ins.nas = x.n AND ins.session_id = x.s;
        applied := applied || cdr_items;
    END IF;
    IF cardinality(o_nas) > 0 THEN
        INSERT INTO sessions (nas, session_id, account_id, username, calling, called, started_at,
                              authorized)
        SELECT n, s, a, u, cg, cd, to_timestamp(t), z
        FROM unnest(o_nas, o_session, o_account, o_username, o_calling, o_called, o_started,
                    o_authorized) AS x(n, s, a, u, cg, cd, t, z)
        ON CONFLICT (nas, session_id) DO NOTHING;
    END IF;
    IF cardinality(x_nas) > 0 THEN
        DELETE FROM sessions USING unnest(x_nas, x_session) AS x(n, s)
        WHERE sessions.nas = x.n AND sessions.session_id = x.s;
    END IF;
    RETURN applied;
END
$$;

CREATE TABLE principals (
    id                bigserial PRIMARY KEY,
    name              text NOT NULL,
    role              text NOT NULL CHECK (role IN ('super_admin', 'admin', 'reseller', 'agent', 'customer')),
    scope_account_id  bigint REFERENCES accounts (id),
    permissions       jsonb NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tokens (
    id            bigserial PRIMARY KEY,
    principal_id  bigint NOT NULL REFERENCES principals (id),
    token_sha256  bytea NOT NULL UNIQUE,       -- the token itself is shown once and never stored
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

-- The operator: the root of every hierarchy.
INSERT INTO accounts (id, number, kind) VALUES (1, 'operator', 'operator');
INSERT INTO ledger_accounts (id, account_id, kind) VALUES (4, 1, 'balance'), (5, 1, 'revenue'), (6, 1, 'funding');
INSERT INTO balances (ledger_account_id) VALUES (4), (5), (6);
