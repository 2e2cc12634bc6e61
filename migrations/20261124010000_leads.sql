/*
 * LUNA lead pipeline: one table every lead lands in (public.leads), the status machine and routing
 * as data, per-step processing logs, worker metrics, lead sources (form keys, Meta pages, scheduled
 * pulls) and the raw inbound webhook store.
 *
 * Functions (ingest, advance, the worker queue, review RPCs) live in functions/leads.sql.
 */

-- ===========================================================================================
-- The status machine and routing, as data
-- ===========================================================================================
create table private.lead_statuses (
  status text primary key check (status ~ '^[A-Z_]+$'),
  -- Exits a person or a retry leaves; final statuses are never claimed.
  kind text not null check (kind in ('flow', 'working', 'exit', 'final'))
);
insert into private.lead_statuses values
  ('RAW', 'flow'), ('NORMALIZED', 'flow'), ('ENRICHING', 'working'), ('ENRICHED', 'flow'),
  ('QUALIFYING', 'working'), ('QUALIFIED', 'flow'), ('CRM_SYNCED', 'flow'), ('NURTURING', 'flow'),
  ('COMPLETED', 'final'), ('REJECTED', 'exit'), ('HUMAN_REVIEW_NEEDED', 'exit'),
  ('TIMEOUT_DETECTED', 'exit'), ('CRM_ERROR', 'exit');

create table private.lead_transitions (
  from_status text not null references private.lead_statuses (status),
  to_status text not null references private.lead_statuses (status),
  primary key (from_status, to_status)
);
insert into private.lead_transitions (from_status, to_status)
select f, t from (values
  ('RAW', 'NORMALIZED'), ('RAW', 'REJECTED'), ('RAW', 'HUMAN_REVIEW_NEEDED'),
  ('NORMALIZED', 'ENRICHING'), ('NORMALIZED', 'ENRICHED'), ('NORMALIZED', 'REJECTED'), ('NORMALIZED', 'HUMAN_REVIEW_NEEDED'),
  ('ENRICHING', 'ENRICHED'), ('ENRICHING', 'NORMALIZED'), ('ENRICHING', 'HUMAN_REVIEW_NEEDED'), ('ENRICHING', 'REJECTED'),
  ('ENRICHED', 'QUALIFYING'), ('ENRICHED', 'QUALIFIED'), ('ENRICHED', 'HUMAN_REVIEW_NEEDED'), ('ENRICHED', 'REJECTED'),
  ('QUALIFYING', 'QUALIFIED'), ('QUALIFYING', 'ENRICHED'), ('QUALIFYING', 'HUMAN_REVIEW_NEEDED'), ('QUALIFYING', 'REJECTED'),
  ('QUALIFIED', 'CRM_SYNCED'), ('QUALIFIED', 'CRM_ERROR'), ('QUALIFIED', 'NURTURING'), ('QUALIFIED', 'REJECTED'),
  ('QUALIFIED', 'COMPLETED'), ('QUALIFIED', 'HUMAN_REVIEW_NEEDED'),
  ('CRM_SYNCED', 'NURTURING'), ('CRM_SYNCED', 'COMPLETED'), ('NURTURING', 'COMPLETED'), ('NURTURING', 'CRM_SYNCED'),
  ('CRM_ERROR', 'QUALIFIED'), ('CRM_ERROR', 'CRM_SYNCED'), ('CRM_ERROR', 'REJECTED'),
  ('HUMAN_REVIEW_NEEDED', 'RAW'), ('HUMAN_REVIEW_NEEDED', 'QUALIFIED'), ('HUMAN_REVIEW_NEEDED', 'REJECTED'),
  ('REJECTED', 'RAW'), ('REJECTED', 'QUALIFIED'),
  ('TIMEOUT_DETECTED', 'RAW'), ('TIMEOUT_DETECTED', 'NORMALIZED'), ('TIMEOUT_DETECTED', 'ENRICHED'),
  ('TIMEOUT_DETECTED', 'QUALIFIED'), ('TIMEOUT_DETECTED', 'CRM_SYNCED'), ('TIMEOUT_DETECTED', 'NURTURING'),
  ('TIMEOUT_DETECTED', 'HUMAN_REVIEW_NEEDED'), ('TIMEOUT_DETECTED', 'REJECTED')
) as v(f, t);
-- Every status that can hold a lease may time out, or be sent to a person.
insert into private.lead_transitions (from_status, to_status)
select s.status, 'HUMAN_REVIEW_NEEDED' from private.lead_statuses s where s.kind in ('flow', 'working')
on conflict do nothing;
-- Every status that can hold a lease may time out.
insert into private.lead_transitions (from_status, to_status)
select s.status, 'TIMEOUT_DETECTED' from private.lead_statuses s where s.kind in ('flow', 'working')
on conflict do nothing;

