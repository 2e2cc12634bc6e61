/*
 * CRM RPCs and worker functions. Rules themselves are triggers and constraints in
 * migrations/20261124020000_crm.sql; these functions are the convenient ways in.
 *
 * Security invoker unless stated, so RLS decides (as for direct PostgREST writes).
 */

-- ---------------------------------------------------------------------------------------------
-- Small guards
-- ---------------------------------------------------------------------------------------------
create or replace function private.crm_require_tenant() returns uuid
language plpgsql stable
set search_path = ''
as $$
declare
  tenant uuid := (select private.tenant_id());
begin
  if tenant is null then
    raise exception 'no active tenant in the token' using errcode = '42501';
  end if;
  return tenant;
end;
$$;

-- Bulk operations are for admins and supervisors (and owners).
create or replace function private.crm_require_lead_role() returns uuid
language plpgsql stable
set search_path = ''
as $$
declare
  tenant uuid := private.crm_require_tenant();
begin
  if coalesce((select private.tenant_role()) not in ('owner', 'admin', 'supervisor'), true) then
    raise exception 'only owners, admins and supervisors may do this' using errcode = 'PT403', detail = 'code=supervisor_required';
  end if;
  return tenant;
end;
$$;
grant execute on function private.crm_require_tenant(), private.crm_require_lead_role() to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- Customers: match or create (the lead sync and the inbox call this), merge
-- ---------------------------------------------------------------------------------------------

/*
 * The customer with this phone or e-mail (normalised) in the tenant, else a new one. Blank fields of a
 * matched customer are filled in; attribution of a new one comes from `source`:
 *   {"source": "instagram", "campaign": "...", "utm_source": ..., "utm_medium": ..., "utm_campaign": ...,
 *    "utm_term": ..., "utm_content": ..., "region": ..., "lead_id": ..., "responsibles": [...], "tags": [...]}
 * Security definer for service code (worker, inbox); scopes itself by `tenant`.
 */
create or replace function private.match_or_create_customer(
  tenant uuid, full_name text, phone text, email text, source jsonb default '{}'
) returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  region text;
  p text;
  e text := private.crm_email(email);
  found_id uuid;
  src jsonb := coalesce(source, '{}');
  attempt int := 0;
begin
  select t.default_region into region from public.tenants t where t.id = tenant;
  if region is null then
    raise exception 'unknown tenant %', tenant using errcode = 'P0002';
  end if;
  p := case when phone ~ '^\+[1-9][0-9]{6,14}$' then phone else private.crm_phone(phone, region) end;
  if p is null and e is null then
    raise exception 'a customer needs a phone or an e-mail' using errcode = 'PT422', detail = 'code=contact_required';
  end if;
  loop
    select c.id into found_id from public.customers c
    where c.tenant_id = tenant and ((p is not null and c.phone = p) or (e is not null and c.email = e))
    order by (c.phone = p) desc nulls last
    limit 1;
    if found_id is not null then
      update public.customers c
      set phone = coalesce(c.phone, case when not exists (select 1 from public.customers x where x.tenant_id = tenant and x.phone = p) then p end),
          email = coalesce(c.email, case when not exists (select 1 from public.customers x where x.tenant_id = tenant and x.email = e) then e end),
          full_name = case when c.full_name in ('', '?') then coalesce(nullif(trim(match_or_create_customer.full_name), ''), c.full_name) else c.full_name end,
          source = coalesce(c.source, src ->> 'source'),
          campaign = coalesce(c.campaign, src ->> 'campaign'),
          lead_id = coalesce(c.lead_id, (src ->> 'lead_id')::uuid)
      where c.id = found_id
        and (c.phone is null or c.email is null or c.source is null or c.campaign is null or c.lead_id is null);
      return found_id;
    end if;
    begin
      insert into public.customers (tenant_id, full_name, phone, email, region, source, campaign, utm_source, utm_medium,
                                    utm_campaign, utm_term, utm_content, attribution, lead_id, responsibles, tags, quality_score)
      values (tenant, coalesce(nullif(trim(full_name), ''), p, e), p, e, src ->> 'region', src ->> 'source',
              coalesce(src ->> 'campaign', src ->> 'utm_campaign'), src ->> 'utm_source', src ->> 'utm_medium',
              src ->> 'utm_campaign', src ->> 'utm_term', src ->> 'utm_content', src, (src ->> 'lead_id')::uuid,
              coalesce(array(select jsonb_array_elements_text(src -> 'responsibles'))::uuid[], '{}'),
              coalesce(array(select jsonb_array_elements_text(src -> 'tags')), '{}'),
              (src ->> 'quality_score')::int)
      returning id into found_id;
      return found_id;
    exception when unique_violation then
      attempt := attempt + 1;  -- a concurrent writer created it: match again
      if attempt > 3 then raise; end if;
    end;
  end loop;
end;
$$;
revoke execute on function private.match_or_create_customer(uuid, text, text, text, jsonb) from public;
grant execute on function private.match_or_create_customer(uuid, text, text, text, jsonb) to service_role;

-- Normalise contact data, keep responsibles to colleagues, make the creating agent responsible.
-- Trigger crm_customer_before on public.customers; first in migrations/20261124020000_crm.sql.
create or replace function private.crm_customer_before() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  region text;
  normalised text;
begin
  if new.phone is not null and new.phone !~ '^\+[1-9][0-9]{6,14}$' then
    select t.default_region into region from public.tenants t where t.id = new.tenant_id;
    normalised := private.crm_phone(new.phone, coalesce(new.custom_fields ->> 'phone_region', region, 'TR'));
    if normalised is null then
      raise exception 'phone % is not a valid number', new.phone
        using errcode = 'PT422', detail = 'code=invalid_phone';
    end if;
    new.phone := normalised;
  end if;
  if new.email is not null then
    new.email := private.crm_email(new.email);
    if new.email is null then
      raise exception 'e-mail is not valid' using errcode = 'PT422', detail = 'code=invalid_email';
    end if;
  end if;
  new.full_name := trim(new.full_name);
  new.tags := array(select distinct lower(trim(t)) from unnest(new.tags) t where trim(t) <> '' order by 1);
  new.responsibles := array(select distinct r from unnest(new.responsibles) r where r is not null order by 1);
  if tg_op = 'INSERT' then
    new.created_by := coalesce(new.created_by, (select auth.uid()));
    -- an agent's new customer is theirs (else the assignee restriction would hide it from them)
    if cardinality(new.responsibles) = 0 and (select private.tenant_role()) = 'agent' then
      new.responsibles := array[(select auth.uid())];
    end if;
  end if;
  if (tg_op = 'INSERT' or new.responsibles is distinct from old.responsibles)
     and not private.crm_members_ok(new.tenant_id, new.responsibles) then
    raise exception 'responsibles must be members of the tenant' using errcode = 'PT422', detail = 'code=invalid_responsible';
  end if;
  return new;
end;
$$;

