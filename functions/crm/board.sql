-- functions/crm/board.sql -- The board: the kanban, moving cards (the stage-move rule and what a move sets
-- off) and the inventory a move reserves or sells.

-- ---------------------------------------------------------------------------------------------
-- The board
-- ---------------------------------------------------------------------------------------------

/*
 * The kanban for one pipeline: its stages in order, each with its card count and cards (customer
 * name/phone, value, responsibles, source, quality, tags, last contact and overdue flag, next reminder,
 * next appointment, unread messages, time in stage). Card details (deposit, item, campaign) come from
 * the cards table or customer_viewer. Returns json (not jsonb: built 2x faster). Filters (all optional):
 *   {"responsible": uuid, "source": text, "campaign": text, "quality_min": int, "tag": text, "status": "open"}
 * Security definer for speed, with RLS's rule applied explicitly (tenant, crm read, assignee restriction).
 * Bounded (issue 10, item 8): per_stage cards per stage (default 500, at most 500); a stage with more has
 * "next_cursor" (else null). Paging keys in filters: {"stage": uuid, "cursor": text} return that stage
 * only, with its cards after the cursor (order: position, created_at, id); public.crm_board_page wraps it.
 */
create or replace function public.crm_board(pipeline uuid, filters jsonb default '{}', per_stage int default 500)
returns json
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  tenant uuid := private.crm_require_tenant();
  uid uuid := (select auth.uid());
  all_visible boolean := private.sees_all();
  overdue_after interval;
  f jsonb := coalesce(filters, '{}');
  f_resp uuid := nullif(f ->> 'responsible', '')::uuid;
  f_source text := nullif(f ->> 'source', '');
  f_campaign text := nullif(f ->> 'campaign', '');
  f_quality int := nullif(f ->> 'quality_min', '')::int;
  f_tag text := lower(nullif(f ->> 'tag', ''));
  f_status text := nullif(f ->> 'status', '');
  f_stage uuid;
  f_cursor text := nullif(f ->> 'cursor', '');
  n int := least(greatest(coalesce(per_stage, 500), 1), 500);
  k jsonb;
  p public.pipelines;
  result json;
