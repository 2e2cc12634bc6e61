-- functions/inbox/outbound.sql -- The outbound queue (worker): claim with shared rate-limit slots, the
-- send steps, settlement, reconcile, retry.

-- ===========================================================================================
-- The outbound queue (worker). Claiming hands each message a rate-limit slot shared by all
-- workers: per number (channel account settings.rate_per_s) and per tenant channel kind
-- (tenant settings inbox.rate_per_s.<kind>); the worker waits for its slot, then sends.
-- ===========================================================================================
create or replace function private.claim_outbound(worker text, n int, lease_seconds int)
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
  claimed uuid[] := '{}';
begin
  for r in
    select o.id, o.channel_account_id, o.tenant_id, o.kind, a.settings as acc_settings, t.settings as tenant_settings
    from public.outbound_messages o
    join public.channel_accounts a on a.id = o.channel_account_id
    join public.tenants t on t.id = o.tenant_id
    -- never a row the provider already has (exactly once: it is settled, not sent)
    where o.status = 'queued' and o.run_at <= now() and o.provider_message_id is null
    order by o.run_at, o.created_at
    for update of o skip locked
    limit n
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
    update public.outbound_messages o
    set status = 'sending', locked_by = worker, attempts = o.attempts + 1, send_after = slot,
        locked_until = slot + make_interval(secs => lease_seconds)
    where o.id = r.id;
    claimed := claimed || r.id;
  end loop;
  return query select o.* from public.outbound_messages o where o.id = any(claimed) order by o.send_after;
end;
$$;
grant execute on function private.claim_outbound(text, int, int) to service_role;

/*
 * Exactly once (issue 9, item 10). A send is recorded the moment it happens, each step in its own
 * committed transaction, so a worker that dies (or a settlement that fails) never causes a second send:
 *   private.outbound_send_begin     the provider call is about to start (send_started_at)
 *   private.outbound_send_refused   the provider answered with a refusal: nothing was sent
 *   private.outbound_accepted       the provider accepted it: provider_message_id, accepted_at
 *   private.complete_outbound       the settlement (message 'sent', early statuses)
 * A row that leaves 'sending' any other way (lease expired, handed back, failed, settlement failed)
 * after a call started goes to 'reconcile', never back to 'queued': with a provider id it is settled
 * later by private.reconcile_outbound (never sent again); without one the outcome is unknown and a
 * person decides (public.retry_outbound). The claim never hands out a row that has a provider id.
 */

