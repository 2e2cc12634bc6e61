-- functions/inbox/outbound.sql -- The outbound queue (worker): claim with shared rate-limit slots, the
-- send steps, settlement, reconcile, retry.

-- ===========================================================================================
-- The outbound queue (worker): private.outbound_claim ... private.outbound_rescue, written by
-- private.install_queue (functions/worker.sql). What sending adds plugs in through the hooks below.
-- Claiming hands each message a rate-limit slot shared by all workers: per number (channel account
-- settings.rate_per_s) and per tenant channel kind (tenant settings inbox.rate_per_s.<kind>); the
-- worker waits for its slot, then sends.
-- ===========================================================================================
create or replace function private.outbound_claimed(worker text, claimed public.outbound_messages[], lease_seconds int)
returns setof public.outbound_messages
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  r record;
  rate numeric;
  kind_rate numeric;
  slot timestamptz;
  kind_slot timestamptz;
  horizon interval := interval '2 seconds';
  kept uuid[] := '{}';
  later uuid[] := '{}';
begin
  for r in
    select o.id, o.channel_account_id, o.tenant_id, o.kind, a.settings as acc_settings, t.settings as tenant_settings
    from unnest(claimed) o
    left join public.channel_accounts a on a.id = o.channel_account_id
    left join public.tenants t on t.id = o.tenant_id
    order by o.priority desc, o.run_at, o.id
  loop
    rate := nullif(r.acc_settings ->> 'rate_per_s', '')::numeric;
    kind_rate := nullif(r.tenant_settings #>> array['inbox', 'rate_per_s', r.kind], '')::numeric;
    slot := clock_timestamp();
    if rate is not null and rate > 0 then
      insert into private.send_slots (key) values ('channel:' || r.channel_account_id) on conflict do nothing;
      select greatest(s.next_slot, clock_timestamp()) into slot from private.send_slots s
      where s.key = 'channel:' || r.channel_account_id for update;
    end if;
    if kind_rate is not null and kind_rate > 0 then
      insert into private.send_slots (key) values ('kind:' || r.tenant_id || ':' || r.kind) on conflict do nothing;
      select greatest(s.next_slot, clock_timestamp()) into kind_slot from private.send_slots s
      where s.key = 'kind:' || r.tenant_id || ':' || r.kind for update;
      slot := greatest(slot, kind_slot);
    end if;
    -- Do not book slots far ahead: leave the rest for the next claim (or another worker).
    if slot > clock_timestamp() + horizon then
      later := later || r.id;
      continue;
    end if;
    if rate is not null and rate > 0 then
      update private.send_slots set next_slot = slot + make_interval(secs => 1 / rate)
      where key = 'channel:' || r.channel_account_id;
    end if;
    if kind_rate is not null and kind_rate > 0 then
      update private.send_slots set next_slot = slot + make_interval(secs => 1 / kind_rate)
      where key = 'kind:' || r.tenant_id || ':' || r.kind;
    end if;
    -- The lease runs from the slot.
    update public.outbound_messages o
    set send_after = slot, locked_until = slot + make_interval(secs => lease_seconds)
    where o.id = r.id;
    kept := kept || r.id;
  end loop;
  -- No slot yet: back to the queue, the attempt not counted.
  if cardinality(later) > 0 then
    perform private.outbound_release(worker, later);
  end if;
  return query select o.* from public.outbound_messages o where o.id = any(kept) order by o.send_after;
end;
$$;
revoke execute on function private.outbound_claimed(text, public.outbound_messages[], int)
  from public, anon, authenticated;
grant execute on function private.outbound_claimed(text, public.outbound_messages[], int) to service_role;

/*
 * Exactly once (issue 9, item 10). A send is recorded the moment it happens, each step in its own
 * committed transaction, so a worker that dies (or a settlement that fails) never causes a second send:
 *   private.outbound_send_begin     the provider call is about to start (send_started_at)
 *   private.outbound_send_refused   the provider answered with a refusal: nothing was sent
 *   private.outbound_accepted       the provider accepted it: provider_message_id, accepted_at
 *   private.outbound_complete       the settlement (message 'sent', early statuses)
 * A row that leaves 'sending' any other way (lease expired, handed back, snoozed, failed, settlement
 * failed) after a call started is in doubt (private.outbound_in_doubt) and goes to 'reconcile', never
 * back to 'queued': with a provider id it is settled later by private.reconcile_outbound (never sent
 * again); without one the outcome is unknown and a person decides (public.retry_outbound). The claim
 * never hands out a row that has a provider id.
 */
create or replace function private.outbound_in_doubt(q public.outbound_messages) returns text
language sql immutable
set search_path = ''
as $$
  select case when q.provider_message_id is not null then 'the provider accepted it: settled later, never sent again'
              when q.send_started_at is not null then 'the provider call did not answer: outcome unknown, not sent again' end
$$;
revoke execute on function private.outbound_in_doubt(public.outbound_messages)
  from public, anon, authenticated;
grant execute on function private.outbound_in_doubt(public.outbound_messages) to service_role;

-- Sent: results[i] = {"provider_message_id": ...} (recorded already by outbound_accepted).
create or replace function private.outbound_on_complete(q public.outbound_messages, result jsonb) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('error_code', null, 'sent_at', now(),
                            'provider_message_id', coalesce(q.provider_message_id, result ->> 'provider_message_id'),
                            'accepted_at', coalesce(q.accepted_at, now()))
$$;
revoke execute on function private.outbound_on_complete(public.outbound_messages, jsonb)
  from public, anon, authenticated;
grant execute on function private.outbound_on_complete(public.outbound_messages, jsonb) to service_role;

-- Messages the provider has: 'sent' (unless a webhook status already moved them further), and the
-- statuses that overtook the send's answer applied. Used by the settlement and the reconciler.
create or replace function private.outbound_settle_messages(sent public.outbound_messages[]) returns void
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
begin
  update public.messages m
  set provider_message_id = coalesce(m.provider_message_id, d.provider_message_id),
      status = case when private.message_status_rank(m.status) < private.message_status_rank('sent') then 'sent' else m.status end,
      sent_at = coalesce(m.sent_at, now())
  from unnest(sent) d
  where m.tenant_id = d.tenant_id and m.id = d.message_id;
  perform private.apply_message_status(e.tenant_id, e.provider_message_id, e.status, e.at, e.error_code, e.error_message)
  from private.early_statuses e
  join unnest(sent) d on d.tenant_id = e.tenant_id and d.provider_message_id = e.provider_message_id
  order by private.message_status_rank(e.status);
  delete from private.early_statuses e using unnest(sent) d
  where d.tenant_id = e.tenant_id and d.provider_message_id = e.provider_message_id;
end;
$$;
revoke execute on function private.outbound_settle_messages(public.outbound_messages[])
  from public, anon, authenticated;
grant execute on function private.outbound_settle_messages(public.outbound_messages[]) to service_role;

create or replace function private.outbound_after_complete(worker text, olds public.outbound_messages[],
                                                           news public.outbound_messages[], results jsonb[])
returns void
language sql
set search_path = ''
as $$
  select private.outbound_settle_messages(news)
$$;
revoke execute on function private.outbound_after_complete(text, public.outbound_messages[], public.outbound_messages[], jsonb[])
  from public, anon, authenticated;
grant execute on function private.outbound_after_complete(text, public.outbound_messages[], public.outbound_messages[], jsonb[])
  to service_role;

-- The error text may start with "code=<provider code>: "; the last or a permanent failure marks the
-- message failed with the provider's reason.
create or replace function private.outbound_on_fail(q public.outbound_messages, arg jsonb) returns jsonb
language sql immutable
set search_path = ''
as $$
  select jsonb_build_object('error_code', substring(arg ->> 'error' from '^code=([^:\s]+)'))
$$;
revoke execute on function private.outbound_on_fail(public.outbound_messages, jsonb)
  from public, anon, authenticated;
grant execute on function private.outbound_on_fail(public.outbound_messages, jsonb) to service_role;

create or replace function private.outbound_after_fail(worker text, olds public.outbound_messages[],
                                                       news public.outbound_messages[], args jsonb[])
returns void
language sql
set search_path = ''
as $$
  update public.messages m
  set status = 'failed', error_code = (u.n).error_code,
      error_message = left(coalesce(substring(u.a ->> 'error' from '^code=[^:\s]+:\s*(.*)$'), u.a ->> 'error'), 2000)
  from generate_subscripts(news, 1) i, lateral (select olds[i] as o, news[i] as n, args[i] as a) u
  where (u.n).status = 'failed' and m.tenant_id = (u.n).tenant_id and m.id = (u.n).message_id
    and private.message_status_rank(m.status) < private.message_status_rank('failed')
$$;
revoke execute on function private.outbound_after_fail(text, public.outbound_messages[], public.outbound_messages[], jsonb[])
  from public, anon, authenticated;
grant execute on function private.outbound_after_fail(text, public.outbound_messages[], public.outbound_messages[], jsonb[])
  to service_role;
select private.install_queue('outbound', 'public.outbound_messages',
  available => '''queued''', running => '''sending''', succeeded => '''sent''', failed => '''failed''',
  ready => 'q.status = ''queued'' and q.provider_message_id is null', doubt_state => 'reconcile');

-- The provider call is about to start. {"go": true}, or {"go": false, "provider_message_id", "status"}
-- when this worker no longer holds the row or the provider already has the message.
create or replace function private.outbound_send_begin(worker text, outbound_id uuid) returns jsonb
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  o public.outbound_messages;
begin
  update public.outbound_messages x set send_started_at = now()
  where x.id = outbound_id and x.status = 'sending' and x.locked_by = worker and x.provider_message_id is null;
  if found then
    return '{"go": true}';
  end if;
  select * into o from public.outbound_messages x where x.id = outbound_id;
  return jsonb_build_object('go', false, 'provider_message_id', o.provider_message_id, 'status', o.status,
                            'locked_by', o.locked_by);
end;
$$;
revoke execute on function private.outbound_send_begin(text, uuid) from public, anon, authenticated;
grant execute on function private.outbound_send_begin(text, uuid) to service_role;

-- The provider refused (an error answer, the breaker, a connection never made): nothing was sent,
-- so the row may be retried as usual.
create or replace function private.outbound_send_refused(worker text, outbound_id uuid) returns void
language sql
set search_path = ''
as $$
  update public.outbound_messages o set send_started_at = null
  where o.id = outbound_id and o.status = 'sending' and o.locked_by = worker and o.provider_message_id is null
$$;
revoke execute on function private.outbound_send_refused(text, uuid) from public, anon, authenticated;
grant execute on function private.outbound_send_refused(text, uuid) to service_role;

-- The provider accepted the message: its id, in a transaction of its own, before anything else can
-- fail. Recorded even when the lease was lost meanwhile (the row is then in 'reconcile').
create or replace function private.outbound_accepted(worker text, outbound_id uuid, provider_message_id text)
returns boolean
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
begin
  update public.outbound_messages o
  set provider_message_id = outbound_accepted.provider_message_id, accepted_at = now(),
      run_at = case when o.status = 'reconcile' then now() else o.run_at end
  where o.id = outbound_id and o.provider_message_id is null and o.status in ('sending', 'reconcile');
  return found;
end;
$$;
revoke execute on function private.outbound_accepted(text, uuid, text) from public, anon, authenticated;
grant execute on function private.outbound_accepted(text, uuid, text) to service_role;

-- The reconciler (worker schedule): rows in 'reconcile' that have the provider's id are settled
-- (never sent); one that still cannot settle keeps its error and is tried again later.
create or replace function private.reconcile_outbound(n int default 200) returns int
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  r record;
  o public.outbound_messages;
  settled int := 0;
begin
  for r in
    select o.id from public.outbound_messages o
    where o.status = 'reconcile' and o.provider_message_id is not null and o.run_at <= now()
    order by o.run_at
    for update skip locked
    limit n
  loop
    begin
      update public.outbound_messages x
      set status = 'sent', last_error = null, error_code = null, sent_at = now(), accepted_at = coalesce(x.accepted_at, now())
      where x.id = r.id
      returning * into o;
      perform private.outbound_settle_messages(array[o]);
      settled := settled + 1;
    exception when others then
      update public.outbound_messages x
      set run_at = now() + interval '5 minutes',
          last_error = left('accepted by the provider; settling failed (' || sqlstate || ': ' || sqlerrm
                            || '); tried again later, never sent again', 4000)
      where x.id = r.id;
    end;
  end loop;
  return settled;
end;
$$;
revoke execute on function private.reconcile_outbound(int) from public, anon, authenticated;
grant execute on function private.reconcile_outbound(int) to service_role;

/*
 * A person's decision for a message in 'reconcile' whose outcome is unknown (the provider call never
 * answered): send it again. A message the provider accepted is never sent again (PT409).
 */
create or replace function public.retry_outbound(outbound uuid) returns public.outbound_messages
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  o public.outbound_messages;
  c public.conversations;
begin
  select * into o from public.outbound_messages x
  where x.id = outbound and x.tenant_id = (select private.tenant_id()) for update;
  if o.id is null then
    raise exception 'outbound message not found' using errcode = 'P0002';
  end if;
  select c0.* into c from public.messages m join public.conversations c0 on c0.id = m.conversation_id
  where m.tenant_id = o.tenant_id and m.id = o.message_id;
  if not (select private.can('inbox', 'write'))
     or not ((select private.sees_all()) or c.assignee_id = (select auth.uid())) then
    raise exception 'no permission to resend this message' using errcode = '42501';
  end if;
  if o.status <> 'reconcile' then
    raise exception 'the message is %, not waiting for reconciliation', o.status
      using errcode = 'PT409', detail = 'code=not_reconcile';
  end if;
  if o.provider_message_id is not null then
    raise exception 'the provider accepted this message (%); it is never sent twice', o.provider_message_id
      using errcode = 'PT409', detail = 'code=already_accepted';
  end if;
  update public.outbound_messages x
  set status = 'queued', send_started_at = null, run_at = now(),
      last_error = left('resent by a person after: ' || coalesce(x.last_error, 'reconcile'), 4000)
  where x.id = o.id
  returning * into o;
  return o;
end;
$$;
revoke execute on function public.retry_outbound(uuid) from public, anon, authenticated;
grant execute on function public.retry_outbound(uuid) to authenticated;

create or replace function private.notify_outbound() returns trigger
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
begin
  perform pg_notify('luna_inbox', 'outbound');
  return null;
end;
$$;
drop trigger if exists notify_outbound on public.outbound_messages;
create trigger notify_outbound after insert on public.outbound_messages
  for each statement execute function private.notify_outbound();