-- Customers: responsibles flow to cards; changes reach the customer's topic; timeline of the important ones.
-- Trigger crm_customer_after on public.customers; first in migrations/20261124020000_crm.sql.
create or replace function private.crm_customer_after() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' then
    perform private.crm_timeline(new.tenant_id, new.id, 'customer_created',
      jsonb_build_object('source', new.source, 'campaign', new.campaign));
    if cardinality(new.tags) > 0 then
      insert into public.tags (tenant_id, name) select new.tenant_id, unnest(new.tags) on conflict do nothing;
    end if;
    return null;
  end if;
  if new.responsibles is distinct from old.responsibles then
    update public.cards set responsibles = new.responsibles where customer_id = new.id;
    update public.work_orders set responsibles = new.responsibles
    where customer_id = new.id and responsibles = old.responsibles;
    perform private.crm_timeline(new.tenant_id, new.id, 'responsibles_changed',
      jsonb_build_object('from', old.responsibles, 'to', new.responsibles));
    insert into public.notifications (tenant_id, user_id, kind, title, customer_id, data)
    select new.tenant_id, r, 'customer_assigned', new.full_name, new.id, jsonb_build_object('customer_id', new.id)
    from unnest(new.responsibles) r
    where not r = any(old.responsibles) and r is distinct from (select auth.uid());
  end if;
  if new.tags is distinct from old.tags then
    insert into public.tags (tenant_id, name) select new.tenant_id, unnest(new.tags) on conflict do nothing;
    perform private.crm_timeline(new.tenant_id, new.id, 'tags_changed', jsonb_build_object('from', old.tags, 'to', new.tags));
  end if;
  if (to_jsonb(new) - 'updated_at') <> (to_jsonb(old) - 'updated_at') then
    perform private.broadcast('tenant:' || new.tenant_id || ':customer:' || new.id, 'customer_updated',
      jsonb_build_object('customer', to_jsonb(new) - 'custom_fields', 'by', (select auth.uid())));
  end if;
  return null;
end;
$$;

/*
 * Merge `duplicate` into `survivor`: every row of every table pointing at the duplicate (cards,
 * activities, notes, reminders, timeline events, inventory, work orders, and other areas' tables such
 * as inbox contacts) is moved to the survivor, blank fields are filled from the duplicate, tags and
 * responsibles are united; the duplicate's snapshot and the counts are recorded in customer_merges,
 * the timeline gets a customers_merged event, and the duplicate is deleted. Needs crm delete.
 */
