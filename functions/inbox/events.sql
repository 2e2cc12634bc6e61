-- functions/inbox/events.sql -- Inbound events: receipt (edge), the worker's queue over
-- private.inbound_events, and the one call per claimed event.

-- ===========================================================================================
-- Inbound events: receipt (edge) and the worker's queue over private.inbound_events
-- ===========================================================================================

-- Store one raw event. A second delivery of the same provider event id changes nothing; returns the
-- event's id and whether it was new.
create or replace function private.receive_event(
  provider text, provider_event_id text, payload jsonb, headers jsonb default '{}', raw bytea default null,
  app_id text default null, channel_account uuid default null, malformed boolean default false
) returns table (event_id bigint, inserted boolean)
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  new_id bigint;
begin
  insert into private.inbound_events (provider, provider_event_id, payload, headers, raw, app_id, channel_account_id,
                                      tenant_id, status, last_error)
  values (provider, provider_event_id, payload, coalesce(headers, '{}'), raw, app_id, channel_account,
          (select c.tenant_id from public.channel_accounts c where c.id = channel_account),
          case when malformed then 'malformed' else 'received' end,
          case when malformed then 'body is not valid JSON' end)
  on conflict on constraint inbound_events_provider_provider_event_id_key do nothing
  returning id into new_id;
  if new_id is not null then
    return query select new_id, true;
  else
    return query select e.id, false from private.inbound_events e
      where e.provider = receive_event.provider and e.provider_event_id = receive_event.provider_event_id;
  end if;
end;
$$;
grant execute on function private.receive_event(text, text, jsonb, jsonb, bytea, text, uuid, boolean)
  to service_role;

create or replace function private.notify_inbound() returns trigger
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
begin
  perform pg_notify('luna_inbox', 'inbound');
  return null;
end;
$$;
drop trigger if exists notify_inbound on private.inbound_events;
create trigger notify_inbound after insert on private.inbound_events
  for each statement execute function private.notify_inbound();

-- The inbound queue: private.inbound_claim ... private.inbound_rescue, written by private.install_queue
-- (functions/worker.sql). The worker's handler runs private.process_inbound_event; a processed event
-- keeps when it was processed.
create or replace function private.inbound_on_complete(q private.inbound_events, result jsonb) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('processed_at', now())
$$;
revoke execute on function private.inbound_on_complete(private.inbound_events, jsonb)
  from public, anon, authenticated;
grant execute on function private.inbound_on_complete(private.inbound_events, jsonb) to service_role;
select private.install_queue('inbound', 'private.inbound_events',
  available => '''received''', running => '''processing''', succeeded => '''processed''', failed => '''failed''');

-- A Meta event of an object we do not handle: a permanent failure (kept, visible, never retried).
create or replace function private.inbox_unknown_event(ev private.inbound_events) returns jsonb
language plpgsql
set search_path = ''
as $$
begin
  raise exception 'unsupported webhook object %', coalesce(ev.payload ->> 'object', '(none)') using errcode = '22023';
end;
$$;
grant execute on function private.inbox_unknown_event(private.inbound_events) to service_role;

-- The worker's one call per claimed event.
create or replace function private.process_inbound_event(event_id bigint) returns jsonb
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  ev private.inbound_events;
begin
  select * into ev from private.inbound_events e where e.id = event_id;
  return case
    when ev.provider = 'whatsapp' or ev.payload ->> 'object' = 'whatsapp_business_account' then private.process_whatsapp_event(ev)
    when ev.payload ->> 'object' in ('instagram', 'page') then private.process_meta_messaging_event(ev)
    when ev.provider in ('meta', 'instagram', 'messenger') then private.inbox_unknown_event(ev)
    else private.process_normalized_event(ev)
  end;
end;
$$;
grant execute on function private.process_inbound_event(bigint) to service_role;
