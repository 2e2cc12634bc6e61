-- functions/inbox/messages.sql -- Messages: delivery status order, threading, ingest, edit, delete, status
-- updates.

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
grant execute on function private.message_status_rank(text) to authenticated, service_role;

/*
 * E-mail threading (issue 10): the conversation of a message's thread in one inbox, matched on the
 * Message-IDs it names (In-Reply-To first, then References from the nearest parent back to the root)
 * against every message stored or sent there (our own outbound Message-IDs included: outbound_complete
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
grant execute on function private.inbox_find_thread(uuid, text[]) to service_role;

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
grant execute on function private.inbox_thread_ids(text, jsonb, text[]) to service_role;

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
grant execute on function private.ingest_message(uuid, text, text, text, text, text, jsonb, jsonb, timestamptz, jsonb, text, text, text, text, text, text, text, text, jsonb, text, text)
  to service_role;

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
grant execute on function private.edit_message(uuid, text, text, timestamptz, jsonb, jsonb) to service_role;

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
grant execute on function private.delete_message(uuid, text, timestamptz) to service_role;

-- A delivery status for a message we sent (sent / delivered / read / failed), never backwards. A status
-- for a message id we do not know yet is kept (private.early_statuses) for 10 minutes: our send call
-- may not have returned the id yet; outbound_complete applies it then.
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
grant execute on function private.apply_message_status(uuid, text, text, timestamptz, text, text)
  to service_role;
