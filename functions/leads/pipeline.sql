-- functions/leads/pipeline.sql -- The status machine's advance function and the worker's lead queue.

-- ---------------------------------------------------------------------------------------------
-- The status machine's one advance function (transition checked by the table's trigger; logged).
-- patch: column values to set with the move (AI fields, enrichment, category ...).
-- ---------------------------------------------------------------------------------------------
create or replace function private.advance_lead(
  lead uuid, to_status text, module text, action text, result text default 'ok',
  duration_ms int default null, detail jsonb default '{}', patch jsonb default '{}'
) returns public.leads
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_variable
declare
  old public.leads;
  l public.leads;
begin
  select * into old from public.leads where id = lead for update;
  if not found then
    raise exception 'no lead %', lead using errcode = 'PT404', detail = 'code=lead_not_found';
  end if;
  update public.leads x set
    processing_status = coalesce(to_status, x.processing_status),
    lead_category = case when patch ? 'lead_category' then patch ->> 'lead_category' else x.lead_category end,
    luna_ai_score = case when patch ? 'luna_ai_score' then (patch ->> 'luna_ai_score')::int else x.luna_ai_score end,
    luna_ai_decision = case when patch ? 'luna_ai_decision' then patch ->> 'luna_ai_decision' else x.luna_ai_decision end,
    luna_ai_reason = case when patch ? 'luna_ai_reason' then patch ->> 'luna_ai_reason' else x.luna_ai_reason end,
    human_decision = case when patch ? 'human_decision' then patch ->> 'human_decision' else x.human_decision end,
    human_reason = case when patch ? 'human_reason' then patch ->> 'human_reason' else x.human_reason end,
    reviewed_by = case when patch ? 'reviewed_by' then (patch ->> 'reviewed_by')::uuid else x.reviewed_by end,
    reviewed_at = case when patch ? 'human_decision' then now() else x.reviewed_at end,
    assigned_to = case when patch ? 'assigned_to' then (patch ->> 'assigned_to')::uuid else x.assigned_to end,
    attempts = case when patch ? 'attempts' then (patch ->> 'attempts')::int else x.attempts end,
    last_error = case when patch ? 'last_error' then patch ->> 'last_error' else x.last_error end,
    next_attempt_at = now(),
    qualified_at = case when to_status = 'QUALIFIED' then now() else x.qualified_at end,
    locked_by = null, locked_until = null, locked_at = null, claimed_status = null
  where x.id = lead
  returning * into l;
  insert into public.processing_logs (tenant_id, lead_id, module, action, result, from_status, to_status, duration_ms, detail)
  values (l.tenant_id, l.id, module, action, result, old.processing_status, l.processing_status, duration_ms, detail);
  perform private.broadcast('tenant:' || l.tenant_id || ':leads', 'lead_advanced',
                            jsonb_build_object('id', l.id, 'from', old.processing_status, 'to', l.processing_status));
  return l;
end;
$$;
revoke execute on function private.advance_lead(uuid, text, text, text, text, int, jsonb, jsonb)
  from public, anon;
grant execute on function private.advance_lead(uuid, text, text, text, text, int, jsonb, jsonb)
  to service_role;

-- ---------------------------------------------------------------------------------------------
-- The worker's lead queue (private.leads_claim ... _rescue, installed below). Dispatch: next_orchestrator_module.
-- ---------------------------------------------------------------------------------------------