-- The settlement, set-based: worker = the lease holder, or null for the reconciler (rows in
-- 'reconcile' that have the provider's id).
create or replace function private.settle_outbound(worker text, ids uuid[], results jsonb[] default null)
returns int
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  n int;
begin
  with done as (
    update public.outbound_messages o
    set status = 'sent', locked_by = null, locked_until = null, last_error = null, error_code = null, sent_at = now(),
        provider_message_id = coalesce(o.provider_message_id, r.result ->> 'provider_message_id'),
        accepted_at = coalesce(o.accepted_at, now())
    from unnest(ids, coalesce(results, array_fill(null::jsonb, array[cardinality(ids)]))) as r(id, result)
    where o.id = r.id
      and case when worker is null then o.status = 'reconcile' and o.provider_message_id is not null
               else o.status = 'sending' and o.locked_by = worker end
    returning o.tenant_id, o.message_id, o.provider_message_id
  ), msgs as (
    update public.messages m
    set provider_message_id = coalesce(m.provider_message_id, d.provider_message_id),
        status = case when private.message_status_rank(m.status) < private.message_status_rank('sent') then 'sent' else m.status end,
        sent_at = coalesce(m.sent_at, now())
    from done d
    where m.tenant_id = d.tenant_id and m.id = d.message_id
    returning 1
  )
  select count(*)::int into n from msgs;
  -- Statuses that overtook the send's answer.
  perform private.apply_message_status(e.tenant_id, e.provider_message_id, e.status, e.at, e.error_code, e.error_message)
  from private.early_statuses e
  join public.outbound_messages o on o.tenant_id = e.tenant_id and o.provider_message_id = e.provider_message_id
  where o.id = any(ids) and o.status = 'sent'
  order by private.message_status_rank(e.status);
  delete from private.early_statuses e using public.outbound_messages o
  where o.id = any(ids) and o.status = 'sent' and o.tenant_id = e.tenant_id and o.provider_message_id = e.provider_message_id;
  return n;
end;
$$;
revoke execute on function private.settle_outbound(text, uuid[], jsonb[]) from public, anon, authenticated;
grant execute on function private.settle_outbound(text, uuid[], jsonb[]) to service_role;

-- Sent: results[i] = {"provider_message_id": ...}. The message becomes 'sent' (unless a webhook
-- status already moved it further). A row whose settlement fails goes to 'reconcile' (the rest of
-- the batch settles): the provider has it, so it is never sent again.
create or replace function private.complete_outbound(worker text, ids uuid[], results jsonb[] default null)
returns int
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  n int := 0;
  i int;
begin
  begin
    return private.settle_outbound(worker, ids, results);
  exception when others then
    null;  -- one row (or more) cannot settle: settle them one by one
  end;
  for i in 1 .. coalesce(cardinality(ids), 0) loop
    begin
      n := n + private.settle_outbound(worker, array[ids[i]], array[results[i]]);
    exception when others then
      update public.outbound_messages o
      set status = 'reconcile', locked_by = null, locked_until = null, run_at = now() + interval '1 minute',
          provider_message_id = coalesce(o.provider_message_id, results[i] ->> 'provider_message_id'),
          accepted_at = coalesce(o.accepted_at, case when results[i] ? 'provider_message_id' then now() end),
          last_error = left('accepted by the provider; settling failed (' || sqlstate || ': ' || sqlerrm
                            || '); settled later, never sent again', 4000)
      where o.id = ids[i] and o.status = 'sending' and o.locked_by = worker;
    end;
  end loop;
  return n;
end;
$$;
grant execute on function private.complete_outbound(text, uuid[], jsonb[]) to service_role;

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

-- A failed attempt. The error text may start with "code=<provider code>: "; retryable errors
-- retry with exponential backoff; the last or a permanent failure marks the message failed with
-- the provider's reason. A failure while the provider call was in flight (the outcome unknown) or
-- after it was accepted goes to 'reconcile' instead: not sent again.
create or replace function private.fail_outbound(worker text, outbound_id uuid, error text, retryable boolean default true)
returns text
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  o public.outbound_messages;
  code text := substring(error from '^code=([^:\s]+)');
  reason text := coalesce(substring(error from '^code=[^:\s]+:\s*(.*)$'), error);
begin
  update public.outbound_messages x
  set status = case when x.provider_message_id is not null or x.send_started_at is not null then 'reconcile'
                    when retryable and x.attempts < x.max_attempts then 'queued' else 'failed' end,
      run_at = case when x.provider_message_id is not null or x.send_started_at is not null then now()
                    else now() + make_interval(secs => least(power(2, x.attempts - 1), 3600)) end,
      locked_by = null, locked_until = null, error_code = code,
      last_error = left(case when x.provider_message_id is not null
                             then 'accepted by the provider, then: ' || error || '; settled later, never sent again'
                             when x.send_started_at is not null
                             then 'outcome unknown (the provider call did not answer): ' || error || '; not sent again'
                             else error end, 4000)
  where x.id = outbound_id and x.status = 'sending' and x.locked_by = worker
  returning * into o;
  if o.status = 'failed' then
    update public.messages m
    set status = 'failed', error_code = code, error_message = left(reason, 2000)
    where m.tenant_id = o.tenant_id and m.id = o.message_id
      and private.message_status_rank(m.status) < private.message_status_rank('failed');
  end if;
  return o.status;
end;
$$;
grant execute on function private.fail_outbound(text, uuid, text, boolean) to service_role;

-- Handed back (shutdown): unstarted rows go back to the queue; a row whose call started, to 'reconcile'.
create or replace function private.release_outbound(worker text, ids uuid[] default null) returns int
language sql
set search_path = ''
as $$
  with released as (
    update public.outbound_messages o
    set status = case when o.provider_message_id is not null or o.send_started_at is not null then 'reconcile' else 'queued' end,
        attempts = case when o.provider_message_id is not null or o.send_started_at is not null then o.attempts
                        else greatest(o.attempts - 1, 0) end,
        last_error = case when o.provider_message_id is not null then 'handed back after the provider accepted it; settled later'
                          when o.send_started_at is not null then 'handed back during the provider call: outcome unknown, not sent again'
                          else o.last_error end,
        locked_by = null, locked_until = null
    where o.status = 'sending' and o.locked_by = worker and (ids is null or o.id = any(ids))
    returning 1
  )
  select count(*)::int from released
$$;
grant execute on function private.release_outbound(text, uuid[]) to service_role;

create or replace function private.defer_outbound(worker text, outbound_id uuid, seconds int) returns void
language sql
set search_path = ''
as $$
  update public.outbound_messages o
  set status = case when o.provider_message_id is not null or o.send_started_at is not null then 'reconcile' else 'queued' end,
      attempts = greatest(o.attempts - 1, 0), locked_by = null, locked_until = null,
      run_at = now() + make_interval(secs => seconds)
  where o.id = outbound_id and o.status = 'sending' and o.locked_by = worker
$$;
grant execute on function private.defer_outbound(text, uuid, int) to service_role;

-- The rescuer: a lease expired (its worker died). Unstarted rows go back to the queue (or fail past
-- their attempts); a row accepted by the provider, or whose call was in flight, to 'reconcile'.
create or replace function private.rescue_outbound() returns int
language sql
set search_path = ''
as $$
  with rescued as (
    update public.outbound_messages o
    set status = case when o.provider_message_id is not null or o.send_started_at is not null then 'reconcile'
                      when o.attempts < o.max_attempts then 'queued' else 'failed' end,
        last_error = 'lease expired (worker ' || coalesce(o.locked_by, '?') || ' stopped answering)'
                     || case when o.provider_message_id is not null then ' after the provider accepted it; settled later, never sent again'
                             when o.send_started_at is not null then ' during the provider call: outcome unknown, not sent again'
                             else '' end,
        locked_by = null, locked_until = null, run_at = now()
    where o.status = 'sending' and o.locked_until < now()
    returning 1
  )
  select count(*)::int from rescued
$$;
grant execute on function private.rescue_outbound() to service_role;

-- The reconciler (worker schedule): rows in 'reconcile' that have the provider's id are settled
-- (never sent); one that still cannot settle keeps its error and is tried again later.
create or replace function private.reconcile_outbound(n int default 200) returns int
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  r record;
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
      settled := settled + private.settle_outbound(null, array[r.id]);
    exception when others then
      update public.outbound_messages o
      set run_at = now() + interval '5 minutes',
          last_error = left('accepted by the provider; settling failed (' || sqlstate || ': ' || sqlerrm
                            || '); tried again later, never sent again', 4000)
      where o.id = r.id;
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
