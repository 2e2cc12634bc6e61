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
-- The worker's lead queue (worker/registry.py's six functions). Dispatch: next_orchestrator_module.
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

create or replace function private.claim_leads(worker text, n int, lease_seconds int)
returns table (id uuid, next_orchestrator_module text, tenant_id uuid, lead jsonb, config jsonb)
language sql
set search_path = ''
as $$
  with due as (
    select q.id from public.leads q
    where q.next_orchestrator_module is not null and q.locked_until is null and q.next_attempt_at <= now()
    order by q.current_orchestrator_priority desc, q.next_attempt_at
    limit n
    for update skip locked
  ), claimed as (
    update public.leads l
    set locked_by = worker, locked_at = clock_timestamp(),
        locked_until = now() + make_interval(secs => lease_seconds),
        attempts = l.attempts + case when r.module = 'recover' then 0 else 1 end,
        claimed_status = l.processing_status,
        processing_status = coalesce(r.working_status, l.processing_status)
    from due, private.lead_routes r
    where l.id = due.id and r.status = l.processing_status
    returning l.*
  ), cfg as (
    select c.tenant_id, private.lead_config(c.tenant_id) as config
    from (select distinct claimed.tenant_id from claimed) c
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
  from claimed c join cfg on cfg.tenant_id = c.tenant_id
$$;
revoke execute on function private.claim_leads(text, int, int) from public, anon, authenticated;
grant execute on function private.claim_leads(text, int, int) to service_role;

/*
 * Finish a batch in one statement. Each result (from the handler) is
 *   {"status": <next status>, "action": "...", "result": "ok", "detail": {...}, "set": {<column>: value}}
 * Only the lease holder can complete. Logs one processing_logs row per lead and adds the batch to
 * system_metrics (per tenant, module and minute).
 */
create or replace function private.complete_leads(worker text, ids uuid[], results jsonb[] default null)
returns int
language plpgsql
set search_path = ''
as $$
#variable_conflict use_variable
declare
  n int;
  sent int;
begin
  -- One statement: apply the moves, log them, add the metrics, broadcast per tenant.
  with r as (
    -- the lease as it was (module, status claimed in, lease start), read before the update
    select u.id, coalesce(u.res, '{}'::jsonb) as res, coalesce(u.res -> 'set', '{}'::jsonb) as s,
           l0.next_orchestrator_module as module, l0.claimed_status, l0.locked_at,
           -- a move the status machine refuses is not applied: the lead goes to review instead of
           -- failing the whole batch
           (u.res ->> 'status' is null or u.res ->> 'status' in (l0.claimed_status, l0.processing_status)
            or exists (select 1 from private.lead_transitions t
                       where t.from_status = l0.processing_status and t.to_status = u.res ->> 'status')) as valid,
           coalesce((select rt.failure_status from private.lead_routes rt where rt.status = l0.claimed_status),
                    'HUMAN_REVIEW_NEEDED') as failure_status
    from unnest(ids, coalesce(results, array_fill(null::jsonb, array[cardinality(ids)]))) as u(id, res)
    join public.leads l0 on l0.id = u.id and l0.locked_by = worker and l0.locked_until is not null
  ), upd as (
    update public.leads l set
      processing_status = case when r.valid then coalesce(r.res ->> 'status', l.claimed_status) else r.failure_status end,
      company_name = case when r.s ? 'company_name' then r.s ->> 'company_name' else l.company_name end,
      contact_name = case when r.s ? 'contact_name' then r.s ->> 'contact_name' else l.contact_name end,
      email = case when r.s ? 'email' then r.s ->> 'email' else l.email end,
      phone = case when r.s ? 'phone' then r.s ->> 'phone' else l.phone end,
      website = case when r.s ? 'website' then r.s ->> 'website' else l.website end,
      domain_cleaned = case when r.s ? 'domain_cleaned' then r.s ->> 'domain_cleaned' else l.domain_cleaned end,
      city = case when r.s ? 'city' then r.s ->> 'city' else l.city end,
      country = case when r.s ? 'country' then r.s ->> 'country' else l.country end,
      enrichment = case when r.s ? 'enrichment' then l.enrichment || (r.s -> 'enrichment') else l.enrichment end,
      validation = case when r.s ? 'validation' then l.validation || (r.s -> 'validation') else l.validation end,
      lead_category = case when r.s ? 'lead_category' then r.s ->> 'lead_category' else l.lead_category end,
      luna_ai_score = case when r.s ? 'luna_ai_score' then (r.s ->> 'luna_ai_score')::int else l.luna_ai_score end,
      luna_ai_decision = case when r.s ? 'luna_ai_decision' then r.s ->> 'luna_ai_decision' else l.luna_ai_decision end,
      luna_ai_reason = case when r.s ? 'luna_ai_reason' then r.s ->> 'luna_ai_reason' else l.luna_ai_reason end,
      sector_category = case when r.s ? 'sector_category' then r.s ->> 'sector_category' else l.sector_category end,
      company_size_category = case when r.s ? 'company_size_category' then r.s ->> 'company_size_category' else l.company_size_category end,
      ai_provider = case when r.s ? 'ai_provider' then r.s ->> 'ai_provider' else l.ai_provider end,
      ai_model = case when r.s ? 'ai_model' then r.s ->> 'ai_model' else l.ai_model end,
      ai_prompt_version = case when r.s ? 'ai_prompt_version' then r.s ->> 'ai_prompt_version' else l.ai_prompt_version end,
      ai_decided_at = case when r.s ? 'luna_ai_decision' then now() else l.ai_decided_at end,
      current_orchestrator_priority = case when r.s ? 'lead_category'
        then private.lead_priority(l.source, r.s ->> 'lead_category') else l.current_orchestrator_priority end,
      qualified_at = case when r.res ->> 'status' = 'QUALIFIED' then now() else l.qualified_at end,
      resume_status = null, attempts = 0,
      last_error = case when r.valid then null
                        else format('handler %s returned a refused move %s -> %s', r.module, l.processing_status, r.res ->> 'status') end,
      locked_by = null, locked_until = null, locked_at = null, claimed_status = null, next_attempt_at = now()
    from r
    where l.id = r.id
    returning l.id, l.tenant_id, l.processing_status, r.res, r.module, r.claimed_status, r.locked_at, r.valid, l.last_error
  ),
  done as (
    select upd.id, upd.tenant_id, coalesce(upd.module, 'worker') as module, upd.claimed_status as from_status,
           upd.processing_status as to_status, coalesce(upd.res ->> 'action', upd.module, 'step') as action,
           case when upd.valid then coalesce(upd.res ->> 'result', 'ok') else 'error' end as result,
           (extract(epoch from clock_timestamp() - upd.locked_at) * 1000)::int as duration_ms,
           coalesce(upd.res -> 'detail', '{}') || case when upd.valid then '{}'::jsonb
                                                   else jsonb_build_object('error', upd.last_error) end as detail
    from upd
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
  ), broadcasts as (
    select private.broadcast('tenant:' || x.tenant_id || ':leads', 'leads_advanced', jsonb_build_object('count', x.n))
    from (select d.tenant_id, count(*) as n from done d group by d.tenant_id) x
  )
  select (select count(*) from done), (select count(*) from broadcasts) into n, sent;
  return n;
end;
$$;
revoke execute on function private.complete_leads(text, uuid[], jsonb[]) from public, anon, authenticated;
grant execute on function private.complete_leads(text, uuid[], jsonb[]) to service_role;

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

-- A failed attempt: back to the status it was claimed in with exponential backoff, or (not
-- retryable, or out of attempts) to the route's failure status. Logged with the error (and stack).
create or replace function private.fail_lead(worker text, lead uuid, error text, retryable boolean default true)
returns text
language plpgsql
set search_path = ''
as $$
#variable_conflict use_variable
declare
  l public.leads;
  r private.lead_routes;
  target text;
begin
  select * into l from public.leads x where x.id = lead and x.locked_by = worker and x.locked_until is not null for update;
  if not found then
    return null;
  end if;
  select * into r from private.lead_routes where status = l.claimed_status;
  target := case when retryable and l.attempts < coalesce(r.max_attempts, 5) then l.claimed_status
                 else coalesce(r.failure_status, 'HUMAN_REVIEW_NEEDED') end;
  update public.leads x set processing_status = target, last_error = left(error, 4000),
         next_attempt_at = now() + make_interval(secs => least(power(2, greatest(x.attempts - 1, 0)), 3600)),
         attempts = case when target = l.claimed_status then x.attempts else 0 end,
         locked_by = null, locked_until = null, locked_at = null, claimed_status = null
  where x.id = lead;
  insert into public.processing_logs (tenant_id, lead_id, module, action, result, from_status, to_status, error,
                                      duration_ms, detail)
  values (l.tenant_id, l.id, coalesce(r.module, 'worker'), 'attempt',
          case when target = l.claimed_status then 'retry' else 'error' end, l.claimed_status, target, left(error, 8000),
          (extract(epoch from clock_timestamp() - l.locked_at) * 1000)::int,
          jsonb_build_object('attempt', l.attempts, 'retryable', retryable));
  perform private.lead_metric_error(l.tenant_id, coalesce(r.module, 'worker'));
  if target <> l.claimed_status then
    perform private.broadcast('tenant:' || l.tenant_id || ':leads', 'alert',
      jsonb_build_object('lead_id', l.id, 'status', target, 'module', r.module, 'error', left(error, 300)));
  end if;
  return target;
end;
$$;
revoke execute on function private.fail_lead(text, uuid, text, boolean) from public, anon, authenticated;
grant execute on function private.fail_lead(text, uuid, text, boolean) to service_role;

-- Graceful shutdown: hand leases back without counting the attempt.
create or replace function private.release_leads(worker text, ids uuid[] default null) returns int
language sql
set search_path = ''
as $$
  with released as (
    update public.leads l
    set processing_status = coalesce(l.claimed_status, l.processing_status), attempts = greatest(l.attempts - 1, 0),
        locked_by = null, locked_until = null, locked_at = null, claimed_status = null
    where l.locked_by = worker and l.locked_until is not null and (ids is null or l.id = any(ids))
    returning 1
  )
  select count(*)::int from released
$$;
revoke execute on function private.release_leads(text, uuid[]) from public, anon, authenticated;
grant execute on function private.release_leads(text, uuid[]) to service_role;

-- Wait without failing (breaker open): back after `seconds`, the attempt not counted.
create or replace function private.defer_lead(worker text, lead uuid, seconds int) returns void
language plpgsql
set search_path = ''
as $$
#variable_conflict use_variable
declare
  l public.leads;
begin
  update public.leads x
  set processing_status = coalesce(x.claimed_status, x.processing_status), attempts = greatest(x.attempts - 1, 0),
      next_attempt_at = now() + make_interval(secs => seconds),
      locked_by = null, locked_until = null, locked_at = null, claimed_status = null
  where x.id = lead and x.locked_by = worker and x.locked_until is not null
  returning * into l;
  if found then
    insert into public.processing_logs (tenant_id, lead_id, module, action, result, to_status, detail)
    values (l.tenant_id, l.id, coalesce(l.next_orchestrator_module, 'worker'), 'defer', 'wait', l.processing_status,
            jsonb_build_object('seconds', seconds, 'reason', 'circuit breaker open'));
  end if;
end;
$$;
revoke execute on function private.defer_lead(text, uuid, int) from public, anon, authenticated;
grant execute on function private.defer_lead(text, uuid, int) to service_role;

-- The rescuer: an expired lease (the worker died) marks the lead TIMEOUT_DETECTED, to be retried
-- with backoff from the status it was in (route TIMEOUT_DETECTED -> recover), or past its attempts
-- sent to the route's failure status.
create or replace function private.rescue_leads() returns int
language sql
set search_path = ''
as $$
  with expired as (
    select l.id, l.tenant_id, l.claimed_status, l.processing_status, l.locked_by, l.attempts,
           coalesce(r.max_attempts, 5) as max_attempts, coalesce(r.failure_status, 'HUMAN_REVIEW_NEEDED') as failure_status,
           r.module
    from public.leads l left join private.lead_routes r on r.status = l.claimed_status
    where l.locked_until < now()
    for update of l skip locked
  ), moved as (
    update public.leads l
    set processing_status = case when e.attempts < e.max_attempts then 'TIMEOUT_DETECTED' else e.failure_status end,
        resume_status = case when e.attempts < e.max_attempts then coalesce(e.claimed_status, e.processing_status) end,
        last_error = 'lease expired (worker ' || coalesce(e.locked_by, '?') || ' stopped answering)',
        next_attempt_at = now() + make_interval(secs => least(power(2, greatest(e.attempts - 1, 0)), 3600)),
        locked_by = null, locked_until = null, locked_at = null, claimed_status = null
    from expired e where l.id = e.id
    returning l.id, l.tenant_id, l.processing_status, e.processing_status as was, e.module, e.locked_by, e.attempts
  ), logged as (
    insert into public.processing_logs (tenant_id, lead_id, module, action, result, from_status, to_status, error, detail)
    select m.tenant_id, m.id, 'orchestrator', 'timeout', 'error', m.was, m.processing_status,
           'lease expired (worker ' || coalesce(m.locked_by, '?') || ' stopped answering)',
           jsonb_build_object('module', m.module, 'attempt', m.attempts)
    from moved m
    returning 1
  )
  select count(*)::int from logged
$$;
revoke execute on function private.rescue_leads() from public, anon, authenticated;
grant execute on function private.rescue_leads() to service_role;

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
