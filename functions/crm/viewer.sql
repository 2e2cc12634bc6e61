-- functions/crm/viewer.sql -- The customer screen: customer_viewer (one JSON) and customer_page (keyset
-- pages).

-- ---------------------------------------------------------------------------------------------
-- CustomerViewer: one JSON for the whole customer screen
-- ---------------------------------------------------------------------------------------------

/*
 * Message history by channel: the inbox's private.inbox_customer_messages(customer, per_channel)
 * (functions/inbox/customer_messages.sql), {"<channel>": [{"id", "direction", "body", "at", "status", ...}], ...}.
 * PL/pgSQL, so it may stand before the inbox's files in the runner's order.
 */
create or replace function private.crm_customer_messages(customer uuid, per_channel int default 50) returns jsonb
language plpgsql stable
set search_path = ''
as $$
begin
  return coalesce(private.inbox_customer_messages(customer, per_channel), '{}'::jsonb);
end;
$$;
grant execute on function private.crm_customer_messages(uuid, int) to authenticated, service_role;

/*
 * Pagination (issue 10, item 8). Every list the customer screen shows is bounded: a page of at most
 * 200 rows (default 50), and a keyset cursor for the next page -- never OFFSET. A cursor is opaque text
 * (base64url of {"l": list, "c": channel, "k": [sort keys of the last row shown]}); the next page is the
 * rows strictly after that row in the list's order, so rows added or removed meanwhile never shift it.
 *   public.customer_page(customer, list, cursor, "limit", channel)
 *     -> {"list": ..., "channel": ..., "items": [...], "next_cursor": text | null}
 * Lists and orders (the same as customer_viewer's):
 *   notes         pinned desc, created_at desc, id desc
 *   timeline      occurred_at desc, id desc
 *   cards         created_at, id
 *   activities    created_at desc, id desc
 *   appointments  scheduled_at, id (unscheduled last)
 *   reminders     due_at, id
 *   inventory     created_at, id
 *   work_orders   created_at desc, id desc (steps: the first 100 by position)
 *   merges        created_at desc, id desc
 *   messages      created_at desc, id desc; channel required (public.customer_messages, functions/inbox/customer_messages.sql)
 * Security invoker: RLS decides which rows the caller sees. A cursor of another list, or not a cursor,
 * is refused (PT422 invalid_cursor); an unknown list PT422 unknown_list.
 */
create or replace function public.customer_page(customer uuid, list text, cursor text default null,
                                                "limit" int default 50, channel text default null)
returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  n int := least(greatest(coalesce("limit", 50), 1), 200);
  k jsonb;          -- the cursor's sort keys, or null for the first page
  rows jsonb;       -- up to n + 1 items, each with its sort keys under '_k'
  next_c text;
