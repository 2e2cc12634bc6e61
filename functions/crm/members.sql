-- functions/crm/members.sql -- User management (audited).

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
revoke execute on function private.crm_owner_guard(uuid, uuid) from public, authenticated;

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
revoke execute on function public.invite_member(text, public.member_role, text) from public, anon;
grant execute on function public.invite_member(text, public.member_role, text) to authenticated;

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
revoke execute on function public.deactivate_member(uuid) from public, anon;
grant execute on function public.deactivate_member(uuid) to authenticated;

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
revoke execute on function public.change_member_role(uuid, public.member_role) from public, anon;
grant execute on function public.change_member_role(uuid, public.member_role) to authenticated;
