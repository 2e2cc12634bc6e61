/*
 * Dead letters (issue 10, item 12): every queue's terminal failures, newest first, with the provider's
 * reason (`provider_code` is the `code=` the adapter reported: a Graph API error code, a Twilio code,
 * smtp_550, recipient_bouncing …). One view per queue and one with a `queue` column:
 *
 *   dead_letter_jobs               private.jobs 'failed' (generic jobs: Meta lead fetch, template submit …)
 *   dead_letter_leads              leads left in their route's failure status with the error that put them there
 *   dead_letter_inbound_events     webhook / IMAP / web-chat events 'failed' or 'malformed'
 *   dead_letter_outbound_messages  sends 'failed', and 'reconcile' rows whose outcome is unknown (a person decides)
 *   dead_letter_lead_webhooks      lead webhooks (Meta leadgen) whose lead could not be fetched
 *   dead_letters_all               all of them (a `queue` column)
 *
 * The rows come from public.dead_letters() (security definer: the queues live in private): service code
 * sees every tenant; a signed-in user their active tenant's rows, if they see everything there
 * (not an agent limited to assigned records) and may read the queue's module (leads / inbox; a job by
 * its kind's area). Each failure also wrote a processing_logs row (action 'dead_letter') and, for jobs,
 * and inbound events, a notification to owners and admins (a lead webhook fails through its job)
 * (migrations/20261203100300_dead_letters.sql).
 */
create or replace function public.dead_letters()
returns table (queue text, tenant_id uuid, id text, kind text, status text, attempts int, failed_at timestamptz,
               provider_code text, reason text, detail jsonb)
language plpgsql stable
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  service boolean := coalesce(nullif(current_setting('role', true), ''), 'none') in ('none', 'service_role');
  tenant uuid := (select private.tenant_id());
  all_rows boolean;
  leads_ok boolean;
  inbox_ok boolean;
begin
  if not service then
    if tenant is null or not (select private.sees_all()) then
      return;
    end if;
    leads_ok := (select private.can('leads', 'read'));
    inbox_ok := (select private.can('inbox', 'read'));
  end if;
  all_rows := service;
  return query
  select x.queue, x.tenant_id, x.id, x.kind, x.status, x.attempts, x.failed_at,
         substring(x.reason from 'code=([^:\s]+)'), x.reason, x.detail
  from (
    select 'jobs'::text as queue, j.tenant_id, j.id::text as id, j.kind, j.status::text as status, j.attempts,
           j.updated_at as failed_at, j.last_error as reason,
           jsonb_build_object('payload', j.payload, 'run_at', j.run_at) as detail,
           case split_part(j.kind, '.', 1) when 'leads' then leads_ok when 'inbox' then inbox_ok
                else (select private.can(split_part(j.kind, '.', 1), 'read')) end as allowed
    from private.jobs j
    where j.status = 'failed' and (all_rows or j.tenant_id = tenant)
    union all
    select 'leads', l.tenant_id, l.id::text, l.processing_status, l.processing_status, l.attempts, l.updated_at,
           l.last_error, jsonb_build_object('company_name', l.company_name, 'source', l.source), leads_ok
    from public.leads l
    where l.last_error is not null and l.locked_until is null
      and l.processing_status in (select r.failure_status from private.lead_routes r)
      and (all_rows or l.tenant_id = tenant)
    union all
    select 'inbound_events', e.tenant_id, e.id::text, e.provider, e.status, e.attempts,
           coalesce(e.processed_at, e.received_at), e.last_error,
           jsonb_build_object('provider_event_id', e.provider_event_id, 'channel_account_id', e.channel_account_id),
           inbox_ok
    from private.inbound_events e
    where e.status in ('failed', 'malformed') and (all_rows or e.tenant_id = tenant)
    union all
    select 'outbound_messages', o.tenant_id, o.id::text, o.kind, o.status, o.attempts, o.updated_at,
           case when o.error_code is not null and coalesce(o.last_error, '') not like 'code=%'
                then 'code=' || o.error_code || ': ' || coalesce(o.last_error, '') else o.last_error end,
           jsonb_build_object('message_id', o.message_id, 'recipient', o.recipient, 'channel_account_id', o.channel_account_id),
           inbox_ok
    from public.outbound_messages o
    where (o.status = 'failed' or (o.status = 'reconcile' and o.provider_message_id is null))
      and (all_rows or o.tenant_id = tenant)
    union all
    select 'lead_webhooks', w.tenant_id, w.id::text, w.provider, w.status, null::int, w.updated_at, w.error,
           jsonb_build_object('external_id', w.external_id, 'payload', w.payload), leads_ok
    from private.lead_webhooks w
    where w.status = 'failed' and (all_rows or w.tenant_id = tenant)
  ) x
  where all_rows or coalesce(x.allowed, false)
  order by x.failed_at desc;
end;
$$;
revoke execute on function public.dead_letters() from public, anon;
grant execute on function public.dead_letters() to authenticated, service_role;

create or replace view public.dead_letters_all with (security_invoker = true) as
  select * from public.dead_letters();
create or replace view public.dead_letter_jobs with (security_invoker = true) as
  select tenant_id, id, kind, status, attempts, failed_at, provider_code, reason, detail
  from public.dead_letters() where queue = 'jobs';
create or replace view public.dead_letter_leads with (security_invoker = true) as
  select tenant_id, id, kind, status, attempts, failed_at, provider_code, reason, detail
  from public.dead_letters() where queue = 'leads';
create or replace view public.dead_letter_inbound_events with (security_invoker = true) as
  select tenant_id, id, kind, status, attempts, failed_at, provider_code, reason, detail
  from public.dead_letters() where queue = 'inbound_events';
create or replace view public.dead_letter_outbound_messages with (security_invoker = true) as
  select tenant_id, id, kind, status, attempts, failed_at, provider_code, reason, detail
  from public.dead_letters() where queue = 'outbound_messages';
create or replace view public.dead_letter_lead_webhooks with (security_invoker = true) as
  select tenant_id, id, kind, status, attempts, failed_at, provider_code, reason, detail
  from public.dead_letters() where queue = 'lead_webhooks';
grant select on public.dead_letters_all, public.dead_letter_jobs, public.dead_letter_leads,
  public.dead_letter_inbound_events, public.dead_letter_outbound_messages, public.dead_letter_lead_webhooks
  to authenticated, service_role;
