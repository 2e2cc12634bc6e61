/*
 * A failed job must be visible (issue 10, item 12). Every queue's terminal failure already ends in a
 * status (private.jobs 'failed', public.leads failure statuses, private.inbound_events 'failed' /
 * 'malformed', public.outbound_messages 'failed', private.lead_webhooks 'failed'); here each one also
 * writes a log row (public.processing_logs, result 'error', action 'dead_letter', the provider's reason)
 * and, where work from outside would otherwise be lost (a job, an inbound event), a notification to
 * the tenant's owners and admins (a lead webhook fails through its fetch job, which notifies). The leads queue logs its own failures
 * (private.fail_lead). Dashboards: the dead_letter_* views (sql/dead_letters.sql).
 */
create or replace function private.dead_letter_record(tenant uuid, queue text, item_id text, kind text, reason text,
                                                      detail jsonb default '{}', notify boolean default false)
returns void
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_variable
declare
  code text := substring(reason from 'code=([^:\s]+)');
begin
  if tenant is null then
    return;   -- a system row (no tenant): visible in the views to service code only
  end if;
  insert into public.processing_logs (tenant_id, module, action, result, error, detail)
  values (tenant, queue, 'dead_letter', 'error', left(coalesce(reason, 'failed'), 8000),
          jsonb_strip_nulls(coalesce(detail, '{}') || jsonb_build_object('queue', queue, 'id', item_id, 'kind', kind,
                                                                          'provider_code', code)));
  if notify then
    insert into public.notifications (tenant_id, user_id, kind, title, body, data, step_key)
    select tenant, m.user_id, 'dead_letter', 'Failed: ' || coalesce(kind, queue),
           left(coalesce(reason, 'failed'), 500),
           jsonb_build_object('queue', queue, 'id', item_id, 'kind', kind, 'provider_code', code),
           'dead_letter:' || queue || ':' || item_id
    from public.tenant_members m
    where m.tenant_id = tenant and m.active and m.role::text in ('owner', 'admin')
    on conflict (tenant_id, user_id, step_key) where step_key is not null do nothing;
  end if;
end;
$$;
revoke execute on function private.dead_letter_record(uuid, text, text, text, text, jsonb, boolean) from public, anon, authenticated;

create or replace function private.dead_letter_trigger() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_table_name = 'jobs' then
    perform private.dead_letter_record(new.tenant_id, 'jobs', new.id::text, new.kind, new.last_error,
                                       jsonb_build_object('attempts', new.attempts, 'payload', new.payload), true);
  elsif tg_table_name = 'inbound_events' then
    perform private.dead_letter_record(new.tenant_id, 'inbound_events', new.id::text, new.provider, new.last_error,
                                       jsonb_build_object('attempts', new.attempts, 'status', new.status), true);
  elsif tg_table_name = 'outbound_messages' then
    perform private.dead_letter_record(new.tenant_id, 'outbound_messages', new.id::text, new.kind,
                                       coalesce(case when new.error_code is not null and coalesce(new.last_error, '') not like 'code=%'
                                                     then 'code=' || new.error_code || ': ' end, '') || coalesce(new.last_error, 'failed'),
                                       jsonb_build_object('attempts', new.attempts, 'message_id', new.message_id,
                                                          'recipient', new.recipient), false);
  elsif tg_table_name = 'lead_webhooks' then
    perform private.dead_letter_record(new.tenant_id, 'lead_webhooks', new.id::text, new.provider, new.error,
                                       jsonb_build_object('external_id', new.external_id), false);  -- its job notifies
  end if;
  return null;
end;
$$;
revoke execute on function private.dead_letter_trigger() from public, anon, authenticated;

create trigger dead_letter after update of status on private.jobs
  for each row when (new.status = 'failed' and old.status is distinct from new.status)
  execute function private.dead_letter_trigger();
create trigger dead_letter_insert after insert on private.inbound_events
  for each row when (new.status in ('failed', 'malformed')) execute function private.dead_letter_trigger();
create trigger dead_letter after update of status on private.inbound_events
  for each row when (new.status in ('failed', 'malformed') and old.status is distinct from new.status)
  execute function private.dead_letter_trigger();
create trigger dead_letter_insert after insert on public.outbound_messages
  for each row when (new.status = 'failed') execute function private.dead_letter_trigger();
create trigger dead_letter after update of status on public.outbound_messages
  for each row when (new.status = 'failed' and old.status is distinct from new.status)
  execute function private.dead_letter_trigger();
create trigger dead_letter after update of status on private.lead_webhooks
  for each row when (new.status = 'failed' and old.status is distinct from new.status)
  execute function private.dead_letter_trigger();

-- The views list failures newest first.
create index if not exists jobs_failed_idx on private.jobs (tenant_id, updated_at desc) where status = 'failed';
create index if not exists inbound_events_failed_idx on private.inbound_events (tenant_id, received_at desc)
  where status in ('failed', 'malformed');
create index if not exists outbound_failed_idx on public.outbound_messages (tenant_id, updated_at desc)
  where status in ('failed', 'reconcile');
create index if not exists lead_webhooks_failed_idx on private.lead_webhooks (tenant_id, updated_at desc) where status = 'failed';
