-- functions/crm/notifications.sql -- Notifications (targeted, broadcast per user) and due reminders.

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
grant execute on function private.crm_notify(uuid, jsonb, text, text, text, jsonb, uuid, text)
  to service_role;
revoke execute on function private.crm_notify(uuid, jsonb, text, text, text, jsonb, uuid, text)
  from public, authenticated;

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
revoke execute on function public.send_notification(jsonb, text, text, uuid, jsonb) from public, anon;
grant execute on function public.send_notification(jsonb, text, text, uuid, jsonb)
  to authenticated, service_role;

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
revoke execute on function public.mark_notifications_read(uuid[]) from public, anon;
grant execute on function public.mark_notifications_read(uuid[]) to authenticated, service_role;

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
revoke execute on function private.crm_fire_due_reminders(int) from public, authenticated;

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
