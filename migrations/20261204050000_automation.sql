/*
 * Automation engine (issue 12): the events outbox, workflows and their versions, durable runs and
 * their steps, message templates with variables, opt-outs.
 *
 * - Business events are rows (public.automation_events), written by triggers in the same transaction
 *   as the change, or by private.emit_event (functions/automation.sql) for the areas that come later.
 *   An event some active workflow listens to enqueues one generic job ('automation.event', keyed by
 *   the event id) in that same transaction: nothing is missed while no worker runs.
 * - A run is started once per (workflow, event): unique (workflow_id, event_id) is the run key.
 * - Every step of a run is a public.workflow_steps row; a due step is one generic job
 *   ('automation.step', idempotency key per step) which the worker runs through
 *   private.automation_run_step; the step's effects and its mark (private.step_claim) commit together.
 * - Opt-outs are honoured by every automated or commercial send: a trigger on the outbound queue
 *   (the one send path, public.send_message) cancels such a message to an opted-out contact, visibly.
 *
 * Functions: functions/automation.sql. Views: sql/automation.sql. Docs: docs/automation.md.
 */

-- ===========================================================================================
-- Events outbox
-- ===========================================================================================
create table public.automation_events (
  id bigint generated always as identity primary key,
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  -- '<entity>.<what happened>': lead.created, lead.categorised, card.stage_changed, message.received,
  -- conversation.opened, conversation.resolved, tag.added, tag.removed, customer.created, reminder.due,
  -- contact.opted_out; later areas add theirs (appointment.booked, order.status_changed ...).
  type text not null check (type ~ '^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$'),
  subject_type text not null,                 -- lead | customer | card | conversation | message | reminder | contact | ...
  subject_id uuid,
  -- What the event is about, where known (a run's contact, customer, lead ... come from these).
  customer_id uuid,
  contact_id uuid,
  conversation_id uuid,
  lead_id uuid,
  card_id uuid,
  payload jsonb not null default '{}'::jsonb,
  -- The producer's key for the same happening (a provider's id, '<order>:<status>'): a second emit
  -- with the same key is a no-op.
  dedupe_key text,
  -- The run whose step caused this event (loop guard: a workflow is not started by its own effects).
  caused_by_run uuid,
  occurred_at timestamptz not null default now(),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, dedupe_key)
);
create index automation_events_type_idx on public.automation_events (tenant_id, type, id);
create index automation_events_contact_idx on public.automation_events (tenant_id, contact_id) where contact_id is not null;
create trigger set_updated_at before update on public.automation_events
  for each row execute function private.set_updated_at();
select private.enable_rls('automation_events', 'automation');
-- Written by triggers and private.emit_event only.
drop policy tenant_insert on public.automation_events;
drop policy tenant_update on public.automation_events;
drop policy tenant_delete on public.automation_events;

-- ===========================================================================================
-- Workflows and their versions
-- ===========================================================================================
create table public.workflows (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  name text not null check (length(trim(name)) > 0),
  description text,
  status text not null default 'draft' check (status in ('draft', 'active', 'paused', 'archived')),
  -- Copied from the current version's definition (trigger.event) by the version trigger: the
  -- dispatcher's lookup.
  trigger_type text,
  current_version int,
  created_by uuid references public.profiles (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, name)
);
create index workflows_trigger_idx on public.workflows (tenant_id, trigger_type) where status = 'active';
create index workflows_created_by_idx on public.workflows (created_by) where created_by is not null;
create trigger set_updated_at before update on public.workflows
  for each row execute function private.set_updated_at();

