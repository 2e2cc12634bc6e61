-- functions/inbox/customer_messages.sql -- The CRM's view of a customer's messages, and their unread
-- count.

-- The CRM keeps customers.unread_messages "kept by the inbox": inbound messages raise it, reading
-- the conversation clears it.
create or replace function private.inbox_customer_unread(contact uuid, delta int) returns void
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  cust uuid;
begin
  select ct.customer_id into cust from public.contacts ct where ct.id = contact;
  if cust is null then
    return;
  end if;
  if delta is null then
    update public.customers cu set unread_messages = 0 where cu.id = cust and cu.unread_messages <> 0;
  else
    update public.customers cu set unread_messages = greatest(cu.unread_messages + delta, 0) where cu.id = cust;
  end if;
end;
$$;
grant execute on function private.inbox_customer_unread(uuid, int) to service_role;

-- For the CRM's customer viewer: a customer's messages by channel (contacts linked to the customer,
-- or to the lead it came from), the newest per_channel of each channel (at most 200; order created_at
-- desc, id desc, across the channel's conversations). {"whatsapp": [{id, direction, type, body, at, status}], ...}
create or replace function private.inbox_customer_messages(customer uuid, per_channel int default 50) returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  cust_lead uuid;
  result jsonb;
  is_user boolean := coalesce(current_setting('role', true), 'none') not in ('service_role', 'none');
  caller_tenant uuid := (select private.tenant_id());
  n int := least(greatest(coalesce(per_channel, 50), 1), 201);
begin
  -- Users: only their active tenant, with the inbox read permission; service code: any.
  if is_user and (caller_tenant is null or not (select private.can('inbox', 'read'))) then
    return '{}'::jsonb;
  end if;
  select cu.lead_id into cust_lead from public.customers cu where cu.id = customer;
  select coalesce(jsonb_object_agg(channel, msgs), '{}'::jsonb) into result
  from (
    select r.channel, jsonb_agg(jsonb_build_object('id', r.id, 'conversation_id', r.conversation_id,
             'direction', r.direction, 'type', r.type, 'body', r.body, 'at', r.created_at, 'status', r.status)
             order by r.created_at desc, r.id desc) as msgs
    from (
      select ct.channel, m.*, row_number() over (partition by ct.channel order by m.created_at desc, m.id desc) as rn
      from public.contacts ct
      join public.conversations v on v.tenant_id = ct.tenant_id and v.contact_id = ct.id
      join lateral (select * from public.messages m where m.tenant_id = v.tenant_id and m.conversation_id = v.id
                      and m.direction <> 'internal'
                    order by m.created_at desc, m.id desc limit n) m on true
      where (ct.customer_id = customer or (cust_lead is not null and ct.lead_id = cust_lead))
        and (not is_user or ct.tenant_id = caller_tenant)
        -- a caller limited to assigned conversations sees only those
        and (not is_user or (select private.sees_all()) or v.assignee_id = (select auth.uid()))
    ) r
    where r.rn <= n
    group by r.channel) x;
  return result;
end;
$$;
grant execute on function private.inbox_customer_messages(uuid, int) to authenticated, service_role;

-- ---- Pagination (issue 10, item 8) ------------------------------------------------------------
-- Keyset pages, never OFFSET; cursors are opaque text (base64url of {"l": list, "c": scope, "k": [keys of
-- the last row shown]}), refused with PT422 invalid_cursor when they are not this list's. Security
-- invoker: RLS (conversation visibility, the assigned-only restriction) decides what a caller sees.

-- Helper of public.customer_page(customer, 'messages', cursor, limit, channel): up to "limit" of the
-- customer's messages on one channel after the keys `after` ([created_at, id] of the last one shown,
-- or null), newest first, each with its keys under "_k". Same rows as inbox_customer_messages.
create or replace function public.customer_messages(customer uuid, channel text, after jsonb default null,
                                                    "limit" int default 51)
returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  cust_lead uuid;
  result jsonb;
  n int := least(greatest(coalesce("limit", 51), 1), 201);
begin
  select cu.lead_id into cust_lead from public.customers cu where cu.id = customer;
  select jsonb_agg(jsonb_build_object('id', r.id, 'conversation_id', r.conversation_id, 'direction', r.direction,
           'type', r.type, 'body', r.body, 'at', r.created_at, 'status', r.status,
           '_k', jsonb_build_array(r.created_at, r.id)) order by r.created_at desc, r.id desc) into result
  from (select m.* from public.contacts ct
        join public.conversations v on v.tenant_id = ct.tenant_id and v.contact_id = ct.id
        join public.messages m on m.tenant_id = v.tenant_id and m.conversation_id = v.id
        where ct.channel = customer_messages.channel
          and (ct.customer_id = customer or (cust_lead is not null and ct.lead_id = cust_lead))
          and m.direction <> 'internal'
          and (after is null or (m.created_at, m.id) < ((after ->> 0)::timestamptz, (after ->> 1)::uuid))
        order by m.created_at desc, m.id desc limit n) r;
  return coalesce(result, '[]'::jsonb);
end;
$$;
revoke execute on function public.customer_messages(uuid, text, jsonb, int) from public, anon;
grant execute on function public.customer_messages(uuid, text, jsonb, int) to authenticated, service_role;