create or replace function public.merge_customers(survivor uuid, duplicate uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  tenant uuid := private.crm_require_tenant();
  s public.customers;
  d public.customers;
  fk record;
  n bigint;
  moved jsonb := '{}';
  merge_id uuid;
begin
  if not (select private.can('crm', 'delete')) then
    raise exception 'merging customers needs the crm delete permission' using errcode = '42501';
  end if;
  if survivor = duplicate then
    raise exception 'a customer cannot be merged into itself' using errcode = 'PT422', detail = 'code=same_customer';
  end if;
  select * into s from public.customers c where c.id = survivor and c.tenant_id = tenant for update;
  select * into d from public.customers c where c.id = duplicate and c.tenant_id = tenant for update;
  if s.id is null or d.id is null or not private.crm_can_see_customer(survivor) or not private.crm_can_see_customer(duplicate) then
    raise exception 'customer not found' using errcode = 'P0002';
  end if;
  perform set_config('luna.crm_merge', 'on', true);
  -- every table with a customer_id (ours, and other areas' such as inbox contacts and leads)
  for fk in
    select c.oid::regclass as tbl, 'customer_id' as col
    from pg_class c join pg_namespace ns on ns.oid = c.relnamespace
    join pg_attribute a on a.attrelid = c.oid and a.attname = 'customer_id' and not a.attisdropped
    where ns.nspname = 'public' and c.relkind in ('r', 'p') and a.atttypid = 'uuid'::regtype
      and c.oid not in ('public.customer_merges'::regclass, 'public.customers'::regclass)
    order by 1
  loop
    execute format('update %s set %I = $1 where %I = $2 and tenant_id = $3', fk.tbl, fk.col, fk.col)
      using survivor, duplicate, tenant;
    get diagnostics n = row_count;
    if n > 0 then
      moved := moved || jsonb_build_object(fk.tbl::text, n);
    end if;
  end loop;
  update public.customer_merges m set survivor_id = survivor where m.survivor_id = duplicate;
  perform set_config('luna.crm_merge', 'off', true);
  delete from public.customers where id = duplicate;
  update public.customers c
  set phone = coalesce(c.phone, d.phone), email = coalesce(c.email, d.email), region = coalesce(c.region, d.region),
      source = coalesce(c.source, d.source), campaign = coalesce(c.campaign, d.campaign),
      utm_source = coalesce(c.utm_source, d.utm_source), utm_medium = coalesce(c.utm_medium, d.utm_medium),
      utm_campaign = coalesce(c.utm_campaign, d.utm_campaign), utm_term = coalesce(c.utm_term, d.utm_term),
      utm_content = coalesce(c.utm_content, d.utm_content), attribution = d.attribution || c.attribution,
      lead_id = coalesce(c.lead_id, d.lead_id),
      responsibles = array(select distinct unnest(c.responsibles || d.responsibles)),
      tags = array(select distinct unnest(c.tags || d.tags)),
      quality_score = greatest(c.quality_score, d.quality_score),
      last_contact_at = greatest(c.last_contact_at, d.last_contact_at),
      unread_messages = c.unread_messages + d.unread_messages,
      custom_fields = d.custom_fields || c.custom_fields
  where c.id = survivor;
  insert into public.customer_merges (tenant_id, survivor_id, merged_id, merged_snapshot, moved, merged_by)
  values (tenant, survivor, duplicate, to_jsonb(d), moved, (select auth.uid()))
  returning id into merge_id;
  perform private.crm_timeline(tenant, survivor, 'customers_merged',
    jsonb_build_object('merged_id', duplicate, 'merged_name', d.full_name, 'merge_id', merge_id, 'moved', moved));
  perform private.broadcast('tenant:' || tenant || ':customer:' || duplicate, 'customer_merged',
    jsonb_build_object('customer_id', duplicate, 'survivor_id', survivor));
  return jsonb_build_object('merge_id', merge_id, 'survivor_id', survivor, 'merged_id', duplicate, 'moved', moved);
end;
$$;
revoke execute on function public.merge_customers(uuid, uuid) from public, anon;
grant execute on function public.merge_customers(uuid, uuid) to authenticated, service_role;

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
grant execute on function public.move_card(uuid, uuid, jsonb, double precision) to authenticated, service_role;

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

-- Bulk assign: mode 'replace' | 'add' | 'remove' the given users as responsibles of the customers.
create or replace function public.bulk_assign_customers(customers uuid[], users uuid[], mode text default 'replace')
returns int
language plpgsql
set search_path = ''
as $$
declare
  n int;
begin
  perform private.crm_require_lead_role();
  if mode not in ('replace', 'add', 'remove') then
    raise exception 'mode is replace, add or remove' using errcode = '22023';
  end if;
  update public.customers c
  set responsibles = case mode when 'replace' then users
                               when 'add' then array(select distinct unnest(c.responsibles || users))
                               else array(select unnest(c.responsibles) except select unnest(users)) end
  where c.id = any(customers);
  get diagnostics n = row_count;
  return n;
end;
$$;

create or replace function public.bulk_tag_customers(customers uuid[], add_tags text[] default '{}', remove_tags text[] default '{}')
returns int
language plpgsql
set search_path = ''
as $$
declare
  n int;
begin
  perform private.crm_require_lead_role();
  update public.customers c
  set tags = array(select distinct t from unnest(c.tags || coalesce(add_tags, '{}')) t
                   where not lower(t) = any(array(select lower(x) from unnest(coalesce(remove_tags, '{}')) x)))
  where c.id = any(customers);
  get diagnostics n = row_count;
  return n;
end;
$$;
revoke execute on function public.bulk_move_cards(uuid[], uuid, jsonb), public.bulk_assign_customers(uuid[], uuid[], text),
  public.bulk_tag_customers(uuid[], text[], text[]) from public, anon;
grant execute on function public.bulk_move_cards(uuid[], uuid, jsonb), public.bulk_assign_customers(uuid[], uuid[], text),
  public.bulk_tag_customers(uuid[], text[], text[]) to authenticated, service_role;

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

-- ---------------------------------------------------------------------------------------------
-- Notifications
-- ---------------------------------------------------------------------------------------------

/*
 * Targeted notifications: target = {"user_id": uuid} | {"user_ids": [...]} | {"role": "supervisor"} |
 * {"customer_id": uuid} (the customer's responsibles); keys combine. Each recipient gets a row and a
 * broadcast on user:<uid> (trigger). Returns the number of recipients. With a step_key (a worker's
 * step, say 'lead_synced:<lead>:0'), a recipient who already has that step's notification gets none.
 */
create or replace function private.crm_notify(tenant uuid, target jsonb, kind text, title text, body text default null,
                                              data jsonb default '{}', customer uuid default null,
                                              step_key text default null)
returns int
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  n int;
begin
  insert into public.notifications (tenant_id, user_id, kind, title, body, data, customer_id, step_key)
  select tenant, m.user_id, kind, title, body, coalesce(data, '{}'),
         coalesce(customer, nullif(target ->> 'customer_id', '')::uuid), step_key
  from public.tenant_members m
  where m.tenant_id = tenant and m.active and (
        m.user_id = nullif(target ->> 'user_id', '')::uuid
     or m.user_id in (select jsonb_array_elements_text(coalesce(target -> 'user_ids', '[]'))::uuid)
     or m.role::text = target ->> 'role'
     or m.user_id = any(coalesce((select c.responsibles from public.customers c
                                  where c.tenant_id = tenant and c.id = nullif(target ->> 'customer_id', '')::uuid), '{}')))
  on conflict (tenant_id, user_id, step_key) where step_key is not null do nothing;
  get diagnostics n = row_count;
  return n;
end;
$$;
grant execute on function private.crm_notify(uuid, jsonb, text, text, text, jsonb, uuid, text) to service_role;

-- Notifications reach the user's private topic at once (insert) and their other screens on read.
-- Trigger crm_notification_broadcast on public.notifications; first in migrations/20261124020000_crm.sql.
create or replace function private.crm_notification_broadcast() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' then
    perform private.broadcast('user:' || new.user_id, 'notification',
      jsonb_build_object('id', new.id, 'kind', new.kind, 'title', new.title, 'body', new.body, 'data', new.data,
                         'customer_id', new.customer_id, 'created_at', new.created_at, 'read_at', new.read_at));
  elsif new.read_at is distinct from old.read_at then
    perform private.broadcast('user:' || new.user_id, 'notification_read',
      jsonb_build_object('id', new.id, 'read_at', new.read_at));
  end if;
  return null;
end;
$$;

create or replace function public.send_notification(target jsonb, title text, body text default null,
                                                    customer uuid default null, data jsonb default '{}')
returns int
language plpgsql
security definer
set search_path = ''
as $$
declare
  tenant uuid := private.crm_require_tenant();
begin
  if not private.can('crm', 'write') then
    raise exception 'no permission to notify' using errcode = '42501';
  end if;
  if customer is not null and not private.crm_can_see_customer(customer) then
    raise exception 'customer not found' using errcode = 'P0002';
  end if;
  return private.crm_notify(tenant, target, 'message', title, body,
    coalesce(data, '{}') || jsonb_build_object('from', (select auth.uid())), customer);
end;
$$;

-- Mark your notifications read (all when ids is null). The read state reaches your other screens.
create or replace function public.mark_notifications_read(ids uuid[] default null) returns int
language plpgsql
set search_path = ''
as $$
declare
  n int;
begin
  update public.notifications set read_at = now()
  where user_id = (select auth.uid()) and read_at is null and (ids is null or id = any(ids));
  get diagnostics n = row_count;
  return n;
end;
$$;
revoke execute on function public.send_notification(jsonb, text, text, uuid, jsonb), public.mark_notifications_read(uuid[]) from public, anon;
grant execute on function public.send_notification(jsonb, text, text, uuid, jsonb), public.mark_notifications_read(uuid[])
  to authenticated, service_role;

-- Worker: due reminders become notifications for their owners (skip locked: workers never collide).
create or replace function private.crm_fire_due_reminders(n int default 500) returns int
language plpgsql
set search_path = ''
as $$
declare
  fired int;
begin
  with due as (
    select r.* from public.reminders r
    where r.due_at <= now() and r.done_at is null and r.notified_at is null
    order by r.due_at
    for update skip locked
    limit n
  ), marked as (
    update public.reminders r set notified_at = now() from due where r.id = due.id returning due.*
  )
  insert into public.notifications (tenant_id, user_id, kind, title, body, data, customer_id)
  select m.tenant_id, m.owner_id, 'reminder_due', m.title,
         (select c.full_name from public.customers c where c.id = m.customer_id),
         jsonb_build_object('reminder_id', m.id, 'due_at', m.due_at, 'card_id', m.card_id), m.customer_id
  from marked m;
  get diagnostics fired = row_count;
  return fired;
end;
$$;
grant execute on function private.crm_fire_due_reminders(int) to service_role;

-- Reminders: set and done go to the timeline; the owner is a member; a new due time reminds again.
-- Triggers crm_reminder_before / crm_reminder_after on public.reminders; first in migrations/20261124020000_crm.sql.
create or replace function private.crm_reminder_before() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' then
    new.created_by := coalesce(new.created_by, (select auth.uid()));
  end if;
  if not private.crm_members_ok(new.tenant_id, array[new.owner_id]) then
    raise exception 'the reminder owner must be a member of the tenant' using errcode = 'PT422', detail = 'code=invalid_owner';
  end if;
  if tg_op = 'UPDATE' and new.due_at is distinct from old.due_at then
    new.notified_at := null;  -- rescheduled: remind again
  end if;
  return new;
end;
$$;

create or replace function private.crm_reminder_after() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if new.customer_id is not null and (tg_op = 'INSERT' or (new.done_at is not null and old.done_at is null)) then
    perform private.crm_timeline(new.tenant_id, new.customer_id,
      case when tg_op = 'INSERT' then 'reminder_set' else 'reminder_done' end,
      jsonb_build_object('reminder_id', new.id, 'title', new.title, 'due_at', new.due_at, 'owner_id', new.owner_id),
      new.card_id);
  end if;
  return null;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Sales rep assignment (round robin or region / source / campaign rules, per tenant)
-- ---------------------------------------------------------------------------------------------
create or replace function private.crm_pick_rep(tenant uuid, context jsonb default '{}') returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  cfg public.crm_settings;
  rep uuid;
begin
  select * into cfg from public.crm_settings s where s.tenant_id = tenant for update;
  if not found then
    insert into public.crm_settings (tenant_id) values (tenant) on conflict (tenant_id) do nothing;
    select * into cfg from public.crm_settings s where s.tenant_id = tenant for update;
  end if;
  if cfg.assignment_mode = 'rules' then
    select r.assignee into rep from public.assignment_rules r
    join public.tenant_members m on m.tenant_id = r.tenant_id and m.user_id = r.assignee and m.active
    where r.tenant_id = tenant and r.active and coalesce(context, '{}') @> r.match
    order by r.priority, r.created_at limit 1;
    if rep is not null then
      return rep;
    end if;
  end if;
  if not private.feature_enabled(tenant, 'crm.round_robin') then
    return null;
  end if;
  select m.user_id into rep from public.tenant_members m
  where m.tenant_id = tenant and m.active and m.role = any(cfg.rep_roles)
    and coalesce(m.attributes ->> 'sales_rep', 'true') <> 'false'
  order by (cfg.round_robin_last is not null and m.user_id > cfg.round_robin_last) desc, m.user_id
  limit 1;
  if rep is not null then
    update public.crm_settings set round_robin_last = rep where id = cfg.id;
  end if;
  return rep;
end;
$$;
grant execute on function private.crm_pick_rep(uuid, jsonb) to service_role;

-- ---------------------------------------------------------------------------------------------
-- Activities, notes, work orders and the timeline: the rules their triggers apply (the triggers:
-- restated table by table in migrations/20261204030100_crm_chapters.sql;
-- first defined in migrations/20261124020000_crm.sql)
-- ---------------------------------------------------------------------------------------------

-- Only a merge may re-point an event (to the surviving customer); nothing else changes history.
create or replace function private.crm_timeline_guard() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if current_setting('luna.crm_merge', true) = 'on'
     and (to_jsonb(new) - 'customer_id' - 'card_id' - 'updated_at') = (to_jsonb(old) - 'customer_id' - 'card_id' - 'updated_at') then
    new.updated_at := now();
    return new;
  end if;
  raise exception 'timeline events are append-only' using errcode = 'PT409', detail = 'code=timeline_append_only';
end;
$$;

-- Activities: opened and completed write the timeline; an appointment updates the card.
create or replace function private.crm_activity_before() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  closable boolean;
begin
  if tg_op = 'INSERT' then
    new.created_by := coalesce(new.created_by, (select auth.uid()));
    new.assigned_to := coalesce(new.assigned_to, (select auth.uid()));
  end if;
  if new.status <> 'open' and (tg_op = 'INSERT' or old.status = 'open') then
    select t.closable into closable from public.activity_types t where t.id = new.type_id;
    if not coalesce(closable, true) then
      raise exception 'this activity type cannot be closed' using errcode = 'PT422', detail = 'code=not_closable';
    end if;
    new.closed_at := coalesce(new.closed_at, now());
    new.closed_by := coalesce(new.closed_by, (select auth.uid()));
  elsif new.status = 'open' then
    new.closed_at := null;
    new.closed_by := null;
  end if;
  return new;
end;
$$;

-- Activities: the timeline entries of an opened / completed activity; an appointment sets its card's date.
create or replace function private.crm_activity_after() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  t public.activity_types;
begin
  select * into t from public.activity_types where id = new.type_id;
  if tg_op = 'INSERT' then
    perform private.crm_timeline(new.tenant_id, new.customer_id, t.opened_event,
      jsonb_build_object('activity_type', t.key, 'title', coalesce(new.title, t.name), 'scheduled_at', new.scheduled_at,
                         'assigned_to', new.assigned_to), new.card_id, new.id);
    if t.key in ('call', 'first_meeting') then
      update public.customers set last_contact_at = now() where id = new.customer_id;
    end if;
  end if;
  if new.status <> 'open' and (tg_op = 'INSERT' or old.status = 'open') then
    perform private.crm_timeline(new.tenant_id, new.customer_id, 'activity_completed',
      jsonb_build_object('activity_type', t.key, 'title', coalesce(new.title, t.name), 'status', new.status,
                         'result', new.result), new.card_id, new.id);
  end if;
  if t.key = 'appointment' and new.card_id is not null and new.status = 'open' then
    update public.cards set appointment_at = new.scheduled_at
    where id = new.card_id and appointment_at is distinct from new.scheduled_at;
  end if;
  return null;
end;
$$;

-- Notes: the author is the caller; a note goes to the timeline.
create or replace function private.crm_note_before() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.author_id := coalesce(new.author_id, (select auth.uid()));
  return new;
end;
$$;

create or replace function private.crm_note_after() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform private.crm_timeline(new.tenant_id, new.customer_id, 'note_added',
    jsonb_build_object('note_id', new.id, 'excerpt', left(new.body, 140)), new.card_id);
  return null;
end;
$$;

-- Work orders: status and progress derive from the steps; completing a step records who and when.
create or replace function private.crm_step_before() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if new.done_at is not null and (tg_op = 'INSERT' or old.done_at is null) then
    new.done_by := coalesce(new.done_by, (select auth.uid()));
    if new.done_by is null then
      raise exception 'a completed step names who completed it' using errcode = 'PT422', detail = 'code=done_by_required';
    end if;
  elsif new.done_at is null then
    new.done_by := null;
  end if;
  return new;
end;
$$;

create or replace function private.crm_step_after() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  wo uuid := coalesce(new.work_order_id, old.work_order_id);
  total int;
  done int;
begin
  select count(*), count(s.done_at) into total, done from public.work_order_steps s where s.work_order_id = wo;
  update public.work_orders w
  set progress = case when total = 0 then 0 else round(100.0 * done / total, 2) end,
      status = case when w.status = 'cancelled' then 'cancelled'
                    when total > 0 and done = total then 'done'
                    when done > 0 then 'in_progress' else 'open' end
  where w.id = wo;
  return null;
end;
$$;

-- Work orders: start open at 0 %; responsibles are members of the tenant.
create or replace function private.crm_work_order_before() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' then
    new.created_by := coalesce(new.created_by, (select auth.uid()));
    new.progress := 0;
    new.status := case when new.status = 'cancelled' then 'cancelled' else 'open' end;
  end if;
  if not private.crm_members_ok(new.tenant_id, new.responsibles) then
    raise exception 'responsibles must be members of the tenant' using errcode = 'PT422', detail = 'code=invalid_responsible';
  end if;
  return new;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- User management (audited)
-- ---------------------------------------------------------------------------------------------
create or replace function private.crm_owner_guard(tenant uuid, target uuid) returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  if exists (select 1 from public.tenant_members m where m.tenant_id = tenant and m.user_id = target and m.role = 'owner' and m.active)
     and (select count(*) from public.tenant_members m where m.tenant_id = tenant and m.role = 'owner' and m.active) <= 1 then
    raise exception 'the tenant needs at least one active owner' using errcode = 'PT409', detail = 'code=last_owner';
  end if;
end;
$$;

create or replace function public.invite_member(email text, role public.member_role default 'agent', full_name text default null)
returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  tenant uuid := private.crm_require_tenant();
  e text := private.crm_email(email);
  uid uuid;
  member public.tenant_members;
begin
  if not private.can('team', 'manage') then
    raise exception 'inviting needs the team manage permission' using errcode = '42501';
  end if;
  if role = 'owner' and private.tenant_role() <> 'owner' then
    raise exception 'only owners make owners' using errcode = 'PT403', detail = 'code=owner_required';
  end if;
  if e is null then
    raise exception 'e-mail is not valid' using errcode = 'PT422', detail = 'code=invalid_email';
  end if;
  select u.id into uid from auth.users u where lower(u.email) = e;
  if uid is null then
    -- Locally the shim's auth.users; on Supabase the edge may call the Auth admin invite API instead
    -- and then call this function, which finds the user.
    insert into auth.users (id, aud, role, email, raw_user_meta_data, raw_app_meta_data)
    values (gen_random_uuid(), 'authenticated', 'authenticated', e,
            jsonb_build_object('full_name', coalesce(full_name, e)), jsonb_build_object('tenant_id', tenant))
    returning id into uid;
  end if;
  insert into public.tenant_members (tenant_id, user_id, role, active)
  values (tenant, uid, role, true)
  on conflict (tenant_id, user_id) do update set role = excluded.role, active = true
  returning * into member;
  perform audit.record(tenant, 'member.invite', 'tenant_members', member.id::text, null,
    jsonb_build_object('user_id', uid, 'email', e, 'role', role));
  return uid;
end;
$$;

create or replace function public.deactivate_member(user_id uuid) returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  tenant uuid := private.crm_require_tenant();
  before public.tenant_members;
begin
  if not private.can('team', 'manage') then
    raise exception 'deactivating needs the team manage permission' using errcode = '42501';
  end if;
  if user_id = (select auth.uid()) then
    raise exception 'you cannot deactivate yourself' using errcode = 'PT409', detail = 'code=self';
  end if;
  select * into before from public.tenant_members m where m.tenant_id = tenant and m.user_id = deactivate_member.user_id;
  if not found then
    raise exception 'member not found' using errcode = 'P0002';
  end if;
  if before.role = 'owner' and private.tenant_role() <> 'owner' then
    raise exception 'only owners deactivate owners' using errcode = 'PT403', detail = 'code=owner_required';
  end if;
  perform private.crm_owner_guard(tenant, user_id);
  update public.tenant_members m set active = false where m.id = before.id;
  perform audit.record(tenant, 'member.deactivate', 'tenant_members', before.id::text,
    jsonb_build_object('user_id', user_id, 'role', before.role, 'active', before.active),
    jsonb_build_object('user_id', user_id, 'role', before.role, 'active', false));
end;
$$;

create or replace function public.change_member_role(user_id uuid, role public.member_role) returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  tenant uuid := private.crm_require_tenant();
  before public.tenant_members;
begin
  if not private.can('team', 'manage') then
    raise exception 'changing roles needs the team manage permission' using errcode = '42501';
  end if;
  select * into before from public.tenant_members m where m.tenant_id = tenant and m.user_id = change_member_role.user_id;
  if not found then
    raise exception 'member not found' using errcode = 'P0002';
  end if;
  if (role = 'owner' or before.role = 'owner') and private.tenant_role() <> 'owner' then
    raise exception 'only owners make or unmake owners' using errcode = 'PT403', detail = 'code=owner_required';
  end if;
  if before.role = 'owner' and role <> 'owner' then
    perform private.crm_owner_guard(tenant, user_id);
  end if;
  update public.tenant_members m set role = change_member_role.role where m.id = before.id;
  perform audit.record(tenant, 'member.change_role', 'tenant_members', before.id::text,
    jsonb_build_object('user_id', user_id, 'role', before.role), jsonb_build_object('user_id', user_id, 'role', role));
end;
$$;
revoke execute on function public.invite_member(text, public.member_role, text), public.deactivate_member(uuid),
  public.change_member_role(uuid, public.member_role) from public, anon;
grant execute on function public.invite_member(text, public.member_role, text), public.deactivate_member(uuid),
  public.change_member_role(uuid, public.member_role) to authenticated;

-- ---------------------------------------------------------------------------------------------
-- CSV import and export (edge parses / writes the CSV; these are the rules)
-- ---------------------------------------------------------------------------------------------

/*
 * Import customers: rows = [{"line": 2, "full_name": ..., "phone": ..., "email": ..., "source": ...,
 * "campaign": ..., "utm_*": ..., "region": ..., "quality_score": ..., "tags": "a;b" | [...]}, ...].
 * Each line on its own (a bad line does not stop the others); an existing customer (same phone or
 * e-mail) is skipped or, with on_duplicate = 'update', has its blank fields filled and tags added.
 * Runs as the caller: RLS applies. Returns {"inserted", "updated", "skipped", "errors": [{"line", "code", "message"}]}.
 */
create or replace function public.crm_import_customers(rows jsonb, on_duplicate text default 'skip') returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  tenant uuid := private.crm_require_tenant();
  region text;
  r jsonb;
  p text;
  e text;
  tags text[];
  existing uuid;
  inserted int := 0;
  updated int := 0;
  skipped int := 0;
  errors jsonb := '[]';
  msg text;
  det text;
  state text;
begin
  if not private.can('crm', 'write') then
    raise exception 'importing needs the crm write permission' using errcode = '42501';
  end if;
  select t.default_region into region from public.tenants t where t.id = tenant;
  for r in select * from jsonb_array_elements(coalesce(rows, '[]')) loop
    begin
      p := nullif(trim(r ->> 'phone'), '');
      if p is not null and p !~ '^\+[1-9][0-9]{6,14}$' then
        p := private.crm_phone(p, region);
        if p is null then
          raise exception 'phone % is not a valid number', r ->> 'phone' using errcode = 'PT422', detail = 'code=invalid_phone';
        end if;
      end if;
      e := nullif(trim(r ->> 'email'), '');
      if e is not null then
        e := private.crm_email(e);
        if e is null then
          raise exception 'e-mail % is not valid', r ->> 'email' using errcode = 'PT422', detail = 'code=invalid_email';
        end if;
      end if;
      if p is null and e is null then
        raise exception 'a customer needs a phone or an e-mail' using errcode = 'PT422', detail = 'code=contact_required';
      end if;
      if nullif(trim(r ->> 'full_name'), '') is null then
        raise exception 'full_name is empty' using errcode = 'PT422', detail = 'code=name_required';
      end if;
      tags := case jsonb_typeof(r -> 'tags') when 'array' then array(select jsonb_array_elements_text(r -> 'tags'))
                   when 'string' then regexp_split_to_array(r ->> 'tags', '\s*[;,|]\s*') else '{}' end;
      select c.id into existing from public.customers c
      where c.tenant_id = tenant and ((p is not null and c.phone = p) or (e is not null and c.email = e)) limit 1;
      if existing is not null then
        if on_duplicate = 'update' then
          update public.customers c
          set email = coalesce(c.email, e), phone = coalesce(c.phone, p),
              source = coalesce(c.source, r ->> 'source'), campaign = coalesce(c.campaign, r ->> 'campaign'),
              region = coalesce(c.region, r ->> 'region'),
              tags = array(select distinct unnest(c.tags || tags))
          where c.id = existing;
          updated := updated + 1;
        else
          skipped := skipped + 1;
        end if;
        continue;
      end if;
      insert into public.customers (tenant_id, full_name, phone, email, region, source, campaign, utm_source, utm_medium,
                                    utm_campaign, utm_term, utm_content, quality_score, tags)
      values (tenant, trim(r ->> 'full_name'), p, e, r ->> 'region', coalesce(r ->> 'source', 'import'), r ->> 'campaign',
              r ->> 'utm_source', r ->> 'utm_medium', r ->> 'utm_campaign', r ->> 'utm_term', r ->> 'utm_content',
              nullif(r ->> 'quality_score', '')::int, tags);
      inserted := inserted + 1;
    exception when others then
      get stacked diagnostics msg = message_text, det = pg_exception_detail, state = returned_sqlstate;
      errors := errors || jsonb_build_object('line', r -> 'line', 'sqlstate', state, 'message', msg,
        'code', case when det like 'code=%' then split_part(substr(det, 6), ';', 1)
                     when state = '23505' then 'duplicate'
                     when state = '42501' then 'forbidden' else 'invalid' end);
    end;
  end loop;
  perform audit.record(tenant, 'import', 'customers', null, null,
    jsonb_build_object('inserted', inserted, 'updated', updated, 'skipped', skipped, 'errors', jsonb_array_length(errors)));
  return jsonb_build_object('inserted', inserted, 'updated', updated, 'skipped', skipped, 'errors', errors);
end;
$$;

create or replace function private.crm_mask_phone(p text) returns text
language sql immutable
set search_path = ''
as $$ select case when p is null then null else left(p, 4) || repeat('*', greatest(length(p) - 6, 0)) || right(p, 2) end $$;

create or replace function private.crm_mask_email(e text) returns text
language sql immutable
set search_path = ''
as $$ select case when e is null then null else left(split_part(e, '@', 1), 1) || '***@' || split_part(e, '@', 2) end $$;

create or replace function private.crm_mask_name(n text) returns text
language sql immutable
set search_path = ''
as $$
  select case when n is null then null
              when position(' ' in trim(n)) = 0 then left(trim(n), 1) || '***'
              else split_part(trim(n), ' ', 1) || ' ' || left(reverse(split_part(reverse(trim(n)), ' ', 1)), 1) || '.' end
$$;
grant execute on function private.crm_mask_phone(text), private.crm_mask_email(text), private.crm_mask_name(text)
  to authenticated, service_role;

/*
 * Export customers: the rows the caller may see (RLS), masked when asked or when the caller lacks the
 * 'pii' export permission; recorded in the audit chain (how many, masked or not, the filters).
 */
create or replace function public.crm_export_customers(mask boolean default false, filters jsonb default '{}')
returns table (id uuid, full_name text, phone text, email text, region text, source text, campaign text,
               utm_source text, utm_medium text, utm_campaign text, quality_score int, tags text,
               responsibles text, last_contact_at timestamptz, created_at timestamptz)
language plpgsql
set search_path = ''
as $$
declare
  tenant uuid := private.crm_require_tenant();
  masked boolean := coalesce(mask, false) or not private.can('pii', 'export');
  f jsonb := coalesce(filters, '{}');
  n bigint;
begin
  if not private.can('crm', 'export') then
    raise exception 'exporting needs the crm export permission' using errcode = '42501';
  end if;
  return query
    select c.id,
           -- every text cell through private.csv_text (no live formulas in a spreadsheet); the phone is
           -- E.164 by its check constraint (masked: digits and '*'), so it cannot carry a formula and stays
           -- dialable as '+90...'
           private.csv_text(case when masked then private.crm_mask_name(c.full_name) else c.full_name end),
           case when masked then private.crm_mask_phone(c.phone) else c.phone end,
           private.csv_text(case when masked then private.crm_mask_email(c.email) else c.email end),
           private.csv_text(c.region), private.csv_text(c.source), private.csv_text(c.campaign),
           private.csv_text(c.utm_source), private.csv_text(c.utm_medium), private.csv_text(c.utm_campaign),
           c.quality_score,
           private.csv_text(array_to_string(c.tags, ';')),
           private.csv_text((select string_agg(coalesce(p.email, p.id::text), ';') from public.profiles p
                             where p.id = any(c.responsibles))),
           c.last_contact_at, c.created_at
    from public.customers c
    where (f ->> 'source' is null or c.source = f ->> 'source')
      and (f ->> 'campaign' is null or c.campaign = f ->> 'campaign')
      and (f ->> 'tag' is null or lower(f ->> 'tag') = any(c.tags))
    order by c.created_at, c.id;
  get diagnostics n = row_count;
  perform audit.record(tenant, 'export', 'customers', null, null,
    jsonb_build_object('rows', n, 'masked', masked, 'filters', f));
end;
$$;
revoke execute on function public.crm_import_customers(jsonb, text), public.crm_export_customers(boolean, jsonb) from public, anon;
grant execute on function public.crm_import_customers(jsonb, text), public.crm_export_customers(boolean, jsonb) to authenticated;

-- ---------------------------------------------------------------------------------------------
-- Worker: integration hooks (Zoho outbound sync state)
-- ---------------------------------------------------------------------------------------------

-- What the Zoho sync sends for a customer (and its open deal), with the known external ids.
create or replace function private.crm_sync_payload(customer uuid) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'tenant_id', c.tenant_id, 'customer', jsonb_build_object('id', c.id, 'full_name', c.full_name, 'phone', c.phone,
      'email', c.email, 'source', c.source, 'campaign', c.campaign, 'tags', c.tags),
    'deals', coalesce((select jsonb_agg(jsonb_build_object('id', cd.id, 'stage', st.name, 'stage_kind', st.kind,
                         'value', cd.value, 'status', cd.status))
                       from public.cards cd join public.pipeline_stages st on st.id = cd.stage_id
                       where cd.customer_id = c.id), '[]'))
  from public.customers c where c.id = customer
$$;
grant execute on function private.crm_sync_payload(uuid) to service_role;

-- Service-only functions (the default grants private functions to authenticated too).
revoke execute on function private.match_or_create_customer(uuid, text, text, text, jsonb), private.crm_notify(uuid, jsonb, text, text, text, jsonb, uuid, text),
  private.crm_fire_due_reminders(int), private.crm_pick_rep(uuid, jsonb), private.crm_sync_payload(uuid),
  private.crm_owner_guard(uuid, uuid) from public, authenticated;

-- ---------------------------------------------------------------------------------------------
-- LUNA Module 4.1: a qualified lead into the CRM
-- ---------------------------------------------------------------------------------------------

/*
 * HOT: the customer is matched or created (phone / e-mail), a card opened in the tenant's default
 * pipeline's first stage (or the open one reused), a sales rep assigned (the lead's assignee, else the
 * customer's responsible, else the tenant's rules / round robin), the rep notified in-app (and by
 * e-mail / WhatsApp jobs when the tenant's CRM settings ask), the Zoho sync queued when on.
 * WARM / COLD: NURTURING. Returns {"status": "CRM_SYNCED" | "NURTURING", ...}; a failure raises
 * (PT422 with code=...), which the worker turns into CRM_ERROR with the reason.
 * Leased by the worker: the worker completes the lead with the returned status. Not leased (a person
 * retrying from SQL): the status is applied here through private.advance_lead.
 * Exactly once per lead and pass (private.step_marks 'crm_sync:<lead>:<pass>', taken in this
 * transaction): a retry after a worker died returns the first result with "replayed": true, and
 * writes no second timeline event, notification or job; the timeline event and notification carry
 * the same step key as a second guard.
 */
create or replace function private.sync_lead_to_crm(lead_id uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  l public.leads;
  cfg public.crm_settings;
  customer uuid;
  cust public.customers;
  rep uuid;
  pipe uuid;
  first_stage uuid;
  card uuid;
  card_created boolean := false;
  result jsonb;
  display_name text;
  pass int;
  step text;
  again text;
begin
  select * into l from public.leads x where x.id = lead_id;
  if not found then
    raise exception 'no lead %', lead_id using errcode = 'PT404', detail = 'code=lead_not_found';
  end if;
  if coalesce(l.claimed_status, l.processing_status) not in ('QUALIFIED', 'CRM_ERROR') then
    raise exception 'lead % is %, not QUALIFIED', lead_id, l.processing_status using errcode = 'PT409', detail = 'code=not_qualified';
  end if;
  if coalesce(l.lead_category, 'COLD') <> 'HOT' then
    result := jsonb_build_object('status', 'NURTURING', 'category', l.lead_category);
  else
    -- Once per lead and pass: a worker that died after this committed (before its batch settled)
    -- hands the lead out again, and the retry finds the step done. A later pass (the lead synced,
    -- then came back through review) is a new step.
    pass := (select count(*) from public.processing_logs g
             where g.tenant_id = l.tenant_id and g.lead_id = l.id and g.module = 'crm_sync' and g.to_status = 'CRM_SYNCED');
    step := l.id || ':' || pass;
    again := case when pass > 0 then ':' || pass else '' end;
    result := private.step_claim('crm_sync:' || step, l.tenant_id);
  end if;
  if result is not null then
    result := case when result ? 'customer_id' then result || '{"replayed": true}' else result end;
  else
    display_name := coalesce(nullif(trim(l.contact_name), ''), nullif(trim(l.company_name), ''));
    customer := private.match_or_create_customer(l.tenant_id, display_name, l.phone, l.email,
      jsonb_build_object('source', l.source, 'utm_source', l.utm_source, 'utm_medium', l.utm_medium,
                         'utm_campaign', l.utm_campaign, 'utm_term', l.utm_term, 'utm_content', l.utm_content,
                         'campaign', l.utm_campaign, 'region', l.city, 'lead_id', l.id, 'quality_score', l.luna_ai_score,
                         'company', l.company_name, 'sector', l.sector_category));
    select * into cust from public.customers c where c.id = customer;
    select * into cfg from public.crm_settings s where s.tenant_id = l.tenant_id;
    -- the rep: the lead's assignee, the customer's responsible, else rules / round robin
    rep := (select m.user_id from public.tenant_members m
            where m.tenant_id = l.tenant_id and m.active and m.user_id = l.assigned_to);
    if rep is null and cardinality(cust.responsibles) > 0 then
      rep := (select m.user_id from public.tenant_members m
              where m.tenant_id = l.tenant_id and m.active and m.user_id = any(cust.responsibles)
              order by array_position(cust.responsibles, m.user_id) limit 1);
    end if;
    if rep is null then
      rep := private.crm_pick_rep(l.tenant_id, jsonb_strip_nulls(jsonb_build_object(
        'region', l.city, 'source', l.source, 'campaign', l.utm_campaign, 'sector', l.sector_category,
        'country', l.country)));
    end if;
    if rep is null then
      raise exception 'no active sales rep to assign the lead to' using errcode = 'PT422', detail = 'code=no_rep';
    end if;
    if not rep = any(cust.responsibles) then
      update public.customers c set responsibles = c.responsibles || rep where c.id = customer;
    end if;
    update public.customers c set quality_score = greatest(c.quality_score, l.luna_ai_score),
           lead_id = coalesce(c.lead_id, l.id)
    where c.id = customer and (c.quality_score is distinct from greatest(c.quality_score, l.luna_ai_score) or c.lead_id is null);
    select p.id into pipe from public.pipelines p where p.tenant_id = l.tenant_id and p.is_default and not p.archived;
    if pipe is null then
      raise exception 'the tenant has no default pipeline' using errcode = 'PT422', detail = 'code=no_pipeline';
    end if;
    select s.id into first_stage from public.pipeline_stages s
    where s.pipeline_id = pipe and s.kind = 'open' order by s.position limit 1;
    select c.id into card from public.cards c
    where c.customer_id = customer and c.pipeline_id = pipe and c.status = 'open' limit 1;
    if card is null then
      insert into public.cards (tenant_id, pipeline_id, stage_id, customer_id, title)
      values (l.tenant_id, pipe, first_stage, customer, coalesce(l.company_name, display_name, 'Lead'))
      returning id into card;
      card_created := true;
    end if;
    perform private.crm_timeline(l.tenant_id, customer, 'lead_synced',
      jsonb_build_object('lead_id', l.id, 'category', l.lead_category, 'score', l.luna_ai_score,
                         'reason', l.luna_ai_reason, 'rep', rep, 'source', l.source), card, null, 'lead_synced:' || step);
    perform private.crm_notify(l.tenant_id, jsonb_build_object('user_id', rep), 'lead_assigned',
      'Yeni HOT lead: ' || coalesce(display_name, cust.full_name),
      concat_ws(' · ', l.company_name, cust.phone, l.source),
      jsonb_build_object('lead_id', l.id, 'card_id', card, 'score', l.luna_ai_score), customer, 'lead_assigned:' || step);
    if coalesce(cfg.notify_email, false) then
      perform private.enqueue_job('crm.notify_rep', jsonb_build_object('channel', 'email', 'rep', rep,
        'customer_id', customer, 'lead_id', l.id, 'card_id', card), l.tenant_id, now(), 'crm.notify_rep:email:' || l.id || again);
    end if;
    if coalesce(cfg.notify_whatsapp, false) then
      perform private.enqueue_job('crm.notify_rep', jsonb_build_object('channel', 'whatsapp', 'rep', rep,
        'customer_id', customer, 'lead_id', l.id, 'card_id', card), l.tenant_id, now(), 'crm.notify_rep:whatsapp:' || l.id || again);
    end if;
    if coalesce(cfg.zoho_sync, false) or private.feature_enabled(l.tenant_id, 'crm.zoho_sync') then
      perform private.enqueue_job('crm.zoho_sync', jsonb_build_object('customer_id', customer), l.tenant_id, now(),
        'crm.zoho_sync:lead:' || l.id || again);
    end if;
    update public.leads x set assigned_to = rep where x.id = l.id and x.assigned_to is distinct from rep;
    result := jsonb_build_object('status', 'CRM_SYNCED', 'customer_id', customer, 'card_id', card,
                                 'card_created', card_created, 'rep', rep);
    perform private.step_done('crm_sync:' || step, l.tenant_id, result);
  end if;
  if l.locked_until is null then
    perform private.advance_lead(l.id, result ->> 'status', 'crm_sync', 'sync', 'ok', null, result);
  end if;
  return result;
end;
$$;
revoke execute on function private.sync_lead_to_crm(uuid) from public, anon, authenticated;
grant execute on function private.sync_lead_to_crm(uuid) to service_role;

-- ---------------------------------------------------------------------------------------------
-- Worker helpers: Zoho sync state and rep notices
-- ---------------------------------------------------------------------------------------------

-- The tenant's Zoho sync: on when crm_settings.zoho_sync or the crm.zoho_sync feature is on; its config
-- ({"base_url", "access_token"}) is the feature's config.
create or replace function private.crm_zoho_config(tenant uuid) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'enabled', coalesce((select s.zoho_sync from public.crm_settings s where s.tenant_id = tenant), false)
               or private.feature_enabled(tenant, 'crm.zoho_sync'),
    'config', coalesce((select tf.config from public.tenant_features tf where tf.tenant_id = tenant and tf.feature = 'crm.zoho_sync'), '{}'))
$$;

create or replace function private.crm_external_refs_get(provider text, customer uuid) returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_object_agg(r.entity || ':' || r.entity_id, jsonb_build_object('external_id', r.external_id, 'hash', r.synced_hash)), '{}')
  from private.crm_external_refs r
  where r.provider = crm_external_refs_get.provider
    and (r.entity_id = customer or r.entity_id in (select c.id from public.cards c where c.customer_id = customer))
