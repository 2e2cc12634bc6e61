/*
 * Tenant secrets (issue 10, item 3): provider keys, tokens, passwords and webhook URLs leave the JSON
 * settings every member can read (tenant_features.config, crm_settings.settings, lead_sources.config) for
 * private.tenant_secrets, which no API role can read.
 *
 *   name        '<scope>:<path>' — scope is the feature key (tenant_features), 'crm_settings', or
 *               'lead_source.<source id>'; path is the JSON key path joined by '.'
 *               e.g. 'leads.enrich.apollo:api_key', 'leads.alerts.slack:webhook_url',
 *               'crm_settings:smtp.password', 'lead_source.<uuid>:access_token'
 *   ciphertext  'fernet:<token>' or 'vault:<secret uuid>' (luna/secrets.py), or 'pending:<value>' for a
 *               value written by SQL without Vault: `luna secrets migrate` (run by `luna up`) and the first
 *               read by the worker encrypt it in place.
 *
 * A trigger on the three tables moves every secret-looking key (private.is_secret_key) out of the JSON
 * before the row is stored, whoever writes it (PostgREST, an RPC, SQL), so neither the table, a view, an
 * RPC nor the audit trail of the row sees it. The write path is PUT /v1/secrets/{name} or
 * `luna secrets set`; the worker reads with luna.secrets.tenant_secret(). Existing rows are moved below.
 */

create table private.tenant_secrets (
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  name text not null check (name ~ '^[a-z0-9_][a-z0-9_.:\-]{0,199}$'),
  ciphertext text not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, name)
);
revoke all on private.tenant_secrets from public, anon, authenticated;
grant all on private.tenant_secrets to service_role;

-- A JSON key whose value is a credential (the same rule as luna.secrets.is_secret_key).
create or replace function private.is_secret_key(key text) returns boolean
language sql immutable
set search_path = ''
as $$
  select lower(coalesce(key, '')) ~ '(key|token|secret|password|passwd|pwd|webhook_url|webhook|hook_url|credential|credentials|dsn|auth)$'
$$;

-- Every (path, text value) of a secret key in a JSON document, nested objects included.
create or replace function private.secret_paths(doc jsonb) returns table (path text[], value text)
language sql immutable
set search_path = ''
as $$
  with recursive walk (path, value) as (
    select array[e.key], e.value
    from jsonb_each(case when jsonb_typeof(doc) = 'object' then doc else '{}'::jsonb end) e
    union all
    select w.path || e.key, e.value
    from walk w, jsonb_each(w.value) e
    where jsonb_typeof(w.value) = 'object' and not private.is_secret_key(w.path[cardinality(w.path)])
  )
  select w.path, case when jsonb_typeof(w.value) = 'string' then w.value #>> '{}' else w.value::text end
  from walk w
  where private.is_secret_key(w.path[cardinality(w.path)])
$$;

-- Store one tenant secret given in plain text from SQL: into Vault when present, else pending encryption.
create or replace function private.put_tenant_secret_plain(tenant uuid, secret_name text, plain text) returns void
language plpgsql
security definer
set search_path = ''
as $$
declare stored text;
begin
  if to_regclass('vault.decrypted_secrets') is not null then
    execute 'select ''vault:'' || vault.create_secret($1, $2)::text' into stored
      using plain, 'tenant:' || tenant || ':' || secret_name || ':' || gen_random_uuid();
  else
    stored := 'pending:' || plain;
  end if;
  insert into private.tenant_secrets (tenant_id, name, ciphertext) values (tenant, secret_name, stored)
  on conflict (tenant_id, name) do update set ciphertext = excluded.ciphertext, updated_at = now();
end;
$$;

-- Move the secret keys of a JSON document into the store; returns the document without them.
create or replace function private.seal_json_secrets(tenant uuid, scope text, doc jsonb) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare s record;
begin
  if doc is null or jsonb_typeof(doc) <> 'object' then
    return doc;
  end if;
  for s in select * from private.secret_paths(doc) loop
    if s.value is not null and s.value not in ('', 'null') then
      perform private.put_tenant_secret_plain(tenant, scope || ':' || array_to_string(s.path, '.'), s.value);
    end if;
    doc := doc #- s.path;
  end loop;
  return doc;
end;
$$;

