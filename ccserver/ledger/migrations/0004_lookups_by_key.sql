-- ccserver schema 4: the writer's function finds rows by key, whatever the statistics say.
-- PL/pgSQL caches a generic plan for each statement after five calls, made from the statistics
-- of that moment and kept until they change. `sessions` gets a row at every Start and loses it
-- at every Stop: between two autovacuum visits it is mostly dead rows, and the statistics last
-- saw it small. The generic plan of the batch's DELETE was then a sequential scan of the whole
-- table, and a stop's commit slowed with every call ended since the last vacuum (at 2,200 calls
-- a second: 0.4 ms per batch, then 1.6 ms 30 s later; by key: 0.04-0.07 ms). The same could
-- happen to the lookup of replayed transfers by idempotency key. Every statement of the
-- function has an index to use; with sequential scans off, its cached plans use it. Planning
-- each statement afresh at every call instead (plan_cache_mode = force_custom_plan) cost about
-- 0.8 ms per batch of ten stops.
ALTER FUNCTION ccserver_commit(
    bigint, integer[], bigint[], bigint[], bigint[], text[], text[], text[], integer[], text[],
    text[], bigint[], text[], text[], text[], float8[], float8[], integer[], integer[], bigint[],
    text[], text[], boolean[], text[], text[], bigint[], text[], text[], text[], float8[],
    boolean[], text[], text[]
) SET enable_seqscan = off;