$$;

create or replace function private.crm_external_ref_set(tenant uuid, provider text, entity text, entity_id uuid,
                                                        external_id text, synced_hash text) returns void
language sql
set search_path = ''
as $$
  insert into private.crm_external_refs (tenant_id, provider, entity, entity_id, external_id, synced_hash)
  values (tenant, provider, entity, entity_id, external_id, synced_hash)
  on conflict (provider, entity, entity_id) do update
    set external_id = excluded.external_id, synced_hash = excluded.synced_hash, synced_at = now()
$$;

-- What a rep notice needs: the rep's address and phone, the customer, and the tenant's channel config.
create or replace function private.crm_rep_notice(tenant uuid, rep uuid, customer uuid) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'email', p.email, 'phone', p.phone, 'rep_name', p.full_name,
    'customer', (select jsonb_build_object('id', c.id, 'full_name', c.full_name, 'phone', c.phone, 'source', c.source)
                 from public.customers c where c.id = customer and c.tenant_id = tenant),
    'smtp', s.settings -> 'smtp', 'whatsapp', s.settings -> 'whatsapp')
  from public.profiles p, public.crm_settings s
  where p.id = rep and s.tenant_id = tenant
$$;
revoke execute on function private.crm_zoho_config(uuid), private.crm_external_refs_get(text, uuid),
  private.crm_external_ref_set(uuid, text, text, uuid, text, text), private.crm_rep_notice(uuid, uuid, uuid)
  from public, authenticated;