-- A definition never changes once saved: a change is a new version; runs keep theirs.
create table public.workflow_versions (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  workflow_id uuid not null,
  version int not null check (version > 0),
  definition jsonb not null,
  created_by uuid references public.profiles (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (workflow_id, version),
  foreign key (tenant_id, workflow_id) references public.workflows (tenant_id, id) on delete cascade
);
create index workflow_versions_created_by_idx on public.workflow_versions (created_by) where created_by is not null;
create index workflow_versions_workflow_idx on public.workflow_versions (tenant_id, workflow_id);
create trigger set_updated_at before update on public.workflow_versions
  for each row execute function private.set_updated_at();

-- ===========================================================================================
-- Runs and their steps (the history a debugging screen shows)
-- ===========================================================================================
create table public.workflow_runs (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  workflow_id uuid not null,
  version int not null,
  event_id bigint,                            -- the event that started it (null: started by hand)
  status text not null default 'running'
    check (status in ('running', 'waiting', 'paused', 'completed', 'failed', 'cancelled', 'exited')),
  customer_id uuid,
  contact_id uuid,
  conversation_id uuid,
  lead_id uuid,
  card_id uuid,
  context jsonb not null default '{}'::jsonb, -- the event's payload and what steps stored
  -- Replies after this time end a run that exits on reply (moved on when a wait_for_reply step
  -- consumed a reply).
  replies_after timestamptz not null default now(),
  end_reason text,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  -- The run key: one run per workflow and event, however often the event is delivered.
  unique (workflow_id, event_id),
  foreign key (tenant_id, workflow_id) references public.workflows (tenant_id, id) on delete cascade,
  foreign key (workflow_id, version) references public.workflow_versions (workflow_id, version)
);
create index workflow_runs_active_contact_idx on public.workflow_runs (tenant_id, contact_id)
  where status in ('running', 'waiting', 'paused');
create index workflow_runs_active_customer_idx on public.workflow_runs (tenant_id, customer_id)
  where status in ('running', 'waiting', 'paused');
create index workflow_runs_list_idx on public.workflow_runs (tenant_id, workflow_id, started_at desc);
create trigger set_updated_at before update on public.workflow_runs
  for each row execute function private.set_updated_at();

create table public.workflow_steps (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  run_id uuid not null,
  seq int not null check (seq > 0),           -- the n-th step this run executed
  step_key text not null,                     -- the step's id in the definition
  type text not null,
  status text not null default 'due'
    check (status in ('due', 'waiting', 'done', 'failed', 'skipped', 'cancelled')),
  due_at timestamptz not null default now(),
  result jsonb,
  error_code text,
  error text,
  attempts int not null default 0,
  started_at timestamptz,
  finished_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  -- A run's steps in order (and the foreign key's index). Status is in no index, so a step's updates
  -- are HOT (fillfactor leaves them room): executing a step rewrites no index.
  unique (tenant_id, run_id, seq),
  foreign key (tenant_id, run_id) references public.workflow_runs (tenant_id, id) on delete cascade
) with (fillfactor = 70);
create trigger set_updated_at before update on public.workflow_steps
  for each row execute function private.set_updated_at();

-- ===========================================================================================
-- Message templates with variables ({{isim}}, {{firma|Merhaba}}, any record field), per language
-- ===========================================================================================
create table public.automation_templates (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  name text not null check (name ~ '^[a-z0-9_]+$'),
  language text not null default 'tr' check (language in ('tr', 'en', 'ar')),
  body text not null check (length(trim(body)) > 0),
  -- The approved WhatsApp template (public.message_templates.name) that carries this text outside
  -- the 24-hour window, and the variables that fill its {{1}}, {{2}} ... in order.
  whatsapp_template text,
  whatsapp_variables text[] not null default '{}',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, name, language)
);
create trigger set_updated_at before update on public.automation_templates
  for each row execute function private.set_updated_at();

-- ===========================================================================================
-- Settings per tenant: opt-out keywords and the one confirmation text per language
-- ===========================================================================================
create table public.automation_settings (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null unique references public.tenants (id) on delete cascade,
  opt_out_keywords text[] not null default array['STOP', 'DUR', 'İPTAL', 'ABONELİKTEN ÇIK'],
  opt_out_confirmation jsonb not null default jsonb_build_object(
    'tr', 'Aboneliğiniz iptal edildi; size artık otomatik mesaj göndermeyeceğiz.',
    'en', 'You have been unsubscribed; we will not send you automated messages any more.',
    'ar', 'تم إلغاء اشتراكك؛ لن نرسل إليك رسائل تلقائية بعد الآن.'),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id)
);
create trigger set_updated_at before update on public.automation_settings
  for each row execute function private.set_updated_at();