begin
  perform private.crm_require_tenant();
  if cursor is not null then
    begin
      k := private.cursor_decode(cursor);
      if jsonb_typeof(k) is distinct from 'object' or k ->> 'l' is distinct from list or k ->> 'c' is distinct from channel
         or jsonb_typeof(k -> 'k') is distinct from 'array' then
        k := null;
      elsif jsonb_array_length(k -> 'k') < 2 or (k -> 'k') @> '[null]' then
        k := null;
      else
        k := k -> 'k';
      end if;
    exception when others then
      k := null;
    end;
    if k is null then
      raise exception 'not a cursor of this list' using errcode = 'PT422', detail = 'code=invalid_cursor';
    end if;
  end if;
  begin
    case list
    when 'notes' then
      select jsonb_agg(to_jsonb(x) - 'tenant_id' || jsonb_build_object('_k', jsonb_build_array(x.pinned, x.created_at, x.id))
                       order by x.pinned desc, x.created_at desc, x.id desc) into rows
      from (select * from public.notes e where e.customer_id = customer
              and (k is null or (e.pinned, e.created_at, e.id) < ((k ->> 0)::boolean, (k ->> 1)::timestamptz, (k ->> 2)::uuid))
            order by e.pinned desc, e.created_at desc, e.id desc limit n + 1) x;
    when 'timeline' then
      select jsonb_agg(to_jsonb(x) - 'tenant_id' - 'updated_at' - 'created_at' || jsonb_build_object('_k', jsonb_build_array(x.occurred_at, x.id))
                       order by x.occurred_at desc, x.id desc) into rows
      from (select * from public.timeline_events e where e.customer_id = customer
              and (k is null or (e.occurred_at, e.id) < ((k ->> 0)::timestamptz, (k ->> 1)::uuid))
            order by e.occurred_at desc, e.id desc limit n + 1) x;
    when 'cards' then
      select jsonb_agg(jsonb_build_object('id', cd.id, 'pipeline_id', cd.pipeline_id, 'pipeline', pl.name,
               'stage_id', cd.stage_id, 'stage', st.name, 'status', cd.status, 'value', cd.value,
               'deposit_amount', cd.deposit_amount, 'stage_entered_at', cd.stage_entered_at,
               '_k', jsonb_build_array(cd.created_at, cd.id)) order by cd.created_at, cd.id) into rows
      from (select * from public.cards e where e.customer_id = customer
              and (k is null or (e.created_at, e.id) > ((k ->> 0)::timestamptz, (k ->> 1)::uuid))
            order by e.created_at, e.id limit n + 1) cd
      join public.pipeline_stages st on st.id = cd.stage_id
      join public.pipelines pl on pl.id = cd.pipeline_id;
    when 'activities' then
      select jsonb_agg(jsonb_build_object('id', a.id, 'type', ty.key, 'type_name', ty.name,
               'title', a.title, 'status', a.status, 'scheduled_at', a.scheduled_at,
               'assigned_to', a.assigned_to, 'result', a.result, 'closed_at', a.closed_at,
               '_k', jsonb_build_array(a.created_at, a.id)) order by a.created_at desc, a.id desc) into rows
      from (select * from public.activities e where e.customer_id = customer
              and (k is null or (e.created_at, e.id) < ((k ->> 0)::timestamptz, (k ->> 1)::uuid))
            order by e.created_at desc, e.id desc limit n + 1) a
      join public.activity_types ty on ty.id = a.type_id;
    when 'appointments' then
      select jsonb_agg(jsonb_build_object('id', a.id, 'scheduled_at', a.scheduled_at, 'status', a.status, 'title', a.title,
               '_k', jsonb_build_array(a.at, a.id)) order by a.at, a.id) into rows
      from (select e.*, coalesce(e.scheduled_at, 'infinity') as at
            from public.activities e join public.activity_types ty on ty.id = e.type_id
            where e.customer_id = customer and ty.key = 'appointment'
              and (k is null or (coalesce(e.scheduled_at, 'infinity'), e.id) > ((k ->> 0)::timestamptz, (k ->> 1)::uuid))
            order by coalesce(e.scheduled_at, 'infinity'), e.id limit n + 1) a;
    when 'reminders' then
      select jsonb_agg(to_jsonb(x) - 'tenant_id' || jsonb_build_object('_k', jsonb_build_array(x.due_at, x.id))
                       order by x.due_at, x.id) into rows
      from (select * from public.reminders e where e.customer_id = customer
              and (k is null or (e.due_at, e.id) > ((k ->> 0)::timestamptz, (k ->> 1)::uuid))
            order by e.due_at, e.id limit n + 1) x;
    when 'inventory' then
      select jsonb_agg(jsonb_build_object('id', i.id, 'code', i.code, 'name', i.name, 'kind', i.kind, 'project', i.project,
               'status', i.status, 'price', i.price, '_k', jsonb_build_array(i.created_at, i.id)) order by i.created_at, i.id) into rows
      from (select * from public.inventory_items e where e.customer_id = customer
              and (k is null or (e.created_at, e.id) > ((k ->> 0)::timestamptz, (k ->> 1)::uuid))
            order by e.created_at, e.id limit n + 1) i;
    when 'work_orders' then
      select jsonb_agg(jsonb_build_object('id', w.id, 'title', w.title, 'status', w.status, 'progress', w.progress, 'due_at', w.due_at,
               'steps', (select coalesce(jsonb_agg(jsonb_build_object('id', s.id, 'position', s.position, 'title', s.title,
                                'done_at', s.done_at, 'done_by', s.done_by) order by s.position), '[]')
                         from (select * from public.work_order_steps s where s.work_order_id = w.id order by s.position limit 100) s),
               '_k', jsonb_build_array(w.created_at, w.id)) order by w.created_at desc, w.id desc) into rows
      from (select * from public.work_orders e where e.customer_id = customer
              and (k is null or (e.created_at, e.id) < ((k ->> 0)::timestamptz, (k ->> 1)::uuid))
            order by e.created_at desc, e.id desc limit n + 1) w;
    when 'merges' then
      select jsonb_agg(jsonb_build_object('merged_id', m.merged_id, 'at', m.created_at, 'moved', m.moved,
               '_k', jsonb_build_array(m.created_at, m.id)) order by m.created_at desc, m.id desc) into rows
      from (select * from public.customer_merges e where e.survivor_id = customer
              and (k is null or (e.created_at, e.id) < ((k ->> 0)::timestamptz, (k ->> 1)::uuid))
            order by e.created_at desc, e.id desc limit n + 1) m;
    when 'messages' then
      if channel is null then
        raise exception 'messages are paged per channel' using errcode = 'PT422', detail = 'code=channel_required';
      end if;
      rows := public.customer_messages(customer, channel, k, n + 1);
    else
      raise exception 'unknown list %', list using errcode = 'PT422', detail = 'code=unknown_list';
    end case;
  exception when invalid_text_representation or invalid_datetime_format or datetime_field_overflow then
    raise exception 'not a cursor of this list' using errcode = 'PT422', detail = 'code=invalid_cursor';
  end;
  rows := coalesce(rows, '[]'::jsonb);
  if jsonb_array_length(rows) > n then
    next_c := private.cursor_encode(jsonb_build_object('l', list, 'c', channel, 'k', rows -> (n - 1) -> '_k'));
    rows := rows - n;
  end if;
  return jsonb_build_object('list', list, 'channel', channel, 'next_cursor', next_c,
           'items', coalesce((select jsonb_agg(r - '_k' order by o) from jsonb_array_elements(rows) with ordinality t(r, o)), '[]'));
