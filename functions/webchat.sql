-- ===========================================================================================
-- Public web chat (issue 10, item 7): what the widget may send, how fast, and when a visitor
-- becomes a lead. edge/routes/inbox.py calls private.webchat_receive once per message; the worker
-- then ingests the stored event like every other channel's (private.process_normalized_event).
-- ===========================================================================================

-- Characters that carry nothing a reader sees: Unicode white space (Zs, Zl, Zp and the control
-- white space), format characters (Cf: soft hyphen, zero-width space/joiners, word joiner, BOM,
-- bidi marks and embeddings, invisible operators, tags …), other controls (Cc), and the blanks of
-- other categories that render as nothing (combining grapheme joiner, Hangul fillers, braille blank,
-- Khmer/Mongolian invisible vowels and selectors, variation selectors).
create or replace function private.invisible_chars() returns text
language sql immutable parallel safe
set search_path = ''
as $$
  select '\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F\u1160\u1680\u17B4\u17B5\u180B-\u180F'
      || '\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF9-\uFFFB'
      || '\u0600-\u0605\u06DD\u070F\u0890\u0891\u08E2'
      || '\U000110BD\U000110CD\U00013430-\U0001343F\U0001BCA0-\U0001BCA3\U0001D173-\U0001D17A'
      || '\U000E0000-\U000E0FFF'
$$;

-- The text with invisible characters trimmed from both ends; '' when nothing visible is left.
create or replace function private.webchat_trim(raw text) returns text
language sql immutable parallel safe
set search_path = ''
as $$
  select case when pg_catalog.regexp_replace(coalesce(raw, ''), '[' || private.invisible_chars() || ']', '', 'g') = '' then ''
              else pg_catalog.regexp_replace(raw, '^[' || private.invisible_chars() || ']+|['
                                                  || private.invisible_chars() || ']+$', '', 'g') end
$$;

/*
 * Is this more than a hello? Punctuation, symbols and emoji are dropped, letters folded (Turkish
 * dotted/dotless i and accents alike, repeated letters once: "Merhabaaa!!" = "merhaba"); what
 * is left must hold a word that is not a greeting (`greetings`, plus the widget's own list).
 */
create or replace function private.webchat_is_real_message(body text, extra_greetings text[] default '{}')
returns boolean
language sql immutable parallel safe
set search_path = ''
as $$
  with folded as (
    select pg_catalog.regexp_replace(
             pg_catalog.translate(pg_catalog.lower(pg_catalog.translate(w, 'Iİ', 'ıi')), 'çğıöşüâîûéèêáàäóòíìúùñÇĞÖŞÜÂÎÛÉÈÊÁÀÄÓÒÍÌÚÙÑ', 'cgiosuaiueeeaaaooiiuuncgosuaiueeeaaaooiiuun'),
             '(.)\1+', '\1', 'g') as w
    from pg_catalog.regexp_split_to_table(
           pg_catalog.regexp_replace(coalesce(body, ''),
             '[' || private.invisible_chars() || '!-/:-@\[-`{-~\u00A1-\u00BF\u2010-\u2027\u2030-\u205E\u2190-\u2BFF\u3001-\u303F\U0001F000-\U0001FAFF]+',
             ' ', 'g'),
           ' ') as w
  ), greeting as (
    select pg_catalog.regexp_replace(pg_catalog.lower(g), '(.)\1+', '\1', 'g') as w
    from pg_catalog.unnest(array[
      'hi', 'hey', 'hello', 'helo', 'hallo', 'hola', 'hiya', 'yo', 'sup', 'ok', 'okay', 'test', 'ping', 'good',
      'morning', 'afternoon', 'evening', 'there', 'bonjour', 'salut', 'ciao', 'hej', 'ahoj', 'privet',
      'merhaba', 'merhabalar', 'mrb', 'mrhb', 'mrhba', 'selam', 'selamlar', 'slm', 'sa', 'as', 'selamun',
      'selamunaleykum', 'aleykum', 'aleykumselam', 'gunaydin', 'iyi', 'gunler', 'aksamlar', 'geceler',
      'tamam', 'alo', 'kolay', 'gelsin', 'nasilsiniz', 'nasilsin'] || coalesce(extra_greetings, '{}')) as g
  )
  select exists (select 1 from folded f where f.w <> '' and f.w !~ '^[0-9]$'
                   and not exists (select 1 from greeting g where g.w = f.w))
