-- functions/inbox/lists.sql -- The conversation list and a conversation's messages, one keyset page at a
-- time.

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