begin
  begin
    f_stage := nullif(f ->> 'stage', '')::uuid;
  exception when others then
    raise exception 'filters.stage is not a stage id' using errcode = 'PT422', detail = 'code=invalid_filter';
  end;
  begin
    if f_cursor is not null then
      k := private.cursor_decode(f_cursor);
      if jsonb_typeof(k) is distinct from 'object' or k ->> 'l' is distinct from 'board' or k ->> 'c' is distinct from f_stage::text
         or jsonb_typeof(k -> 'k') is distinct from 'array' then
        k := null;
      elsif jsonb_array_length(k -> 'k') <> 3 or (k -> 'k') @> '[null]' then
        k := null;
      else
        k := k -> 'k';  -- [position as text (exact), created_at, id]; the casts below check them
        perform (k ->> 0)::double precision, (k ->> 1)::timestamptz, (k ->> 2)::uuid;
      end if;
    end if;
  exception when others then
    k := null;
  end;
  if f_cursor is not null and k is null then
    raise exception 'not a cursor of this stage' using errcode = 'PT422', detail = 'code=invalid_cursor';
  end if;
  if not private.can('crm', 'read') then
    raise exception 'no permission to read the CRM' using errcode = '42501';
  end if;
  select * into p from public.pipelines x where x.id = pipeline and x.tenant_id = tenant;
  if not found then
    raise exception 'pipeline not found' using errcode = 'P0002';
  end if;
  select make_interval(days => s.overdue_days) into overdue_after from public.crm_settings s where s.tenant_id = tenant;
  overdue_after := coalesce(overdue_after, interval '3 days');
  with cards as (
    select cd.id, cd.stage_id, cd.position, cd.title, cd.status, cd.value, cd.deposit_amount, cd.responsibles,
           cd.stage_entered_at, cd.appointment_at, cd.inventory_item_id, cd.customer_id, cd.created_at,
           cu.full_name, cu.phone, cu.source, cu.campaign, cu.quality_score, cu.tags, cu.last_contact_at,
           cu.unread_messages
    from public.cards cd
    join public.customers cu on cu.id = cd.customer_id
    where cd.pipeline_id = pipeline and cd.tenant_id = tenant
      and (all_visible or uid = any(cd.responsibles))
      and (f_resp is null or f_resp = any(cd.responsibles))
      and (f_source is null or cu.source = f_source)
      and (f_campaign is null or cu.campaign = f_campaign)
      and (f_quality is null or cu.quality_score >= f_quality)
      and (f_tag is null or f_tag = any(cu.tags))
      and (f_status is null or cd.status = f_status)
      and (f_stage is null or cd.stage_id = f_stage)
  ), paged as (
    select c.*, row_number() over (partition by c.stage_id order by c.position, c.created_at, c.id) as rn,
           count(*) over (partition by c.stage_id) as stage_rows
    from cards c
    where k is null or (c.position, c.created_at, c.id)
                       > ((k ->> 0)::double precision, (k ->> 1)::timestamptz, (k ->> 2)::uuid)
  -- (materialized: each is computed once, then joined to the seven stages; inlined, the planner
  -- re-ran the per-stage aggregate once per stage)
  ), more as materialized (
    select q.stage_id,
           private.cursor_encode(jsonb_build_object('l', 'board', 'c', q.stage_id,
             'k', jsonb_build_array(q.position::text, q.created_at, q.id))) as next_cursor
    from paged q
    where q.rn = n and q.stage_rows > n
  ), shown as (
    select c.*,
      (select min(r.due_at) from public.reminders r
        where r.customer_id = c.customer_id and r.done_at is null) as next_reminder_at,
      (select min(a.scheduled_at) from public.activities a
        where a.customer_id = c.customer_id and a.status = 'open' and a.scheduled_at >= now()) as next_appointment_at
    from paged c where c.rn <= n
  ), per_stage_cards as materialized (
    select s.stage_id,
           json_agg(json_build_object(
             'id', s.id, 'customer_id', s.customer_id, 'customer_name', s.full_name, 'phone', s.phone,
             'value', s.value, 'position', s.position, 'responsibles', s.responsibles, 'source', s.source,
             'quality_score', s.quality_score, 'tags', s.tags, 'last_contact_at', s.last_contact_at,
             'overdue', s.status = 'open' and coalesce(s.last_contact_at, s.created_at) < now() - overdue_after,
             'next_reminder_at', s.next_reminder_at,
             'next_appointment_at', coalesce(s.next_appointment_at, case when s.appointment_at >= now() then s.appointment_at end),
             'unread_count', s.unread_messages, 'stage_entered_at', s.stage_entered_at) order by s.rn) as cards
    from shown s group by s.stage_id
  ), counts as materialized (
    select c.stage_id, count(*) as n, sum(c.value) as total from cards c group by c.stage_id
  )
  select json_build_object(
    'pipeline', json_build_object('id', p.id, 'name', p.name, 'is_default', p.is_default),
    'filters', f,
    'stages', coalesce(json_agg(json_build_object(
      'id', st.id, 'name', st.name, 'position', st.position, 'kind', st.kind, 'color', st.color,
      'required_fields', st.required_fields, 'count', coalesce(cn.n, 0), 'total_value', coalesce(cn.total, 0),
      'cards', coalesce(pc.cards, '[]'::json), 'next_cursor', mo.next_cursor) order by st.position), '[]'::json))
  into result
  from public.pipeline_stages st
  left join counts cn on cn.stage_id = st.id
  left join per_stage_cards pc on pc.stage_id = st.id
  left join more mo on mo.stage_id = st.id
  where st.pipeline_id = pipeline and (f_stage is null or st.id = f_stage);
  return result;
end;
$$;
revoke execute on function public.crm_board(uuid, jsonb, int) from public, anon;
grant execute on function public.crm_board(uuid, jsonb, int) to authenticated, service_role;

/*
 * One stage of the board, one page at a time: {id, name, ..., count, total_value, cards, next_cursor}.
 * Start with cursor null (or the stage's next_cursor from crm_board) and pass each next_cursor back
 * until it is null; "limit" cards per page (default 100, at most 500). Same filters as crm_board.
 */
create or replace function public.crm_board_page(pipeline uuid, stage uuid, cursor text default null,
                                                 filters jsonb default '{}', "limit" int default 100)
returns json
language sql stable
set search_path = ''
as $$
  select s
  from json_array_elements(public.crm_board(pipeline,
         coalesce(filters, '{}') || jsonb_build_object('stage', stage, 'cursor', cursor), "limit") -> 'stages') s
  where s ->> 'id' = stage::text;
