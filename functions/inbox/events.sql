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

create or replace function private.claim_inbound_events(worker text, n int, lease_seconds int)
returns setof private.inbound_events
language sql
set search_path = ''
as $$
  update private.inbound_events e
  set status = 'processing', locked_by = worker, attempts = e.attempts + 1,
      locked_until = now() + make_interval(secs => lease_seconds)
  where e.id in (
    select q.id from private.inbound_events q
    where q.status = 'received' and q.run_at <= now()
    order by q.run_at, q.id
    for update skip locked
    limit n)
  returning e.*
$$;
grant execute on function private.claim_inbound_events(text, int, int) to service_role;

create or replace function private.complete_inbound_events(worker text, ids bigint[], results jsonb[] default null)
returns int
language sql
set search_path = ''
as $$
  with done as (
    update private.inbound_events e
    set status = 'processed', locked_by = null, locked_until = null, last_error = null, processed_at = now(),
        result = r.result
    from unnest(ids, coalesce(results, array_fill(null::jsonb, array[cardinality(ids)]))) as r(id, result)
    where e.id = r.id and e.status = 'processing' and e.locked_by = worker
    returning 1
  )
  select count(*)::int from done
$$;
grant execute on function private.complete_inbound_events(text, bigint[], jsonb[]) to service_role;

create or replace function private.fail_inbound_event(worker text, event_id bigint, error text, retryable boolean default true)
returns text
language sql
set search_path = ''
as $$
  update private.inbound_events e
  set status = case when retryable and e.attempts < e.max_attempts then 'received' else 'failed' end,
      run_at = now() + make_interval(secs => least(power(2, e.attempts - 1), 3600)),
      locked_by = null, locked_until = null, last_error = left(error, 4000)
  where e.id = event_id and e.status = 'processing' and e.locked_by = worker
  returning e.status
$$;
grant execute on function private.fail_inbound_event(text, bigint, text, boolean) to service_role;

create or replace function private.release_inbound_events(worker text, ids bigint[] default null) returns int
language sql
set search_path = ''
as $$
  with released as (
    update private.inbound_events e
    set status = 'received', attempts = greatest(e.attempts - 1, 0), locked_by = null, locked_until = null
    where e.status = 'processing' and e.locked_by = worker and (ids is null or e.id = any(ids))
    returning 1
  )
  select count(*)::int from released
$$;
grant execute on function private.release_inbound_events(text, bigint[]) to service_role;

create or replace function private.defer_inbound_event(worker text, event_id bigint, seconds int) returns void
language sql
set search_path = ''
as $$
  update private.inbound_events e
  set status = 'received', attempts = greatest(e.attempts - 1, 0), locked_by = null, locked_until = null,
      run_at = now() + make_interval(secs => seconds)
  where e.id = event_id and e.status = 'processing' and e.locked_by = worker
$$;
grant execute on function private.defer_inbound_event(text, bigint, int) to service_role;

create or replace function private.rescue_inbound_events() returns int
language sql
set search_path = ''
as $$
  with rescued as (
    update private.inbound_events e
    set status = case when e.attempts < e.max_attempts then 'received' else 'failed' end,
        last_error = 'lease expired (worker ' || coalesce(e.locked_by, '?') || ' stopped answering)',
        locked_by = null, locked_until = null, run_at = now()
    where e.status = 'processing' and e.locked_until < now()
    returning 1
  )
  select count(*)::int from rescued
$$;
grant execute on function private.rescue_inbound_events() to service_role;

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