-- ===========================================================================================
-- Opt-outs: one per contact (channel identity); honoured by every automated or commercial send
-- ===========================================================================================
create table public.opt_outs (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  contact_id uuid not null,
  customer_id uuid,                           -- the contact's customer then: their other contacts are covered too
  channel text not null,
  handle text not null,
  keyword text,                               -- the keyword as the tenant configured it
  message_id uuid,                            -- the inbound message that said it
  source text not null default 'keyword' check (source in ('keyword', 'manual', 'import')),
  confirmed_at timestamptz,                   -- the one confirmation was queued
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, contact_id),
  foreign key (tenant_id, contact_id) references public.contacts (tenant_id, id) on delete cascade
);
create index opt_outs_customer_idx on public.opt_outs (tenant_id, customer_id) where customer_id is not null;
create trigger set_updated_at before update on public.opt_outs
  for each row execute function private.set_updated_at();

-- ===========================================================================================
-- RLS and grants. Workflows, versions, templates, settings and opt-outs are edited by those who may
-- manage automation (owners, admins by default); runs, steps and events are read-only to users
-- (written by functions), readable with the automation read permission.
-- ===========================================================================================
do $$
declare t text;
begin
  foreach t in array array['workflows', 'workflow_versions', 'automation_templates', 'automation_settings', 'opt_outs'] loop
    perform private.enable_rls(t, 'automation');
    execute format('drop policy tenant_insert on public.%I', t);
    execute format('drop policy tenant_update on public.%I', t);
    execute format('drop policy tenant_delete on public.%I', t);
    execute format($p$create policy tenant_insert on public.%I for insert to authenticated
      with check (tenant_id = (select private.tenant_id()) and (select private.can('automation', 'manage')))$p$, t);
    execute format($p$create policy tenant_update on public.%I for update to authenticated
      using (tenant_id = (select private.tenant_id()) and (select private.can('automation', 'manage')))
      with check (tenant_id = (select private.tenant_id()) and (select private.can('automation', 'manage')))$p$, t);
    execute format($p$create policy tenant_delete on public.%I for delete to authenticated
      using (tenant_id = (select private.tenant_id()) and (select private.can('automation', 'manage')))$p$, t);
  end loop;
  foreach t in array array['workflow_runs', 'workflow_steps'] loop
    perform private.enable_rls(t, 'automation');
    execute format('drop policy tenant_insert on public.%I', t);
    execute format('drop policy tenant_update on public.%I', t);
    execute format('drop policy tenant_delete on public.%I', t);
  end loop;
end $$;
-- A version is immutable: no update policy (a change is a new version).
drop policy tenant_update on public.workflow_versions;

grant select, insert, update, delete on public.automation_events, public.workflows, public.workflow_versions,
  public.workflow_runs, public.workflow_steps, public.automation_templates, public.automation_settings,
  public.opt_outs to authenticated;
grant all on public.automation_events, public.workflows, public.workflow_versions, public.workflow_runs,
  public.workflow_steps, public.automation_templates, public.automation_settings, public.opt_outs to service_role;

-- ===========================================================================================
-- Event triggers: each change writes its event in its own transaction. Inserts are statement
-- triggers over the transition table (one insert ... select for a bulk import); updates are row
-- triggers whose WHEN clause is checked without a function call, so unrelated updates cost nothing.
-- ===========================================================================================

-- The run whose step is executing in this transaction (private.automation_run_step sets it), or null.
create or replace function private.automation_current_run() returns uuid
language sql stable
set search_path = ''
as $$
  select nullif(current_setting('luna.automation_run', true), '')::uuid
