/*
 * Side effects happen once per entity and step, whatever crashes (issue 9, item 10).
 *
 * A worker can die (kill -9, OOM, a lost machine) after a handler's side effect committed and before
 * its batch was settled; the lease then expires and the row is handed out again. Each handler's side
 * effects are therefore keyed in the database:
 *
 * - private.step_marks: a step that was done, by key (entity and step), with what it produced. A
 *   retry that finds the mark returns the stored result instead of doing the step again
 *   (functions/worker.sql: private.step_result / private.step_done; the CRM's lead sync takes its
 *   mark in the same transaction as its effects).
 * - timeline events and notifications carry an optional step_key, unique per tenant (and recipient):
 *   writing the same step twice is a no-op.
 * - outbound messages: send_started_at marks a provider call in flight; accepted_at (with
 *   provider_message_id) is written in its own transaction the moment the provider answers. A row
 *   with either, whose settlement failed or whose worker died, goes to the new 'reconcile' status:
 *   never sent again automatically, visible, settled later from the recorded provider id.
 */

-- ---------------------------------------------------------------------------------------------
-- Step marks (generic)
-- ---------------------------------------------------------------------------------------------
create table private.step_marks (
  key text primary key,                  -- '<step>:<entity id>[:<pass>]'
  tenant_id uuid references public.tenants (id) on delete cascade,
  result jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index step_marks_tenant_idx on private.step_marks (tenant_id);
create trigger set_updated_at before update on private.step_marks
  for each row execute function private.set_updated_at();
grant all on private.step_marks to service_role;

-- ---------------------------------------------------------------------------------------------
-- Timeline events and notifications: one per step key
-- ---------------------------------------------------------------------------------------------
alter table public.timeline_events add column step_key text;
create unique index timeline_events_step_idx on public.timeline_events (tenant_id, step_key)
  where step_key is not null;

alter table public.notifications add column step_key text;
create unique index notifications_step_idx on public.notifications (tenant_id, user_id, step_key)
  where step_key is not null;

-- The timeline writer takes the step key (a repeated step writes nothing). Same name, one more
-- argument: the old signature goes so calls with fewer arguments stay unambiguous.
drop function private.crm_timeline(uuid, uuid, text, jsonb, uuid, uuid);
create function private.crm_timeline(tenant uuid, customer uuid, event text, data jsonb,
                                     card uuid default null, activity uuid default null, step_key text default null)
returns void
language sql
security definer
set search_path = ''
as $$
  insert into public.timeline_events (tenant_id, customer_id, card_id, activity_id, event_type, actor_id, data, step_key)
  values (tenant, customer, card, activity, event, (select auth.uid()), coalesce(data, '{}'), step_key)
  on conflict (tenant_id, step_key) where step_key is not null do nothing
$$;
revoke execute on function private.crm_timeline(uuid, uuid, text, jsonb, uuid, uuid, text) from public, authenticated;
grant execute on function private.crm_timeline(uuid, uuid, text, jsonb, uuid, uuid, text) to service_role;

-- crm_notify gains a step key too (functions/crm.sql defines the new signature).
drop function if exists private.crm_notify(uuid, jsonb, text, text, text, jsonb, uuid);

-- ---------------------------------------------------------------------------------------------
-- Outbound messages: accepted before settled; reconcile instead of a second send
-- ---------------------------------------------------------------------------------------------
alter table public.outbound_messages
  add column send_started_at timestamptz,   -- a provider call is in flight (cleared on a definite refusal)
  add column accepted_at timestamptz;       -- the provider accepted it (provider_message_id recorded)
alter table public.outbound_messages drop constraint outbound_messages_status_check;
alter table public.outbound_messages add constraint outbound_messages_status_check
  check (status in ('queued', 'sending', 'sent', 'failed', 'cancelled', 'reconcile'));
create index outbound_reconcile_idx on public.outbound_messages (run_at) where status = 'reconcile';