grant execute on function private.crm_zoho_config(uuid), private.crm_external_refs_get(text, uuid),
  private.crm_external_ref_set(uuid, text, text, uuid, text, text), private.crm_rep_notice(uuid, uuid, uuid) to service_role;

-- ---------------------------------------------------------------------------------------------
-- Every tenant gets the default CRM setup: on creation (trigger crm_init_tenant on public.tenants,
-- migrations/20261124020000_crm.sql, which also set up the tenants existing then)
-- ---------------------------------------------------------------------------------------------
create or replace function private.crm_setup_tenant(tenant uuid) returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  pipeline uuid;
  names text[] := array['Potansiyel', 'Görüşülüyor', 'Randevu', 'Kapora', 'Satış Tamamlandı', 'Takip Edilecek', 'Kaybedildi'];
  ids uuid[] := array[]::uuid[];
  sid uuid;
  i int;
  j int;
begin
  insert into public.crm_settings (tenant_id) values (tenant) on conflict (tenant_id) do nothing;
  insert into public.activity_types (tenant_id, key, name, opened_event, closable) values
    (tenant, 'first_meeting', 'İlk Görüşme', 'meeting_planned', true),
    (tenant, 'call', 'Arama', 'call_made', true),
    (tenant, 'appointment', 'Randevu', 'appointment_set', true),
    (tenant, 'deposit', 'Kapora', 'deposit_planned', true),
    (tenant, 'sale', 'Satış', 'sale_started', true),
    (tenant, 'no_show_followup', 'No-show Takip', 'no_show_followup_opened', true),
    (tenant, 'reapplication', 'Tekrar Başvuru', 'reapplication_opened', true)
  on conflict (tenant_id, key) do nothing;
  select p.id into pipeline from public.pipelines p where p.tenant_id = tenant and p.is_default;
  if pipeline is not null then
    return pipeline;
  end if;
  insert into public.pipelines (tenant_id, name, is_default) values (tenant, 'Satış', true) returning id into pipeline;
  for i in 1 .. array_length(names, 1) loop
    insert into public.pipeline_stages (tenant_id, pipeline_id, name, position, kind, required_fields, inventory_action)
    values (tenant, pipeline, names[i], i,
            case names[i] when 'Satış Tamamlandı' then 'won' when 'Kaybedildi' then 'lost'
                          when 'Takip Edilecek' then 'side' else 'open' end,
            case names[i] when 'Kapora' then '{deposit_amount}'::text[] when 'Kaybedildi' then '{lost_reason}'::text[]
                          else '{}'::text[] end,
            case names[i] when 'Kapora' then 'deposit' when 'Satış Tamamlandı' then 'sell'
                          when 'Kaybedildi' then 'release' end)
    returning id into sid;
    ids := ids || sid;
  end loop;
  -- the flow (1..5): forward to any later stage, back one; side exits from every open stage and
  -- back from Takip Edilecek into the flow; Kaybedildi can be reopened to Potansiyel.
  for i in 1 .. 4 loop
    for j in i + 1 .. 5 loop
      insert into public.stage_transitions (tenant_id, pipeline_id, from_stage_id, to_stage_id) values (tenant, pipeline, ids[i], ids[j]);
    end loop;
    if i > 1 then
      insert into public.stage_transitions (tenant_id, pipeline_id, from_stage_id, to_stage_id) values (tenant, pipeline, ids[i], ids[i - 1]);
    end if;
    insert into public.stage_transitions (tenant_id, pipeline_id, from_stage_id, to_stage_id) values
      (tenant, pipeline, ids[i], ids[6]), (tenant, pipeline, ids[i], ids[7]), (tenant, pipeline, ids[6], ids[i]);
  end loop;
  insert into public.stage_transitions (tenant_id, pipeline_id, from_stage_id, to_stage_id) values
    (tenant, pipeline, ids[6], ids[7]), (tenant, pipeline, ids[7], ids[1]);
  return pipeline;
end;
$$;
grant execute on function private.crm_setup_tenant(uuid) to service_role;
revoke execute on function private.crm_setup_tenant(uuid) from public, authenticated;

create or replace function private.crm_init_tenant() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform private.crm_setup_tenant(new.id);
  return null;
end;
$$;