$$;
revoke execute on function public.crm_board_page(uuid, uuid, text, jsonb, int) from public, anon;
grant execute on function public.crm_board_page(uuid, uuid, text, jsonb, int) to authenticated, service_role;

/*
 * Move a card to a stage. The card's triggers check the rule (allowed move, role, required fields such
 * as the deposit amount for Kapora), move the inventory item, write the timeline, notify the
 * responsibles, broadcast to the board and the customer's topic and queue the integration hook -- in
 * this one transaction: a refused move leaves nothing behind.
 *   fields: {"deposit_amount": 5000, "value": ..., "lost_reason": "...", "inventory_item_id": ..., "appointment_at": ...}
 */
create or replace function public.move_card(card uuid, to_stage uuid, fields jsonb default '{}', "position" double precision default null)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  f jsonb := coalesce(fields, '{}');
  moved public.cards;
begin
  perform private.crm_require_tenant();
  update public.cards c
  set stage_id = to_stage,
      deposit_amount = coalesce((f ->> 'deposit_amount')::numeric, c.deposit_amount),
      value = coalesce((f ->> 'value')::numeric, c.value),
      lost_reason = coalesce(f ->> 'lost_reason', c.lost_reason),
      inventory_item_id = coalesce((f ->> 'inventory_item_id')::uuid, c.inventory_item_id),
      appointment_at = coalesce((f ->> 'appointment_at')::timestamptz, c.appointment_at),
      position = coalesce(move_card.position, c.position)
  where c.id = card
  returning * into moved;
  if not found then
    raise exception 'card not found' using errcode = 'P0002';
  end if;
  return jsonb_build_object('id', moved.id, 'stage_id', moved.stage_id, 'status', moved.status,
                            'stage_entered_at', moved.stage_entered_at, 'position', moved.position);
end;
$$;
revoke execute on function public.move_card(uuid, uuid, jsonb, double precision) from public, anon;
grant execute on function public.move_card(uuid, uuid, jsonb, double precision)
  to authenticated, service_role;

-- Cards: take the customer's responsibles; check every stage move (whoever writes it).
-- The stage-move rule. Trigger crm_card_before on public.cards; first in migrations/20261124020000_crm.sql.
create or replace function private.crm_card_before() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  stage public.pipeline_stages;
  t record;
  field text;
  role public.member_role := (select private.tenant_role());
begin
  -- responsibles are the customer's (change them there): always copied from it
  if tg_op = 'INSERT' or new.customer_id is distinct from old.customer_id or new.responsibles is distinct from old.responsibles then
    select c.responsibles into new.responsibles from public.customers c
    where c.tenant_id = new.tenant_id and c.id = new.customer_id;
  end if;
  if tg_op = 'INSERT' then
    new.created_by := coalesce(new.created_by, (select auth.uid()));
  end if;
  if tg_op = 'UPDATE' and new.stage_id is not distinct from old.stage_id then
    return new;
  end if;
  select * into stage from public.pipeline_stages s where s.id = new.stage_id and s.pipeline_id = new.pipeline_id;
  if not found then
    raise exception 'the stage is not in this pipeline' using errcode = 'PT422', detail = 'code=stage_not_in_pipeline';
  end if;
  if tg_op = 'UPDATE' then
    if new.pipeline_id <> old.pipeline_id then
      raise exception 'a card stays in its pipeline' using errcode = 'PT422', detail = 'code=pipeline_change';
    end if;
    select tr.roles into t from public.stage_transitions tr
    where tr.from_stage_id = old.stage_id and tr.to_stage_id = new.stage_id;
    if not found then
      raise exception 'moving from "%" to "%" is not allowed',
        (select s.name from public.pipeline_stages s where s.id = old.stage_id), stage.name
        using errcode = 'PT422', detail = 'code=move_not_allowed';
    end if;
    if t.roles is not null and (role is null or not role = any(t.roles)) then
      raise exception 'your role may not move cards to "%"', stage.name
        using errcode = 'PT403', detail = 'code=move_role_forbidden';
    end if;
  end if;
  foreach field in array stage.required_fields loop
    if to_jsonb(new) ->> field is null then
      raise exception '% needs %', stage.name, replace(field, '_', ' ')
        using errcode = 'PT422',
              detail = 'code=' || case field when 'deposit_amount' then 'deposit_required' else field || '_required' end;
    end if;
  end loop;
  new.stage_entered_at := now();
  new.status := case stage.kind when 'won' then 'won' when 'lost' then 'lost' else 'open' end;
  new.closed_at := case when stage.kind in ('won', 'lost') then now() end;
  return new;