$$;

create or replace function private.automation_leads_inserted() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.automation_events (tenant_id, type, subject_type, subject_id, lead_id, payload, caused_by_run)
  select n.tenant_id, 'lead.created', 'lead', n.id, n.id,
         jsonb_strip_nulls(jsonb_build_object('source', n.source, 'company_name', n.company_name,
                                              'contact_name', n.contact_name, 'lead_category', n.lead_category)),
         private.automation_current_run()
  from new_rows n;
  return null;
end;
$$;
create trigger automation_lead_created after insert on public.leads
  referencing new table as new_rows for each statement execute function private.automation_leads_inserted();

create or replace function private.automation_lead_categorised() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.automation_events (tenant_id, type, subject_type, subject_id, lead_id, payload, caused_by_run)
  values (new.tenant_id, 'lead.categorised', 'lead', new.id, new.id,
          jsonb_strip_nulls(jsonb_build_object('category', new.lead_category, 'previous', old.lead_category,
                                               'score', new.luna_ai_score)),
          private.automation_current_run());
  return null;
end;
$$;
create trigger automation_lead_categorised after update of lead_category on public.leads
  for each row when (new.lead_category is distinct from old.lead_category and new.lead_category is not null)
  execute function private.automation_lead_categorised();

create or replace function private.automation_customers_inserted() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.automation_events (tenant_id, type, subject_type, subject_id, customer_id, lead_id, payload, caused_by_run)
  select n.tenant_id, 'customer.created', 'customer', n.id, n.id, n.lead_id,
         jsonb_strip_nulls(jsonb_build_object('source', n.source, 'campaign', n.campaign)),
         private.automation_current_run()
  from new_rows n;
  return null;
end;
$$;
create trigger automation_customer_created after insert on public.customers
  referencing new table as new_rows for each statement execute function private.automation_customers_inserted();

-- One event per tag added and per tag removed (tags compared case-insensitively, as the CRM does).
create or replace function private.automation_customer_tags() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.automation_events (tenant_id, type, subject_type, subject_id, customer_id, payload, caused_by_run)
  select new.tenant_id, d.type, 'customer', new.id, new.id, jsonb_build_object('tag', d.tag),
         private.automation_current_run()
  from (select 'tag.added' as type, t as tag from unnest(new.tags) t
        where not lower(t) = any(array(select lower(x) from unnest(old.tags) x))
        union all
        select 'tag.removed', t from unnest(old.tags) t
        where not lower(t) = any(array(select lower(x) from unnest(new.tags) x))) d;
  return null;
end;
$$;
create trigger automation_customer_tags after update of tags on public.customers
  for each row when (new.tags is distinct from old.tags) execute function private.automation_customer_tags();

create or replace function private.automation_card_stage() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.automation_events (tenant_id, type, subject_type, subject_id, customer_id, card_id, payload, caused_by_run)
  values (new.tenant_id, 'card.stage_changed', 'card', new.id, new.customer_id, new.id,
          jsonb_build_object('pipeline_id', new.pipeline_id, 'from_stage_id', old.stage_id, 'to_stage_id', new.stage_id,
                             'from_stage', (select s.name from public.pipeline_stages s where s.id = old.stage_id),
                             'to_stage', (select s.name from public.pipeline_stages s where s.id = new.stage_id),
                             'status', new.status),
          private.automation_current_run());
  return null;
end;
$$;
create trigger automation_card_stage after update of stage_id on public.cards
  for each row when (new.stage_id is distinct from old.stage_id) execute function private.automation_card_stage();

create or replace function private.automation_conversations_inserted() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.automation_events (tenant_id, type, subject_type, subject_id, conversation_id, contact_id, payload, caused_by_run)
  select n.tenant_id, 'conversation.opened', 'conversation', n.id, n.id, n.contact_id,
         jsonb_build_object('channel_account_id', n.channel_account_id,
                            'channel', (select a.kind from public.channel_accounts a where a.id = n.channel_account_id)),
         private.automation_current_run()
  from new_rows n;
  return null;
