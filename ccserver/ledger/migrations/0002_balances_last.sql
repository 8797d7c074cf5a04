-- ccserver schema 2: the writer's batch moves balances last.
-- Every batch of call stops updates the same few balance rows (the operator's revenue, a
-- reseller's balance and revenue), and the row locks taken there are held until COMMIT. Taken in
-- the first statement, as in schema 1, they made the second batch in flight wait for the whole
-- of the first: its CDR and session writes, and its WAL flush. Taken last, they are held for the
-- balance update and the COMMIT only, and two batches in flight insert their rows side by side.
-- The transfers inserted are carried to that last statement in arrays.
CREATE OR REPLACE FUNCTION ccserver_commit(
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
    ins_debit bigint[];
    ins_credit bigint[];
    ins_amount bigint[];
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
        )
        SELECT array_agg(debit_account_id), array_agg(credit_account_id), array_agg(amount_micros)
        INTO ins_debit, ins_credit, ins_amount FROM ins;
        IF coalesce(cardinality(ins_debit), 0) = cardinality(t_key) THEN
            applied := t_item;
        ELSE
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
    IF ins_debit IS NOT NULL THEN
        INSERT INTO balances (ledger_account_id, balance_micros)
        SELECT id, sum(delta)::bigint
        FROM (SELECT d, -a FROM unnest(ins_debit, ins_amount) AS u(d, a)
              UNION ALL
              SELECT c, a FROM unnest(ins_credit, ins_amount) AS u(c, a)) AS m(id, delta)
        GROUP BY id
        ORDER BY id
        ON CONFLICT (ledger_account_id)
        DO UPDATE SET balance_micros = balances.balance_micros + EXCLUDED.balance_micros;
    END IF;
    RETURN applied;
END
$$;
