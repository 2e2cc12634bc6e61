-- functions/crm/assignment.sql -- Sales rep assignment: round robin or region / source / campaign rules,
-- per tenant.

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
revoke execute on function private.crm_pick_rep(uuid, jsonb) from public, authenticated;
