-- functions/crm/setup.sql -- A new tenant's CRM: the default pipeline, stages, transitions and activity
-- types.

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
