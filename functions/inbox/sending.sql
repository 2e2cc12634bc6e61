-- functions/inbox/sending.sql -- Sending: one RPC for every channel (channel limits, the 24-hour window),
-- notes.

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
grant execute on function private.sms_segments(text) to service_role;

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
grant execute on function private.text_units(text, text) to service_role;

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
grant execute on function private.check_channel_limits(text, text, text, jsonb, jsonb) to service_role;

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
grant execute on function public.send_message(uuid, text, jsonb, text, jsonb, text)
  to authenticated, service_role;

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
