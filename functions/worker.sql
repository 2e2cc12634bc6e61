/*
 * The worker's API: every database call the worker makes is one of these functions, so a worker
 * could equally call them over PostgREST RPC. Callable by service_role only.
 */

-- ---------------------------------------------------------------------------------------------
-- Jobs
-- ---------------------------------------------------------------------------------------------

-- Queue a job. With an idempotency key, a second enqueue returns the first job's id. A higher
-- priority runs first (as on every queue).
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

-- The generic job queue: private.jobs_claim ... private.jobs_rescue, written by private.install_queue
-- (functions/core.sql: the one queue protocol); no hooks.
select private.install_queue('jobs', 'private.jobs');

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
  private.breaker_allow(text), private.breaker_record(text, boolean, text),
  private.breaker_configure(text, int, int)
  to service_role;
