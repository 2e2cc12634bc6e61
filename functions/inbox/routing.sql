-- functions/inbox/routing.sql -- Routing: assign, route by rules, transfer, status, read marks, the
-- timeline.

-- ===========================================================================================
-- Routing
-- ===========================================================================================

-- Assign (or reassign / transfer) with a timeline entry and realtime events. Internal.
create or replace function private.assign_conversation(conv uuid, assignee uuid, team text, actor uuid,
                                                       event text default 'assigned', note text default null)
returns void
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.conversations;
begin
  select * into c from public.conversations where id = conv for update;
  if c.assignee_id is not distinct from assignee and c.team is not distinct from coalesce(team, c.team) then
    return;
  end if;
  update public.conversations set assignee_id = assignee, team = coalesce(assign_conversation.team, c.team) where id = conv;
  if assignee is not null then
    update public.agent_availability set last_assigned_at = clock_timestamp()
    where tenant_id = c.tenant_id and user_id = assignee;
  end if;
  insert into public.conversation_events (tenant_id, conversation_id, event, actor_id, data)
  values (c.tenant_id, conv, event, actor, jsonb_strip_nulls(jsonb_build_object(
    'from', c.assignee_id, 'to', assignee, 'team', coalesce(assign_conversation.team, c.team), 'note', note)));
  if assignee is not null then
    perform private.broadcast('user:' || assignee, 'conversation_assigned',
                              jsonb_build_object('conversation_id', conv, 'from', c.assignee_id));
  end if;
end;
$$;
grant execute on function private.assign_conversation(uuid, uuid, text, uuid, text, text) to service_role;

-- Pick an agent for a new conversation by the first matching rule of its inbox. Returns the agent.
create or replace function private.route_conversation(conv uuid) returns uuid
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.conversations;
  rule public.routing_rules;
  chosen uuid;
begin
  select * into c from public.conversations where id = conv;
  select * into rule from public.routing_rules r
  where r.tenant_id = c.tenant_id and r.active
    and (r.channel_account_id is null or r.channel_account_id = c.channel_account_id)
    and (r.match = '{}'::jsonb
         or (r.match ? 'label' and (r.match ->> 'label') = any(c.labels))
         or (r.match ? 'channel' and (r.match ->> 'channel') = (select a.kind from public.channel_accounts a where a.id = c.channel_account_id)))
  order by r.position, (r.channel_account_id is null), r.created_at
  limit 1;
  if rule.id is null or rule.strategy = 'manual' then
    return null;
  end if;
  -- Serialise assignments per tenant so round-robin turns never collide.
  perform pg_advisory_xact_lock(hashtextextended('inbox-routing:' || c.tenant_id, 0));
  with candidates as (
    select av.user_id, av.last_assigned_at,
           (select count(*) from public.conversations o where o.tenant_id = c.tenant_id and o.assignee_id = av.user_id
              and o.status in ('open', 'pending')) as open_count, av.max_open
    from public.agent_availability av
    join public.tenant_members tm on tm.tenant_id = av.tenant_id and tm.user_id = av.user_id and tm.active
    where av.tenant_id = c.tenant_id and av.status = 'online'
      and (rule.team is null or rule.team = any(av.teams))
      and av.skills @> rule.skills
  )
  select user_id into chosen from candidates
  where open_count < max_open
  order by
    -- sticky: the agent of the contact's previous conversation first
    case when rule.strategy = 'sticky' and user_id = (
      select p.assignee_id from public.conversations p
      where p.tenant_id = c.tenant_id and p.contact_id = c.contact_id and p.id <> c.id and p.assignee_id is not null
      order by p.created_at desc limit 1) then 0 else 1 end,
    case when rule.strategy = 'least_busy' then open_count else 0 end,
    last_assigned_at nulls first, user_id
  limit 1;
  if chosen is not null then
    perform private.assign_conversation(conv, chosen, rule.team, null, 'assigned', 'rule ' || rule.strategy);
  end if;
  return chosen;
end;
$$;
grant execute on function private.route_conversation(uuid) to service_role;

-- Reassign or transfer (to another agent and/or team). Supervisors and up may move any conversation;
-- an agent may transfer one assigned to them (or unassigned, to themselves).
create or replace function public.assign_conversation(conversation uuid, assignee uuid default null,
                                                      team text default null, note text default null)
returns public.conversations
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.conversations;
  role public.member_role := (select private.tenant_role());
