/*
 * The worker's API: every database call the worker makes is one of these functions, so a worker
 * could equally call them over PostgREST RPC. Callable by service_role only.
 */

-- ---------------------------------------------------------------------------------------------
-- Jobs
-- ---------------------------------------------------------------------------------------------

-- Queue a job. With an idempotency key, a second enqueue returns the first job's id.
create or replace function private.enqueue_job(
  kind text, payload jsonb default '{}', tenant uuid default null, run_at timestamptz default now(),
  idempotency_key text default null, priority smallint default 100, max_attempts int default 5
) returns bigint
language sql
set search_path = ''
as $$
  with ins as (
    insert into private.jobs (kind, payload, tenant_id, run_at, idempotency_key, priority, max_attempts)
    values (kind, payload, tenant, run_at, idempotency_key, priority, max_attempts)
    on conflict (idempotency_key) do nothing
    returning id
  )
  select id from ins
  union all
  select j.id from private.jobs j where j.idempotency_key = enqueue_job.idempotency_key
  limit 1
$$;

-- The one claim pattern: lease up to n due jobs with skip locked, so workers never collide.
create or replace function private.claim_jobs(worker text, n int, lease_seconds int, kinds text[] default null)
returns setof private.jobs
language sql
set search_path = ''
as $$
  update private.jobs j
  set status = 'running', locked_by = worker, attempts = j.attempts + 1,
      locked_until = now() + make_interval(secs => lease_seconds)
  where j.id in (
    select q.id from private.jobs q
    where q.status = 'queued' and q.run_at <= now() and (kinds is null or q.kind = any(kinds))
    order by q.priority, q.run_at, q.id
    for update skip locked
    limit n)
  returning j.*
$$;

-- Finish a batch in one statement. Only the lease holder can complete (a rescued job is not).
create or replace function private.complete_jobs(worker text, ids bigint[], results jsonb[] default null)
returns int
language sql
set search_path = ''
as $$
  with done as (
    update private.jobs j
    set status = 'succeeded', locked_by = null, locked_until = null, last_error = null,
        result = r.result
    from unnest(ids, coalesce(results, array_fill(null::jsonb, array[cardinality(ids)]))) as r(id, result)
    where j.id = r.id and j.status = 'running' and j.locked_by = worker
    returning 1
  )
  select count(*)::int from done
$$;

-- A failed attempt: retry with exponential backoff (1 s, 2 s, 4 s ... capped at an hour), or, past
-- max_attempts or when not retryable, end in the visible 'failed' status with the error.
create or replace function private.fail_job(worker text, job_id bigint, error text, retryable boolean default true)
returns private.job_status
language sql
set search_path = ''
as $$
  update private.jobs j
  set status = case when retryable and j.attempts < j.max_attempts then 'queued' else 'failed' end::private.job_status,
      run_at = now() + make_interval(secs => least(power(2, j.attempts - 1), 3600)),
      locked_by = null, locked_until = null, last_error = left(error, 4000)
  where j.id = job_id and j.status = 'running' and j.locked_by = worker
  returning j.status
$$;

-- Graceful shutdown: hand unfinished leases back without counting the attempt.
create or replace function private.release_jobs(worker text, ids bigint[] default null) returns int
language sql
set search_path = ''
as $$
  with released as (
    update private.jobs j
    set status = 'queued', attempts = greatest(j.attempts - 1, 0), locked_by = null, locked_until = null
    where j.status = 'running' and j.locked_by = worker and (ids is null or j.id = any(ids))
    returning 1
  )
  select count(*)::int from released
$$;

-- The rescuer: jobs whose lease expired (their worker died) go back to the queue, or to 'failed'
-- when they have used up their attempts.
create or replace function private.rescue_jobs() returns int
language sql
set search_path = ''
as $$
  with rescued as (
    update private.jobs j
    set status = case when j.attempts < j.max_attempts then 'queued' else 'failed' end::private.job_status,
        last_error = 'lease expired (worker ' || coalesce(j.locked_by, '?') || ' stopped answering)',
        locked_by = null, locked_until = null, run_at = now()
    where j.status = 'running' and j.locked_until < now()
    returning 1
  )
  select count(*)::int from rescued
$$;

-- ---------------------------------------------------------------------------------------------
-- Step marks: a handler's side effect done once per entity and step (private.step_marks). A worker
-- can die after a side effect committed and before its batch settled; the row is then handed out
-- again. A step records its mark when its effect is done (in the same transaction where it can, else
-- right after the external call answered); a retry finds the mark and returns the stored result.
-- ---------------------------------------------------------------------------------------------

-- What a done step produced, or null when it was not done.
create or replace function private.step_result(key text) returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(m.result, '{}'::jsonb) from private.step_marks m where m.key = step_result.key
$$;

-- Record a step as done (the first record wins); returns the stored result.
create or replace function private.step_done(key text, tenant uuid, result jsonb) returns jsonb
language sql
set search_path = ''
as $$
  insert into private.step_marks as m (key, tenant_id, result)
  values (key, tenant, coalesce(result, '{}'::jsonb))
  on conflict (key) do update set result = coalesce(m.result, excluded.result)
  returning m.result
