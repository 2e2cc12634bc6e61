/*
 * Lead pipeline functions: SQL normalisers (simple; the Python normaliser feeds bulk paths already
 * normalised values, which these leave unchanged), the one ingestion function, the set-based bulk
 * upsert, the status machine's advance function, the worker's lead queue and the review RPCs.
 */

-- ---------------------------------------------------------------------------------------------
-- Normalisers (idempotent on values luna/normalize.py produced). Identifiers are case-folded by
-- private.fold_identifier (locale-independent), never by lower() under the database's locale.
-- ---------------------------------------------------------------------------------------------
create or replace function private.clean_email(raw text) returns text
language sql immutable
set search_path = ''
as $$
  select case when e ~ '^[^@\s]+@[^@\s]+\.[^@\s.]{2,}$' then e end
  from (select btrim(regexp_replace(private.fold_identifier(btrim(raw)), '^mailto:', '')) as e) x
$$;

create or replace function private.clean_phone(raw text, region text default 'TR') returns text
language sql immutable
set search_path = ''
as $$
  select case
    when d is null or d = '' then null
    when d ~ '^\+[1-9][0-9]{7,14}$' then d
    when d ~ '^00[1-9][0-9]{7,14}$' then '+' || substr(d, 3)
    when region = 'TR' and d ~ '^0[2-5][0-9]{9}$' then '+90' || substr(d, 2)
    when region = 'TR' and d ~ '^[2-5][0-9]{9}$' then '+90' || d
    when region = 'TR' and d ~ '^90[2-5][0-9]{9}$' then '+' || d
    else null end
  from (select regexp_replace(btrim(raw), '[^0-9+]', '', 'g') as d) x
$$;

create or replace function private.clean_domain(website text, email text default null) returns text
language sql stable
set search_path = ''
as $$
  with hosts as (
    select 1 as ord, regexp_replace(split_part(split_part(split_part(
             regexp_replace(private.fold_identifier(btrim(website)), '^[a-z][a-z0-9+.-]*://', ''), '/', 1), '?', 1), ':', 1),
             '^www\.', '') as host
    union all
    select 2, split_part(private.clean_email(email), '@', 2)
  )
  select h.host from hosts h
  where h.host ~ '^[^.\s]+(\.[^.\s]+)+$'
    and not exists (select 1 from private.free_mail_domains f where f.domain = h.host)
  order by h.ord limit 1
$$;

-- The deterministic identity key (same rule as luna.normalize.unique_lead_id).
create or replace function private.lead_key(domain text, email text, phone text, external_id text, company text)
returns text
language sql immutable
set search_path = ''
as $$
  select coalesce('d:' || nullif(domain, ''), 'e:' || nullif(email, ''), 'p:' || nullif(phone, ''),
                  'x:' || nullif(external_id, ''), 'c:' || private.name_key(company))
$$;

-- Priority engine (0-100, higher first): the source, the category, freshness (how old the lead was
-- when it reached us, from the source's own timestamp) and the tenant's rules
-- (settings.leads.priority: {"<source>": bonus}).
drop function if exists private.lead_priority(text, text, jsonb);
create or replace function private.lead_priority(source text, category text default null, rules jsonb default '{}',
                                                 age interval default null)
returns int
language sql immutable
set search_path = ''
as $$
  select greatest(0, least(100,
    case source when 'inbox' then 75 when 'meta' then 70 when 'form' then 70 when 'manual' then 50
                when 'apollo' then 40 when 'google_places' then 40 when 'apify' then 40 when 'csv' then 30 else 45 end
    + case category when 'HOT' then 20 when 'WARM' then 10 else 0 end
    + case when age is null or age < interval '1 hour' then 0 when age < interval '1 day' then -5
           when age < interval '7 days' then -10 else -20 end
    + coalesce((rules ->> source)::int, 0)))
$$;

-- The source's own timestamp of a lead (Meta's created_time as ISO text or epoch seconds,
-- created_at); null when absent or unreadable.
create or replace function private.lead_source_time(payload jsonb) returns timestamptz
language plpgsql immutable
set search_path = ''
as $$
declare
  v text := coalesce(payload ->> 'created_time', payload ->> 'created_at');