begin
  select * into c from public.conversations where id = conversation and tenant_id = (select private.tenant_id());
  if c.id is null then
    raise exception 'conversation not found' using errcode = 'P0002';
  end if;
  if not (select private.can('inbox', 'write')) then
    raise exception 'no permission to assign conversations' using errcode = '42501';
  end if;
  if role not in ('owner', 'admin', 'supervisor')
     and not (c.assignee_id = (select auth.uid()) or (c.assignee_id is null and assignee = (select auth.uid()))) then
    raise exception 'only supervisors may reassign a colleague''s conversation' using errcode = '42501';
  end if;
  if assignee is not null and not exists (select 1 from public.tenant_members m
                                          where m.tenant_id = c.tenant_id and m.user_id = assignee and m.active) then
    raise exception 'the assignee is not an active member of this tenant' using errcode = 'PT422', detail = 'code=invalid_assignee';
  end if;
  perform private.assign_conversation(c.id, assignee, team, (select auth.uid()),
    case when c.assignee_id is null then 'assigned' else 'transferred' end, note);
  select * into c from public.conversations where id = c.id;
  return c;
end;
$$;
revoke execute on function public.assign_conversation(uuid, uuid, text, text) from public, anon;
grant execute on function public.assign_conversation(uuid, uuid, text, text) to authenticated, service_role;

-- Change a conversation's status (open / pending / snoozed / resolved), with a timeline entry.
create or replace function public.set_conversation_status(conversation uuid, status text, snoozed_until timestamptz default null)
returns public.conversations
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.conversations;
  old text;
begin
  select c0.status into old from public.conversations c0 where c0.id = conversation;
  update public.conversations c0
  set status = set_conversation_status.status,
      snoozed_until = case when set_conversation_status.status = 'snoozed' then set_conversation_status.snoozed_until end
  where c0.id = conversation
  returning * into c;
  if c.id is null then
    raise exception 'conversation not found' using errcode = 'P0002';
  end if;
  perform private.inbox_timeline(c.tenant_id, c.id, 'status', jsonb_build_object('from', old, 'to', status));
  return c;
end;
$$;
revoke execute on function public.set_conversation_status(uuid, text, timestamptz) from public, anon;
grant execute on function public.set_conversation_status(uuid, text, timestamptz)
  to authenticated, service_role;

-- A timeline entry for a conversation of the caller's tenant (service code: any tenant).
create or replace function private.inbox_timeline(tenant uuid, conv uuid, event text, data jsonb) returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- A signed-in caller writes only its own tenant's timeline (42501 otherwise, not a silent no-op).
  perform private.assert_caller_tenant(tenant);
  insert into public.conversation_events (tenant_id, conversation_id, event, actor_id, data)
  select c.tenant_id, c.id, event, (select auth.uid()), data
  from public.conversations c
  where c.id = conv and c.tenant_id = tenant;
end;
$$;
grant execute on function private.inbox_timeline(uuid, uuid, text, jsonb) to authenticated, service_role;
grant execute on function private.inbox_timeline(uuid, uuid, text, jsonb) to service_role;

-- Mark a conversation read by the caller (unread counts are inbound messages after this).
create or replace function public.mark_conversation_read(conversation uuid) returns void
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.conversations;
begin
  select * into c from public.conversations c0 where c0.id = conversation;  -- RLS: only one you may see
  if c.id is null then
    raise exception 'conversation not found' using errcode = 'P0002';
  end if;
  insert into public.conversation_reads (tenant_id, conversation_id, user_id)
  values (c.tenant_id, c.id, (select auth.uid()))
  on conflict (conversation_id, user_id) do update set last_read_at = now();
  perform private.inbox_clear_unread(c.id);
  perform private.broadcast('user:' || (select auth.uid()), 'unread', jsonb_build_object('conversation_id', c.id, 'unread', 0));
end;
$$;
revoke execute on function public.mark_conversation_read(uuid) from public, anon;
grant execute on function public.mark_conversation_read(uuid) to authenticated;

create or replace function private.inbox_clear_unread(conv uuid) returns void
language sql
security definer
set search_path = ''
as $$
  select private.inbox_customer_unread(c.contact_id, null) from public.conversations c
  where c.id = conv
    and (coalesce(current_setting('role', true), 'none') in ('service_role', 'none') or c.tenant_id = (select private.tenant_id()))
$$;
grant execute on function private.inbox_clear_unread(uuid) to authenticated, service_role;
