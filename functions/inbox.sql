/*
 * Unified inbox: inbound event processing, contacts / conversations / messages, delivery statuses,
 * routing, the send RPC with WhatsApp's 24-hour window, the outbound queue with shared rate-limit
 * slots, templates, attribution. Tables: migrations/20261124030000_inbox.sql.
 */

-- ===========================================================================================
-- Status rank: a delivery status only ever moves forward.
-- ===========================================================================================
create or replace function private.message_status_rank(status text) returns int
language sql immutable
set search_path = ''
as $$
  select case status
    when 'note' then 0 when 'received' then 0 when 'queued' then 1 when 'sent' then 2
    when 'failed' then 3 when 'delivered' then 4 when 'read' then 5 else 0 end
$$;

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

create or replace function private.defer_inbound_event(worker text, event_id bigint, seconds int) returns void
language sql
set search_path = ''
as $$
  update private.inbound_events e
  set status = 'received', attempts = greatest(e.attempts - 1, 0), locked_by = null, locked_until = null,
      run_at = now() + make_interval(secs => seconds)
  where e.id = event_id and e.status = 'processing' and e.locked_by = worker
$$;

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

-- ===========================================================================================
-- Contacts, conversations, messages
-- ===========================================================================================

-- Link a contact to a CRM customer by phone / e-mail (issue 5's customers), or create a lead for a
-- new contact through the lead pipeline (source = channel). Called when a contact is created and again when it
-- gains a phone or e-mail it did not have (a WhatsApp user first seen by business-scoped id only):
-- a contact with neither never matches anything by them (null never equals null), and its lead is
-- keyed by the channel identity (external_id = channel:scoped id or handle).
create or replace function private.inbox_link_contact(contact uuid) returns void
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.contacts;
  found_customer uuid;
  lead record;
  lead_key text;
  lead_payload jsonb;
begin
  select * into c from public.contacts where id = contact;
  if c.id is null or c.customer_id is not null then
    return;
  end if;
  if c.phone is not null or c.email is not null then
    -- Another contact of the same person (same phone / e-mail) already linked: reuse its links.
    select o.customer_id into found_customer from public.contacts o
    where o.tenant_id = c.tenant_id and o.id <> c.id and o.customer_id is not null
      and ((c.phone is not null and o.phone = c.phone) or (c.email is not null and lower(o.email) = lower(c.email)))
    limit 1;
    if found_customer is null then
      select cu.id into found_customer from public.customers cu
      where cu.tenant_id = c.tenant_id
        and ((c.phone is not null and cu.phone = c.phone) or (c.email is not null and lower(cu.email::text) = lower(c.email)))
      order by (cu.phone = c.phone) desc nulls last
      limit 1;
    end if;
  end if;
  if found_customer is not null then
    update public.contacts set customer_id = found_customer where id = c.id;
    if c.attribution is not null then
      update public.customers cu set attribution = c.attribution
      where cu.id = found_customer and cu.attribution = '{}'::jsonb;
    end if;
    return;
  end if;
  lead_payload := jsonb_strip_nulls(jsonb_build_object(
    'contact_name', coalesce(c.display_name, c.username), 'phone', c.phone, 'email', c.email,
    'external_id', c.channel || ':' || coalesce(c.scoped_id, c.handle), 'channel', c.channel, 'contact_id', c.id,
    'attribution', c.attribution,
    'utm_source', coalesce(c.attribution ->> 'utm_source', case when c.attribution ->> 'source' = 'ctwa' then 'meta' end),
    'utm_medium', coalesce(c.attribution ->> 'utm_medium', case when c.attribution ->> 'source' = 'ctwa' then 'click_to_whatsapp' end),
    'utm_campaign', coalesce(c.attribution ->> 'utm_campaign', c.attribution ->> 'headline'),
    'utm_content', coalesce(c.attribution ->> 'utm_content', c.attribution ->> 'source_id'),
    'utm_term', coalesce(c.attribution ->> 'utm_term', c.attribution ->> 'ctwa_clid')));
  if c.lead_id is not null then
    -- The contact's lead exists already (made when nothing else identified the contact): give it
    -- what is known now, under its own key, so no second lead appears for the new phone / e-mail.
    if c.phone is null and c.email is null then
      return;
    end if;
    select x.unique_lead_id into lead_key from public.leads x where x.id = c.lead_id;
    if lead_key is null then
      return;
    end if;
    lead_payload := lead_payload || jsonb_build_object('unique_lead_id', lead_key);
  end if;
  -- A failing lead (say, nothing to identify it by) must never lose the message: a savepoint.
  begin
    select il.lead_id into lead from private.ingest_lead(c.tenant_id, c.channel, lead_payload) il;
    if lead.lead_id is not null and c.lead_id is null then
      update public.contacts set lead_id = lead.lead_id where id = c.id;
    end if;
  exception when others then
    raise warning 'inbox: no lead for contact % (%): %', c.id, c.channel, sqlerrm;
  end;
end;
$$;

-- Is this WhatsApp identifier a business-scoped user id (BSUID: ISO country code, a period, up to 128
-- alphanumerics, "US.13491208655302741918"; parent BSUIDs "US.ENT.…") rather than a wa_id (digits)?
create or replace function private.wa_is_bsuid(v text) returns boolean
language sql immutable
set search_path = ''
as $$
  select coalesce(v ~ '^[A-Z]{2}\.[A-Za-z0-9.]{1,140}$', false)
$$;

-- Move everything of contact `lose` to contact `keep` (the same person, known twice: by phone before
-- the channel shared a business-scoped id, and by that id alone) and delete `lose`. The caller holds
-- the identity locks of both.
create or replace function private.merge_contacts(keep uuid, lose uuid) returns uuid
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  k public.contacts;
  l public.contacts;
  conv uuid;
begin
  select * into k from public.contacts c where c.id = keep for update;
  select * into l from public.contacts c where c.id = lose for update;
  if k.id is null or l.id is null or k.id = l.id or k.tenant_id <> l.tenant_id or k.channel <> l.channel then
    return coalesce(k.id, l.id);
  end if;
  for conv in update public.conversations v set contact_id = k.id
              where v.tenant_id = k.tenant_id and v.contact_id = l.id returning v.id loop
    perform private.inbox_timeline(k.tenant_id, conv, 'contact_merged',
                                   jsonb_build_object('from', l.id, 'into', k.id));
  end loop;
  update public.conversion_events e set contact_id = k.id where e.tenant_id = k.tenant_id and e.contact_id = l.id;
  update public.messages m set sender_contact_id = k.id where m.tenant_id = k.tenant_id and m.sender_contact_id = l.id;
  delete from public.contacts c where c.id = l.id;   -- frees its handle and scoped id
  update public.contacts c
  set scoped_id = coalesce(c.scoped_id, l.scoped_id),
      -- the phone's wa_id is the better address; a handle that is only the business-scoped id gives way
      handle = case when c.handle = c.scoped_id or c.handle = l.scoped_id then l.handle else c.handle end,
      username = coalesce(l.username, c.username),
      display_name = coalesce(c.display_name, l.display_name),
      phone = coalesce(c.phone, l.phone),
      email = coalesce(c.email, l.email),
      customer_id = coalesce(c.customer_id, l.customer_id),
      lead_id = coalesce(c.lead_id, l.lead_id),
      attribution = coalesce(c.attribution, l.attribution)
  where c.id = k.id;
  return k.id;
end;
$$;

/*
 * Find or create the contact of a channel identity and record what the event tells about it.
 * `scoped_id` is the channel's business-scoped id (WhatsApp BSUID) when it sends one, `handle` the
 * address (WhatsApp wa_id, which may be withheld: null). Rules, per tenant and channel:
 *   - the contact with this scoped id, else the one with this handle, else a new one (handle =
 *     the address, or the scoped id when there is no address);
 *   - a later event that adds the handle / phone updates the same contact, one that withholds them
 *     keeps what is known;
 *   - the handle's contact with no scoped id of its own is the same person: it takes the scoped id
 *     (merged into one contact if that id had a contact of its own already);
 *   - the handle's contact with another scoped id: the number now belongs to someone else (Meta gives
 *     a new BSUID with a new number); that contact keeps its scoped id as its address and loses the
 *     number.
 * Every event touching one of these keys is serialised (advisory locks, in key order).
 */
create or replace function private.upsert_contact(tenant uuid, channel text, handle text, display_name text,
                                                  phone text default null, email text default null,
                                                  attribution jsonb default null, scoped_id text default null,
                                                  username text default null)
returns uuid
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  k text;
  by_id public.contacts;
  by_handle public.contacts;
  cur public.contacts;
  contact_id uuid;
begin
  handle := nullif(btrim(handle), '');
  scoped_id := nullif(btrim(scoped_id), '');
  email := lower(nullif(btrim(email), ''));
  if handle is null and scoped_id is null then
    raise exception 'a % contact needs a channel identity (an address or a business-scoped id)', channel
      using errcode = '22023';
  end if;
  for k in select distinct x from unnest(array['id:' || scoped_id, 'h:' || handle]) x where x is not null order by 1 loop
    perform pg_advisory_xact_lock(hashtextextended('inbox-identity:' || tenant || ':' || upsert_contact.channel || ':' || k, 0));
  end loop;
  if scoped_id is not null then
    select * into by_id from public.contacts c
    where c.tenant_id = tenant and c.channel = upsert_contact.channel and c.scoped_id = upsert_contact.scoped_id;
  end if;
  if handle is not null then
    select * into by_handle from public.contacts c
    where c.tenant_id = tenant and c.channel = upsert_contact.channel and c.handle = upsert_contact.handle;
  end if;
  if by_handle.id is not null and by_id.id is distinct from by_handle.id and scoped_id is not null then
    if by_handle.scoped_id is not null then
      -- The number moved to another user: the old contact keeps its own id as address.
      update public.contacts c set handle = c.scoped_id, phone = null where c.id = by_handle.id;
      by_handle := null;
    elsif by_id.id is not null then
      -- One person, two contacts: keep the older (its history and links), fold the other in.
      if by_handle.created_at <= by_id.created_at then
        contact_id := private.merge_contacts(by_handle.id, by_id.id);
      else
        contact_id := private.merge_contacts(by_id.id, by_handle.id);
      end if;
      select * into by_id from public.contacts c where c.id = contact_id;
      by_handle := null;
    end if;
  end if;
  if by_id.id is not null then
    cur := by_id;
  elsif by_handle.id is not null then
    cur := by_handle;
  end if;

  if cur.id is null then
    insert into public.contacts (tenant_id, channel, handle, scoped_id, username, display_name, phone, email, attribution)
    values (tenant, upsert_contact.channel, coalesce(handle, scoped_id), scoped_id, username,
            coalesce(display_name, username), phone, email, attribution)
    returning id into contact_id;
    perform private.inbox_link_contact(contact_id);
    return contact_id;
  end if;
  update public.contacts c
  set handle = coalesce(upsert_contact.handle, c.handle),
      scoped_id = coalesce(upsert_contact.scoped_id, c.scoped_id),
      username = coalesce(upsert_contact.username, c.username),
      display_name = coalesce(upsert_contact.display_name, c.display_name, upsert_contact.username),
      phone = coalesce(upsert_contact.phone, c.phone),
      email = coalesce(upsert_contact.email, c.email),
      attribution = coalesce(c.attribution, upsert_contact.attribution)
  where c.id = cur.id
  returning c.id into contact_id;
  -- New ways to recognise the person (a phone shared at last): try the customer / lead link again.
  if cur.customer_id is null and ((phone is not null and phone is distinct from cur.phone)
                                  or (email is not null and email is distinct from cur.email)) then
    perform private.inbox_link_contact(contact_id);
  end if;
  return contact_id;
end;
$$;

-- A WhatsApp status names the recipient of one of our messages by business-scoped id
-- (recipient_user_id; recipient_id = wa_id when the phone may be shared): a contact known by its
-- number only learns its BSUID, so its later messages without a phone still find it.
create or replace function private.inbox_learn_wa_identity(tenant uuid, provider_message_id text, user_id text,
                                                           wa_id text default null)
returns void
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  ct public.contacts;
begin
  if user_id is null or not private.wa_is_bsuid(user_id) then
    return;
  end if;
  select c.* into ct from public.messages m
  join public.conversations v on v.tenant_id = m.tenant_id and v.id = m.conversation_id
  join public.contacts c on c.tenant_id = v.tenant_id and c.id = v.contact_id
  where m.tenant_id = tenant and m.provider_message_id = inbox_learn_wa_identity.provider_message_id
    and m.direction = 'outbound' and c.channel = 'whatsapp';
  if ct.id is null or ct.scoped_id is not null or (wa_id is not null and wa_id <> ct.handle) then
    return;
  end if;
  -- The message went to this contact's number: that number is the recipient's.
  perform private.upsert_contact(tenant, 'whatsapp', ct.handle, null, null, null, null, user_id, null);
end;
$$;

/*
 * E-mail threading (issue 10): the conversation of a message's thread in one inbox, matched on the
 * Message-IDs it names (In-Reply-To first, then References from the nearest parent back to the root)
 * against every message stored or sent there (our own outbound Message-IDs included: complete_outbound
 * keeps them as provider_message_id), else a conversation whose thread root is one of them.
 */
create or replace function private.inbox_find_thread(channel uuid, ids text[]) returns uuid
language sql stable
set search_path = ''
as $$
  select coalesce(
    (select v.id from unnest(ids) with ordinality as r(mid, pos)
     join public.channel_accounts a on a.id = channel
     join public.messages m on m.tenant_id = a.tenant_id and m.provider_message_id = r.mid
     join public.conversations v on v.tenant_id = m.tenant_id and v.id = m.conversation_id and v.channel_account_id = a.id
     where r.mid is not null
     order by r.pos, m.created_at desc limit 1),
    (select v.id from unnest(ids) with ordinality as r(mid, pos)
     join public.channel_accounts a on a.id = channel
     join public.conversations v on v.tenant_id = a.tenant_id and v.channel_account_id = a.id and v.thread_key = r.mid
     where r.mid is not null
     order by r.pos limit 1))
$$;

-- The ids a message names, nearest first: In-Reply-To, References last to first, then extra ids.
create or replace function private.inbox_thread_ids(in_reply_to text, refs jsonb, extra text[] default '{}')
returns text[]
language sql immutable
set search_path = ''
as $$
  select coalesce(array_agg(x.mid order by x.pos), '{}') from (
    select distinct on (mid) mid, pos from (
      select in_reply_to as mid, 0::bigint as pos
      union all
      select r.value, 1000000 - r.n from jsonb_array_elements_text(
        case when jsonb_typeof(refs) = 'array' then refs else '[]'::jsonb end) with ordinality as r(value, n)
      union all
      select e.value, 2000000 + e.n from unnest(extra) with ordinality as e(value, n)
    ) y where mid is not null and mid <> ''
    order by mid, pos) x
$$;

/*
 * One inbound message into the inbox: contact, conversation (reused while not resolved; e-mail by
 * thread), the message (once per provider id), first-touch attribution, routing. Returns the
 * message id, or null when the message was already there. The contact is the channel identity's
 * (`scoped_id`, else `handle`: see upsert_contact); `handle` may be null when `scoped_id` is given.
 */
create or replace function private.ingest_message(
  channel uuid, handle text, display_name text, provider_message_id text, msg_type text, body text,
  payload jsonb default '{}', attachments jsonb default '[]', occurred_at timestamptz default now(),
  attribution jsonb default null, phone text default null, email text default null,
  thread_key text default null, subject text default null, in_reply_to text default null,
  direction text default 'inbound', scoped_id text default null, username text default null,
  refs jsonb default null, group_chat_id text default null, group_title text default null
) returns uuid
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  acc public.channel_accounts;
  contact uuid;
  conv public.conversations;
  new_conv boolean := false;
  msg_id uuid;
  thread_conv uuid;
begin
  select * into acc from public.channel_accounts a where a.id = channel;
  if acc.id is null then
    raise exception 'unknown channel account %', channel using errcode = 'P0002';
  end if;
  -- Already stored: nothing to do (a redelivery or a replay).
  if provider_message_id is not null and exists (select 1 from public.messages m where m.tenant_id = acc.tenant_id
                                                   and m.provider_message_id = ingest_message.provider_message_id) then
    return null;
  end if;
  contact := private.upsert_contact(acc.tenant_id, acc.kind, handle, display_name, phone, email, attribution,
                                    scoped_id, username);
  -- One contact's messages are ingested one at a time, so two workers never open two conversations.
  perform pg_advisory_xact_lock(hashtextextended('inbox-contact:' || contact, 0));
  -- A group chat is one conversation (its thread key is the group's id), whoever writes in it.
  if group_chat_id is not null then
    thread_key := 'group:' || group_chat_id;
    subject := coalesce(group_title, subject);
  end if;
  -- One conversation per thread (e-mail: In-Reply-To and References against every message stored or
  -- sent, then the thread root) or per open contact conversation (chat channels).
  if thread_key is not null then
    thread_conv := private.inbox_find_thread(acc.id, private.inbox_thread_ids(
      ingest_message.in_reply_to, ingest_message.refs, array[ingest_message.thread_key]));
    select * into conv from public.conversations c where c.id = thread_conv;
  else
    select * into conv from public.conversations c
    where c.tenant_id = acc.tenant_id and c.channel_account_id = acc.id and c.contact_id = contact
      and c.status <> 'resolved'
    order by c.created_at desc limit 1;
  end if;
  if conv.id is null then
    insert into public.conversations (tenant_id, channel_account_id, contact_id, thread_key, subject, attribution,
                                      group_chat_id)
    values (acc.tenant_id, acc.id, contact, thread_key, subject, attribution, ingest_message.group_chat_id)
    on conflict (tenant_id, channel_account_id, thread_key) where thread_key is not null do nothing
    returning * into conv;
    if conv.id is null then  -- a concurrent worker created the thread's conversation
      select * into conv from public.conversations c
      where c.tenant_id = acc.tenant_id and c.channel_account_id = acc.id and c.thread_key = ingest_message.thread_key;
    else
      new_conv := true;
      insert into public.conversation_events (tenant_id, conversation_id, event, data)
      values (acc.tenant_id, conv.id, 'created', jsonb_build_object('channel', acc.kind));
    end if;
  end if;
  insert into public.messages (tenant_id, conversation_id, direction, type, body, payload, attachments,
                               provider_message_id, in_reply_to, status, created_at, sent_at, sender_contact_id)
  values (acc.tenant_id, conv.id, direction, msg_type, body, coalesce(payload, '{}'), coalesce(attachments, '[]'),
          provider_message_id, in_reply_to, case when direction = 'inbound' then 'received' else 'sent' end,
          coalesce(occurred_at, now()), case when direction = 'outbound' then occurred_at end,
          case when direction = 'inbound' then contact end)
  on conflict (tenant_id, provider_message_id) where provider_message_id is not null do nothing
  returning id into msg_id;
  if msg_id is null then
    return null;
  end if;
  update public.conversations c
  set last_message_at = greatest(coalesce(c.last_message_at, occurred_at), occurred_at),
      last_inbound_at = case when direction = 'inbound'
                             then greatest(coalesce(c.last_inbound_at, occurred_at), occurred_at) else c.last_inbound_at end,
      status = case when direction = 'inbound' and c.status in ('resolved', 'snoozed') then 'open' else c.status end,
      attribution = coalesce(c.attribution, ingest_message.attribution),
      subject = coalesce(c.subject, ingest_message.subject)
  where c.id = conv.id;
  if new_conv and direction = 'inbound' then
    perform private.route_conversation(conv.id);
  end if;
  if direction = 'inbound' then
    perform private.inbox_customer_unread(contact, 1);
    -- A person wrote from the address: it receives mail again.
    update public.contacts ct set bounced_at = null, bounce_reason = null where ct.id = contact and ct.bounced_at is not null;
  end if;
  return msg_id;
end;
$$;

/*
 * Edits and deletions (issue 10, item 9). An edit replaces the message's body (and attachments when
 * given) and appends the replaced version to messages.edits; a deletion (unsend, revoke) marks the
 * message deleted_at, keeps its last version in edits and clears the body. Both are idempotent (the
 * same edit twice, or an older edit after a newer one, changes nothing) and return false when the
 * message is not stored (the caller decides: an edit of an unknown message is stored as a message).
 */
create or replace function private.edit_message(tenant uuid, provider_message_id text, new_body text,
                                                edited_at timestamptz default now(), new_attachments jsonb default null,
                                                edit_payload jsonb default null)
returns boolean
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  m public.messages;
begin
  select * into m from public.messages x
  where x.tenant_id = tenant and x.provider_message_id = edit_message.provider_message_id for update;
  if m.id is null then
    return false;
  end if;
  edited_at := coalesce(edited_at, now());
  if m.deleted_at is not null or (m.edited_at is not null and m.edited_at >= edited_at)
     or (m.body is not distinct from new_body and (new_attachments is null or new_attachments = m.attachments)) then
    return true;  -- already this version, a newer one, or deleted
  end if;
  update public.messages x
  set edits = x.edits || jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
                'body', x.body, 'attachments', case when new_attachments is not null then x.attachments end,
                'until', edit_message.edited_at))),
      body = new_body,
      attachments = coalesce(new_attachments, x.attachments),
      edited_at = edit_message.edited_at,
      payload = case when edit_payload is null then x.payload else x.payload || jsonb_build_object('last_edit', edit_payload) end
  where x.id = m.id;
  perform private.inbox_timeline(m.tenant_id, m.conversation_id, 'message_edited',
                                 jsonb_build_object('message_id', m.id, 'version', jsonb_array_length(m.edits) + 2));
  return true;
