/*
 * Core RPCs: tenancy and features. Security invoker unless stated; RLS decides.
 */

-- The tenants the caller belongs to, for a tenant switcher (the token then carries the chosen one).
create or replace function public.my_tenants()
returns table (tenant_id uuid, slug text, name text, role public.member_role, active boolean)
language sql stable
security definer
set search_path = ''
as $$
  select t.id, t.slug, t.name, m.role, m.active
  from public.tenant_members m join public.tenants t on t.id = m.tenant_id
  where m.user_id = (select auth.uid())
  order by t.name
$$;
revoke execute on function public.my_tenants() from public, anon;
grant execute on function public.my_tenants() to authenticated;

-- Switch a feature on or off for the caller's tenant (owners and admins). Audited by the table trigger.
create or replace function public.set_feature(feature text, enabled boolean, config jsonb default null)
returns public.tenant_features
language plpgsql
set search_path = ''
as $$
declare
  result public.tenant_features;
begin
  if (select private.tenant_id()) is null then
    raise exception 'no active tenant in the token' using errcode = '42501';
  end if;
  insert into public.tenant_features (tenant_id, feature, enabled, config)
  values ((select private.tenant_id()), set_feature.feature, set_feature.enabled, coalesce(set_feature.config, '{}'))
  on conflict (tenant_id, feature) do update
    set enabled = excluded.enabled, config = coalesce(set_feature.config, public.tenant_features.config)
  returning * into result;
  return result;
end;
$$;
revoke execute on function public.set_feature(text, boolean, jsonb) from public, anon;
grant execute on function public.set_feature(text, boolean, jsonb) to authenticated;

-- Resolve a tenant given as a slug or an id (CLI and service code accept either).
create or replace function private.resolve_tenant(ref text) returns uuid
language sql stable
set search_path = ''
as $$
  select t.id from public.tenants t
  where t.slug = lower(ref) or t.id::text = lower(ref)
$$;
grant execute on function private.resolve_tenant(text) to service_role;

/*
 * The one spreadsheet-safe text cell (OWASP "CSV injection"): a text that begins with =, +, -, @, a tab or a
 * carriage return is prefixed with a single quote, so Excel, LibreOffice and Sheets show it as text instead of
 * running it as a formula. Every export passes its text cells through this; numbers, dates and ids are left
 * alone (they are not text, and cannot start a formula).
 */
create or replace function private.csv_text(value text) returns text
language sql immutable parallel safe
set search_path = ''
as $$
  select case when left(value, 1) in ('=', '+', '-', '@', E'\t', E'\r') then '''' || value else value end
$$;
grant execute on function private.csv_text(text) to authenticated, service_role;

-- Keyset cursors of the paginated lists: opaque to clients, a JSON document underneath
-- ({"l": list, "c": context, "k": [sort keys of the last row shown]}), base64url without padding.
-- Each list checks the document it gets back (its list, context and key types).
create or replace function private.cursor_encode(doc jsonb) returns text
language sql immutable parallel safe
set search_path = ''
as $$
  select rtrim(translate(encode(convert_to(doc::text, 'UTF8'), 'base64'), E'+/\n', '-_'), '=')
$$;

-- The document of a cursor; raises (any error) when it is not one, for the caller to report.
create or replace function private.cursor_decode(cursor text) returns jsonb
language sql immutable parallel safe
set search_path = ''
as $$
  select convert_from(decode(rpad(translate(cursor, '-_', '+/'), (length(cursor) + 3) / 4 * 4, '='), 'base64'), 'UTF8')::jsonb
$$;
grant execute on function private.cursor_encode(jsonb), private.cursor_decode(text) to authenticated, service_role;