begin
  if v is null or v = '' then
    return null;
  end if;
  if v ~ '^\d{9,11}(\.\d+)?$' then
    return to_timestamp(v::double precision);
  end if;
  return v::timestamptz;
exception when others then
  return null;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Ingestion: the ONE function every source uses. Dedupe rule: same unique_lead_id, else same
-- domain_cleaned, e-mail or phone in the tenant. A merge never overwrites a value with an empty one
-- and logs what changed.
-- ---------------------------------------------------------------------------------------------
create or replace function private.ingest_lead(tenant uuid, source text, payload jsonb)
returns table (lead_id uuid, action text)
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_variable
declare
  t public.tenants;
  v jsonb;
  k text;
  old public.leads;
  changes jsonb;
  cols text[] := array['company_name', 'contact_name', 'email', 'phone', 'website', 'domain_cleaned', 'city',
                       'country', 'utm_source', 'utm_medium', 'utm_campaign', 'utm_content', 'utm_term'];
  c text;
  new_id uuid;
begin
  select * into t from public.tenants where id = tenant;
  if not found then
    raise exception 'no tenant %', tenant using errcode = 'PT404', detail = 'code=tenant_not_found';
  end if;
  source := coalesce(nullif(btrim(source), ''), 'manual');
  -- The standard columns, cleaned.
  select jsonb_strip_nulls(jsonb_build_object(
    'company_name', nullif(btrim(payload ->> 'company_name'), ''),
    'contact_name', nullif(btrim(payload ->> 'contact_name'), ''),
    'email', private.clean_email(payload ->> 'email'),
    'phone', private.clean_phone(payload ->> 'phone', t.default_region),
    'website', nullif(btrim(payload ->> 'website'), ''),
    'domain_cleaned', coalesce(nullif(payload ->> 'domain_cleaned', ''),
                               private.clean_domain(payload ->> 'website', payload ->> 'email')),
    'city', nullif(btrim(payload ->> 'city'), ''),
    'country', nullif(btrim(payload ->> 'country'), ''),
    'utm_source', nullif(btrim(payload ->> 'utm_source'), ''),
    'utm_medium', nullif(btrim(payload ->> 'utm_medium'), ''),
    'utm_campaign', nullif(btrim(payload ->> 'utm_campaign'), ''),
    'utm_content', nullif(btrim(payload ->> 'utm_content'), ''),
    'utm_term', nullif(btrim(payload ->> 'utm_term'), ''))) into v;
  k := coalesce(nullif(payload ->> 'unique_lead_id', ''),
                private.lead_key(v ->> 'domain_cleaned', v ->> 'email', v ->> 'phone',
                                 payload ->> 'external_id', v ->> 'company_name'));
  if k is null then
    raise exception 'a lead needs an e-mail, phone, website, company name or external id'
      using errcode = 'PT422', detail = 'code=lead_unidentifiable';
  end if;

  -- One ingestion at a time per tenant, so two sources never create the same lead twice.
  perform pg_advisory_xact_lock(hashtextextended('leads:' || tenant::text, 0));

  select l.* into old from public.leads l
  where l.tenant_id = tenant
    and (l.unique_lead_id = k
         or (v ? 'domain_cleaned' and l.domain_cleaned = v ->> 'domain_cleaned')
         or (v ? 'email' and l.email = v ->> 'email')
         or (v ? 'phone' and l.phone = v ->> 'phone'))
  order by (l.unique_lead_id = k) desc, l.created_at
  limit 1
  for update;

  if found then
    changes := '{}';
    foreach c in array cols loop
      if v ? c and (to_jsonb(old) ->> c) is distinct from (v ->> c) then
        changes := changes || jsonb_build_object(c, jsonb_build_object('old', to_jsonb(old) -> c, 'new', v -> c));
      end if;
    end loop;
    update public.leads l set
      company_name = coalesce(v ->> 'company_name', l.company_name),
      contact_name = coalesce(v ->> 'contact_name', l.contact_name),
      email = coalesce(v ->> 'email', l.email),
      phone = coalesce(v ->> 'phone', l.phone),
      website = coalesce(v ->> 'website', l.website),
      domain_cleaned = coalesce(v ->> 'domain_cleaned', l.domain_cleaned),
      city = coalesce(v ->> 'city', l.city),
      country = coalesce(v ->> 'country', l.country),
      utm_source = coalesce(v ->> 'utm_source', l.utm_source),
      utm_medium = coalesce(v ->> 'utm_medium', l.utm_medium),
      utm_campaign = coalesce(v ->> 'utm_campaign', l.utm_campaign),
      utm_content = coalesce(v ->> 'utm_content', l.utm_content),
      utm_term = coalesce(v ->> 'utm_term', l.utm_term),
      raw = l.raw || jsonb_build_object(source, payload)
    where l.id = old.id;
    insert into public.processing_logs (tenant_id, lead_id, module, action, result, from_status, to_status, detail)
    values (tenant, old.id, 'ingest', 'merge', 'merged', old.processing_status, old.processing_status,
            jsonb_build_object('source', source, 'changes', changes));
    lead_id := old.id;
    action := 'merged';
  else
    insert into public.leads (tenant_id, unique_lead_id, company_name, contact_name, email, phone, website,
                              domain_cleaned, city, country, source, utm_source, utm_medium, utm_campaign,
                              utm_content, utm_term, raw, current_orchestrator_priority)
    values (tenant, k, v ->> 'company_name', v ->> 'contact_name', v ->> 'email', v ->> 'phone', v ->> 'website',
            v ->> 'domain_cleaned', v ->> 'city', v ->> 'country', source, v ->> 'utm_source', v ->> 'utm_medium',
            v ->> 'utm_campaign', v ->> 'utm_content', v ->> 'utm_term', jsonb_build_object(source, payload),
            private.lead_priority(source, null, coalesce(t.settings #> '{leads,priority}', '{}'),
                                  now() - private.lead_source_time(payload)))
    returning id into new_id;
    insert into public.processing_logs (tenant_id, lead_id, module, action, result, to_status, detail)
    values (tenant, new_id, 'ingest', 'insert', 'ok', 'RAW', jsonb_build_object('source', source));
    lead_id := new_id;
    action := 'inserted';
  end if;
  perform private.broadcast('tenant:' || tenant || ':leads', 'lead_' || action,
                            jsonb_build_object('id', lead_id, 'source', source));
  return next;
end;
$$;
revoke execute on function private.ingest_lead(uuid, text, jsonb) from public, anon;
grant execute on function private.ingest_lead(uuid, text, jsonb) to service_role;

-- ---------------------------------------------------------------------------------------------
-- Bulk upsert: rows COPYed into private.lead_staging under one batch id (already normalised by
-- luna/normalize.py) are merged into leads in one set-based pass: duplicates inside the batch are
-- collapsed (later non-empty values win), then each group matches an existing lead by key, domain,
-- e-mail or phone, or is inserted. Returns the counts; the batch's staging rows are removed.
-- ---------------------------------------------------------------------------------------------
create or replace function private.ingest_staged(batch uuid, tenant uuid, source text)
returns table (inserted int, merged int)
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_variable
declare
  t public.tenants;
  n_ins int;
  n_mrg int;
begin
  select * into t from public.tenants where id = tenant;
  if not found then
    raise exception 'no tenant %', tenant using errcode = 'PT404', detail = 'code=tenant_not_found';
  end if;
  perform pg_advisory_xact_lock(hashtextextended('leads:' || tenant::text, 0));

  create temporary table if not exists lead_groups (
    k text primary key, first_line int, lines int, company_name text, contact_name text, email text, phone text,
    website text, domain_cleaned text, city text, country text, utm_source text, utm_medium text,
    utm_campaign text, utm_content text, utm_term text, raw jsonb, lead_id uuid, changes jsonb
  ) on commit drop;
  truncate pg_temp.lead_groups;

  -- One group per identity key: the last row of the key, then (keys seen on several lines only)
  -- each column's last non-empty value.
  insert into pg_temp.lead_groups (k, first_line, lines, company_name, contact_name, email, phone, website,
                                   domain_cleaned, city, country, utm_source, utm_medium, utm_campaign,
                                   utm_content, utm_term, raw)
  select distinct on (s.unique_lead_id) s.unique_lead_id, s.line, 1, s.company_name, s.contact_name, s.email, s.phone,
         s.website, s.domain_cleaned, s.city, s.country, s.utm_source, s.utm_medium, s.utm_campaign, s.utm_content,
         s.utm_term, s.raw
  from private.lead_staging s
  where s.batch = ingest_staged.batch
  order by s.unique_lead_id, s.line desc;

  update pg_temp.lead_groups g set
    first_line = d.first_line, lines = d.lines,
    company_name = d.company_name, contact_name = d.contact_name, email = d.email, phone = d.phone,
    website = d.website, domain_cleaned = d.domain_cleaned, city = d.city, country = d.country,
    utm_source = d.utm_source, utm_medium = d.utm_medium, utm_campaign = d.utm_campaign,
    utm_content = d.utm_content, utm_term = d.utm_term
  from (
    select s.unique_lead_id as k, min(s.line) as first_line, count(*) as lines,
      (array_agg(s.company_name order by s.line desc) filter (where s.company_name is not null))[1] as company_name,
      (array_agg(s.contact_name order by s.line desc) filter (where s.contact_name is not null))[1] as contact_name,
      (array_agg(s.email order by s.line desc) filter (where s.email is not null))[1] as email,
      (array_agg(s.phone order by s.line desc) filter (where s.phone is not null))[1] as phone,
      (array_agg(s.website order by s.line desc) filter (where s.website is not null))[1] as website,
      (array_agg(s.domain_cleaned order by s.line desc) filter (where s.domain_cleaned is not null))[1] as domain_cleaned,
      (array_agg(s.city order by s.line desc) filter (where s.city is not null))[1] as city,
      (array_agg(s.country order by s.line desc) filter (where s.country is not null))[1] as country,
      (array_agg(s.utm_source order by s.line desc) filter (where s.utm_source is not null))[1] as utm_source,
      (array_agg(s.utm_medium order by s.line desc) filter (where s.utm_medium is not null))[1] as utm_medium,
      (array_agg(s.utm_campaign order by s.line desc) filter (where s.utm_campaign is not null))[1] as utm_campaign,
      (array_agg(s.utm_content order by s.line desc) filter (where s.utm_content is not null))[1] as utm_content,
      (array_agg(s.utm_term order by s.line desc) filter (where s.utm_term is not null))[1] as utm_term
    from private.lead_staging s
    where s.batch = ingest_staged.batch
      and s.unique_lead_id in (select x.unique_lead_id from private.lead_staging x where x.batch = ingest_staged.batch
                               group by x.unique_lead_id having count(*) > 1)
    group by s.unique_lead_id
  ) d
  where g.k = d.k;
  analyze pg_temp.lead_groups;

  -- Match existing leads set-based: the key first, then domain, e-mail, phone (oldest lead wins).
  update pg_temp.lead_groups g set lead_id = l.id
  from public.leads l
  where l.tenant_id = tenant and l.unique_lead_id = g.k;

  update pg_temp.lead_groups g set lead_id = m.id
  from (select distinct on (l.domain_cleaned) l.domain_cleaned, l.id from public.leads l
        where l.tenant_id = tenant and l.domain_cleaned in (select x.domain_cleaned from pg_temp.lead_groups x
                                                            where x.lead_id is null and x.domain_cleaned is not null)
        order by l.domain_cleaned, l.created_at) m
  where g.lead_id is null and g.domain_cleaned = m.domain_cleaned;

  update pg_temp.lead_groups g set lead_id = m.id
  from (select distinct on (l.email) l.email, l.id from public.leads l
        where l.tenant_id = tenant and l.email in (select x.email from pg_temp.lead_groups x
                                                   where x.lead_id is null and x.email is not null)
        order by l.email, l.created_at) m
  where g.lead_id is null and g.email = m.email;

  update pg_temp.lead_groups g set lead_id = m.id
  from (select distinct on (l.phone) l.phone, l.id from public.leads l
        where l.tenant_id = tenant and l.phone in (select x.phone from pg_temp.lead_groups x
                                                   where x.lead_id is null and x.phone is not null)
        order by l.phone, l.created_at) m
  where g.lead_id is null and g.phone = m.phone;

  -- What a merge changes (non-empty new values that differ), before applying it.
  update pg_temp.lead_groups g set changes = (
    select coalesce(jsonb_object_agg(n.key, jsonb_build_object('old', o.value, 'new', n.value)), '{}')
    from jsonb_each(jsonb_strip_nulls(to_jsonb(g) - 'k' - 'first_line' - 'lines' - 'raw' - 'lead_id' - 'changes')) n
    left join jsonb_each(to_jsonb(l)) o on o.key = n.key
    where o.value is distinct from n.value)
  from public.leads l
  where g.lead_id is not null and l.id = g.lead_id;

  with upd as (
    update public.leads l set
      company_name = coalesce(g.company_name, l.company_name),
      contact_name = coalesce(g.contact_name, l.contact_name),
      email = coalesce(g.email, l.email),
      phone = coalesce(g.phone, l.phone),
      website = coalesce(g.website, l.website),
      domain_cleaned = coalesce(g.domain_cleaned, l.domain_cleaned),
      city = coalesce(g.city, l.city),
      country = coalesce(g.country, l.country),
      utm_source = coalesce(g.utm_source, l.utm_source),
      utm_medium = coalesce(g.utm_medium, l.utm_medium),
      utm_campaign = coalesce(g.utm_campaign, l.utm_campaign),
      utm_content = coalesce(g.utm_content, l.utm_content),
      utm_term = coalesce(g.utm_term, l.utm_term),
      raw = l.raw || jsonb_build_object(source, g.raw)
    from pg_temp.lead_groups g
    where g.lead_id = l.id and g.changes <> '{}'
    returning l.id
  )
  insert into public.processing_logs (tenant_id, lead_id, module, action, result, detail)
  select tenant, g.lead_id, 'ingest', 'merge', 'merged',
         jsonb_build_object('source', source, 'line', g.first_line, 'changes', g.changes)
  from pg_temp.lead_groups g where g.lead_id is not null;
  get diagnostics n_mrg = row_count;

  with ins as (
    insert into public.leads (tenant_id, unique_lead_id, company_name, contact_name, email, phone, website,
                              domain_cleaned, city, country, source, utm_source, utm_medium, utm_campaign,
                              utm_content, utm_term, raw, current_orchestrator_priority, next_orchestrator_module)
    select tenant, g.k, g.company_name, g.contact_name, g.email, g.phone, g.website, g.domain_cleaned, g.city,
           g.country, source, g.utm_source, g.utm_medium, g.utm_campaign, g.utm_content, g.utm_term,
           jsonb_build_object(source, g.raw),
           private.lead_priority(source, null, coalesce(t.settings #> '{leads,priority}', '{}')),
           (select r.module from private.lead_routes r where r.status = 'RAW')
    from pg_temp.lead_groups g
    where g.lead_id is null
    order by g.first_line
    on conflict (tenant_id, unique_lead_id) do nothing
    returning id
  )
  insert into public.processing_logs (tenant_id, lead_id, module, action, result, to_status, detail)
  select tenant, ins.id, 'ingest', 'insert', 'ok', 'RAW', jsonb_build_object('source', source)
  from ins;
  get diagnostics n_ins = row_count;

  delete from private.lead_staging s where s.batch = ingest_staged.batch;
  perform private.broadcast('tenant:' || tenant || ':leads', 'leads_imported',
                            jsonb_build_object('inserted', n_ins, 'merged', n_mrg, 'source', source));
  inserted := n_ins;
  merged := n_mrg;
  return next;
end;
$$;
revoke execute on function private.ingest_staged(uuid, uuid, text) from public, anon;
grant execute on function private.ingest_staged(uuid, uuid, text) to service_role;

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
revoke execute on function private.advance_lead(uuid, text, text, text, text, int, jsonb, jsonb) from public, anon;
grant execute on function private.advance_lead(uuid, text, text, text, text, int, jsonb, jsonb) to service_role;

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
  select c.id, c.next_orchestrator_module, c.tenant_id, to_jsonb(c) - 'raw', cfg.config
  from claimed c join cfg on cfg.tenant_id = c.tenant_id
$$;

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

-- Count an error in the module's metrics.
create or replace function private.lead_metric_error(tenant uuid, module text) returns void
language sql
set search_path = ''
as $$
  insert into public.system_metrics as m (tenant_id, module, bucket, processed, errors)
  values (tenant, module, date_trunc('minute', now()), 0, 1)
  on conflict (tenant_id, module, bucket) do update set errors = m.errors + 1
$$;

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

revoke execute on function private.lead_config(uuid), private.claim_leads(text, int, int),
  private.complete_leads(text, uuid[], jsonb[]), private.fail_lead(text, uuid, text, boolean),
  private.release_leads(text, uuid[]), private.defer_lead(text, uuid, int), private.rescue_leads(),
  private.lead_metric_error(uuid, text) from public, anon, authenticated;
grant execute on function private.lead_config(uuid), private.claim_leads(text, int, int),
  private.complete_leads(text, uuid[], jsonb[]), private.fail_lead(text, uuid, text, boolean),
  private.release_leads(text, uuid[]), private.defer_lead(text, uuid, int), private.rescue_leads(),
  private.lead_metric_error(uuid, text) to service_role;

-- ---------------------------------------------------------------------------------------------
-- Review RPCs: a person requeues, approves or rejects a lead. The verdict is stored next to the
-- AI's (human_decision), logged in processing_logs and recorded in the audit chain.
-- ---------------------------------------------------------------------------------------------
create or replace function private.review_lead(lead uuid, verdict text, reason text) returns public.leads
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_variable
declare
  old public.leads;
  l public.leads;
  target text;
  patch jsonb;
begin
  select * into old from public.leads x where x.id = lead and x.tenant_id = (select private.tenant_id());
  if not found then
    raise exception 'no lead %', lead using errcode = 'PT404', detail = 'code=lead_not_found';
  end if;
  if not (select private.can('leads', 'write'))
     or not ((select private.sees_all()) or old.assigned_to = (select auth.uid())) then
    raise exception 'you may not review this lead' using errcode = '42501';
  end if;
  if old.locked_until is not null then
    raise exception 'the lead is being processed; try again in a moment' using errcode = 'PT409', detail = 'code=lead_busy';
  end if;
  case verdict
    when 'approve' then
      target := 'QUALIFIED';
      patch := jsonb_build_object('human_decision', 'OK', 'human_reason', reason, 'reviewed_by', (select auth.uid()));
      if old.lead_category is null then
        patch := patch || '{"lead_category": "WARM"}';
      end if;
    when 'reject' then
      target := 'REJECTED';
      patch := jsonb_build_object('human_decision', 'REJECT', 'human_reason', reason, 'reviewed_by', (select auth.uid()));
    when 'requeue' then
      target := 'RAW';
      patch := jsonb_build_object('attempts', 0, 'last_error', null);
    else
      raise exception 'unknown verdict %', verdict using errcode = 'PT400', detail = 'code=invalid_verdict';
  end case;
  l := private.advance_lead(lead, case when old.processing_status = target and verdict <> 'requeue' then null else target end,
                            'review', verdict, 'ok', null,
                            jsonb_build_object('reason', reason, 'by', (select auth.uid()),
                                               'ai_decision', old.luna_ai_decision), patch);
  perform audit.record(l.tenant_id, 'lead.' || verdict, 'public.leads', l.id::text,
    jsonb_build_object('processing_status', old.processing_status, 'luna_ai_decision', old.luna_ai_decision,
                       'human_decision', old.human_decision),
    jsonb_build_object('processing_status', l.processing_status, 'human_decision', l.human_decision, 'reason', reason));
  return l;
end;
$$;

create or replace function public.approve_lead(lead uuid, reason text default null) returns public.leads
language sql
set search_path = ''
as $$ select private.review_lead(lead, 'approve', reason) $$;

create or replace function public.reject_lead(lead uuid, reason text default null) returns public.leads
language sql
set search_path = ''
as $$ select private.review_lead(lead, 'reject', reason) $$;

create or replace function public.requeue_lead(lead uuid, reason text default null) returns public.leads
language sql
set search_path = ''
as $$ select private.review_lead(lead, 'requeue', reason) $$;

revoke execute on function private.review_lead(uuid, text, text) from public, anon;
grant execute on function private.review_lead(uuid, text, text) to authenticated, service_role;
revoke execute on function public.approve_lead(uuid, text), public.reject_lead(uuid, text),
  public.requeue_lead(uuid, text) from public, anon;
grant execute on function public.approve_lead(uuid, text), public.reject_lead(uuid, text),
  public.requeue_lead(uuid, text) to authenticated, service_role;

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
