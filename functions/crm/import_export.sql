-- functions/crm/import_export.sql -- CSV import and export of customers (edge parses / writes the CSV;
-- these are the rules).

-- ---------------------------------------------------------------------------------------------
-- CSV import and export (edge parses / writes the CSV; these are the rules)
-- ---------------------------------------------------------------------------------------------

/*
 * Import customers: rows = [{"line": 2, "full_name": ..., "phone": ..., "email": ..., "source": ...,
 * "campaign": ..., "utm_*": ..., "region": ..., "quality_score": ..., "tags": "a;b" | [...]}, ...].
 * Each line on its own (a bad line does not stop the others); an existing customer (same phone or
 * e-mail) is skipped or, with on_duplicate = 'update', has its blank fields filled and tags added.
 * Runs as the caller: RLS applies. Returns {"inserted", "updated", "skipped", "errors": [{"line", "code", "message"}]}.
 */
create or replace function public.crm_import_customers(rows jsonb, on_duplicate text default 'skip') returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  tenant uuid := private.crm_require_tenant();
  region text;
  r jsonb;
  p text;
  e text;
  tags text[];
  existing uuid;
  inserted int := 0;
  updated int := 0;
  skipped int := 0;
  errors jsonb := '[]';
  msg text;
  det text;
  state text;
begin
  if not private.can('crm', 'write') then
    raise exception 'importing needs the crm write permission' using errcode = '42501';
  end if;
  select t.default_region into region from public.tenants t where t.id = tenant;
  for r in select * from jsonb_array_elements(coalesce(rows, '[]')) loop
    begin
      p := nullif(trim(r ->> 'phone'), '');
      if p is not null and p !~ '^\+[1-9][0-9]{6,14}$' then
        p := private.crm_phone(p, region);
        if p is null then
          raise exception 'phone % is not a valid number', r ->> 'phone' using errcode = 'PT422', detail = 'code=invalid_phone';
        end if;
      end if;
      e := nullif(trim(r ->> 'email'), '');
      if e is not null then
        e := private.crm_email(e);
        if e is null then
          raise exception 'e-mail % is not valid', r ->> 'email' using errcode = 'PT422', detail = 'code=invalid_email';
        end if;
      end if;
      if p is null and e is null then
        raise exception 'a customer needs a phone or an e-mail' using errcode = 'PT422', detail = 'code=contact_required';
      end if;
      if nullif(trim(r ->> 'full_name'), '') is null then
        raise exception 'full_name is empty' using errcode = 'PT422', detail = 'code=name_required';
      end if;
      tags := case jsonb_typeof(r -> 'tags') when 'array' then array(select jsonb_array_elements_text(r -> 'tags'))
                   when 'string' then regexp_split_to_array(r ->> 'tags', '\s*[;,|]\s*') else '{}' end;
      select c.id into existing from public.customers c
      where c.tenant_id = tenant and ((p is not null and c.phone = p) or (e is not null and c.email = e)) limit 1;
      if existing is not null then
        if on_duplicate = 'update' then
          update public.customers c
          set email = coalesce(c.email, e), phone = coalesce(c.phone, p),
              source = coalesce(c.source, r ->> 'source'), campaign = coalesce(c.campaign, r ->> 'campaign'),
              region = coalesce(c.region, r ->> 'region'),
              tags = array(select distinct unnest(c.tags || tags))
          where c.id = existing;
          updated := updated + 1;
        else
          skipped := skipped + 1;
        end if;
        continue;
      end if;
      insert into public.customers (tenant_id, full_name, phone, email, region, source, campaign, utm_source, utm_medium,
                                    utm_campaign, utm_term, utm_content, quality_score, tags)
      values (tenant, trim(r ->> 'full_name'), p, e, r ->> 'region', coalesce(r ->> 'source', 'import'), r ->> 'campaign',
              r ->> 'utm_source', r ->> 'utm_medium', r ->> 'utm_campaign', r ->> 'utm_term', r ->> 'utm_content',
              nullif(r ->> 'quality_score', '')::int, tags);
      inserted := inserted + 1;
    exception when others then
      get stacked diagnostics msg = message_text, det = pg_exception_detail, state = returned_sqlstate;
      errors := errors || jsonb_build_object('line', r -> 'line', 'sqlstate', state, 'message', msg,
        'code', case when det like 'code=%' then split_part(substr(det, 6), ';', 1)
                     when state = '23505' then 'duplicate'
                     when state = '42501' then 'forbidden' else 'invalid' end);
    end;
  end loop;
  perform audit.record(tenant, 'import', 'customers', null, null,
    jsonb_build_object('inserted', inserted, 'updated', updated, 'skipped', skipped, 'errors', jsonb_array_length(errors)));
  return jsonb_build_object('inserted', inserted, 'updated', updated, 'skipped', skipped, 'errors', errors);