end;
$$;
create trigger automation_conversation_opened after insert on public.conversations
  referencing new table as new_rows for each statement execute function private.automation_conversations_inserted();

create or replace function private.automation_conversation_status() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if new.status = 'resolved' or old.status = 'resolved' then
    insert into public.automation_events (tenant_id, type, subject_type, subject_id, conversation_id, contact_id, payload, caused_by_run)
    values (new.tenant_id, case when new.status = 'resolved' then 'conversation.resolved' else 'conversation.opened' end,
            'conversation', new.id, new.id, new.contact_id,
            jsonb_build_object('from', old.status, 'to', new.status, 'assignee_id', new.assignee_id,
                               'reopened', old.status = 'resolved'),
            private.automation_current_run());
  end if;
  return null;
end;
$$;
create trigger automation_conversation_status after update of status on public.conversations
  for each row when (new.status is distinct from old.status) execute function private.automation_conversation_status();

-- Inbound messages: the event, and at once what a reply or an opt-out keyword does to running
-- sequences (private.automation_on_inbound, functions/automation.sql).
create or replace function private.automation_messages_inserted() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  m record;
begin
  insert into public.automation_events (tenant_id, type, subject_type, subject_id, conversation_id, contact_id, payload, caused_by_run)
  select n.tenant_id, 'message.received', 'message', n.id, n.conversation_id, c.contact_id,
         jsonb_strip_nulls(jsonb_build_object('body', left(n.body, 1000), 'type', n.type, 'message_id', n.id)),
         private.automation_current_run()
  from new_rows n join public.conversations c on c.tenant_id = n.tenant_id and c.id = n.conversation_id
  where n.direction = 'inbound';
  for m in select n.tenant_id, n.id, n.body, n.created_at, c.contact_id
           from new_rows n join public.conversations c on c.tenant_id = n.tenant_id and c.id = n.conversation_id
           where n.direction = 'inbound' loop
    perform private.automation_on_inbound(m.tenant_id, m.contact_id, m.id, m.body, m.created_at);
  end loop;
  return null;
end;
$$;
create trigger automation_message_received after insert on public.messages
  referencing new table as new_rows for each statement execute function private.automation_messages_inserted();

create or replace function private.automation_reminder_due() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.automation_events (tenant_id, type, subject_type, subject_id, customer_id, card_id, payload, caused_by_run)
  values (new.tenant_id, 'reminder.due', 'reminder', new.id, new.customer_id, new.card_id,
          jsonb_build_object('reminder_id', new.id, 'title', new.title, 'due_at', new.due_at, 'owner_id', new.owner_id),
          private.automation_current_run());
  return null;
end;
$$;
create trigger automation_reminder_due after update of notified_at on public.reminders
  for each row when (old.notified_at is null and new.notified_at is not null)
  execute function private.automation_reminder_due();

-- The dispatcher: an event some active workflow of its tenant listens to becomes one generic job in
-- the same transaction (keyed by the event, so a re-delivery is a no-op). Events nobody listens to
-- stay rows (history) and cost no job.
create or replace function private.automation_dispatch() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into private.jobs (tenant_id, kind, payload, idempotency_key, priority)
  select e.tenant_id, 'automation.event', jsonb_build_object('event_id', e.id), 'automation.event:' || e.id, 90
  from new_rows e
  where exists (select 1 from public.workflows w
                where w.tenant_id = e.tenant_id and w.trigger_type = e.type and w.status = 'active')
  on conflict (idempotency_key) do nothing;
  return null;
end;
$$;
create trigger automation_dispatch after insert on public.automation_events
  referencing new table as new_rows for each statement execute function private.automation_dispatch();

