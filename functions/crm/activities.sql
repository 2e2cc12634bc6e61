-- functions/crm/activities.sql -- Activities, notes, work orders and the timeline: the rules their
-- triggers apply (tables: migrations/20261124020000_crm.sql).

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