/*
 * Routing: a lead in `status` is picked up by the worker's `module` handler. While it works, the lead
 * shows `working_status` (ENRICHING, QUALIFYING). A step that fails past its attempts ends in
 * `failure_status`. Other areas add their routes (the CRM adds QUALIFIED -> crm_sync).
 */
create table private.lead_routes (
  status text primary key references private.lead_statuses (status),
  module text not null check (module ~ '^[a-z_]+$'),
  working_status text references private.lead_statuses (status),
  failure_status text not null default 'HUMAN_REVIEW_NEEDED' references private.lead_statuses (status),
  max_attempts int not null default 5 check (max_attempts > 0)
);
insert into private.lead_routes (status, module, working_status) values
  ('RAW', 'normalize', null),
  ('NORMALIZED', 'enrich', 'ENRICHING'),
  ('ENRICHED', 'qualify', 'QUALIFYING'),
  ('TIMEOUT_DETECTED', 'recover', null);

-- Free-mail domains never count as a company domain (mirrors luna/normalize.py).
create table private.free_mail_domains (domain text primary key);
insert into private.free_mail_domains
select unnest(string_to_array(
  'gmail.com googlemail.com hotmail.com hotmail.com.tr outlook.com outlook.com.tr live.com live.com.tr msn.com '
  'yahoo.com yahoo.com.tr ymail.com icloud.com me.com mac.com aol.com gmx.com gmx.de gmx.net web.de mail.com '
  'yandex.com yandex.com.tr yandex.ru mail.ru protonmail.com proton.me tutanota.com zoho.com windowslive.com '
  'mynet.com superonline.com ttmail.com turk.net hotmail.co.uk yahoo.co.uk qq.com 163.com', ' '));