-- Workflow versions: numbered in order, checked (private.automation_check_definition), and made the
-- workflow's current version.
create or replace function private.automation_version_before() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  w public.workflows;
begin
  select * into w from public.workflows where tenant_id = new.tenant_id and id = new.workflow_id for update;
  if w.id is null then
    raise exception 'workflow not found' using errcode = 'P0002';
  end if;
  perform private.automation_check_definition(new.definition);
  new.version := coalesce((select max(v.version) from public.workflow_versions v where v.workflow_id = new.workflow_id), 0) + 1;
  new.created_by := coalesce(new.created_by, (select auth.uid()));
  return new;
end;
$$;
create trigger automation_version_before before insert on public.workflow_versions
  for each row execute function private.automation_version_before();

create or replace function private.automation_version_after() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  update public.workflows
  set current_version = new.version, trigger_type = new.definition #>> '{trigger,event}'
  where tenant_id = new.tenant_id and id = new.workflow_id;
  return null;
end;
$$;
create trigger automation_version_after after insert on public.workflow_versions
  for each row execute function private.automation_version_after();

-- A workflow is switched on only with a version to run.
create or replace function private.automation_workflow_before() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if new.status = 'active' and new.current_version is null then
    raise exception 'a workflow needs a saved version before it can be switched on'
      using errcode = 'PT422', detail = 'code=workflow_without_version';
  end if;
  if tg_op = 'INSERT' then
    new.created_by := coalesce(new.created_by, (select auth.uid()));
  end if;
  return new;
end;
$$;
create trigger automation_workflow_before before insert or update on public.workflows
  for each row execute function private.automation_workflow_before();

-- ===========================================================================================
-- The opt-out guard on the one send path: an automated (the engine sets luna.send_category) or
-- commercial (a MARKETING template) message to an opted-out contact is not sent — kept, visibly
-- cancelled with error_code 'opted_out', as send_message keeps a message to a bouncing address.
-- ===========================================================================================
create or replace function private.automation_send_guard() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  commercial boolean;
begin
  if new.status <> 'queued' then
    return new;
  end if;
  commercial := coalesce(current_setting('luna.send_category', true), '') in ('automated', 'marketing')
    or exists (select 1 from public.message_templates t
               where t.tenant_id = new.tenant_id and t.channel_account_id = new.channel_account_id
                 and t.name = new.request #>> '{template,name}' and t.language = new.request #>> '{template,language}'
                 and t.category = 'MARKETING');
  if not commercial then
    return new;
  end if;
  if exists (select 1 from public.messages m
             join public.conversations c on c.tenant_id = m.tenant_id and c.id = m.conversation_id
             join public.contacts ct on ct.tenant_id = c.tenant_id and ct.id = c.contact_id
             join public.opt_outs o on o.tenant_id = m.tenant_id
                                   and (o.contact_id = ct.id or (ct.customer_id is not null and o.customer_id = ct.customer_id))
             where m.tenant_id = new.tenant_id and m.id = new.message_id) then
    new.status := 'cancelled';
    new.error_code := 'opted_out';
    new.last_error := 'not sent: the recipient opted out of automated and commercial messages';
    update public.messages set status = 'failed', error_code = 'opted_out', error_message = new.last_error
    where tenant_id = new.tenant_id and id = new.message_id;
  end if;
  return new;
end;
$$;
create trigger automation_send_guard before insert on public.outbound_messages
  for each row when (new.request ->> 'type' = 'template'
                     or coalesce(current_setting('luna.send_category', true), '') in ('automated', 'marketing'))
  execute function private.automation_send_guard();

-- Every foreign key leads an index.
create index workflow_runs_workflow_version_idx on public.workflow_runs (workflow_id, version);
-- A run finds its contact from a lead or a customer.
create index if not exists contacts_lead_idx on public.contacts (tenant_id, lead_id) where lead_id is not null;
create index if not exists contacts_customer_idx on public.contacts (tenant_id, customer_id) where customer_id is not null;
create index if not exists customers_lead_idx on public.customers (tenant_id, lead_id) where lead_id is not null;
