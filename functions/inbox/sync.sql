-- functions/inbox/sync.sql -- Channel settings and syncs for the worker: credentials, IMAP state,
-- templates, ad insights.

-- What the adapter needs to send: the channel's settings (never its credentials; the worker decrypts
-- those itself from private.channel_credentials).
create or replace function private.channel_for_worker(channel uuid)
returns table (id uuid, tenant_id uuid, kind text, external_id text, settings jsonb, sync_state jsonb, secret text)
language sql stable
set search_path = ''
as $$
  select a.id, a.tenant_id, a.kind, a.external_id, a.settings, a.sync_state, cr.secret
  from public.channel_accounts a left join private.channel_credentials cr on cr.channel_account_id = a.id
  where a.id = channel
$$;
grant execute on function private.channel_for_worker(uuid) to service_role;

-- Credentials are written through this (already encrypted by luna/secrets.py); nothing reads them back
-- except the worker's channel_for_worker.
create or replace function private.set_channel_secret(channel uuid, secret text) returns void
language sql
set search_path = ''
as $$
  insert into private.channel_credentials (channel_account_id, tenant_id, secret)
  select a.id, a.tenant_id, secret from public.channel_accounts a where a.id = channel
  on conflict (channel_account_id) do update set secret = excluded.secret, updated_at = now()
$$;
grant execute on function private.set_channel_secret(uuid, text) to service_role;

-- IMAP sync position per folder.
create or replace function private.save_sync_state(channel uuid, folder text, state jsonb) returns void
language sql
set search_path = ''
as $$
  update public.channel_accounts set sync_state = sync_state || jsonb_build_object(folder, state) where id = channel
$$;
grant execute on function private.save_sync_state(uuid, text, jsonb) to service_role;

-- Templates synced from WhatsApp (GET /{waba-id}/message_templates): upsert by name + language.
create or replace function private.upsert_templates(channel uuid, templates jsonb) returns int
language sql
set search_path = ''
as $$
  with ins as (
    insert into public.message_templates (tenant_id, channel_account_id, name, language, category, status, components,
                                          variables, provider_template_id, rejected_reason, synced_at)
    select a.tenant_id, a.id, t ->> 'name', t ->> 'language', coalesce(t ->> 'category', 'UTILITY'),
           coalesce(t ->> 'status', 'PENDING'), coalesce(t -> 'components', '[]'),
           (select count(*) from regexp_matches(coalesce((select c ->> 'text' from jsonb_array_elements(t -> 'components') c
                                                          where c ->> 'type' = 'BODY' limit 1), ''), '\{\{\d+\}\}', 'g'))::int,
           t ->> 'id', t ->> 'rejected_reason', now()
    from public.channel_accounts a, jsonb_array_elements(templates) t
    where a.id = channel
    on conflict (tenant_id, channel_account_id, name, language) do update
      set status = excluded.status, category = excluded.category, components = excluded.components,
          variables = excluded.variables, provider_template_id = excluded.provider_template_id,
          rejected_reason = excluded.rejected_reason, synced_at = now()
    returning 1
  )
  select count(*)::int from ins
$$;
grant execute on function private.upsert_templates(uuid, jsonb) to service_role;

-- Meta Marketing API insights (rows of GET /act_<id>/insights?level=...&time_increment=1).
create or replace function private.upsert_ad_insights(ad_account uuid, level text, rows jsonb) returns int
language sql
set search_path = ''
as $$
  with objs as (
    -- The campaign / ad set / ad hierarchy named by the rows (each object once).
    insert into public.ad_objects (tenant_id, ad_account_id, level, external_id, parent_external_id, name)
    select distinct on (o.level, o.external_id) a.tenant_id, a.id, o.level, o.external_id, o.parent, o.name
    from public.ad_accounts a, jsonb_array_elements(rows) r,
         lateral (values ('campaign', r ->> 'campaign_id', null, r ->> 'campaign_name'),
                         ('adset', r ->> 'adset_id', r ->> 'campaign_id', r ->> 'adset_name'),
                         ('ad', r ->> 'ad_id', r ->> 'adset_id', r ->> 'ad_name')) as o(level, external_id, parent, name)
    where a.id = ad_account and o.external_id is not null
    order by o.level, o.external_id
    on conflict (tenant_id, level, external_id) do update
      set name = coalesce(excluded.name, public.ad_objects.name),
          parent_external_id = coalesce(excluded.parent_external_id, public.ad_objects.parent_external_id)
    returning 1
  ), ins as (
    insert into public.ad_insights_daily (tenant_id, ad_account_id, level, external_id, day, impressions, clicks, spend, actions)
    select a.tenant_id, a.id, level, r ->> (level || '_id'), (r ->> 'date_start')::date,
           coalesce((r ->> 'impressions')::bigint, 0), coalesce((r ->> 'clicks')::bigint, 0),
           coalesce((r ->> 'spend')::numeric, 0), coalesce(r -> 'actions', '[]')
    from public.ad_accounts a, jsonb_array_elements(rows) r where a.id = ad_account
    on conflict (tenant_id, level, external_id, day) do update
      set impressions = excluded.impressions, clicks = excluded.clicks, spend = excluded.spend, actions = excluded.actions
    returning 1
  )
  select (select count(*)::int from ins) + 0 * (select count(*)::int from objs)
$$;
grant execute on function private.upsert_ad_insights(uuid, text, jsonb) to service_role;