end;
$$;

create or replace function private.delete_message(tenant uuid, provider_message_id text,
                                                  deleted_at timestamptz default now())
returns boolean
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  m public.messages;
begin
  select * into m from public.messages x
  where x.tenant_id = tenant and x.provider_message_id = delete_message.provider_message_id for update;
  if m.id is null then
    return false;
  end if;
  if m.deleted_at is not null then
    return true;
  end if;
  update public.messages x
  set edits = x.edits || jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
                'body', x.body, 'attachments', case when x.attachments <> '[]' then x.attachments end,
                'until', coalesce(delete_message.deleted_at, now()), 'deleted', true))),
      body = null, attachments = '[]', deleted_at = coalesce(delete_message.deleted_at, now())
  where x.id = m.id;
  perform private.inbox_timeline(m.tenant_id, m.conversation_id, 'message_deleted', jsonb_build_object('message_id', m.id));
  return true;
end;
$$;

-- A delivery status for a message we sent (sent / delivered / read / failed), never backwards. A status
-- for a message id we do not know yet is kept (private.early_statuses) for 10 minutes: our send call
-- may not have returned the id yet; complete_outbound applies it then.
create or replace function private.apply_message_status(tenant uuid, provider_message_id text, new_status text,
                                                        at timestamptz default now(), error_code text default null,
                                                        error_message text default null)
returns boolean
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  n int;
begin
  update public.messages m
  set status = new_status,
      sent_at = case when new_status in ('sent', 'delivered', 'read') then coalesce(m.sent_at, at) else m.sent_at end,
      delivered_at = case when new_status in ('delivered', 'read') then coalesce(m.delivered_at, at) else m.delivered_at end,
      read_at = case when new_status = 'read' then coalesce(m.read_at, at) else m.read_at end,
      error_code = case when new_status = 'failed' then apply_message_status.error_code else m.error_code end,
      error_message = case when new_status = 'failed' then apply_message_status.error_message else m.error_message end
  where m.tenant_id = tenant and m.provider_message_id = apply_message_status.provider_message_id
    and private.message_status_rank(new_status) > private.message_status_rank(m.status);
  get diagnostics n = row_count;
  if n = 0 and provider_message_id is not null and not exists (
       select 1 from public.messages m where m.tenant_id = tenant and m.provider_message_id = apply_message_status.provider_message_id) then
    insert into private.early_statuses (tenant_id, provider_message_id, status, at, error_code, error_message)
    values (tenant, provider_message_id, new_status, coalesce(at, now()), error_code, error_message)
    on conflict do nothing;
    delete from private.early_statuses e where e.created_at < now() - interval '10 minutes';
  end if;
  return n > 0;