$$;

-- A widget's limits: the defaults below, each overridable in channel_accounts.settings -> 'limits'
-- ({"messages_per_session": {"burst": 5, "per_minute": 6}, ...}). burst = the bucket's size,
-- per_minute = tokens it regains a minute.
create or replace function private.webchat_limits(settings jsonb) returns jsonb
language sql immutable parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_object_agg(d.key, d.value || coalesce(
           case when pg_catalog.jsonb_typeof(settings -> 'limits' -> d.key) = 'object' then settings -> 'limits' -> d.key end,
           '{}'::jsonb))
  from pg_catalog.jsonb_each(jsonb_build_object(
    'messages_per_session',     jsonb_build_object('burst', 10, 'per_minute', 12),
    'messages_per_address',     jsonb_build_object('burst', 30, 'per_minute', 60),
    'messages_per_widget',      jsonb_build_object('burst', 300, 'per_minute', 1200),
    'new_sessions_per_address', jsonb_build_object('burst', 5, 'per_minute', 1),
    'new_sessions_per_widget',  jsonb_build_object('burst', 50, 'per_minute', 60))) d
$$;

/*
 * One visitor message from the widget. Checks, in order (nothing is written for a refused message):
 *   unknown or inactive widget → 404 unknown_widget; a session id not of the widget's form → 422
 *   invalid_session; text empty once invisible characters are trimmed → 422 empty_message;
 *   a retry of a stored message (same client_message_id) → the stored event, no token taken;
 *   a new session (no contact yet): the per-address and per-widget new-session buckets;
 *   then the per-session, per-address and per-widget message buckets.
 * A refusal by a bucket is returned, not raised: {"refused": "<limit name>", "retry_after_s": n}
 * (edge answers 429 with Retry-After). Otherwise {"event_id": …, "inserted": …}.
 *
 * Leads: a session's contact is made here without contact details, so no lead is made for
 * opening the chat or saying hello. settings -> 'lead_on' decides when it becomes one:
 *   'contact_or_message' (default): once the visitor leaves a phone or e-mail (the worker's
 *   upsert_contact links the contact when it gains one) or writes a real message
 *   (private.webchat_is_real_message); 'contact': only with contact details; 'first_message':
 *   on the first message whatever it says.
 */
