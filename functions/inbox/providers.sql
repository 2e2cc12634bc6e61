-- functions/inbox/providers.sql -- Provider payloads into messages: WhatsApp Cloud API, Instagram /
-- Messenger, normalised messages (e-mail, web chat, SMS, Telegram), machine mail.

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
grant execute on function private.process_whatsapp_event(private.inbound_events) to service_role;

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
grant execute on function private.process_meta_messaging_event(private.inbound_events) to service_role;

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
grant execute on function private.process_normalized_event(private.inbound_events) to service_role;

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
grant execute on function private.ingest_machine_mail(private.inbound_events) to service_role;