-- ===========================================================================================
-- Leads
-- ===========================================================================================
create table public.leads (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  -- Deterministic per tenant: d:<domain> | e:<email> | p:<phone> | x:<external id> | c:<company>.
  unique_lead_id text not null,
  company_name text,
  contact_name text,
  email text,
  phone text,
  website text,
  domain_cleaned text,
  city text,
  country text,
  source text not null default 'manual',
  utm_source text,
  utm_medium text,
  utm_campaign text,
  utm_content text,
  utm_term text,
  raw jsonb not null default '{}'::jsonb,
  enrichment jsonb not null default '{}'::jsonb,
  validation jsonb not null default '{}'::jsonb,
  -- Orchestrator
  -- The statuses of private.lead_statuses (a check, not a foreign key: no per-row lookup on bulk inserts).
  processing_status text not null default 'RAW' check (processing_status in ('RAW', 'NORMALIZED', 'ENRICHING',
    'ENRICHED', 'QUALIFYING', 'QUALIFIED', 'CRM_SYNCED', 'NURTURING', 'COMPLETED', 'REJECTED', 'HUMAN_REVIEW_NEEDED',
    'TIMEOUT_DETECTED', 'CRM_ERROR')),
  current_orchestrator_priority int not null default 50 check (current_orchestrator_priority between 0 and 100),
  next_orchestrator_module text,
  next_attempt_at timestamptz not null default now(),
  resume_status text,             -- where a timed-out lead continues
  claimed_status text,            -- the status a lease was taken in
  locked_by text,
  locked_at timestamptz,
  locked_until timestamptz,
  attempts int not null default 0,
  last_error text,
  -- Qualification (the AI's decision and its provenance)
  lead_category text check (lead_category in ('HOT', 'WARM', 'COLD')),
  luna_ai_score int check (luna_ai_score between 0 and 100),
  luna_ai_decision text check (luna_ai_decision in ('OK', 'HUMAN', 'REJECT')),
  luna_ai_reason text,
  sector_category text,
  company_size_category text check (company_size_category in ('Küçük', 'Orta', 'Büyük', 'Kurumsal')),
  ai_provider text,
  ai_model text,
  ai_prompt_version text,
  ai_decided_at timestamptz,
  -- A person's verdict, stored next to the AI's (accuracy = agreement of the two).
  human_decision text check (human_decision in ('OK', 'REJECT')),
  human_reason text,
  reviewed_by uuid references public.profiles (id) on delete set null,
  reviewed_at timestamptz,
  assigned_to uuid references public.profiles (id) on delete set null,
  qualified_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, unique_lead_id)
);
create index leads_domain_idx on public.leads (tenant_id, domain_cleaned) where domain_cleaned is not null;
create index leads_email_idx on public.leads (tenant_id, email) where email is not null;
create index leads_phone_idx on public.leads (tenant_id, phone) where phone is not null;
create index leads_status_idx on public.leads (tenant_id, processing_status, created_at desc);
create index leads_assigned_idx on public.leads (assigned_to) where assigned_to is not null;
create index leads_reviewed_by_idx on public.leads (reviewed_by) where reviewed_by is not null;
-- Only claimable rows are in the claim index.
create index leads_claim_idx on public.leads (current_orchestrator_priority desc, next_attempt_at)
  where next_orchestrator_module is not null and locked_until is null;
create index leads_lease_idx on public.leads (locked_until) where locked_until is not null;

create trigger set_updated_at before update on public.leads
  for each row execute function private.set_updated_at();

-- The status machine, enforced for every writer: a status change must be an allowed transition;
-- the next module follows from the routing table.
create or replace function private.leads_check_transition() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'UPDATE' and new.processing_status is distinct from old.processing_status
     and new.processing_status is distinct from old.claimed_status
     and not exists (select 1 from private.lead_transitions t
                     where t.from_status = old.processing_status and t.to_status = new.processing_status) then
    raise exception 'a lead cannot go from % to %', old.processing_status, new.processing_status
      using errcode = 'PT409', detail = 'code=invalid_transition';
  end if;
  -- The route is data: a status without a route waits for a person (or another area's route).
  if new.locked_until is null then
    select r.module into new.next_orchestrator_module
    from private.lead_routes r where r.status = new.processing_status;
    if not found then
      new.next_orchestrator_module := null;
    end if;
  end if;
  return new;
end;
$$;
create trigger route_new_lead before insert on public.leads
  for each row when (new.next_orchestrator_module is null) execute function private.leads_check_transition();
create trigger check_transition before update of processing_status, locked_until on public.leads
  for each row when (old.processing_status is distinct from new.processing_status
                     or old.locked_until is distinct from new.locked_until)
  execute function private.leads_check_transition();

select private.enable_rls('leads', 'leads', 'assigned_to');

-- ===========================================================================================
-- Processing logs: one row per step (module, action, result, duration), merges and errors.
-- ===========================================================================================
create table public.processing_logs (
  id bigint generated always as identity primary key,
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  lead_id uuid,
  module text not null,
  action text not null,
  result text not null check (result in ('ok', 'error', 'retry', 'wait', 'merged', 'rejected', 'info')),
  from_status text,
  to_status text,
  duration_ms int,
  detail jsonb not null default '{}'::jsonb,
  error text,
  created_at timestamptz not null default now(),
  -- No foreign key to leads: the log is history (it outlives a deleted lead) and bulk imports write
  -- one row per lead without a per-row lookup.
  unique (tenant_id, id)
);
create index processing_logs_lead_idx on public.processing_logs (tenant_id, lead_id, id);
create index processing_logs_time_idx on public.processing_logs (tenant_id, created_at desc);
create index processing_logs_errors_idx on public.processing_logs (tenant_id, module, created_at desc) where result = 'error';
select private.enable_rls('processing_logs', 'leads');
-- Written only by the pipeline's functions: members read, nobody writes directly (no write policies).
drop policy tenant_insert on public.processing_logs;
drop policy tenant_update on public.processing_logs;
drop policy tenant_delete on public.processing_logs;

-- ===========================================================================================
-- System metrics: per tenant, module and minute (throughput, latency, errors), written by the worker.
-- ===========================================================================================
create table public.system_metrics (
  id bigint generated always as identity primary key,
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  module text not null,
  bucket timestamptz not null,     -- minute
  processed int not null default 0,
  errors int not null default 0,
  total_ms bigint not null default 0,
  max_ms int not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, module, bucket)
);
create trigger set_updated_at before update on public.system_metrics
  for each row execute function private.set_updated_at();