-- Trigger arguments: the JSON column, then how the scope is named: 'feature' (the row's feature key),
-- 'row:<prefix>' ('<prefix>.<row id>') or 'table:<name>' (one settings row per tenant).
create or replace function private.strip_config_secrets() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  col text := tg_argv[0];
  kind text := split_part(tg_argv[1], ':', 1);
  label text := split_part(tg_argv[1], ':', 2);
  rec jsonb := to_jsonb(new);
  tenant uuid := coalesce(rec ->> 'tenant_id', rec ->> 'id')::uuid;
  scope text;
  doc jsonb;
begin
  if not exists (select 1 from private.secret_paths(rec -> col)) then
    return new;
  end if;
  scope := case kind when 'feature' then rec ->> 'feature'
                     when 'row' then label || '.' || (rec ->> 'id')
                     else label end;
  doc := private.seal_json_secrets(tenant, scope, rec -> col);
  new := jsonb_populate_record(new, jsonb_build_object(col, doc));
  return new;
end;
$$;

-- Every JSON settings column members can read.
create trigger strip_secrets before insert or update on public.tenant_features
  for each row execute function private.strip_config_secrets('config', 'feature');
create trigger strip_secrets before insert or update on public.lead_sources
  for each row execute function private.strip_config_secrets('config', 'row:lead_source');
create trigger strip_secrets before insert or update on public.crm_settings
  for each row execute function private.strip_config_secrets('settings', 'table:crm_settings');
create trigger strip_secrets before insert or update on public.channel_accounts
  for each row execute function private.strip_config_secrets('settings', 'row:channel');
create trigger strip_secrets before update on public.tenants
  for each row execute function private.strip_config_secrets('settings', 'table:tenant');
create trigger strip_secrets before insert or update on public.tenant_policies
  for each row execute function private.strip_config_secrets('settings', 'table:tenant_policies');

-- The API's write path (PUT/DELETE /v1/secrets/{name}, as the signed-in user): owners and admins of the
-- caller's tenant only; the value arrives already encrypted by edge (luna.secrets) and is never returned.
create or replace function private.require_secret_admin() returns uuid
language plpgsql stable
security definer
set search_path = ''
as $$
declare tenant uuid := private.tenant_id();
begin
  if tenant is null or coalesce(private.tenant_role()::text, '') not in ('owner', 'admin') then
    raise exception 'only owners and admins manage secrets' using errcode = 'PT403', detail = 'code=admin_required';
  end if;
  return tenant;
end;
$$;

create or replace function public.tenant_secret_names() returns table (name text, updated_at timestamptz)
language plpgsql stable
security definer
set search_path = ''
as $$
declare tenant uuid := private.require_secret_admin();
begin
  return query select s.name, s.updated_at from private.tenant_secrets s where s.tenant_id = tenant order by s.name;
end;
$$;

create or replace function public.set_tenant_secret(secret_name text, stored text) returns void
language plpgsql
security definer
set search_path = ''
as $$
declare tenant uuid := private.require_secret_admin();
begin
  if secret_name is null or secret_name !~ '^[a-z0-9_][a-z0-9_.:\-]{0,199}$' or position(':' in secret_name) = 0 then
    raise exception 'a secret name is <scope>:<key>, e.g. leads.enrich.apollo:api_key'
      using errcode = 'PT422', detail = 'code=invalid_secret_name';
  end if;
  if stored is null or stored !~ '^(fernet|vault):' then
    raise exception 'secrets are stored encrypted' using errcode = 'PT422', detail = 'code=not_encrypted';
  end if;
  insert into private.tenant_secrets (tenant_id, name, ciphertext) values (tenant, secret_name, stored)
  on conflict (tenant_id, name) do update set ciphertext = excluded.ciphertext, updated_at = now();
  perform audit.record(tenant, 'secret.set', 'tenant_secret', secret_name, null, jsonb_build_object('name', secret_name));
end;
$$;

create or replace function public.delete_tenant_secret(secret_name text) returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare tenant uuid := private.require_secret_admin();
begin
  delete from private.tenant_secrets s where s.tenant_id = tenant and s.name = secret_name;
  if not found then
    return false;
  end if;
  perform audit.record(tenant, 'secret.delete', 'tenant_secret', secret_name, jsonb_build_object('name', secret_name), null);
  return true;
end;
$$;

revoke execute on function private.is_secret_key(text), private.secret_paths(jsonb),
  private.put_tenant_secret_plain(uuid, text, text), private.seal_json_secrets(uuid, text, jsonb),
  private.strip_config_secrets(), private.require_secret_admin() from public, anon, authenticated;
grant execute on function private.is_secret_key(text), private.secret_paths(jsonb),
  private.put_tenant_secret_plain(uuid, text, text), private.seal_json_secrets(uuid, text, jsonb)
  to service_role;
grant execute on function private.require_secret_admin() to service_role;
revoke execute on function public.tenant_secret_names(), public.set_tenant_secret(text, text),
  public.delete_tenant_secret(text) from public, anon;
grant execute on function public.tenant_secret_names(), public.set_tenant_secret(text, text),
  public.delete_tenant_secret(text) to authenticated, service_role;

-- Existing plain-text values move now (the trigger does the work; values are blanked in the JSON).
update public.tenant_features set config = config where exists (select 1 from private.secret_paths(config));
update public.lead_sources set config = config where exists (select 1 from private.secret_paths(config));
update public.crm_settings set settings = settings where exists (select 1 from private.secret_paths(settings));
update public.channel_accounts set settings = settings where exists (select 1 from private.secret_paths(settings));
update public.tenants set settings = settings where exists (select 1 from private.secret_paths(settings));
update public.tenant_policies set settings = settings where exists (select 1 from private.secret_paths(settings));