end;
$$;

-- After a card is created or moved: inventory, timeline, notifications, realtime, integration hook.
-- Trigger crm_card_after on public.cards; first in migrations/20261124020000_crm.sql.
create or replace function private.crm_card_after() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  stage public.pipeline_stages;
  from_stage public.pipeline_stages;
  cust public.customers;
  actor uuid := (select auth.uid());
  recipients uuid[];
  payload jsonb;
begin
  if tg_op = 'UPDATE' and new.stage_id is not distinct from old.stage_id
     and new.inventory_item_id is not distinct from old.inventory_item_id then
    if new.responsibles is distinct from old.responsibles or new.value is distinct from old.value
       or new.title is distinct from old.title or new.position is distinct from old.position then
      perform private.broadcast('tenant:' || new.tenant_id || ':board:' || new.pipeline_id, 'card_updated',
        jsonb_build_object('card_id', new.id, 'customer_id', new.customer_id, 'stage_id', new.stage_id,
                           'position', new.position, 'value', new.value, 'title', new.title,
                           'responsibles', new.responsibles));
    end if;
    return null;
  end if;
  select * into stage from public.pipeline_stages where id = new.stage_id;
  -- linking an item to an open card reserves it
  if new.inventory_item_id is not null and (tg_op = 'INSERT' or new.inventory_item_id is distinct from old.inventory_item_id) then
    perform private.crm_inventory_apply(new.inventory_item_id, coalesce(stage.inventory_action, 'reserve'), new);
  elsif stage.inventory_action is not null and new.inventory_item_id is not null then
    perform private.crm_inventory_apply(new.inventory_item_id, stage.inventory_action, new);
  end if;
  if tg_op = 'UPDATE' and new.stage_id is not distinct from old.stage_id then
    return null;
  end if;
  select * into cust from public.customers where id = new.customer_id;
  if tg_op = 'INSERT' then
    perform private.crm_timeline(new.tenant_id, new.customer_id, 'card_created',
      jsonb_build_object('pipeline_id', new.pipeline_id, 'stage_id', new.stage_id, 'stage', stage.name), new.id);
    payload := jsonb_build_object('card_id', new.id, 'customer_id', new.customer_id, 'pipeline_id', new.pipeline_id,
      'stage_id', new.stage_id, 'stage', stage.name, 'customer_name', cust.full_name, 'phone', cust.phone,
      'responsibles', new.responsibles, 'source', cust.source, 'by', actor);
    perform private.broadcast('tenant:' || new.tenant_id || ':board:' || new.pipeline_id, 'card_created', payload);
    perform private.broadcast('tenant:' || new.tenant_id || ':customer:' || new.customer_id, 'card_created', payload);
    return null;
  end if;
  select * into from_stage from public.pipeline_stages where id = old.stage_id;
  perform private.crm_timeline(new.tenant_id, new.customer_id, 'stage_changed',
    jsonb_build_object('from_stage_id', old.stage_id, 'from_stage', from_stage.name,
                       'to_stage_id', new.stage_id, 'to_stage', stage.name,
                       'seconds_in_stage', extract(epoch from now() - old.stage_entered_at)::int,
                       'deposit_amount', new.deposit_amount, 'lost_reason', new.lost_reason), new.id);
  payload := jsonb_build_object('card_id', new.id, 'customer_id', new.customer_id, 'pipeline_id', new.pipeline_id,
    'from_stage_id', old.stage_id, 'to_stage_id', new.stage_id, 'stage', stage.name, 'status', new.status,
    'position', new.position, 'customer_name', cust.full_name, 'phone', cust.phone,
    'responsibles', new.responsibles, 'source', cust.source, 'deposit_amount', new.deposit_amount,
    'by', actor, 'at', now());
  perform private.broadcast('tenant:' || new.tenant_id || ':board:' || new.pipeline_id, 'card_moved', payload);
  perform private.broadcast('tenant:' || new.tenant_id || ':customer:' || new.customer_id, 'card_moved', payload);
  recipients := array(select r from unnest(new.responsibles) r where r is distinct from actor);
  if cardinality(recipients) > 0 then
    insert into public.notifications (tenant_id, user_id, kind, title, body, data, customer_id)
    select new.tenant_id, r, 'card_moved', cust.full_name || ': ' || stage.name,
           format('%s → %s', from_stage.name, stage.name), payload, new.customer_id
    from unnest(recipients) r;
  end if;
  -- integration hook: the worker picks it up (Zoho sync, webhooks ...)
  insert into private.jobs (tenant_id, kind, payload)
  values (new.tenant_id, 'crm.card_moved', jsonb_build_object('card_id', new.id, 'customer_id', new.customer_id,
          'from_stage_id', old.stage_id, 'to_stage_id', new.stage_id, 'stage', stage.name, 'stage_kind', stage.kind));
  return null;