end;
$$;
revoke execute on function public.customer_page(uuid, text, text, int, text) from public, anon;
grant execute on function public.customer_page(uuid, text, text, int, text) to authenticated, service_role;

/*
 * The whole customer screen in one JSON. Every embedded list is its first page (customer_page's order;
 * timeline_limit rows of the timeline, at most 200; 50 of the others, 50 messages per channel), and
 * next_cursor holds, per list, the cursor of the next page or null:
 *   {"notes": text|null, "timeline": ..., "cards": ..., ..., "messages": {"<channel>": text|null}}
 * Walk on with public.customer_page(customer, '<list>', next_cursor.<list>) (messages: with the channel).
 */
create or replace function public.customer_viewer(customer uuid, timeline_limit int default 200)
returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  c public.customers;
  pages jsonb := '{}';
  pg jsonb;
  l text;
  msgs jsonb;
  ch text;
  chan_msgs jsonb;
  msg_out jsonb := '{}';
  msg_next jsonb := '{}';
  per_channel constant int := 50;
begin
  perform private.crm_require_tenant();
  select * into c from public.customers x where x.id = customer;  -- RLS: only a customer you may see
  if not found then
    raise exception 'customer not found' using errcode = 'P0002';
  end if;
  foreach l in array array['notes', 'timeline', 'cards', 'activities', 'appointments', 'reminders', 'inventory',
                           'work_orders', 'merges'] loop
    pg := public.customer_page(c.id, l, null, case when l = 'timeline' then timeline_limit else 50 end);
    pages := pages || jsonb_build_object(l, pg);
  end loop;
  -- Messages: one more than a page per channel tells whether there is a next page.
  msgs := private.crm_customer_messages(c.id, per_channel + 1);
  for ch, chan_msgs in select * from jsonb_each(msgs) loop
    if jsonb_array_length(chan_msgs) > per_channel then
      msg_next := msg_next || jsonb_build_object(ch, private.cursor_encode(jsonb_build_object('l', 'messages', 'c', ch,
                    'k', jsonb_build_array(chan_msgs -> (per_channel - 1) -> 'at', chan_msgs -> (per_channel - 1) -> 'id'))));
      chan_msgs := chan_msgs - per_channel;
    else
      msg_next := msg_next || jsonb_build_object(ch, null);
    end if;
    msg_out := msg_out || jsonb_build_object(ch, chan_msgs);
  end loop;
  return jsonb_build_object(
    'customer', to_jsonb(c),
    'responsibles', coalesce((select jsonb_agg(jsonb_build_object('id', p.id, 'full_name', p.full_name, 'email', p.email))
                              from public.profiles p where p.id = any(c.responsibles)), '[]'),
    'quality_score', c.quality_score,
    'tags', to_jsonb(c.tags),
    'cards', pages -> 'cards' -> 'items',
    'timeline', pages -> 'timeline' -> 'items',
    'activities', pages -> 'activities' -> 'items',
    'appointments', pages -> 'appointments' -> 'items',
    'reminders', pages -> 'reminders' -> 'items',
    'notes', pages -> 'notes' -> 'items',
    'messages', msg_out,
    'inventory', pages -> 'inventory' -> 'items',
    'work_orders', pages -> 'work_orders' -> 'items',
    'orders', '[]'::jsonb,
    'merges', pages -> 'merges' -> 'items',
    'next_cursor', (select jsonb_object_agg(key, value -> 'next_cursor') from jsonb_each(pages))
                   || jsonb_build_object('messages', msg_next));
end;
$$;
revoke execute on function public.customer_viewer(uuid, int) from public, anon;
grant execute on function public.customer_viewer(uuid, int) to authenticated, service_role;