end;
$$;

-- The CRM keeps customers.unread_messages "kept by the inbox": inbound messages raise it, reading
-- the conversation clears it.
create or replace function private.inbox_customer_unread(contact uuid, delta int) returns void
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  cust uuid;
begin
  select ct.customer_id into cust from public.contacts ct where ct.id = contact;
  if cust is null then
    return;
  end if;
  if delta is null then
    update public.customers cu set unread_messages = 0 where cu.id = cust and cu.unread_messages <> 0;
  else
    update public.customers cu set unread_messages = greatest(cu.unread_messages + delta, 0) where cu.id = cust;
  end if;
end;
$$;

-- For the CRM's customer viewer: a customer's messages by channel (contacts linked to the customer,
-- or to the lead it came from), the newest per_channel of each channel (at most 200; order created_at
-- desc, id desc, across the channel's conversations). {"whatsapp": [{id, direction, type, body, at, status}], ...}
create or replace function private.inbox_customer_messages(customer uuid, per_channel int default 50) returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  cust_lead uuid;
  result jsonb;
  is_user boolean := coalesce(current_setting('role', true), 'none') not in ('service_role', 'none');
  caller_tenant uuid := (select private.tenant_id());
  n int := least(greatest(coalesce(per_channel, 50), 1), 201);
begin
  -- Users: only their active tenant, with the inbox read permission; service code: any.
  if is_user and (caller_tenant is null or not (select private.can('inbox', 'read'))) then
    return '{}'::jsonb;
  end if;
  select cu.lead_id into cust_lead from public.customers cu where cu.id = customer;
  select coalesce(jsonb_object_agg(channel, msgs), '{}'::jsonb) into result
  from (
    select r.channel, jsonb_agg(jsonb_build_object('id', r.id, 'conversation_id', r.conversation_id,
             'direction', r.direction, 'type', r.type, 'body', r.body, 'at', r.created_at, 'status', r.status)
             order by r.created_at desc, r.id desc) as msgs
    from (
      select ct.channel, m.*, row_number() over (partition by ct.channel order by m.created_at desc, m.id desc) as rn
      from public.contacts ct
      join public.conversations v on v.tenant_id = ct.tenant_id and v.contact_id = ct.id
      join lateral (select * from public.messages m where m.tenant_id = v.tenant_id and m.conversation_id = v.id
                      and m.direction <> 'internal'
                    order by m.created_at desc, m.id desc limit n) m on true
      where (ct.customer_id = customer or (cust_lead is not null and ct.lead_id = cust_lead))
        and (not is_user or ct.tenant_id = caller_tenant)
        -- a caller limited to assigned conversations sees only those
        and (not is_user or (select private.sees_all()) or v.assignee_id = (select auth.uid()))
    ) r
    where r.rn <= n
    group by r.channel) x;
  return result;
end;
$$;
grant execute on function private.inbox_customer_messages(uuid, int) to authenticated, service_role;

-- ---- Pagination (issue 10, item 8) ------------------------------------------------------------
-- Keyset pages, never OFFSET; cursors are opaque text (base64url of {"l": list, "c": scope, "k": [keys of
-- the last row shown]}), refused with PT422 invalid_cursor when they are not this list's. Security
-- invoker: RLS (conversation visibility, the assigned-only restriction) decides what a caller sees.

-- Helper of public.customer_page(customer, 'messages', cursor, limit, channel): up to "limit" of the
-- customer's messages on one channel after the keys `after` ([created_at, id] of the last one shown,
-- or null), newest first, each with its keys under "_k". Same rows as inbox_customer_messages.
create or replace function public.customer_messages(customer uuid, channel text, after jsonb default null,
                                                    "limit" int default 51)
returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  cust_lead uuid;
  result jsonb;
  n int := least(greatest(coalesce("limit", 51), 1), 201);
begin
  select cu.lead_id into cust_lead from public.customers cu where cu.id = customer;
  select jsonb_agg(jsonb_build_object('id', r.id, 'conversation_id', r.conversation_id, 'direction', r.direction,
           'type', r.type, 'body', r.body, 'at', r.created_at, 'status', r.status,
           '_k', jsonb_build_array(r.created_at, r.id)) order by r.created_at desc, r.id desc) into result
  from (select m.* from public.contacts ct
        join public.conversations v on v.tenant_id = ct.tenant_id and v.contact_id = ct.id
        join public.messages m on m.tenant_id = v.tenant_id and m.conversation_id = v.id
        where ct.channel = customer_messages.channel
          and (ct.customer_id = customer or (cust_lead is not null and ct.lead_id = cust_lead))
          and m.direction <> 'internal'
          and (after is null or (m.created_at, m.id) < ((after ->> 0)::timestamptz, (after ->> 1)::uuid))
        order by m.created_at desc, m.id desc limit n) r;
  return coalesce(result, '[]'::jsonb);
end;
$$;
revoke execute on function public.customer_messages(uuid, text, jsonb, int) from public, anon;
grant execute on function public.customer_messages(uuid, text, jsonb, int) to authenticated, service_role;

-- The conversation list, one page: {"items": [<inbox_conversation_list rows>], "next_cursor": text|null},
-- most recent activity first (coalesce(last_message_at, -infinity) desc, id desc); "limit" rows (default
-- 50, at most 200). Filters (optional): {"status": text, "assignee_id": uuid, "channel_account_id": uuid,
-- "channel": text, "team": text, "label": text, "unread": true}.
create or replace function public.inbox_conversations(filters jsonb default '{}', cursor text default null,
                                                      "limit" int default 50)
returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  n int := least(greatest(coalesce("limit", 50), 1), 200);
  f jsonb := coalesce(filters, '{}');
  k jsonb;
  rows jsonb;
  next_c text;
begin
  if cursor is not null then
    begin
      k := private.cursor_decode(cursor);
      if jsonb_typeof(k) is distinct from 'object' or k ->> 'l' is distinct from 'conversations' or k ->> 'c' is distinct from md5(f::text)
         or jsonb_typeof(k -> 'k') is distinct from 'array' then
        k := null;
      elsif jsonb_array_length(k -> 'k') <> 2 or (k -> 'k') @> '[null]' then
        k := null;
      else
        k := k -> 'k';
        perform (k ->> 0)::timestamptz, (k ->> 1)::uuid;
      end if;
    exception when others then
      k := null;
    end;
    if k is null then
      raise exception 'not a cursor of this list' using errcode = 'PT422', detail = 'code=invalid_cursor';
    end if;
  end if;
  begin
    select jsonb_agg(to_jsonb(x) - 'at' || jsonb_build_object('_k', jsonb_build_array(x.at, x.id)) order by x.at desc, x.id desc)
    into rows
    from (select l.*, coalesce(l.last_message_at, '-infinity') as at from public.inbox_conversation_list l
          where (f ->> 'status' is null or l.status = f ->> 'status')
            and (f ->> 'assignee_id' is null or l.assignee_id = (f ->> 'assignee_id')::uuid)
            and (f ->> 'channel_account_id' is null or l.channel_account_id = (f ->> 'channel_account_id')::uuid)
            and (f ->> 'channel' is null or l.channel = f ->> 'channel')
            and (f ->> 'team' is null or l.team = f ->> 'team')
            and (f ->> 'label' is null or (f ->> 'label') = any(l.labels))
            and (coalesce((f ->> 'unread')::boolean, false) is false or l.unread > 0)
            and (k is null or (coalesce(l.last_message_at, '-infinity'), l.id) < ((k ->> 0)::timestamptz, (k ->> 1)::uuid))
          order by coalesce(l.last_message_at, '-infinity') desc, l.id desc limit n + 1) x;
  exception when invalid_text_representation or datetime_field_overflow or invalid_datetime_format then
    raise exception 'a filter has the wrong type' using errcode = 'PT422', detail = 'code=invalid_filter';
  end;
  rows := coalesce(rows, '[]'::jsonb);
  if jsonb_array_length(rows) > n then
    next_c := private.cursor_encode(jsonb_build_object('l', 'conversations', 'c', md5(f::text),
                'k', rows -> (n - 1) -> '_k'));
    rows := rows - n;
  end if;
  return jsonb_build_object('next_cursor', next_c,
           'items', coalesce((select jsonb_agg(r - '_k' order by o) from jsonb_array_elements(rows) with ordinality t(r, o)), '[]'));
end;
$$;
revoke execute on function public.inbox_conversations(jsonb, text, int) from public, anon;
grant execute on function public.inbox_conversations(jsonb, text, int) to authenticated, service_role;

-- One conversation's messages, one page, newest first (created_at desc, id desc), internal notes
-- included: {"items": [...], "next_cursor": text|null}; "limit" rows (default 50, at most 200).
create or replace function public.conversation_messages(conversation uuid, cursor text default null, "limit" int default 50)
returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  n int := least(greatest(coalesce("limit", 50), 1), 200);
  k jsonb;
  rows jsonb;
  next_c text;
begin
  if not exists (select 1 from public.conversations c where c.id = conversation) then  -- RLS: one you may see
    raise exception 'conversation not found' using errcode = 'P0002';
  end if;
  if cursor is not null then
    begin
      k := private.cursor_decode(cursor);
      if jsonb_typeof(k) is distinct from 'object' or k ->> 'l' is distinct from 'messages' or k ->> 'c' is distinct from conversation::text
         or jsonb_typeof(k -> 'k') is distinct from 'array' then
        k := null;
      elsif jsonb_array_length(k -> 'k') <> 2 or (k -> 'k') @> '[null]' then
        k := null;
      else
        k := k -> 'k';
        perform (k ->> 0)::timestamptz, (k ->> 1)::uuid;
      end if;
    exception when others then
      k := null;
    end;
    if k is null then
      raise exception 'not a cursor of this conversation' using errcode = 'PT422', detail = 'code=invalid_cursor';
    end if;
  end if;
  select jsonb_agg(to_jsonb(x) - 'tenant_id' - 'payload' || jsonb_build_object('_k', jsonb_build_array(x.created_at, x.id))
                   order by x.created_at desc, x.id desc)
  into rows
  from (select * from public.messages m
        where m.conversation_id = conversation
          and (k is null or (m.created_at, m.id) < ((k ->> 0)::timestamptz, (k ->> 1)::uuid))
        order by m.created_at desc, m.id desc limit n + 1) x;
  rows := coalesce(rows, '[]'::jsonb);
  if jsonb_array_length(rows) > n then
    next_c := private.cursor_encode(jsonb_build_object('l', 'messages', 'c', conversation,
                'k', rows -> (n - 1) -> '_k'));
    rows := rows - n;
  end if;
  return jsonb_build_object('next_cursor', next_c,
           'items', coalesce((select jsonb_agg(r - '_k' order by o) from jsonb_array_elements(rows) with ordinality t(r, o)), '[]'));
end;
$$;
revoke execute on function public.conversation_messages(uuid, text, int) from public, anon;
grant execute on function public.conversation_messages(uuid, text, int) to authenticated, service_role;

-- ---- WhatsApp Cloud API: object = whatsapp_business_account ---------------------------------
-- The sender is identified as Meta's "Business-scoped user IDs" documentation describes
-- (developers.facebook.com/documentation/business-messaging/whatsapp/business-scoped-user-ids):
-- contacts[].user_id / messages[].from_user_id = the BSUID (always sent since 2026),
-- contacts[].wa_id / messages[].from = the phone (withheld for some users with a username),
-- contacts[].profile.username; statuses[].recipient_user_id (recipient_id only with the phone).
create or replace function private.process_whatsapp_event(ev private.inbound_events) returns jsonb
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  entry jsonb;
  change jsonb;
  val jsonb;
  m jsonb;
  s jsonb;
  acc public.channel_accounts;
  people jsonb;
  person jsonb;
  sender_id text;
  sender_phone text;
  msg_type text;
  body text;
  kind text;
  media jsonb;
  attachments jsonb;
  referral jsonb;
  err jsonb;
  new_messages int := 0;
  duplicates int := 0;
  statuses int := 0;
  unknown int := 0;
  changed int := 0;