$$;

/*
 * Claim a step inside the transaction that does it: null = go ahead (the mark is taken, and commits
 * or rolls back with the step's own writes; a concurrent claimant waits for it); otherwise the step
 * was done already and this is what it produced. Finish with private.step_done(key, tenant, result).
 */
create or replace function private.step_claim(key text, tenant uuid) returns jsonb
language plpgsql
set search_path = ''
as $$
begin
  insert into private.step_marks (key, tenant_id) values (key, tenant) on conflict do nothing;
  if found then
    return null;
  end if;
  return (select coalesce(m.result, '{}'::jsonb) from private.step_marks m where m.key = step_claim.key);
end;
$$;
revoke execute on function private.step_result(text), private.step_done(text, uuid, jsonb),
  private.step_claim(text, uuid) from public, authenticated;
grant execute on function private.step_result(text), private.step_done(text, uuid, jsonb),
  private.step_claim(text, uuid) to service_role;

-- ---------------------------------------------------------------------------------------------
-- Circuit breaker (public.module_health). CLOSED lets calls through; `failure_threshold`
-- consecutive failures open it; after `cooldown_seconds` one probe is let through (HALF_OPEN);
-- the probe's success closes it, its failure opens it again.
-- ---------------------------------------------------------------------------------------------

-- May the worker call this module now? Takes the probe slot when half-open.
create or replace function private.breaker_allow(module text) returns boolean
language plpgsql
set search_path = ''
as $$
declare
  h public.module_health;
begin
  insert into public.module_health (module_name) values (module) on conflict (module_name) do nothing;
  select * into h from public.module_health where module_name = module for update;
  if h.health_status = 'CLOSED' then
    return true;
  end if;
  if h.health_status = 'OPEN' and now() >= h.opened_at + make_interval(secs => h.cooldown_seconds) then
    update public.module_health set health_status = 'HALF_OPEN', probe_started_at = now(), last_check = now()
    where module_name = module;
    return true;
  end if;
  -- A probe that never reported back (its worker died) frees the slot after another cooldown.
  if h.health_status = 'HALF_OPEN' and h.probe_started_at < now() - make_interval(secs => h.cooldown_seconds) then
    update public.module_health set probe_started_at = now() where module_name = module;
    return true;
  end if;
  return false;
end;
$$;

-- Report a call's outcome; returns the state after it.
create or replace function private.breaker_record(module text, ok boolean, error text default null)
returns public.breaker_state
language plpgsql
set search_path = ''
as $$
declare
  h public.module_health;
begin
  insert into public.module_health (module_name) values (module) on conflict (module_name) do nothing;
  select * into h from public.module_health where module_name = module for update;
  if ok then
    update public.module_health
    set health_status = 'CLOSED', error_count = 0, success_count = success_count + 1,
        opened_at = null, probe_started_at = null, last_check = now()
    where module_name = module
    returning * into h;
  else
    update public.module_health
    set error_count = error_count + 1, failure_count = failure_count + 1, last_error = left(error, 2000),
        last_check = now(),
        health_status = case when h.health_status = 'HALF_OPEN' or h.error_count + 1 >= h.failure_threshold
                             then 'OPEN' else h.health_status end,
        opened_at = case when h.health_status = 'HALF_OPEN' or h.error_count + 1 >= h.failure_threshold
                         then now() else h.opened_at end,
        probe_started_at = null
    where module_name = module
    returning * into h;
  end if;
  return h.health_status;
end;
$$;

-- Tune a module's breaker (thresholds and cooldown per module).
create or replace function private.breaker_configure(module text, failure_threshold int, cooldown_seconds int)
returns void
language sql
set search_path = ''
as $$
  insert into public.module_health (module_name, failure_threshold, cooldown_seconds)
  values (module, failure_threshold, cooldown_seconds)
  on conflict (module_name) do update
    set failure_threshold = excluded.failure_threshold, cooldown_seconds = excluded.cooldown_seconds
$$;

revoke execute on all functions in schema private from public;
grant execute on function private.enqueue_job(text, jsonb, uuid, timestamptz, text, smallint, int),
  private.claim_jobs(text, int, int, text[]), private.complete_jobs(text, bigint[], jsonb[]),
  private.fail_job(text, bigint, text, boolean), private.release_jobs(text, bigint[]), private.rescue_jobs(),
  private.breaker_allow(text), private.breaker_record(text, boolean, text),
  private.breaker_configure(text, int, int)
  to service_role;

-- Wait without failing (the module's breaker is open): back in the queue after `seconds`, the
-- attempt not counted.
create or replace function private.defer_job(worker text, job_id bigint, seconds int) returns void
language sql
set search_path = ''
as $$
  update private.jobs j
  set status = 'queued', attempts = greatest(j.attempts - 1, 0), locked_by = null, locked_until = null,
      run_at = now() + make_interval(secs => seconds)
  where j.id = job_id and j.status = 'running' and j.locked_by = worker
$$;
revoke execute on function private.defer_job(text, bigint, int) from public;
grant execute on function private.defer_job(text, bigint, int) to service_role;