-- What handlers need to know about a tenant: region, thresholds, and the leads.* feature switches.
create or replace function private.lead_config(tenant uuid) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'region', t.default_region,
    'hot', coalesce((t.settings #>> '{leads,hot}')::int, 70),
    'warm', coalesce((t.settings #>> '{leads,warm}')::int, 40),
    'settings', coalesce(t.settings -> 'leads', '{}'),
    'features', coalesce((
      select jsonb_object_agg(f.key, jsonb_build_object(
               'enabled', coalesce(tf.enabled, f.default_enabled), 'config', coalesce(tf.config, '{}')))
      from public.features f
      left join public.tenant_features tf on tf.tenant_id = t.id and tf.feature = f.key
      where f.key like 'leads.%' or f.key like 'ai.%'), '{}'))
  from public.tenants t where t.id = tenant
$$;
revoke execute on function private.lead_config(uuid) from public, anon, authenticated;
grant execute on function private.lead_config(uuid) to service_role;

-- What the identifier rules make of a lead's stored values, for the normalize step (a lead written
-- straight into the table, by Glide or SQL, has not been through them): {email, phone,
-- domain_cleaned, free_mail}. Computed at claim time, in the claim's one statement.
create or replace function private.lead_identifiers(email text, phone text, website text, region text)
returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('email', e, 'phone', private.clean_phone(phone, coalesce(region, 'TR')),
                            'domain_cleaned', private.company_domain(website, e),
                            'free_mail', exists (select 1 from private.free_mail_domains f
                                                 where f.domain = private.website_domain(split_part(e, '@', 2))))
  from (select private.clean_email(email) as e) x
$$;

/*
 * The lease protocol is private.install_queue's (functions/worker.sql); the lead pipeline plugs in its
 * status machine and its records through these hooks: a claim moves the lead to its route's working
 * status (a 'recover' step does not count as an attempt) and hands the handler the lead, its checked
 * identifiers and the tenant's config; complete applies the handler's move and column values; a
 * failure past its attempts goes to the route's failure status; an expired lease marks the lead
 * TIMEOUT_DETECTED (route -> recover, which resumes where it was). Each settled batch writes
 * processing_logs, system_metrics and a broadcast.
 */
create or replace function private.leads_on_claim(q public.leads, arg jsonb) returns jsonb
language sql stable
set search_path = ''
as $$
  select case when q.next_orchestrator_module = 'recover' then jsonb_build_object('attempts', q.attempts)
              else '{}'::jsonb end
$$;
revoke execute on function private.leads_on_claim(public.leads, jsonb) from public, anon, authenticated;
grant execute on function private.leads_on_claim(public.leads, jsonb) to service_role;

create or replace function private.leads_claimed(worker text, claimed public.leads[], lease_seconds int)
returns table (id uuid, next_orchestrator_module text, tenant_id uuid, lead jsonb, config jsonb)
language sql stable
set search_path = ''
as $$
  with c as (
    select * from unnest(claimed)
  ), cfg as (
    select x.tenant_id, private.lead_config(x.tenant_id) as config
    from (select distinct c.tenant_id from c) x
  )
  select c.id, c.next_orchestrator_module, c.tenant_id,
         to_jsonb(c) - 'raw' || case when c.next_orchestrator_module = 'normalize' then jsonb_build_object('identifiers',
           -- rows ingestion wrote are clean already; only rows written another way are checked again
           case when c.validation ->> 'identifiers' = 'ingest'
                then jsonb_build_object('email', c.email, 'phone', c.phone, 'domain_cleaned', c.domain_cleaned,
                                        'free_mail', exists (select 1 from private.free_mail_domains f
                                                             where f.domain = split_part(c.email, '@', 2)))
                else private.lead_identifiers(c.email, c.phone, c.website, cfg.config ->> 'region') end)
           else '{}' end,
         cfg.config
  from c join cfg on cfg.tenant_id = c.tenant_id
$$;
revoke execute on function private.leads_claimed(text, public.leads[], int) from public, anon, authenticated;
grant execute on function private.leads_claimed(text, public.leads[], int) to service_role;

/*
 * A handler's result is
 *   {"status": <next status>, "action": "...", "result": "ok", "detail": {...}, "set": {<column>: value}}
 * A move the status machine refuses is not applied: the lead goes to its route's failure status
 * (review) with the refusal as its error, instead of failing the whole batch.
 */
create or replace function private.leads_on_complete(q public.leads, res jsonb) returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce((select jsonb_object_agg(e.key, e.value) from jsonb_each(x.s) e
                   where e.key in ('company_name', 'contact_name', 'email', 'phone', 'website', 'domain_cleaned', 'city',
                                   'country', 'lead_category', 'luna_ai_score', 'luna_ai_decision', 'luna_ai_reason',
                                   'sector_category', 'company_size_category', 'ai_provider', 'ai_model',
                                   'ai_prompt_version')), '{}')
         || case when x.s ? 'enrichment' then jsonb_build_object('enrichment', q.enrichment || (x.s -> 'enrichment')) else '{}' end
         || case when x.s ? 'validation' then jsonb_build_object('validation', q.validation || (x.s -> 'validation')) else '{}' end
         || case when x.s ? 'luna_ai_decision' then jsonb_build_object('ai_decided_at', now()) else '{}' end
         || case when x.s ? 'lead_category' then jsonb_build_object('current_orchestrator_priority',
                   private.lead_priority(q.source, x.s ->> 'lead_category')) else '{}' end
         || case when res ->> 'status' = 'QUALIFIED' then jsonb_build_object('qualified_at', now()) else '{}' end
         || jsonb_build_object(
              'processing_status', case when x.valid then coalesce(res ->> 'status', q.claimed_status)
                                        else coalesce((select r.failure_status from private.lead_routes r
                                                       where r.status = q.claimed_status), 'HUMAN_REVIEW_NEEDED') end,
              'last_error', case when not x.valid then format('handler %s returned a refused move %s -> %s',
                                                              q.next_orchestrator_module, q.processing_status, res ->> 'status') end,
              'resume_status', null, 'attempts', 0, 'next_attempt_at', now())
  from (select coalesce(res -> 'set', '{}') as s,
               (res ->> 'status' is null or res ->> 'status' in (q.claimed_status, q.processing_status)
                or exists (select 1 from private.lead_transitions t
                           where t.from_status = q.processing_status and t.to_status = res ->> 'status')) as valid) x
$$;
revoke execute on function private.leads_on_complete(public.leads, jsonb) from public, anon, authenticated;
grant execute on function private.leads_on_complete(public.leads, jsonb) to service_role;

-- One processing_logs row per lead, the batch added to system_metrics (per tenant, module and
-- minute), one broadcast per tenant.
create or replace function private.leads_after_complete(worker text, olds public.leads[], news public.leads[], results jsonb[])
returns void
language sql
set search_path = ''
as $$
  with done as (
    select (u.n).id, (u.n).tenant_id, coalesce((u.o).next_orchestrator_module, 'worker') as module,
           (u.o).claimed_status as from_status, (u.n).processing_status as to_status,
           coalesce(u.r ->> 'action', (u.o).next_orchestrator_module, 'step') as action,
           case when (u.n).last_error is null then coalesce(u.r ->> 'result', 'ok') else 'error' end as result,
           (extract(epoch from clock_timestamp() - (u.o).locked_at) * 1000)::int as duration_ms,
           coalesce(u.r -> 'detail', '{}') || case when (u.n).last_error is null then '{}'::jsonb
                                            else jsonb_build_object('error', (u.n).last_error) end as detail
    from generate_subscripts(news, 1) i, lateral (select olds[i] as o, news[i] as n, results[i] as r) u
  ), logs as (
    insert into public.processing_logs (tenant_id, lead_id, module, action, result, from_status, to_status, duration_ms, detail)
    select d.tenant_id, d.id, d.module, d.action, d.result, d.from_status, d.to_status, d.duration_ms, d.detail
    from done d
  ), metrics as (
    insert into public.system_metrics as m (tenant_id, module, bucket, processed, errors, total_ms, max_ms)
    select d.tenant_id, d.module, date_trunc('minute', now()), count(*), count(*) filter (where d.result = 'error'),
           coalesce(sum(d.duration_ms), 0), coalesce(max(d.duration_ms), 0)
    from done d group by d.tenant_id, d.module
    on conflict (tenant_id, module, bucket) do update
      set processed = m.processed + excluded.processed, errors = m.errors + excluded.errors,
          total_ms = m.total_ms + excluded.total_ms, max_ms = greatest(m.max_ms, excluded.max_ms)
  )
  select count(private.broadcast('tenant:' || x.tenant_id || ':leads', 'leads_advanced', jsonb_build_object('count', x.n)))
  from (select d.tenant_id, count(*) as n from done d group by d.tenant_id) x
$$;
revoke execute on function private.leads_after_complete(text, public.leads[], public.leads[], jsonb[])
  from public, anon, authenticated;
grant execute on function private.leads_after_complete(text, public.leads[], public.leads[], jsonb[])
  to service_role;

-- Count an error in the module's metrics.
create or replace function private.lead_metric_error(tenant uuid, module text) returns void
language sql
set search_path = ''
as $$
  insert into public.system_metrics as m (tenant_id, module, bucket, processed, errors)
  values (tenant, module, date_trunc('minute', now()), 0, 1)
  on conflict (tenant_id, module, bucket) do update set errors = m.errors + 1
$$;
revoke execute on function private.lead_metric_error(uuid, text) from public, anon, authenticated;
grant execute on function private.lead_metric_error(uuid, text) to service_role;

-- A failure past its attempts ends the step: the next one starts with its own attempts.
create or replace function private.leads_on_fail(q public.leads, arg jsonb) returns jsonb
language sql immutable
set search_path = ''
as $$
  select case when (arg ->> 'retry')::boolean then '{}'::jsonb else '{"attempts": 0}'::jsonb end
$$;
revoke execute on function private.leads_on_fail(public.leads, jsonb) from public, anon, authenticated;
grant execute on function private.leads_on_fail(public.leads, jsonb) to service_role;

-- Every failed attempt is logged with its error (and stack) and counted; the last one also alerts.
create or replace function private.leads_after_fail(worker text, olds public.leads[], news public.leads[], args jsonb[])
returns void
language sql
set search_path = ''
as $$
  with f as (
    select (u.o).id, (u.o).tenant_id, (u.o).claimed_status, (u.o).attempts, (u.o).locked_at, (u.n).processing_status as target,
           (u.a ->> 'retry')::boolean as retry, (u.a ->> 'retryable')::boolean as retryable, u.a ->> 'error' as error,
           (select r.module from private.lead_routes r where r.status = (u.o).claimed_status) as module
    from generate_subscripts(news, 1) i, lateral (select olds[i] as o, news[i] as n, args[i] as a) u
  ), logs as (
    insert into public.processing_logs (tenant_id, lead_id, module, action, result, from_status, to_status, error,
                                        duration_ms, detail)
    select f.tenant_id, f.id, coalesce(f.module, 'worker'), 'attempt', case when f.retry then 'retry' else 'error' end,
           f.claimed_status, f.target, left(f.error, 8000), (extract(epoch from clock_timestamp() - f.locked_at) * 1000)::int,
           jsonb_build_object('attempt', f.attempts, 'retryable', f.retryable)
    from f
  ), metrics as (
    select private.lead_metric_error(f.tenant_id, coalesce(f.module, 'worker')) from f
  )
  select (select count(*) from metrics)
         + (select count(private.broadcast('tenant:' || f.tenant_id || ':leads', 'alert',
                     jsonb_build_object('lead_id', f.id, 'status', f.target, 'module', f.module, 'error', left(f.error, 300))))
            from f where not f.retry)
$$;
revoke execute on function private.leads_after_fail(text, public.leads[], public.leads[], jsonb[])
  from public, anon, authenticated;
grant execute on function private.leads_after_fail(text, public.leads[], public.leads[], jsonb[])
  to service_role;

create or replace function private.leads_after_snooze(worker text, olds public.leads[], news public.leads[], args jsonb[])
returns void
language sql
set search_path = ''
as $$
  insert into public.processing_logs (tenant_id, lead_id, module, action, result, to_status, detail)
  select (u.n).tenant_id, (u.n).id, coalesce((u.n).next_orchestrator_module, 'worker'), 'snooze', 'wait', (u.n).processing_status,
         jsonb_build_object('seconds', (u.a ->> 'seconds')::int, 'reason', 'circuit breaker open')
  from generate_subscripts(news, 1) i, lateral (select olds[i] as o, news[i] as n, args[i] as a) u
$$;
revoke execute on function private.leads_after_snooze(text, public.leads[], public.leads[], jsonb[])
  from public, anon, authenticated;
grant execute on function private.leads_after_snooze(text, public.leads[], public.leads[], jsonb[])
  to service_role;

-- An expired lease: TIMEOUT_DETECTED, resumed from the status it was in (or the failure status).
create or replace function private.leads_on_rescue(q public.leads, arg jsonb) returns jsonb
language sql immutable
set search_path = ''
as $$
  select case when (arg ->> 'retry')::boolean
              then jsonb_build_object('processing_status', 'TIMEOUT_DETECTED',
                                      'resume_status', coalesce(q.claimed_status, q.processing_status))
              else '{"resume_status": null}'::jsonb end
$$;
revoke execute on function private.leads_on_rescue(public.leads, jsonb) from public, anon, authenticated;
grant execute on function private.leads_on_rescue(public.leads, jsonb) to service_role;

create or replace function private.leads_after_rescue(worker text, olds public.leads[], news public.leads[], args jsonb[])
returns void
language sql
set search_path = ''
as $$
  insert into public.processing_logs (tenant_id, lead_id, module, action, result, from_status, to_status, error, detail)
  select (u.n).tenant_id, (u.n).id, 'orchestrator', 'timeout', 'error', (u.o).processing_status, (u.n).processing_status,
         (u.n).last_error, jsonb_build_object('module', (select r.module from private.lead_routes r where r.status = (u.o).claimed_status),
                                            'attempt', (u.o).attempts)
  from generate_subscripts(news, 1) i, lateral (select olds[i] as o, news[i] as n, args[i] as a) u
$$;
revoke execute on function private.leads_after_rescue(text, public.leads[], public.leads[], jsonb[])
  from public, anon, authenticated;
grant execute on function private.leads_after_rescue(text, public.leads[], public.leads[], jsonb[])
  to service_role;

-- The queue: dispatched by next_orchestrator_module; the state is processing_status, read through
-- the routes (private.lead_routes: working status, failure status, attempts per step).
select private.install_queue('leads', 'public.leads',
  state => 'processing_status',
  ready => 'q.next_orchestrator_module is not null and q.locked_until is null',
  available => 'coalesce(q.claimed_status, q.processing_status)',
  running => 'coalesce((select r.working_status from private.lead_routes r where r.status = q.processing_status), q.processing_status)',
  succeeded => 'coalesce(q.claimed_status, q.processing_status)',
  failed => 'coalesce((select r.failure_status from private.lead_routes r where r.status = q.claimed_status), ''HUMAN_REVIEW_NEEDED'')',
  max_attempts => 'coalesce((select r.max_attempts from private.lead_routes r where r.status = q.claimed_status), 5)',
  due => 'next_attempt_at', priority => 'current_orchestrator_priority', claimed_state => 'claimed_status');

-- Successes counted by a worker's breaker cache (worker/leads/breaker.py), added in one call. A
-- success also ends a run of failures, as private.breaker_record does.
create or replace function private.breaker_add_successes(module text, n int) returns void
language sql
set search_path = ''
as $$
  update public.module_health
  set success_count = success_count + n, error_count = 0, last_check = now()
  where module_name = module and health_status = 'CLOSED'
$$;
revoke execute on function private.breaker_add_successes(text, int) from public, anon, authenticated;
grant execute on function private.breaker_add_successes(text, int) to service_role;