end;
$$;

-- Inventory follows the card's stage (same transaction: a refused item change refuses the move).
create or replace function private.crm_inventory_apply(item_id uuid, action text, card public.cards) returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  item public.inventory_items;
begin
  select * into item from public.inventory_items i where i.id = item_id and i.tenant_id = card.tenant_id for update;
  if not found then
    return;
  end if;
  if item.status = 'sold' then
    raise exception 'inventory item % is already sold', item.code using errcode = 'PT409', detail = 'code=already_sold';
  end if;
  if item.customer_id is not null and item.customer_id <> card.customer_id and action <> 'release' then
    raise exception 'inventory item % is held for another customer', item.code
      using errcode = 'PT409', detail = 'code=item_held';
  end if;
  if action = 'release' then
    if item.card_id is distinct from card.id then return; end if;
    update public.inventory_items set status = 'available', customer_id = null, card_id = null, status_changed_at = now()
    where id = item.id;
  elsif action = 'sell' then
    insert into public.inventory_sales (tenant_id, item_id, customer_id, card_id, price, sold_by)
    values (card.tenant_id, item.id, card.customer_id, card.id, coalesce(card.value, item.price), (select auth.uid()));
    update public.inventory_items set status = 'sold', customer_id = card.customer_id, card_id = card.id,
      status_changed_at = now() where id = item.id;
  else
    update public.inventory_items
    set status = (case action when 'reserve' then 'reserved' else 'deposit' end)::public.inventory_status,
        customer_id = card.customer_id, card_id = card.id, status_changed_at = now()
    where id = item.id;
  end if;
end;
$$;
revoke execute on function private.crm_inventory_apply(uuid, text, public.cards) from public, authenticated;

-- Status rules of an item, whoever writes it: sold is final.
-- Trigger crm_inventory_before on public.inventory_items; first in migrations/20261124020000_crm.sql.
create or replace function private.crm_inventory_before() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if old.status = 'sold' and (new.status <> 'sold' or (new.customer_id is distinct from old.customer_id
                                                        and current_setting('luna.crm_merge', true) is distinct from 'on')) then
    raise exception 'inventory item % is already sold', old.code using errcode = 'PT409', detail = 'code=already_sold';
  end if;
  if new.status = 'sold' and old.status <> 'sold'
     and not exists (select 1 from public.inventory_sales s where s.item_id = new.id) then
    -- a direct status change still records the sale (and so can happen only once)
    insert into public.inventory_sales (tenant_id, item_id, customer_id, card_id, price, sold_by)
    values (new.tenant_id, new.id, new.customer_id, new.card_id, new.price, (select auth.uid()));
  end if;
  if new.status is distinct from old.status then
    new.status_changed_at := now();
  end if;
  return new;
end;
$$;

-- Bulk move: each card on its own (a refused card does not stop the others); admins and supervisors.
create or replace function public.bulk_move_cards(cards uuid[], to_stage uuid, fields jsonb default '{}')
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  c uuid;
  ok int := 0;
  errors jsonb := '[]';
  msg text;
  det text;
  state text;
begin
  perform private.crm_require_lead_role();
  foreach c in array cards loop
    begin
      perform public.move_card(c, to_stage, fields);
      ok := ok + 1;
    exception when others then
      get stacked diagnostics msg = message_text, det = pg_exception_detail, state = returned_sqlstate;
      errors := errors || jsonb_build_object('card_id', c, 'sqlstate', state, 'message', msg,
        'code', case when det like 'code=%' then split_part(substr(det, 6), ';', 1) end);
    end;
  end loop;
  return jsonb_build_object('moved', ok, 'errors', errors);
end;
$$;
revoke execute on function public.bulk_move_cards(uuid[], uuid, jsonb) from public, anon;
grant execute on function public.bulk_move_cards(uuid[], uuid, jsonb) to authenticated, service_role;