begin
  if ev.payload ->> 'object' is distinct from 'whatsapp_business_account' then
    raise exception 'not a WhatsApp Business Account event (object=%)', ev.payload ->> 'object' using errcode = '22023';
  end if;
  for entry in select * from jsonb_array_elements(coalesce(ev.payload -> 'entry', '[]')) loop
    for change in select * from jsonb_array_elements(coalesce(entry -> 'changes', '[]')) loop
      val := change -> 'value';
      if change ->> 'field' is distinct from 'messages' or val is null then
        continue;
      end if;
      select * into acc from public.channel_accounts a
      where a.kind = 'whatsapp' and a.external_id = val #>> '{metadata,phone_number_id}';
      if acc.id is null then
        unknown := unknown + 1;
        continue;
      end if;
      people := coalesce(val -> 'contacts', '[]');
      for m in select * from jsonb_array_elements(coalesce(val -> 'messages', '[]')) loop
        -- Who wrote: the BSUID and / or the phone, from the message and its contacts[] entry.
        sender_id := coalesce(m ->> 'from_user_id', case when private.wa_is_bsuid(m ->> 'from') then m ->> 'from' end);
        sender_phone := case when not private.wa_is_bsuid(m ->> 'from') then nullif(m ->> 'from', '') end;
        select c into person from jsonb_array_elements(people) c
        where (sender_id is not null and c ->> 'user_id' = sender_id)
           or (sender_phone is not null and c ->> 'wa_id' = sender_phone)
        limit 1;
        sender_id := coalesce(sender_id, person ->> 'user_id');
        sender_phone := coalesce(sender_phone, case when not private.wa_is_bsuid(person ->> 'wa_id') then nullif(person ->> 'wa_id', '') end);
        if sender_id is null and sender_phone is null then
          raise exception 'WhatsApp message % has no sender identity (no from, from_user_id or contact)', m ->> 'id'
            using errcode = '22023';
        end if;
        kind := m ->> 'type';
        -- A deletion (type revoke) or an edit (type edit) of an earlier message (Meta's "Revoke" and
        -- "Edit messages" webhook references): the stored message changes, nothing new is added. An
        -- edit of a message we never stored is stored as that message, in its edited version.
        if kind = 'revoke' then
          if private.delete_message(acc.tenant_id, m #>> '{revoke,original_message_id}',
                                    to_timestamp((m ->> 'timestamp')::double precision)) then
            changed := changed + 1;
          end if;
          continue;
        elsif kind = 'edit' then
          if private.edit_message(acc.tenant_id, m #>> '{edit,original_message_id}',
                                  coalesce(m #>> '{edit,message,text,body}',
                                           m #>> array['edit', 'message', m #>> '{edit,message,type}', 'caption']),
                                  to_timestamp((m ->> 'timestamp')::double precision), null, m) then
            changed := changed + 1;
            continue;
          end if;
          m := jsonb_strip_nulls(coalesce(m #> '{edit,message}', '{}') || jsonb_build_object(
                 'id', m #>> '{edit,original_message_id}', 'from', m -> 'from', 'from_user_id', m -> 'from_user_id',
                 'timestamp', m -> 'timestamp'));
          kind := m ->> 'type';
        end if;
        media := null;
        attachments := '[]';
        body := null;
        case kind
          when 'text' then msg_type := 'text'; body := m #>> '{text,body}';
          when 'image', 'video', 'audio', 'document', 'sticker' then
            msg_type := 'media';
            media := m -> kind;
            body := media ->> 'caption';
            attachments := jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
              'kind', kind, 'provider_media_id', media ->> 'id', 'mime_type', media ->> 'mime_type',
              'sha256', media ->> 'sha256', 'filename', media ->> 'filename')));
          when 'interactive' then
            msg_type := 'interactive';
            body := coalesce(m #>> '{interactive,button_reply,title}', m #>> '{interactive,list_reply,title}');
          when 'button' then msg_type := 'interactive'; body := m #>> '{button,text}';
          when 'reaction' then msg_type := 'reaction'; body := m #>> '{reaction,emoji}';
          when 'location' then msg_type := 'location'; body := m #>> '{location,name}';
          when 'contacts' then msg_type := 'contacts';
          else msg_type := 'unsupported';
        end case;
        referral := m -> 'referral';
        if private.ingest_message(
             acc.id, sender_phone, person #>> '{profile,name}', m ->> 'id', msg_type, body, m, attachments,
             to_timestamp((m ->> 'timestamp')::double precision),
             case when referral is not null then jsonb_strip_nulls(jsonb_build_object(
               'source', 'ctwa', 'source_id', referral ->> 'source_id', 'source_url', referral ->> 'source_url',
               'source_type', referral ->> 'source_type', 'headline', referral ->> 'headline',
               'ctwa_clid', referral ->> 'ctwa_clid', 'media_type', referral ->> 'media_type')) end,
             '+' || sender_phone, null, null, null, m #>> '{context,id}', 'inbound', sender_id,
             coalesce(person #>> '{profile,username}', person ->> 'username')) is not null then
          new_messages := new_messages + 1;
        else
          duplicates := duplicates + 1;
        end if;
      end loop;
      for s in select * from jsonb_array_elements(coalesce(val -> 'statuses', '[]')) loop
        err := s #> '{errors,0}';
        if private.apply_message_status(acc.tenant_id, s ->> 'id', s ->> 'status',
             to_timestamp((s ->> 'timestamp')::double precision),
             err ->> 'code', coalesce(err #>> '{error_data,details}', err ->> 'message', err ->> 'title')) then
          statuses := statuses + 1;
        end if;
        -- Settled by message id alone; the recipient's BSUID, when given, is learnt for its contact.
        perform private.inbox_learn_wa_identity(acc.tenant_id, s ->> 'id', s ->> 'recipient_user_id', s ->> 'recipient_id');
      end loop;
    end loop;
  end loop;
  return jsonb_build_object('messages', new_messages, 'duplicates', duplicates, 'statuses', statuses,
                            'unknown_numbers', unknown, 'edits_and_deletions', changed);
end;
$$;

-- ---- Instagram / Messenger: object = instagram | page, entry[].messaging[] --------------------
create or replace function private.process_meta_messaging_event(ev private.inbound_events) returns jsonb
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  entry jsonb;
  e jsonb;
  acc public.channel_accounts;
  channel_kind text := case ev.payload ->> 'object' when 'instagram' then 'instagram' when 'page' then 'messenger' end;
  msg jsonb;
  msg_type text;
  referral jsonb;
  mid text;
  new_messages int := 0;
  duplicates int := 0;
  statuses int := 0;
  changed int := 0;
begin
  if channel_kind is null then
    raise exception 'not an Instagram or Messenger event (object=%)', ev.payload ->> 'object' using errcode = '22023';
  end if;
  for entry in select * from jsonb_array_elements(coalesce(ev.payload -> 'entry', '[]')) loop
    select * into acc from public.channel_accounts a where a.kind = channel_kind and a.external_id = entry ->> 'id';
    if acc.id is null then
      continue;
    end if;
    for e in select * from jsonb_array_elements(coalesce(entry -> 'messaging', '[]')) loop
      msg := e -> 'message';
      -- An unsent message (Instagram: message.is_deleted) is shown as deleted.
      if msg is not null and coalesce((msg ->> 'is_deleted')::boolean, false) then
        if private.delete_message(acc.tenant_id, msg ->> 'mid', to_timestamp((e ->> 'timestamp')::double precision / 1000)) then
          changed := changed + 1;
        end if;
        continue;
      end if;
      -- An edit (message_edits: message_edit {mid, text, num_edit}); unknown messages are stored as edited.
      if e ? 'message_edit' then
        if private.edit_message(acc.tenant_id, e #>> '{message_edit,mid}', e #>> '{message_edit,text}',
                                to_timestamp((e ->> 'timestamp')::double precision / 1000), null, e) then
          changed := changed + 1;
          continue;
        end if;
        msg := jsonb_build_object('mid', e #>> '{message_edit,mid}', 'text', e #>> '{message_edit,text}');
      end if;
      if msg is not null and not coalesce((msg ->> 'is_echo')::boolean, false) then
        msg_type := case when msg ? 'attachments' then 'media' when msg ? 'quick_reply' then 'interactive' else 'text' end;
        referral := coalesce(msg -> 'referral', e -> 'referral');
        if private.ingest_message(
             acc.id, e #>> '{sender,id}', null, msg ->> 'mid', msg_type, msg ->> 'text', e,
             coalesce((select jsonb_agg(jsonb_strip_nulls(jsonb_build_object('kind', a ->> 'type', 'url', a #>> '{payload,url}')))
                       from jsonb_array_elements(msg -> 'attachments') a), '[]'),
             to_timestamp((e ->> 'timestamp')::double precision / 1000),
             case when referral is not null then jsonb_strip_nulls(jsonb_build_object(
               'source', lower(coalesce(referral ->> 'source', 'ads')), 'source_id', referral ->> 'ad_id',
               'ref', referral ->> 'ref', 'source_type', referral ->> 'type')) end) is not null then
          new_messages := new_messages + 1;
        else
          duplicates := duplicates + 1;
        end if;
      elsif e ? 'postback' then
        mid := coalesce(e #>> '{postback,mid}', 'postback:' || (e #>> '{sender,id}') || ':' || (e ->> 'timestamp'));
        if private.ingest_message(acc.id, e #>> '{sender,id}', null, mid, 'interactive', e #>> '{postback,title}', e,
                                  '[]', to_timestamp((e ->> 'timestamp')::double precision / 1000)) is not null then
          new_messages := new_messages + 1;
        end if;
      elsif e ? 'delivery' then
        for mid in select jsonb_array_elements_text(coalesce(e #> '{delivery,mids}', '[]')) loop
          if private.apply_message_status(acc.tenant_id, mid, 'delivered', to_timestamp((e ->> 'timestamp')::double precision / 1000)) then
            statuses := statuses + 1;
          end if;
        end loop;
      elsif e ? 'read' then
        -- Messenger: everything sent before the watermark is read; Instagram names the mid.
        with upd as (
          update public.messages m set status = 'read', read_at = coalesce(m.read_at, now())
          from public.conversations c, public.contacts ct
          where c.id = m.conversation_id and ct.id = c.contact_id and c.channel_account_id = acc.id
            and ct.handle = e #>> '{sender,id}' and m.direction = 'outbound' and m.tenant_id = acc.tenant_id
            and private.message_status_rank(m.status) < private.message_status_rank('read')
            and (m.provider_message_id = e #>> '{read,mid}'
                 or m.sent_at <= to_timestamp((e #>> '{read,watermark}')::double precision / 1000))
          returning 1)
        select statuses + count(*) into statuses from upd;
      end if;
    end loop;
  end loop;
  return jsonb_build_object('messages', new_messages, 'duplicates', duplicates, 'statuses', statuses,
                            'edits_and_deletions', changed);
end;
$$;

-- ---- Normalised messages (e-mail from IMAP, web chat, SMS, Telegram): one message per event ---
-- payload: {from, name, phone, email, message_id, thread_key, subject, body, type, attachments,
--           in_reply_to, date, attribution, direction}
create or replace function private.process_normalized_event(ev private.inbound_events) returns jsonb
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  p jsonb := ev.payload;
  id uuid;
  tenant uuid := (select a.tenant_id from public.channel_accounts a where a.id = ev.channel_account_id);
begin
  -- A delivery status callback (SMS providers): {"status": {provider_message_id, status, error_code, error_message}}
  if p ? 'status' then
    return jsonb_build_object('statuses', private.apply_message_status(tenant, p #>> '{status,provider_message_id}',
      p #>> '{status,status}', now(), p #>> '{status,error_code}', p #>> '{status,error_message}')::int);
  end if;
  -- Machine mail (bounces, delivery reports, out-of-office): never a lead, never a re-opened conversation.
  if jsonb_typeof(p -> 'auto') = 'object' then
    return private.ingest_machine_mail(ev);
  end if;
  -- Deletions ({"deleted": {"message_ids": [...]}}) and edits ({"edit": {"at"}} beside the new version).
  if jsonb_typeof(p -> 'deleted') = 'object' then
    return jsonb_build_object('deletions', (
      select count(*) filter (where private.delete_message(tenant, d.mid, coalesce((p #>> '{deleted,at}')::timestamptz, ev.received_at)))
      from jsonb_array_elements_text(coalesce(p #> '{deleted,message_ids}', '[]')) d(mid)));
  end if;
  if jsonb_typeof(p -> 'edit') = 'object'
     and private.edit_message(tenant, p ->> 'message_id', p ->> 'body', coalesce((p #>> '{edit,at}')::timestamptz, ev.received_at),
                              case when jsonb_typeof(p -> 'attachments') = 'array' and p -> 'attachments' <> '[]'
                                   then p -> 'attachments' end, p -> 'extra') then
    return jsonb_build_object('edits', 1);
  end if;  -- an edit of a message we never stored: stored as the message it now is
  id := private.ingest_message(
    ev.channel_account_id, p ->> 'from', p ->> 'name', p ->> 'message_id', coalesce(p ->> 'type', 'text'),
    p ->> 'body', coalesce(p -> 'extra', '{}'), coalesce(p -> 'attachments', '[]'),
    coalesce((p ->> 'date')::timestamptz, ev.received_at), p -> 'attribution', p ->> 'phone', p ->> 'email',
    p ->> 'thread_key', p ->> 'subject', p ->> 'in_reply_to', coalesce(p ->> 'direction', 'inbound'),
    refs => p -> 'references', group_chat_id => p #>> '{group,chat_id}', group_title => p #>> '{group,title}');
  return jsonb_build_object('messages', (id is not null)::int, 'duplicates', (id is null)::int);
end;
$$;

/*
 * Machine-generated mail (issue 10, item 10): payload.auto = {kind: bounce | dsn | auto_reply, reasons,
 * bounced: [{address, status, diagnostic}], original_message_id} (worker/adapters/imap_mail.py).
 *   - no contact is created or changed, so no lead; a conversation is never created nor re-opened,
 *     unread counts and the 24-hour window stay as they were;
 *   - the message is kept in the thread it belongs to (In-Reply-To / References / the reported
 *     original's Message-ID), with a timeline entry; unmatched machine mail is only kept as the event;
 *   - a bounce marks every failed recipient's contacts as bouncing (the conversation's contact when
 *     the report names none) and fails the original message we sent, with the reported status.
 */
create or replace function private.ingest_machine_mail(ev private.inbound_events) returns jsonb
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  p jsonb := ev.payload;
  auto jsonb := ev.payload -> 'auto';
  kind text := coalesce(ev.payload #>> '{auto,kind}', 'auto_reply');
  acc public.channel_accounts;
  conv public.conversations;
  msg_id uuid;
  addrs text[];
  reason text;
  marked int := 0;
  thread_conv uuid;
begin
  select * into acc from public.channel_accounts a where a.id = ev.channel_account_id;
  if acc.id is null then
    raise exception 'unknown channel account %', ev.channel_account_id using errcode = 'P0002';
  end if;
  thread_conv := private.inbox_find_thread(acc.id, private.inbox_thread_ids(
    p ->> 'in_reply_to', p -> 'references', array_remove(array[auto ->> 'original_message_id'], null)));
  select * into conv from public.conversations c where c.id = thread_conv;
  if conv.id is not null and not exists (select 1 from public.messages m where m.tenant_id = acc.tenant_id
                                           and m.provider_message_id = p ->> 'message_id') then
    insert into public.messages (tenant_id, conversation_id, direction, type, body, payload, attachments,
                                 provider_message_id, in_reply_to, status, created_at)
    values (acc.tenant_id, conv.id, 'inbound', 'email', p ->> 'body',
            jsonb_build_object('auto', auto, 'from', p ->> 'from', 'subject', p ->> 'subject'),
            coalesce(p -> 'attachments', '[]'), p ->> 'message_id', p ->> 'in_reply_to', 'received',
            coalesce((p ->> 'date')::timestamptz, ev.received_at))
    on conflict (tenant_id, provider_message_id) where provider_message_id is not null do nothing
    returning id into msg_id;
    if msg_id is not null then
      perform private.inbox_timeline(acc.tenant_id, conv.id, case when kind = 'bounce' then 'bounce' else 'auto_reply' end,
                                     jsonb_build_object('message_id', msg_id, 'kind', kind, 'reasons', auto -> 'reasons'));
    end if;
  end if;
  if kind = 'bounce' then
    select array_agg(distinct lower(b ->> 'address')) into addrs
    from jsonb_array_elements(case when jsonb_typeof(auto -> 'bounced') = 'array' then auto -> 'bounced' else '[]' end) b
    where b ->> 'address' like '%@%';
    reason := left(coalesce((select string_agg(concat_ws(' ', b ->> 'address', b ->> 'status', b ->> 'diagnostic'), '; ')
                             from jsonb_array_elements(case when jsonb_typeof(auto -> 'bounced') = 'array'
                                                            then auto -> 'bounced' else '[]' end) b),
                            p ->> 'subject', 'bounced'), 1000);
    if addrs is null and conv.id is not null then
      select array[lower(coalesce(ct.email, ct.handle))] into addrs from public.contacts ct where ct.id = conv.contact_id;
    end if;
    update public.contacts ct set bounced_at = now(), bounce_reason = reason
    where ct.tenant_id = acc.tenant_id
      and (lower(ct.email) = any(addrs) or (ct.channel = 'email' and lower(ct.handle) = any(addrs)));
    get diagnostics marked = row_count;
    -- The message that bounced, when the report names it (or we replied in that thread): failed.
    if auto ? 'original_message_id' then
      perform private.apply_message_status(acc.tenant_id, auto ->> 'original_message_id', 'failed', now(),
                                           'bounced', reason);
      delete from private.early_statuses e where e.tenant_id = acc.tenant_id
        and e.provider_message_id = auto ->> 'original_message_id' and e.status = 'failed' and e.error_code = 'bounced';
    end if;
  end if;
  return jsonb_build_object('machine', kind, 'messages', (msg_id is not null)::int,
                            'conversation_id', conv.id, 'bouncing_contacts', marked);
end;
$$;

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

-- ===========================================================================================
-- Routing
-- ===========================================================================================

-- Assign (or reassign / transfer) with a timeline entry and realtime events. Internal.
create or replace function private.assign_conversation(conv uuid, assignee uuid, team text, actor uuid,
                                                       event text default 'assigned', note text default null)
returns void
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.conversations;
begin
  select * into c from public.conversations where id = conv for update;
  if c.assignee_id is not distinct from assignee and c.team is not distinct from coalesce(team, c.team) then
    return;
  end if;
  update public.conversations set assignee_id = assignee, team = coalesce(assign_conversation.team, c.team) where id = conv;
  if assignee is not null then
    update public.agent_availability set last_assigned_at = clock_timestamp()
    where tenant_id = c.tenant_id and user_id = assignee;
  end if;
  insert into public.conversation_events (tenant_id, conversation_id, event, actor_id, data)
  values (c.tenant_id, conv, event, actor, jsonb_strip_nulls(jsonb_build_object(
    'from', c.assignee_id, 'to', assignee, 'team', coalesce(assign_conversation.team, c.team), 'note', note)));
  if assignee is not null then
    perform private.broadcast('user:' || assignee, 'conversation_assigned',
                              jsonb_build_object('conversation_id', conv, 'from', c.assignee_id));
  end if;
end;
$$;

-- Pick an agent for a new conversation by the first matching rule of its inbox. Returns the agent.
create or replace function private.route_conversation(conv uuid) returns uuid
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.conversations;
  rule public.routing_rules;
  chosen uuid;
begin
  select * into c from public.conversations where id = conv;
  select * into rule from public.routing_rules r
  where r.tenant_id = c.tenant_id and r.active
    and (r.channel_account_id is null or r.channel_account_id = c.channel_account_id)
    and (r.match = '{}'::jsonb
         or (r.match ? 'label' and (r.match ->> 'label') = any(c.labels))
         or (r.match ? 'channel' and (r.match ->> 'channel') = (select a.kind from public.channel_accounts a where a.id = c.channel_account_id)))
  order by r.position, (r.channel_account_id is null), r.created_at
  limit 1;
  if rule.id is null or rule.strategy = 'manual' then
    return null;
  end if;
  -- Serialise assignments per tenant so round-robin turns never collide.
  perform pg_advisory_xact_lock(hashtextextended('inbox-routing:' || c.tenant_id, 0));
  with candidates as (
    select av.user_id, av.last_assigned_at,
           (select count(*) from public.conversations o where o.tenant_id = c.tenant_id and o.assignee_id = av.user_id
              and o.status in ('open', 'pending')) as open_count, av.max_open
    from public.agent_availability av
    join public.tenant_members tm on tm.tenant_id = av.tenant_id and tm.user_id = av.user_id and tm.active
    where av.tenant_id = c.tenant_id and av.status = 'online'
      and (rule.team is null or rule.team = any(av.teams))
      and av.skills @> rule.skills
  )
  select user_id into chosen from candidates
  where open_count < max_open
  order by
    -- sticky: the agent of the contact's previous conversation first
    case when rule.strategy = 'sticky' and user_id = (
      select p.assignee_id from public.conversations p
      where p.tenant_id = c.tenant_id and p.contact_id = c.contact_id and p.id <> c.id and p.assignee_id is not null
      order by p.created_at desc limit 1) then 0 else 1 end,
    case when rule.strategy = 'least_busy' then open_count else 0 end,
    last_assigned_at nulls first, user_id
  limit 1;
  if chosen is not null then
    perform private.assign_conversation(conv, chosen, rule.team, null, 'assigned', 'rule ' || rule.strategy);
  end if;
  return chosen;
end;
$$;

-- Reassign or transfer (to another agent and/or team). Supervisors and up may move any conversation;
-- an agent may transfer one assigned to them (or unassigned, to themselves).
create or replace function public.assign_conversation(conversation uuid, assignee uuid default null,
                                                      team text default null, note text default null)
returns public.conversations
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.conversations;
  role public.member_role := (select private.tenant_role());
begin
  select * into c from public.conversations where id = conversation and tenant_id = (select private.tenant_id());
  if c.id is null then
    raise exception 'conversation not found' using errcode = 'P0002';
  end if;
  if not (select private.can('inbox', 'write')) then
    raise exception 'no permission to assign conversations' using errcode = '42501';
  end if;
  if role not in ('owner', 'admin', 'supervisor')
     and not (c.assignee_id = (select auth.uid()) or (c.assignee_id is null and assignee = (select auth.uid()))) then
    raise exception 'only supervisors may reassign a colleague''s conversation' using errcode = '42501';
  end if;
  if assignee is not null and not exists (select 1 from public.tenant_members m
                                          where m.tenant_id = c.tenant_id and m.user_id = assignee and m.active) then
    raise exception 'the assignee is not an active member of this tenant' using errcode = 'PT422', detail = 'code=invalid_assignee';
  end if;
  perform private.assign_conversation(c.id, assignee, team, (select auth.uid()),
    case when c.assignee_id is null then 'assigned' else 'transferred' end, note);
  select * into c from public.conversations where id = c.id;
  return c;
end;
$$;
revoke execute on function public.assign_conversation(uuid, uuid, text, text) from public, anon;
grant execute on function public.assign_conversation(uuid, uuid, text, text) to authenticated, service_role;

-- Change a conversation's status (open / pending / snoozed / resolved), with a timeline entry.
create or replace function public.set_conversation_status(conversation uuid, status text, snoozed_until timestamptz default null)
returns public.conversations
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.conversations;
  old text;
begin
  select c0.status into old from public.conversations c0 where c0.id = conversation;
  update public.conversations c0
  set status = set_conversation_status.status,
      snoozed_until = case when set_conversation_status.status = 'snoozed' then set_conversation_status.snoozed_until end
  where c0.id = conversation
  returning * into c;
  if c.id is null then
    raise exception 'conversation not found' using errcode = 'P0002';
  end if;
  perform private.inbox_timeline(c.tenant_id, c.id, 'status', jsonb_build_object('from', old, 'to', status));
  return c;
end;
$$;
revoke execute on function public.set_conversation_status(uuid, text, timestamptz) from public, anon;
grant execute on function public.set_conversation_status(uuid, text, timestamptz) to authenticated, service_role;

-- A timeline entry for a conversation of the caller's tenant (service code: any tenant).
create or replace function private.inbox_timeline(tenant uuid, conv uuid, event text, data jsonb) returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- A signed-in caller writes only its own tenant's timeline (42501 otherwise, not a silent no-op).
  perform private.assert_caller_tenant(tenant);
  insert into public.conversation_events (tenant_id, conversation_id, event, actor_id, data)
  select c.tenant_id, c.id, event, (select auth.uid()), data
  from public.conversations c
  where c.id = conv and c.tenant_id = tenant;
end;
$$;
grant execute on function private.inbox_timeline(uuid, uuid, text, jsonb) to authenticated, service_role;

-- Mark a conversation read by the caller (unread counts are inbound messages after this).
create or replace function public.mark_conversation_read(conversation uuid) returns void
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.conversations;
begin
  select * into c from public.conversations c0 where c0.id = conversation;  -- RLS: only one you may see
  if c.id is null then
    raise exception 'conversation not found' using errcode = 'P0002';
  end if;
  insert into public.conversation_reads (tenant_id, conversation_id, user_id)
  values (c.tenant_id, c.id, (select auth.uid()))
  on conflict (conversation_id, user_id) do update set last_read_at = now();
  perform private.inbox_clear_unread(c.id);
  perform private.broadcast('user:' || (select auth.uid()), 'unread', jsonb_build_object('conversation_id', c.id, 'unread', 0));
end;
$$;

create or replace function private.inbox_clear_unread(conv uuid) returns void
language sql
security definer
set search_path = ''
as $$
  select private.inbox_customer_unread(c.contact_id, null) from public.conversations c
  where c.id = conv
    and (coalesce(current_setting('role', true), 'none') in ('service_role', 'none') or c.tenant_id = (select private.tenant_id()))
$$;
grant execute on function private.inbox_clear_unread(uuid) to authenticated, service_role;
revoke execute on function public.mark_conversation_read(uuid) from public, anon;
grant execute on function public.mark_conversation_read(uuid) to authenticated;

-- Link a contact to a customer by hand (the automatic match missed, or was wrong).
create or replace function public.link_contact_customer(contact uuid, customer uuid) returns public.contacts
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.contacts;
  same_tenant boolean;
begin
  -- The customer must be one the caller can see, in the contact's tenant (RLS applies: invoker).
  if link_contact_customer.customer is not null then
    select exists (select 1 from public.customers x join public.contacts y on y.tenant_id = x.tenant_id
                   where x.id = link_contact_customer.customer and y.id = link_contact_customer.contact) into same_tenant;
    if not same_tenant then
      raise exception 'customer not found' using errcode = 'P0002';
    end if;
  end if;
  update public.contacts set customer_id = customer where id = contact returning * into c;
  if c.id is null then
    raise exception 'contact not found' using errcode = 'P0002';
  end if;
  return c;
end;
$$;
revoke execute on function public.link_contact_customer(uuid, uuid) from public, anon;
grant execute on function public.link_contact_customer(uuid, uuid) to authenticated, service_role;

-- ===========================================================================================
-- Sending: one RPC for every channel; notes are stored and never sent.
-- ===========================================================================================

/*
 * Channel limits (issue 10, item 2; the numbers and their sources: private.channel_limits in
 * migrations/20261203100200_channel_limits.sql).
 */
-- An SMS body's encoding and segments: GSM-7 (160 per single message, 153 per concatenated part; the
-- extension characters ^ { } \ [ ~ ] | € and form feed take two) when every character is in the GSM 03.38
-- alphabet, else UCS-2 (70 / 67 UTF-16 code units; characters beyond the BMP take two).
create or replace function private.sms_segments(body text)
returns table (encoding text, units int, segments int)
language sql immutable
set search_path = ''
as $$
  with chars as (select ch from regexp_split_to_table(coalesce(body, ''), '') ch where ch <> ''),
  gsm as (
    select bool_and(strpos(E'@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !"#¤%&''()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà', ch) > 0
                    or strpos(E'^{}\\[~]|€\f', ch) > 0) as ok,
           coalesce(sum(case when strpos(E'^{}\\[~]|€\f', ch) > 0 then 2 else 1 end), 0)::int as gsm_units,
           coalesce(sum(case when ascii(ch) > 65535 then 2 else 1 end), 0)::int as ucs_units
    from chars)
  select case when coalesce(ok, true) then 'GSM-7' else 'UCS-2' end,
         case when coalesce(ok, true) then gsm_units else ucs_units end,
         case when coalesce(ok, true) then case when gsm_units <= 160 then 1 else ceil(gsm_units / 153.0)::int end
              else case when ucs_units <= 70 then 1 else ceil(ucs_units / 67.0)::int end end
  from gsm
$$;

-- The length of a text in a channel's unit.
create or replace function private.text_units(body text, unit text) returns int
language sql immutable
set search_path = ''
as $$
  select case unit
    when 'utf8_bytes' then octet_length(coalesce(body, ''))
    when 'utf16_units' then (select coalesce(sum(case when ascii(ch) > 65535 then 2 else 1 end), 0)::int
                             from regexp_split_to_table(coalesce(body, ''), '') ch where ch <> '')
    else char_length(coalesce(body, '')) end
$$;

/*
 * Check a message against its channel's limits before it is queued: refused with PT422 and a code
 * (message_too_long, caption_too_long, template_parameter_invalid, attachments_not_supported,
 * attachment_type_not_allowed, attachment_too_large), or accepted with what the send needs to know
 * (SMS: {"sms": {"encoding", "segments", "units"}}; the provider concatenates the segments).
 */
create or replace function private.check_channel_limits(kind text, mtype text, body text, variables jsonb, media jsonb)
returns jsonb
language plpgsql stable
set search_path = ''
as $$
#variable_conflict use_column
declare
  l private.channel_limits;
  n int;
  sms record;
  v jsonb;
  i int := 0;
  media_kind text;
  rule jsonb;
  size_bytes numeric;
  label text;
begin
  select * into l from private.channel_limits c where c.kind = check_channel_limits.kind;
  if l.kind is null then
    return '{}';
  end if;
  label := case kind when 'whatsapp' then 'WhatsApp' when 'instagram' then 'Instagram' when 'messenger' then 'Messenger'
                     when 'telegram' then 'Telegram' when 'sms_twilio' then 'SMS (Twilio)' when 'sms_netgsm' then 'SMS (Netgsm)'
                     when 'webchat' then 'web chat' else kind end;
  if mtype = 'template' then
    for v in select * from jsonb_array_elements(coalesce(variables, '[]')) loop
      i := i + 1;
      if l.template_max_param is not null and char_length(v #>> '{}') > l.template_max_param then
        raise exception 'template parameter % has % characters; % allows at most %', i, char_length(v #>> '{}'),
          label, l.template_max_param using errcode = 'PT422', detail = 'code=template_parameter_invalid';
      end if;
      if l.template_param_forbidden is not null and (v #>> '{}') ~ l.template_param_forbidden then
        raise exception 'template parameter % is not accepted by %: %', i, label, l.template_param_rule
          using errcode = 'PT422', detail = 'code=template_parameter_invalid';
      end if;
      if coalesce(btrim(v #>> '{}'), '') = '' then
        raise exception 'template parameter % is empty', i using errcode = 'PT422', detail = 'code=template_parameter_invalid';
      end if;
    end loop;
    return '{}';
  end if;
  if media is not null then
    if l.attachments is null or l.attachments = '{}' then
      raise exception '% messages cannot carry attachments here', label
        using errcode = 'PT422', detail = 'code=attachments_not_supported';
    end if;
    media_kind := coalesce(media ->> 'kind', 'image');
    rule := l.attachments -> media_kind;
    if rule is null then
      raise exception '% does not take % attachments (it takes: %)', label, media_kind,
        (select string_agg(k, ', ' order by k) from jsonb_object_keys(l.attachments) k)
        using errcode = 'PT422', detail = 'code=attachment_type_not_allowed';
    end if;
    if media ? 'mime_type' and rule ? 'mime_types'
       and not (rule -> 'mime_types') ? lower(split_part(media ->> 'mime_type', ';', 1)) then
      raise exception '% does not take % as %', label, media ->> 'mime_type', media_kind
        using errcode = 'PT422', detail = 'code=attachment_type_not_allowed',
              hint = 'accepted: ' || (select string_agg(t, ', ') from jsonb_array_elements_text(rule -> 'mime_types') t);
    end if;
    size_bytes := case when jsonb_typeof(media -> 'size') = 'number' then (media ->> 'size')::numeric end;
    if size_bytes is not null and rule ? 'max_bytes' and size_bytes > (rule ->> 'max_bytes')::numeric then
      raise exception 'the % is % bytes; % takes at most % bytes (% MB)', media_kind, size_bytes, label,
        rule ->> 'max_bytes', round((rule ->> 'max_bytes')::numeric / 1048576, 1)
        using errcode = 'PT422', detail = 'code=attachment_too_large';
    end if;
    if body is not null and l.max_caption is not null and private.text_units(body, 'characters') > l.max_caption then
      raise exception 'a % caption can have at most % characters; this one has %', label, l.max_caption,
        private.text_units(body, 'characters') using errcode = 'PT422', detail = 'code=caption_too_long';
    end if;
    if l.max_caption is not null or body is null then
      return '{}';
    end if;
  end if;
  if l.text_unit = 'sms_segments' then
    select * into sms from private.sms_segments(body);
    if sms.segments > coalesce(l.max_segments, 2147483647) or char_length(coalesce(body, '')) > coalesce(l.max_text, 2147483647) then
      raise exception 'an % can have at most % segments (% characters in %); this one needs % (% characters)',
        label, l.max_segments, case when sms.encoding = 'GSM-7' then 153 * l.max_segments else 67 * l.max_segments end,
        sms.encoding, sms.segments, sms.units
        using errcode = 'PT422', detail = 'code=message_too_long',
              hint = 'shorten it or send it as two messages';
    end if;
    return jsonb_build_object('sms', jsonb_build_object('encoding', sms.encoding, 'segments', sms.segments, 'units', sms.units));
  end if;
  if l.max_text is not null then
    n := private.text_units(body, l.text_unit);
    if n > l.max_text then
      raise exception 'a % message can have at most % %; this one has %', label, l.max_text,
        case l.text_unit when 'utf8_bytes' then 'bytes (UTF-8)' when 'utf16_units' then 'characters (UTF-16)' else 'characters' end, n
        using errcode = 'PT422', detail = 'code=message_too_long', hint = 'shorten it or send it as two messages';
    end if;
  end if;
  return '{}';
end;
$$;

/*
 * Queue a message to the conversation's contact. `template` = {"name": ..., "language": ...,
 * "variables": [...]} sends an approved template (the only thing WhatsApp accepts outside the 24-hour
 * customer-service window). With an idempotency key a repeated call returns the first message.
 */
create or replace function public.send_message(conversation uuid, body text default null, template jsonb default null,
                                               idempotency_key text default null, media jsonb default null,
                                               message_type text default null)
returns public.messages
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.conversations;
  acc public.channel_accounts;
  ct public.contacts;
  tpl public.message_templates;
  existing public.messages;
  msg public.messages;
  -- The calling role (security definer changes current_user, not the session's role setting): the
  -- worker / service code (service_role, or a superuser session) acts for any tenant; users only for theirs.
  is_service boolean := coalesce(current_setting('role', true), 'none') in ('service_role', 'none');
  key text := coalesce(idempotency_key, gen_random_uuid()::text);
  req jsonb;
  mtype text;
  window_open boolean;
  last_email public.messages;
  vars jsonb;
  limits jsonb;
begin
  select * into c from public.conversations c0 where c0.id = conversation;
  if c.id is null or (not is_service and c.tenant_id is distinct from (select private.tenant_id())) then
    raise exception 'conversation not found' using errcode = 'P0002';
  end if;
  if not is_service then
    if not (select private.can('inbox', 'write')) then
      raise exception 'no permission to send messages' using errcode = '42501';
    end if;
    if not (select private.sees_all()) and c.assignee_id is distinct from (select auth.uid()) then
      raise exception 'this conversation is assigned to someone else' using errcode = '42501';
    end if;
  end if;
  -- Idempotency: the same key returns the first message and queues nothing.
  select m.* into existing from public.outbound_messages o join public.messages m on m.id = o.message_id
  where o.tenant_id = c.tenant_id and o.idempotency_key = key;
  if existing.id is not null then
    return existing;
  end if;
  select * into acc from public.channel_accounts a where a.id = c.channel_account_id;
  select * into ct from public.contacts t where t.id = c.contact_id;
  if template is not null then
    select * into tpl from public.message_templates t
    where t.tenant_id = c.tenant_id and t.channel_account_id = acc.id and t.name = template ->> 'name'
      and t.language = coalesce(template ->> 'language', t.language)
    order by (t.status = 'APPROVED') desc limit 1;
    if tpl.id is null then
      raise exception 'no template named % for this channel', template ->> 'name'
        using errcode = 'PT422', detail = 'code=template_not_found';
    end if;
    if tpl.status <> 'APPROVED' and acc.kind = 'whatsapp' then
      raise exception 'template % is %, only approved templates can be sent', tpl.name, tpl.status
        using errcode = 'PT422', detail = 'code=template_not_approved';
    end if;
    vars := coalesce(template -> 'variables', '[]');
    if jsonb_array_length(vars) <> tpl.variables then
      raise exception 'template % needs % variables, got %', tpl.name, tpl.variables, jsonb_array_length(vars)
        using errcode = 'PT422', detail = 'code=template_variables';
    end if;
    mtype := 'template';
  else
    if coalesce(trim(body), '') = '' and media is null then
      raise exception 'a message needs a body, media or a template' using errcode = 'PT422', detail = 'code=empty_message';
    end if;
    mtype := coalesce(message_type, case when media is not null then 'media' when acc.kind = 'email' then 'email' else 'text' end);
  end if;
  -- The channel's documented limits, before anything is queued (refused with 422 and a code).
  limits := private.check_channel_limits(acc.kind, mtype, body, vars, media);
  -- WhatsApp's customer-service window: free-form messages only within 24 hours of the customer's
  -- last message; afterwards only an approved template.
  if acc.kind in ('whatsapp', 'instagram', 'messenger') and mtype <> 'template' then
    window_open := c.last_inbound_at is not null and c.last_inbound_at > now() - interval '24 hours';
    if not window_open then
      raise exception 'outside the 24-hour customer service window: the customer last wrote %; send an approved template instead',
        coalesce(to_char(c.last_inbound_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI "UTC"'), 'never')
        using errcode = 'PT422', detail = 'code=outside_24h_window',
              hint = 'call send_message with template => {"name": ..., "language": ..., "variables": [...]}';
    end if;
  end if;
  req := jsonb_strip_nulls(jsonb_build_object(
    'type', mtype, 'to', coalesce(c.group_chat_id, ct.handle), 'body', body, 'media', media,
    'template', case when mtype = 'template' then jsonb_build_object('name', tpl.name, 'language', tpl.language,
                                                                     'variables', vars, 'components', tpl.components) end));
  req := req || coalesce(limits, '{}');
  if acc.kind = 'email' then
    select * into last_email from public.messages m
    where m.tenant_id = c.tenant_id and m.conversation_id = c.id and m.provider_message_id is not null
    order by m.created_at desc limit 1;
    req := req || jsonb_strip_nulls(jsonb_build_object(
      'to', coalesce(ct.email, ct.handle),
      'subject', case when c.subject is null then null when c.subject ilike 're:%' then c.subject else 'Re: ' || c.subject end,
      'in_reply_to', last_email.provider_message_id,
      'references', (select jsonb_agg(m.provider_message_id order by m.created_at) from public.messages m
                     where m.tenant_id = c.tenant_id and m.conversation_id = c.id and m.provider_message_id is not null)));
  end if;
  -- An address that bounces is not sent to (issue 10): the message is kept, visibly skipped.
  if acc.kind = 'email' and ct.bounced_at is not null then
    insert into public.messages (tenant_id, conversation_id, direction, type, body, payload, status, sender_id,
                                 error_code, error_message)
    values (c.tenant_id, c.id, 'outbound', mtype, coalesce(body, tpl.name), req, 'failed', (select auth.uid()),
            'recipient_bouncing', left('not sent: mail to ' || coalesce(ct.email, ct.handle) || ' bounced on '
                                       || to_char(ct.bounced_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI "UTC"')
                                       || coalesce(' (' || ct.bounce_reason || ')', ''), 2000))
    returning * into msg;
    insert into public.outbound_messages (tenant_id, message_id, channel_account_id, kind, recipient, request,
                                          idempotency_key, status, error_code, last_error)
    values (c.tenant_id, msg.id, acc.id, acc.kind, coalesce(req ->> 'to', ct.handle), req, key, 'failed',
            'recipient_bouncing', msg.error_message);
    return msg;
  end if;
  insert into public.messages (tenant_id, conversation_id, direction, type, body, payload, status, sender_id)
  values (c.tenant_id, c.id, 'outbound', mtype, coalesce(body, tpl.name), req, 'queued', (select auth.uid()))
  returning * into msg;
  insert into public.outbound_messages (tenant_id, message_id, channel_account_id, kind, recipient, request, idempotency_key)
  values (c.tenant_id, msg.id, acc.id, acc.kind, coalesce(req ->> 'to', ct.handle), req, key);
  update public.conversations set last_message_at = now() where id = c.id;
  return msg;
end;
$$;
revoke execute on function public.send_message(uuid, text, jsonb, text, jsonb, text) from public, anon;
grant execute on function public.send_message(uuid, text, jsonb, text, jsonb, text) to authenticated, service_role;

-- An internal note: visible to the team, never sent.
create or replace function public.add_note(conversation uuid, body text) returns public.messages
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.conversations;
  msg public.messages;
begin
  select * into c from public.conversations c0 where c0.id = conversation and c0.tenant_id = (select private.tenant_id());
  if c.id is null or not ((select private.sees_all()) or c.assignee_id = (select auth.uid())) then
    raise exception 'conversation not found' using errcode = 'P0002';
  end if;
  if not (select private.can('inbox', 'write')) then
    raise exception 'no permission to write notes' using errcode = '42501';
  end if;
  insert into public.messages (tenant_id, conversation_id, direction, type, body, status, sender_id)
  values (c.tenant_id, c.id, 'internal', 'note', body, 'note', (select auth.uid()))
  returning * into msg;
  return msg;
end;
$$;
revoke execute on function public.add_note(uuid, text) from public, anon;
grant execute on function public.add_note(uuid, text) to authenticated, service_role;

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

-- The provider refused (an error answer, the breaker, a connection never made): nothing was sent,
-- so the row may be retried as usual.
create or replace function private.outbound_send_refused(worker text, outbound_id uuid) returns void
language sql
set search_path = ''
as $$
  update public.outbound_messages o set send_started_at = null
  where o.id = outbound_id and o.status = 'sending' and o.locked_by = worker and o.provider_message_id is null
$$;

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
revoke execute on function private.settle_outbound(text, uuid[], jsonb[]), private.outbound_send_begin(text, uuid),
  private.outbound_send_refused(text, uuid), private.outbound_accepted(text, uuid, text),
  private.reconcile_outbound(int), public.retry_outbound(uuid) from public, anon, authenticated;
grant execute on function private.settle_outbound(text, uuid[], jsonb[]), private.outbound_send_begin(text, uuid),
  private.outbound_send_refused(text, uuid), private.outbound_accepted(text, uuid, text),
  private.reconcile_outbound(int) to service_role;
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

-- What the adapter needs to send: the channel's settings (never its credentials; the worker decrypts
-- those itself from private.channel_credentials).
create or replace function private.channel_for_worker(channel uuid)
returns table (id uuid, tenant_id uuid, kind text, external_id text, settings jsonb, sync_state jsonb, secret text)
language sql stable
set search_path = ''
as $$
  select a.id, a.tenant_id, a.kind, a.external_id, a.settings, a.sync_state, cr.secret
  from public.channel_accounts a left join private.channel_credentials cr on cr.channel_account_id = a.id
  where a.id = channel
$$;

-- Credentials are written through this (already encrypted by luna/secrets.py); nothing reads them back
-- except the worker's channel_for_worker.
create or replace function private.set_channel_secret(channel uuid, secret text) returns void
language sql
set search_path = ''
as $$
  insert into private.channel_credentials (channel_account_id, tenant_id, secret)
  select a.id, a.tenant_id, secret from public.channel_accounts a where a.id = channel
  on conflict (channel_account_id) do update set secret = excluded.secret, updated_at = now()
$$;

-- IMAP sync position per folder.
create or replace function private.save_sync_state(channel uuid, folder text, state jsonb) returns void
language sql
set search_path = ''
as $$
  update public.channel_accounts set sync_state = sync_state || jsonb_build_object(folder, state) where id = channel
$$;

-- Templates synced from WhatsApp (GET /{waba-id}/message_templates): upsert by name + language.
create or replace function private.upsert_templates(channel uuid, templates jsonb) returns int
language sql
set search_path = ''
as $$
  with ins as (
    insert into public.message_templates (tenant_id, channel_account_id, name, language, category, status, components,
                                          variables, provider_template_id, rejected_reason, synced_at)
    select a.tenant_id, a.id, t ->> 'name', t ->> 'language', coalesce(t ->> 'category', 'UTILITY'),
           coalesce(t ->> 'status', 'PENDING'), coalesce(t -> 'components', '[]'),
           (select count(*) from regexp_matches(coalesce((select c ->> 'text' from jsonb_array_elements(t -> 'components') c
                                                          where c ->> 'type' = 'BODY' limit 1), ''), '\{\{\d+\}\}', 'g'))::int,
           t ->> 'id', t ->> 'rejected_reason', now()
    from public.channel_accounts a, jsonb_array_elements(templates) t
    where a.id = channel
    on conflict (tenant_id, channel_account_id, name, language) do update
      set status = excluded.status, category = excluded.category, components = excluded.components,
          variables = excluded.variables, provider_template_id = excluded.provider_template_id,
          rejected_reason = excluded.rejected_reason, synced_at = now()
    returning 1
  )
  select count(*)::int from ins
$$;

-- Meta Marketing API insights (rows of GET /act_<id>/insights?level=...&time_increment=1).
create or replace function private.upsert_ad_insights(ad_account uuid, level text, rows jsonb) returns int
language sql
set search_path = ''
as $$
  with objs as (
    -- The campaign / ad set / ad hierarchy named by the rows (each object once).
    insert into public.ad_objects (tenant_id, ad_account_id, level, external_id, parent_external_id, name)
    select distinct on (o.level, o.external_id) a.tenant_id, a.id, o.level, o.external_id, o.parent, o.name
    from public.ad_accounts a, jsonb_array_elements(rows) r,
         lateral (values ('campaign', r ->> 'campaign_id', null, r ->> 'campaign_name'),
                         ('adset', r ->> 'adset_id', r ->> 'campaign_id', r ->> 'adset_name'),
                         ('ad', r ->> 'ad_id', r ->> 'adset_id', r ->> 'ad_name')) as o(level, external_id, parent, name)
    where a.id = ad_account and o.external_id is not null
    order by o.level, o.external_id
    on conflict (tenant_id, level, external_id) do update
      set name = coalesce(excluded.name, public.ad_objects.name),
          parent_external_id = coalesce(excluded.parent_external_id, public.ad_objects.parent_external_id)
    returning 1
  ), ins as (
    insert into public.ad_insights_daily (tenant_id, ad_account_id, level, external_id, day, impressions, clicks, spend, actions)
    select a.tenant_id, a.id, level, r ->> (level || '_id'), (r ->> 'date_start')::date,
           coalesce((r ->> 'impressions')::bigint, 0), coalesce((r ->> 'clicks')::bigint, 0),
           coalesce((r ->> 'spend')::numeric, 0), coalesce(r -> 'actions', '[]')
    from public.ad_accounts a, jsonb_array_elements(rows) r where a.id = ad_account
    on conflict (tenant_id, level, external_id, day) do update
      set impressions = excluded.impressions, clicks = excluded.clicks, spend = excluded.spend, actions = excluded.actions
    returning 1
  )
  select (select count(*)::int from ins) + 0 * (select count(*)::int from objs)
$$;

-- ===========================================================================================
-- Realtime: per conversation (guarded by its visibility) and per inbox (those who see all).
-- ===========================================================================================
create or replace function private.can_join_inbox_topic(record_id text) returns boolean
language plpgsql stable
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  rid uuid;
begin
  begin
    rid := record_id::uuid;
  exception when others then
    return false;
  end;
  if not (select private.can('inbox', 'read')) then
    return false;
  end if;
  -- An inbox (channel account): its stream is for those who see every conversation.
  if exists (select 1 from public.channel_accounts a where a.id = rid and a.tenant_id = (select private.tenant_id())) then
    return (select private.sees_all());
  end if;
  return exists (select 1 from public.conversations c
                 where c.id = rid and c.tenant_id = (select private.tenant_id())
                   and ((select private.sees_all()) or c.assignee_id = (select auth.uid())));
end;
$$;
grant execute on function private.can_join_inbox_topic(text) to authenticated, service_role;
insert into private.topic_guards values ('inbox', 'private.can_join_inbox_topic(text)')
on conflict (area) do update set guard = excluded.guard;

create or replace function private.broadcast_message() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.conversations;
  event text := case when tg_op = 'INSERT' then 'message_created'
                     when new.deleted_at is distinct from old.deleted_at then 'message_deleted'
                     when new.edited_at is distinct from old.edited_at then 'message_edited'
                     else 'message_status' end;
  data jsonb;
begin
  if tg_op = 'UPDATE' and new.status is not distinct from old.status and new.edited_at is not distinct from old.edited_at
     and new.deleted_at is not distinct from old.deleted_at then
    return null;
  end if;
  select * into c from public.conversations where id = new.conversation_id;
  data := jsonb_build_object('conversation_id', new.conversation_id, 'message_id', new.id, 'direction', new.direction,
                             'type', new.type, 'status', new.status);
  perform private.broadcast('tenant:' || new.tenant_id || ':inbox:' || new.conversation_id, event, data);
  perform private.broadcast('tenant:' || new.tenant_id || ':inbox:' || c.channel_account_id, event, data);
  if c.assignee_id is not null and tg_op = 'INSERT' and new.direction = 'inbound' then
    perform private.broadcast('user:' || c.assignee_id, 'unread', data);
  end if;
  return null;
end;
$$;
drop trigger if exists broadcast_message on public.messages;
create trigger broadcast_message after insert or update of status, edited_at, deleted_at on public.messages
  for each row execute function private.broadcast_message();

create or replace function private.broadcast_conversation() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  data jsonb;
begin
  if new.assignee_id is not distinct from old.assignee_id and new.status is not distinct from old.status
     and new.team is not distinct from old.team then
    return null;
  end if;
  data := jsonb_build_object('conversation_id', new.id, 'status', new.status, 'assignee_id', new.assignee_id,
                             'team', new.team);
  perform private.broadcast('tenant:' || new.tenant_id || ':inbox:' || new.id, 'conversation_updated', data);
  perform private.broadcast('tenant:' || new.tenant_id || ':inbox:' || new.channel_account_id, 'conversation_updated', data);
  return null;
end;
$$;
drop trigger if exists broadcast_conversation on public.conversations;
create trigger broadcast_conversation after update on public.conversations
  for each row execute function private.broadcast_conversation();

-- Typing hints (ephemeral): broadcast only.
create or replace function public.typing(conversation uuid) returns void
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
begin
  if not private.can_join_inbox_topic(conversation::text) then
    raise exception 'conversation not found' using errcode = 'P0002';
  end if;
  perform private.broadcast('tenant:' || (select private.tenant_id()) || ':inbox:' || conversation, 'typing',
                            jsonb_build_object('user_id', (select auth.uid())));
end;
$$;
revoke execute on function public.typing(uuid) from public, anon;
grant execute on function public.typing(uuid) to authenticated;

revoke execute on all functions in schema private from public;
grant execute on function private.message_status_rank(text) to authenticated, service_role;
grant execute on function
  private.receive_event(text, text, jsonb, jsonb, bytea, text, uuid, boolean),
  private.claim_inbound_events(text, int, int), private.complete_inbound_events(text, bigint[], jsonb[]),
  private.fail_inbound_event(text, bigint, text, boolean), private.release_inbound_events(text, bigint[]),
  private.defer_inbound_event(text, bigint, int), private.rescue_inbound_events(),
  private.process_inbound_event(bigint),
  private.claim_outbound(text, int, int), private.complete_outbound(text, uuid[], jsonb[]),
  private.fail_outbound(text, uuid, text, boolean), private.release_outbound(text, uuid[]),
  private.defer_outbound(text, uuid, int), private.rescue_outbound(),
  private.channel_for_worker(uuid), private.set_channel_secret(uuid, text), private.save_sync_state(uuid, text, jsonb),
  private.upsert_templates(uuid, jsonb), private.upsert_ad_insights(uuid, text, jsonb),
  private.route_conversation(uuid), private.apply_message_status(uuid, text, text, timestamptz, text, text),
  private.ingest_message(uuid, text, text, text, text, text, jsonb, jsonb, timestamptz, jsonb, text, text, text, text, text, text,
                         text, text, jsonb, text, text),
  private.edit_message(uuid, text, text, timestamptz, jsonb, jsonb), private.delete_message(uuid, text, timestamptz),
  private.sms_segments(text), private.text_units(text, text), private.check_channel_limits(text, text, text, jsonb, jsonb),
  private.inbox_find_thread(uuid, text[]), private.inbox_thread_ids(text, jsonb, text[]),
  private.ingest_machine_mail(private.inbound_events),
  private.inbox_link_contact(uuid), private.inbox_customer_unread(uuid, int),
  private.upsert_contact(uuid, text, text, text, text, text, jsonb, text, text), private.merge_contacts(uuid, uuid),
  private.wa_is_bsuid(text), private.inbox_learn_wa_identity(uuid, text, text, text),
  private.process_whatsapp_event(private.inbound_events), private.process_meta_messaging_event(private.inbound_events),
  private.process_normalized_event(private.inbound_events),
  private.assign_conversation(uuid, uuid, text, uuid, text, text), private.inbox_timeline(uuid, uuid, text, jsonb)
  to service_role;

-- ===========================================================================================
-- Conversions API: record a conversion for a contact and queue its delivery to Meta. The event id
-- (given, or derived from the contact and event) makes both our queue and Meta deduplicate:
-- recording the same event twice, or a retried delivery, is counted once.
-- ===========================================================================================
create or replace function public.track_conversion(contact uuid, event_name text, custom_data jsonb default '{}',
                                                   event_id text default null, pixel_id text default null)
returns public.conversion_events
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  ct public.contacts;
  conv public.conversations;
  acc public.channel_accounts;
  pixel text;
  ev public.conversion_events;
  -- The calling role (security definer changes current_user, not the session's role setting): the
  -- worker / service code (service_role, or a superuser session) acts for any tenant; users only for theirs.
  is_service boolean := coalesce(current_setting('role', true), 'none') in ('service_role', 'none');
begin
  select * into ct from public.contacts c where c.id = contact;
  if ct.id is null or (not is_service and ct.tenant_id is distinct from (select private.tenant_id())) then
    raise exception 'contact not found' using errcode = 'P0002';
  end if;
  if not is_service and not (select private.can('marketing', 'write')) then
    raise exception 'no permission to record conversions' using errcode = '42501';
  end if;
  select * into conv from public.conversations v where v.contact_id = ct.id order by v.created_at desc limit 1;
  select * into acc from public.channel_accounts a where a.id = conv.channel_account_id;
  pixel := coalesce(pixel_id, acc.settings ->> 'pixel_id',
                    (select t.settings #>> '{inbox,pixel_id}' from public.tenants t where t.id = ct.tenant_id));
  if pixel is null then
    raise exception 'no Meta pixel / dataset id configured for this contact''s inbox' using errcode = 'PT422',
      detail = 'code=no_pixel', hint = 'set channel_accounts.settings.pixel_id or tenants.settings.inbox.pixel_id';
  end if;
  insert into public.conversion_events (tenant_id, pixel_id, event_name, event_id, contact_id, channel_account_id,
                                        user_data, custom_data)
  values (ct.tenant_id, pixel, event_name, coalesce(event_id, event_name || ':' || ct.id), ct.id, acc.id,
          jsonb_strip_nulls(jsonb_build_object(
            'ph', case when ct.phone is not null
                       then jsonb_build_array(encode(sha256(convert_to(regexp_replace(ct.phone, '\D', '', 'g'), 'UTF8')), 'hex')) end,
            'em', case when ct.email is not null
                       then jsonb_build_array(encode(sha256(convert_to(lower(trim(ct.email)), 'UTF8')), 'hex')) end,
            'ctwa_clid', ct.attribution ->> 'ctwa_clid',
            'page_id', case when acc.kind in ('messenger') then acc.external_id end,
            'whatsapp_business_account_id', case when acc.kind = 'whatsapp' then acc.settings ->> 'waba_id' end)),
          coalesce(custom_data, '{}'))
  on conflict (tenant_id, pixel_id, event_id) do nothing
  returning * into ev;
  if ev.id is null then  -- already recorded: the same event, not a new one
    select * into ev from public.conversion_events e
    where e.tenant_id = ct.tenant_id and e.pixel_id = pixel and e.event_id = coalesce(track_conversion.event_id, event_name || ':' || ct.id);
    return ev;
  end if;
  perform private.enqueue_job('inbox.conversion_event',
    jsonb_build_object('conversion_event_id', ev.id, 'channel_account_id', acc.id), ct.tenant_id, now(),
    'capi:' || ev.id);
  return ev;
end;
$$;
revoke execute on function public.track_conversion(uuid, text, jsonb, text, text) from public, anon;
grant execute on function public.track_conversion(uuid, text, jsonb, text, text) to authenticated, service_role;

-- ===========================================================================================
-- Templates: submit a new WhatsApp template for Meta's review (the worker posts it; the status comes
-- back from the answer and the hourly sync). Variables are counted from the BODY's {{n}} markers.
-- ===========================================================================================
create or replace function public.submit_template(channel uuid, name text, language text, category text, components jsonb)
returns public.message_templates
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  acc public.channel_accounts;
  tpl public.message_templates;
begin
  select * into acc from public.channel_accounts a where a.id = channel and a.tenant_id = (select private.tenant_id());
  if acc.id is null then
    raise exception 'channel not found' using errcode = 'P0002';
  end if;
  if not (select private.can('inbox', 'manage')) and (select private.tenant_role()) not in ('owner', 'admin', 'supervisor') then
    raise exception 'only supervisors and admins submit templates' using errcode = '42501';
  end if;
  insert into public.message_templates (tenant_id, channel_account_id, name, language, category, status, components, variables)
  values (acc.tenant_id, acc.id, submit_template.name, submit_template.language, upper(submit_template.category),
          case when acc.kind = 'whatsapp' then 'PENDING' else 'APPROVED' end, components,
          (select count(*) from regexp_matches(coalesce((select c ->> 'text' from jsonb_array_elements(components) c
                                                          where upper(c ->> 'type') = 'BODY' limit 1), ''), '\{\{\d+\}\}', 'g'))::int)
  on conflict (tenant_id, channel_account_id, name, language) do update
    set components = excluded.components, category = excluded.category, variables = excluded.variables,
        status = excluded.status, rejected_reason = null
  returning * into tpl;
  if acc.kind = 'whatsapp' then
    perform private.enqueue_job('inbox.template_submit', jsonb_build_object('template_id', tpl.id), acc.tenant_id, now(),
                                'template_submit:' || tpl.id || ':' || md5(components::text));
  end if;
  return tpl;
end;
$$;
revoke execute on function public.submit_template(uuid, text, text, text, jsonb) from public, anon;
grant execute on function public.submit_template(uuid, text, text, text, jsonb) to authenticated, service_role;