end;
$$;
revoke execute on function public.crm_import_customers(jsonb, text) from public, anon;
grant execute on function public.crm_import_customers(jsonb, text) to authenticated;

create or replace function private.crm_mask_phone(p text) returns text
language sql immutable
set search_path = ''
as $$ select case when p is null then null else left(p, 4) || repeat('*', greatest(length(p) - 6, 0)) || right(p, 2) end $$;
grant execute on function private.crm_mask_phone(text) to authenticated, service_role;

create or replace function private.crm_mask_email(e text) returns text
language sql immutable
set search_path = ''
as $$ select case when e is null then null else left(split_part(e, '@', 1), 1) || '***@' || split_part(e, '@', 2) end $$;
grant execute on function private.crm_mask_email(text) to authenticated, service_role;

create or replace function private.crm_mask_name(n text) returns text
language sql immutable
set search_path = ''
as $$
  select case when n is null then null
              when position(' ' in trim(n)) = 0 then left(trim(n), 1) || '***'
              else split_part(trim(n), ' ', 1) || ' ' || left(reverse(split_part(reverse(trim(n)), ' ', 1)), 1) || '.' end
$$;
grant execute on function private.crm_mask_name(text) to authenticated, service_role;

/*
 * Export customers: the rows the caller may see (RLS), masked when asked or when the caller lacks the
 * 'pii' export permission; recorded in the audit chain (how many, masked or not, the filters).
 */
create or replace function public.crm_export_customers(mask boolean default false, filters jsonb default '{}')
returns table (id uuid, full_name text, phone text, email text, region text, source text, campaign text,
               utm_source text, utm_medium text, utm_campaign text, quality_score int, tags text,
               responsibles text, last_contact_at timestamptz, created_at timestamptz)
language plpgsql
set search_path = ''
as $$
declare
  tenant uuid := private.crm_require_tenant();
  masked boolean := coalesce(mask, false) or not private.can('pii', 'export');
  f jsonb := coalesce(filters, '{}');
  n bigint;
begin
  if not private.can('crm', 'export') then
    raise exception 'exporting needs the crm export permission' using errcode = '42501';
  end if;
  return query
    select c.id,
           -- every text cell through private.csv_text (no live formulas in a spreadsheet); the phone is
           -- E.164 by its check constraint (masked: digits and '*'), so it cannot carry a formula and stays
           -- dialable as '+90...'
           private.csv_text(case when masked then private.crm_mask_name(c.full_name) else c.full_name end),
           case when masked then private.crm_mask_phone(c.phone) else c.phone end,
           private.csv_text(case when masked then private.crm_mask_email(c.email) else c.email end),
           private.csv_text(c.region), private.csv_text(c.source), private.csv_text(c.campaign),
           private.csv_text(c.utm_source), private.csv_text(c.utm_medium), private.csv_text(c.utm_campaign),
           c.quality_score,
           private.csv_text(array_to_string(c.tags, ';')),
           private.csv_text((select string_agg(coalesce(p.email, p.id::text), ';') from public.profiles p
                             where p.id = any(c.responsibles))),
           c.last_contact_at, c.created_at
    from public.customers c
    where (f ->> 'source' is null or c.source = f ->> 'source')
      and (f ->> 'campaign' is null or c.campaign = f ->> 'campaign')
      and (f ->> 'tag' is null or lower(f ->> 'tag') = any(c.tags))
    order by c.created_at, c.id;
  get diagnostics n = row_count;
  perform audit.record(tenant, 'export', 'customers', null, null,
    jsonb_build_object('rows', n, 'masked', masked, 'filters', f));
end;
$$;
revoke execute on function public.crm_export_customers(boolean, jsonb) from public, anon;
grant execute on function public.crm_export_customers(boolean, jsonb) to authenticated;
