-- ccserver schema 5: the writer's function reuses its plans for every statement.
-- PL/pgSQL keeps planning a statement afresh at each call while a plan for the parameters at
-- hand is estimated cheaper than the generic one. The generic plan of the batch's DELETE of
-- closed sessions assumes ten sessions and is costed ten times a one-stop custom plan, so it was
-- never chosen: every batch with a stop planned that DELETE again, 60-100 us of a one-stop
-- batch's 0.3-0.5 ms in the function, for the same plan (a nested loop over the arrays into the
-- primary key; with enable_seqscan off, from schema 4, no other is considered). The other
-- statements were already on their generic plans; now all are.
-- (One function of that name: no argument list needed.)
ALTER FUNCTION ccserver_commit SET plan_cache_mode = force_generic_plan;
