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