create or replace function private.webchat_receive(widget_key text, session_id text, client_message_id text,
                                                   body text, name text default null, email text default null,
                                                   phone text default null, utm jsonb default null,
                                                   client_addr text default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  acc public.channel_accounts;
  lim jsonb;
  sess text := pg_catalog.btrim(session_id);
  text_clean text := private.webchat_trim(body);
  addr text := coalesce(nullif(pg_catalog.btrim(client_addr), ''), 'unknown');
  event_key text;
  ct public.contacts;
  check_ record;
  tok record;
  lead_on text;
  ev record;
  payload jsonb;
begin
  select * into acc from public.channel_accounts a
  where a.kind = 'webchat' and a.external_id = widget_key and a.active;
  if acc.id is null then
    raise exception 'no web-chat inbox has this widget key' using errcode = 'PT404', detail = 'code=unknown_widget';
  end if;
  if sess is null or sess !~ '^[A-Za-z0-9_.:-]{8,128}$' then
    raise exception 'session_id must be the widget''s random visitor id (8 to 128 letters, digits, _ . : -)'
      using errcode = 'PT422', detail = 'code=invalid_session';
  end if;
  if text_clean = '' then
    raise exception 'the message is empty (only white space or invisible characters)'
      using errcode = 'PT422', detail = 'code=empty_message';
  end if;
  client_message_id := nullif(private.webchat_trim(client_message_id), '');
  if client_message_id is null then
    raise exception 'client_message_id is empty' using errcode = 'PT422', detail = 'code=invalid_client_message_id';
  end if;
  name := nullif(private.webchat_trim(name), '');
  email := nullif(private.webchat_trim(email), '');
  phone := nullif(private.webchat_trim(phone), '');

  event_key := 'webchat:' || sess || ':' || client_message_id;
  select e.id into ev from private.inbound_events e where e.provider = 'webchat' and e.provider_event_id = event_key;
  if ev.id is not null then
    return jsonb_build_object('event_id', ev.id, 'inserted', false);
  end if;

  lim := private.webchat_limits(acc.settings);
  -- One session's messages one at a time (its contact, its buckets).
  perform pg_advisory_xact_lock(hashtextextended('inbox-identity:' || acc.tenant_id || ':webchat:h:' || sess, 0));
  select * into ct from public.contacts c where c.tenant_id = acc.tenant_id and c.channel = 'webchat' and c.handle = sess;

  for check_ in
    select * from (values
      (1, 'new_sessions_per_address', 'webchat:' || acc.id || ':new_session:addr:' || addr),
      (2, 'new_sessions_per_widget',  'webchat:' || acc.id || ':new_session:widget'),
      (3, 'messages_per_session',     'webchat:' || acc.id || ':msg:session:' || sess),
      (4, 'messages_per_address',     'webchat:' || acc.id || ':msg:addr:' || addr),
      (5, 'messages_per_widget',      'webchat:' || acc.id || ':msg:widget')) v(n, limit_name, bucket)
    where v.n > 2 or ct.id is null
    order by v.n
  loop
    select * into tok from private.take_token(check_.bucket,
      coalesce((lim -> check_.limit_name ->> 'burst')::int, 0),
      coalesce((lim -> check_.limit_name ->> 'per_minute')::numeric, 0) / 60);
    if not tok.allowed then
      return jsonb_build_object('refused', check_.limit_name, 'retry_after_s', tok.retry_after_s);
    end if;
  end loop;

  lead_on := coalesce(acc.settings ->> 'lead_on', 'contact_or_message');
  if ct.id is null then
    -- The session's contact, without contact details: the worker's upsert_contact links it (a lead,
    -- or the customer it matches) when a phone or e-mail arrives.
    insert into public.contacts (tenant_id, channel, handle, display_name, attribution)
    values (acc.tenant_id, 'webchat', sess, name, utm)
    on conflict (tenant_id, channel, handle) do nothing
    returning * into ct;
    if ct.id is null then
      select * into ct from public.contacts c where c.tenant_id = acc.tenant_id and c.channel = 'webchat' and c.handle = sess;
    end if;
  end if;
  if ct.lead_id is null and ct.customer_id is null and email is null and phone is null
     and (lead_on = 'first_message'
          or (lead_on = 'contact_or_message'
              and private.webchat_is_real_message(text_clean,
                    array(select pg_catalog.jsonb_array_elements_text(
                            case when pg_catalog.jsonb_typeof(acc.settings -> 'greetings') = 'array'
                                 then acc.settings -> 'greetings' else '[]'::jsonb end))))) then
    if name is not null and ct.display_name is null then
      update public.contacts c set display_name = name where c.id = ct.id;
    end if;
    perform private.inbox_link_contact(ct.id);
  end if;

  payload := jsonb_build_object('from', sess, 'name', name, 'email', email, 'phone', phone,
                                'message_id', event_key, 'body', text_clean, 'type', 'text', 'attribution', utm);
  select * into ev from private.receive_event('webchat', event_key, payload, '{}', null, null, acc.id);
  return jsonb_build_object('event_id', ev.event_id, 'inserted', ev.inserted);
end;
$$;
revoke execute on function private.webchat_receive(text, text, text, text, text, text, text, jsonb, text)
  from public, anon, authenticated;
grant execute on function private.webchat_receive(text, text, text, text, text, text, text, jsonb, text) to service_role;