select private.enable_rls('system_metrics', 'reports');
drop policy tenant_insert on public.system_metrics;
drop policy tenant_update on public.system_metrics;
drop policy tenant_delete on public.system_metrics;

-- ===========================================================================================
-- Lead sources: form keys, Meta pages, scheduled pulls (Apollo, Apify, Google Places).
-- ===========================================================================================
create table public.lead_sources (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  kind text not null check (kind in ('form', 'csv', 'meta', 'apollo', 'apify', 'google_places', 'manual', 'inbox')),
  name text not null,
  -- Landing-page forms post with this key (X-Form-Key); unique across tenants.
  form_key text unique,
  -- meta: {"page_id", "form_ids"}; apollo: {"query"}; apify: {"dataset_id"}; google_places: {"text_query"}
  config jsonb not null default '{}'::jsonb,
  enabled boolean not null default true,
  pull_every_seconds int check (pull_every_seconds is null or pull_every_seconds >= 60),
  last_pulled_at timestamptz,
  last_error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id)
);
create index lead_sources_meta_page_idx on public.lead_sources ((config ->> 'page_id')) where kind = 'meta';
create trigger set_updated_at before update on public.lead_sources
  for each row execute function private.set_updated_at();
select private.enable_rls('lead_sources', 'settings');

-- ===========================================================================================
-- Raw inbound webhooks (stored before processing; a provider event id is unique).
-- ===========================================================================================
create table private.lead_webhooks (
  id bigint generated always as identity primary key,
  provider text not null,
  external_id text not null,
  tenant_id uuid references public.tenants (id) on delete cascade,
  payload jsonb not null,
  status text not null default 'received' check (status in ('received', 'processed', 'failed', 'ignored')),
  lead_id uuid,
  error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (provider, external_id)
);
create trigger set_updated_at before update on private.lead_webhooks
  for each row execute function private.set_updated_at();

-- Bulk imports COPY already normalised rows here (one batch id per upload), then
-- private.ingest_staged merges the batch into leads in one set-based pass.
create unlogged table private.lead_staging (
  batch uuid not null,
  line int not null,
  unique_lead_id text not null,
  company_name text,
  contact_name text,
  email text,
  phone text,
  website text,
  domain_cleaned text,
  city text,
  country text,
  utm_source text,
  utm_medium text,
  utm_campaign text,
  utm_content text,
  utm_term text,
  raw jsonb
);
create index lead_staging_batch_idx on private.lead_staging (batch);
grant all on private.lead_staging, private.lead_webhooks to service_role;
grant select on private.lead_routes, private.lead_transitions, private.lead_statuses, private.free_mail_domains to service_role;
