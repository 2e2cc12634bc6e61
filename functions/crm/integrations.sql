-- functions/crm/integrations.sql -- Worker helpers: the Zoho sync's payload, config and external ids; rep
-- notices.

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
revoke execute on function private.crm_sync_payload(uuid) from public, authenticated;

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
revoke execute on function private.crm_zoho_config(uuid) from public, authenticated;
grant execute on function private.crm_zoho_config(uuid) to service_role;

create or replace function private.crm_external_refs_get(provider text, customer uuid) returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_object_agg(r.entity || ':' || r.entity_id, jsonb_build_object('external_id', r.external_id, 'hash', r.synced_hash)), '{}')
  from private.crm_external_refs r
  where r.provider = crm_external_refs_get.provider
    and (r.entity_id = customer or r.entity_id in (select c.id from public.cards c where c.customer_id = customer))
$$;
revoke execute on function private.crm_external_refs_get(text, uuid) from public, authenticated;
grant execute on function private.crm_external_refs_get(text, uuid) to service_role;

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
revoke execute on function private.crm_external_ref_set(uuid, text, text, uuid, text, text)
  from public, authenticated;
grant execute on function private.crm_external_ref_set(uuid, text, text, uuid, text, text) to service_role;

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
revoke execute on function private.crm_rep_notice(uuid, uuid, uuid) from public, authenticated;
grant execute on function private.crm_rep_notice(uuid, uuid, uuid) to service_role;
