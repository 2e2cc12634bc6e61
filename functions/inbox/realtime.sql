-- functions/inbox/realtime.sql -- Realtime: per conversation (guarded by its visibility), per inbox,
-- typing hints.

-- ===========================================================================================
-- Realtime: per conversation (guarded by its visibility) and per inbox (those who see all).
-- ===========================================================================================
create or replace function private.can_join_inbox_topic(record_id text) returns boolean
language plpgsql stable
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  rid uuid;
begin
  begin
    rid := record_id::uuid;
  exception when others then
    return false;
  end;
  if not (select private.can('inbox', 'read')) then
    return false;
  end if;
  -- An inbox (channel account): its stream is for those who see every conversation.
  if exists (select 1 from public.channel_accounts a where a.id = rid and a.tenant_id = (select private.tenant_id())) then
    return (select private.sees_all());
  end if;
  return exists (select 1 from public.conversations c
                 where c.id = rid and c.tenant_id = (select private.tenant_id())
                   and ((select private.sees_all()) or c.assignee_id = (select auth.uid())));
end;
$$;
grant execute on function private.can_join_inbox_topic(text) to authenticated, service_role;
insert into private.topic_guards values ('inbox', 'private.can_join_inbox_topic(text)')
on conflict (area) do update set guard = excluded.guard;

create or replace function private.broadcast_message() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.conversations;
  event text := case when tg_op = 'INSERT' then 'message_created'
                     when new.deleted_at is distinct from old.deleted_at then 'message_deleted'
                     when new.edited_at is distinct from old.edited_at then 'message_edited'
                     else 'message_status' end;
  data jsonb;
begin
  if tg_op = 'UPDATE' and new.status is not distinct from old.status and new.edited_at is not distinct from old.edited_at
     and new.deleted_at is not distinct from old.deleted_at then
    return null;
  end if;
  select * into c from public.conversations where id = new.conversation_id;
  data := jsonb_build_object('conversation_id', new.conversation_id, 'message_id', new.id, 'direction', new.direction,
                             'type', new.type, 'status', new.status);
  perform private.broadcast('tenant:' || new.tenant_id || ':inbox:' || new.conversation_id, event, data);
  perform private.broadcast('tenant:' || new.tenant_id || ':inbox:' || c.channel_account_id, event, data);
  if c.assignee_id is not null and tg_op = 'INSERT' and new.direction = 'inbound' then
    perform private.broadcast('user:' || c.assignee_id, 'unread', data);
  end if;
  return null;
end;
$$;
drop trigger if exists broadcast_message on public.messages;
create trigger broadcast_message after insert or update of status, edited_at, deleted_at on public.messages
  for each row execute function private.broadcast_message();

create or replace function private.broadcast_conversation() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  data jsonb;
begin
  if new.assignee_id is not distinct from old.assignee_id and new.status is not distinct from old.status
     and new.team is not distinct from old.team then
    return null;
  end if;
  data := jsonb_build_object('conversation_id', new.id, 'status', new.status, 'assignee_id', new.assignee_id,
                             'team', new.team);
  perform private.broadcast('tenant:' || new.tenant_id || ':inbox:' || new.id, 'conversation_updated', data);
  perform private.broadcast('tenant:' || new.tenant_id || ':inbox:' || new.channel_account_id, 'conversation_updated', data);
  return null;
end;
$$;
drop trigger if exists broadcast_conversation on public.conversations;
create trigger broadcast_conversation after update on public.conversations
  for each row execute function private.broadcast_conversation();

-- Typing hints (ephemeral): broadcast only.
create or replace function public.typing(conversation uuid) returns void
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
begin
  if not private.can_join_inbox_topic(conversation::text) then
    raise exception 'conversation not found' using errcode = 'P0002';
  end if;
  perform private.broadcast('tenant:' || (select private.tenant_id()) || ':inbox:' || conversation, 'typing',
                            jsonb_build_object('user_id', (select auth.uid())));
end;
$$;
revoke execute on function public.typing(uuid) from public, anon;
grant execute on function public.typing(uuid) to authenticated;
