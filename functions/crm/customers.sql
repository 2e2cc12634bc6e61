-- functions/crm/customers.sql -- Customers: the CRM's guards, match or create, merge, bulk assign and tag,
-- and the rules of the customers table's triggers.

/*
 * CRM RPCs and worker functions. Rules themselves are triggers and constraints in
 * migrations/20261124020000_crm.sql; these functions are the convenient ways in.
 *
 * Security invoker unless stated, so RLS decides (as for direct PostgREST writes).
 */

-- ---------------------------------------------------------------------------------------------
-- Small guards
-- ---------------------------------------------------------------------------------------------
create or replace function private.crm_require_tenant() returns uuid
language plpgsql stable
set search_path = ''
as $$
declare
  tenant uuid := (select private.tenant_id());
begin
  if tenant is null then
    raise exception 'no active tenant in the token' using errcode = '42501';
  end if;
  return tenant;
end;
$$;
grant execute on function private.crm_require_tenant() to authenticated, service_role;

-- Bulk operations are for admins and supervisors (and owners).
create or replace function private.crm_require_lead_role() returns uuid
language plpgsql stable
set search_path = ''
as $$
declare
  tenant uuid := private.crm_require_tenant();
begin
  if coalesce((select private.tenant_role()) not in ('owner', 'admin', 'supervisor'), true) then
    raise exception 'only owners, admins and supervisors may do this' using errcode = 'PT403', detail = 'code=supervisor_required';
  end if;
  return tenant;
end;
$$;
grant execute on function private.crm_require_lead_role() to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- Customers: match or create (the lead sync and the inbox call this), merge
-- ---------------------------------------------------------------------------------------------

/*
 * The customer with this phone or e-mail (normalised) in the tenant, else a new one. Blank fields of a
 * matched customer are filled in; attribution of a new one comes from `source`:
 *   {"source": "instagram", "campaign": "...", "utm_source": ..., "utm_medium": ..., "utm_campaign": ...,
 *    "utm_term": ..., "utm_content": ..., "region": ..., "lead_id": ..., "responsibles": [...], "tags": [...]}
 * Security definer for service code (worker, inbox); scopes itself by `tenant`.
 */
create or replace function private.match_or_create_customer(
  tenant uuid, full_name text, phone text, email text, source jsonb default '{}'
) returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  region text;
  p text;
  e text := private.crm_email(email);
  found_id uuid;
  src jsonb := coalesce(source, '{}');
  attempt int := 0;
begin
  select t.default_region into region from public.tenants t where t.id = tenant;
  if region is null then
    raise exception 'unknown tenant %', tenant using errcode = 'P0002';
  end if;
  p := case when phone ~ '^\+[1-9][0-9]{6,14}$' then phone else private.crm_phone(phone, region) end;
  if p is null and e is null then
    raise exception 'a customer needs a phone or an e-mail' using errcode = 'PT422', detail = 'code=contact_required';
  end if;
  loop
    select c.id into found_id from public.customers c
    where c.tenant_id = tenant and ((p is not null and c.phone = p) or (e is not null and c.email = e))
    order by (c.phone = p) desc nulls last
    limit 1;
    if found_id is not null then
      update public.customers c
      set phone = coalesce(c.phone, case when not exists (select 1 from public.customers x where x.tenant_id = tenant and x.phone = p) then p end),
          email = coalesce(c.email, case when not exists (select 1 from public.customers x where x.tenant_id = tenant and x.email = e) then e end),
          full_name = case when c.full_name in ('', '?') then coalesce(nullif(trim(match_or_create_customer.full_name), ''), c.full_name) else c.full_name end,
          source = coalesce(c.source, src ->> 'source'),
          campaign = coalesce(c.campaign, src ->> 'campaign'),
          lead_id = coalesce(c.lead_id, (src ->> 'lead_id')::uuid)
      where c.id = found_id
        and (c.phone is null or c.email is null or c.source is null or c.campaign is null or c.lead_id is null);
      return found_id;
    end if;
    begin
      insert into public.customers (tenant_id, full_name, phone, email, region, source, campaign, utm_source, utm_medium,
                                    utm_campaign, utm_term, utm_content, attribution, lead_id, responsibles, tags, quality_score)
      values (tenant, coalesce(nullif(trim(full_name), ''), p, e), p, e, src ->> 'region', src ->> 'source',
              coalesce(src ->> 'campaign', src ->> 'utm_campaign'), src ->> 'utm_source', src ->> 'utm_medium',
              src ->> 'utm_campaign', src ->> 'utm_term', src ->> 'utm_content', src, (src ->> 'lead_id')::uuid,
              coalesce(array(select jsonb_array_elements_text(src -> 'responsibles'))::uuid[], '{}'),
              coalesce(array(select jsonb_array_elements_text(src -> 'tags')), '{}'),
              (src ->> 'quality_score')::int)
      returning id into found_id;
      return found_id;
    exception when unique_violation then
      attempt := attempt + 1;  -- a concurrent writer created it: match again
      if attempt > 3 then raise; end if;
    end;
  end loop;
end;
$$;
revoke execute on function private.match_or_create_customer(uuid, text, text, text, jsonb) from public;
grant execute on function private.match_or_create_customer(uuid, text, text, text, jsonb) to service_role;

-- Service-only functions (the default grants private functions to authenticated too).
revoke execute on function private.match_or_create_customer(uuid, text, text, text, jsonb)
  from public, authenticated;

-- Normalise contact data, keep responsibles to colleagues, make the creating agent responsible.
-- Trigger crm_customer_before on public.customers; first in migrations/20261124020000_crm.sql.
create or replace function private.crm_customer_before() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  region text;
  normalised text;
begin
  if new.phone is not null and new.phone !~ '^\+[1-9][0-9]{6,14}$' then
    select t.default_region into region from public.tenants t where t.id = new.tenant_id;
    normalised := private.crm_phone(new.phone, coalesce(new.custom_fields ->> 'phone_region', region, 'TR'));
    if normalised is null then
      raise exception 'phone % is not a valid number', new.phone
        using errcode = 'PT422', detail = 'code=invalid_phone';
    end if;
    new.phone := normalised;
  end if;
  if new.email is not null then
    new.email := private.crm_email(new.email);
    if new.email is null then
      raise exception 'e-mail is not valid' using errcode = 'PT422', detail = 'code=invalid_email';
    end if;
  end if;
  new.full_name := trim(new.full_name);
  new.tags := array(select distinct lower(trim(t)) from unnest(new.tags) t where trim(t) <> '' order by 1);
  new.responsibles := array(select distinct r from unnest(new.responsibles) r where r is not null order by 1);
  if tg_op = 'INSERT' then
    new.created_by := coalesce(new.created_by, (select auth.uid()));
    -- an agent's new customer is theirs (else the assignee restriction would hide it from them)
    if cardinality(new.responsibles) = 0 and (select private.tenant_role()) = 'agent' then
      new.responsibles := array[(select auth.uid())];
    end if;
  end if;
  if (tg_op = 'INSERT' or new.responsibles is distinct from old.responsibles)
     and not private.crm_members_ok(new.tenant_id, new.responsibles) then
    raise exception 'responsibles must be members of the tenant' using errcode = 'PT422', detail = 'code=invalid_responsible';
  end if;
  return new;
end;
$$;

-- Customers: responsibles flow to cards; changes reach the customer's topic; timeline of the important ones.
-- Trigger crm_customer_after on public.customers; first in migrations/20261124020000_crm.sql.
create or replace function private.crm_customer_after() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' then
    perform private.crm_timeline(new.tenant_id, new.id, 'customer_created',
      jsonb_build_object('source', new.source, 'campaign', new.campaign));
    if cardinality(new.tags) > 0 then
      insert into public.tags (tenant_id, name) select new.tenant_id, unnest(new.tags) on conflict do nothing;
    end if;
    return null;
  end if;
  if new.responsibles is distinct from old.responsibles then
    update public.cards set responsibles = new.responsibles where customer_id = new.id;
    update public.work_orders set responsibles = new.responsibles
    where customer_id = new.id and responsibles = old.responsibles;
    perform private.crm_timeline(new.tenant_id, new.id, 'responsibles_changed',
      jsonb_build_object('from', old.responsibles, 'to', new.responsibles));
    insert into public.notifications (tenant_id, user_id, kind, title, customer_id, data)
    select new.tenant_id, r, 'customer_assigned', new.full_name, new.id, jsonb_build_object('customer_id', new.id)
    from unnest(new.responsibles) r
    where not r = any(old.responsibles) and r is distinct from (select auth.uid());
  end if;
  if new.tags is distinct from old.tags then
    insert into public.tags (tenant_id, name) select new.tenant_id, unnest(new.tags) on conflict do nothing;
    perform private.crm_timeline(new.tenant_id, new.id, 'tags_changed', jsonb_build_object('from', old.tags, 'to', new.tags));
  end if;
  if (to_jsonb(new) - 'updated_at') <> (to_jsonb(old) - 'updated_at') then
    perform private.broadcast('tenant:' || new.tenant_id || ':customer:' || new.id, 'customer_updated',
      jsonb_build_object('customer', to_jsonb(new) - 'custom_fields', 'by', (select auth.uid())));
  end if;
  return null;
end;
$$;

/*
 * Merge `duplicate` into `survivor`: every row of every table pointing at the duplicate (cards,
 * activities, notes, reminders, timeline events, inventory, work orders, and other areas' tables such
 * as inbox contacts) is moved to the survivor, blank fields are filled from the duplicate, tags and
 * responsibles are united; the duplicate's snapshot and the counts are recorded in customer_merges,
 * the timeline gets a customers_merged event, and the duplicate is deleted. Needs crm delete.
 */
create or replace function public.merge_customers(survivor uuid, duplicate uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  tenant uuid := private.crm_require_tenant();
  s public.customers;
  d public.customers;
  fk record;
  n bigint;
  moved jsonb := '{}';
  merge_id uuid;
begin
  if not (select private.can('crm', 'delete')) then
    raise exception 'merging customers needs the crm delete permission' using errcode = '42501';
  end if;
  if survivor = duplicate then
    raise exception 'a customer cannot be merged into itself' using errcode = 'PT422', detail = 'code=same_customer';
  end if;
  select * into s from public.customers c where c.id = survivor and c.tenant_id = tenant for update;
  select * into d from public.customers c where c.id = duplicate and c.tenant_id = tenant for update;
  if s.id is null or d.id is null or not private.crm_can_see_customer(survivor) or not private.crm_can_see_customer(duplicate) then
    raise exception 'customer not found' using errcode = 'P0002';
  end if;
  perform set_config('luna.crm_merge', 'on', true);
  -- every table with a customer_id (ours, and other areas' such as inbox contacts and leads)
  for fk in
    select c.oid::regclass as tbl, 'customer_id' as col
    from pg_class c join pg_namespace ns on ns.oid = c.relnamespace
    join pg_attribute a on a.attrelid = c.oid and a.attname = 'customer_id' and not a.attisdropped
    where ns.nspname = 'public' and c.relkind in ('r', 'p') and a.atttypid = 'uuid'::regtype
      and c.oid not in ('public.customer_merges'::regclass, 'public.customers'::regclass)
    order by 1
  loop
    execute format('update %s set %I = $1 where %I = $2 and tenant_id = $3', fk.tbl, fk.col, fk.col)
      using survivor, duplicate, tenant;
    get diagnostics n = row_count;
    if n > 0 then
      moved := moved || jsonb_build_object(fk.tbl::text, n);
    end if;
  end loop;
  update public.customer_merges m set survivor_id = survivor where m.survivor_id = duplicate;
  perform set_config('luna.crm_merge', 'off', true);
  delete from public.customers where id = duplicate;
  update public.customers c
  set phone = coalesce(c.phone, d.phone), email = coalesce(c.email, d.email), region = coalesce(c.region, d.region),
      source = coalesce(c.source, d.source), campaign = coalesce(c.campaign, d.campaign),
      utm_source = coalesce(c.utm_source, d.utm_source), utm_medium = coalesce(c.utm_medium, d.utm_medium),
      utm_campaign = coalesce(c.utm_campaign, d.utm_campaign), utm_term = coalesce(c.utm_term, d.utm_term),
      utm_content = coalesce(c.utm_content, d.utm_content), attribution = d.attribution || c.attribution,
      lead_id = coalesce(c.lead_id, d.lead_id),
      responsibles = array(select distinct unnest(c.responsibles || d.responsibles)),
      tags = array(select distinct unnest(c.tags || d.tags)),
      quality_score = greatest(c.quality_score, d.quality_score),
      last_contact_at = greatest(c.last_contact_at, d.last_contact_at),
      unread_messages = c.unread_messages + d.unread_messages,
      custom_fields = d.custom_fields || c.custom_fields
  where c.id = survivor;
  insert into public.customer_merges (tenant_id, survivor_id, merged_id, merged_snapshot, moved, merged_by)
  values (tenant, survivor, duplicate, to_jsonb(d), moved, (select auth.uid()))
  returning id into merge_id;
  perform private.crm_timeline(tenant, survivor, 'customers_merged',
    jsonb_build_object('merged_id', duplicate, 'merged_name', d.full_name, 'merge_id', merge_id, 'moved', moved));
  perform private.broadcast('tenant:' || tenant || ':customer:' || duplicate, 'customer_merged',
    jsonb_build_object('customer_id', duplicate, 'survivor_id', survivor));
  return jsonb_build_object('merge_id', merge_id, 'survivor_id', survivor, 'merged_id', duplicate, 'moved', moved);
end;
$$;
revoke execute on function public.merge_customers(uuid, uuid) from public, anon;
grant execute on function public.merge_customers(uuid, uuid) to authenticated, service_role;

-- Bulk assign: mode 'replace' | 'add' | 'remove' the given users as responsibles of the customers.
create or replace function public.bulk_assign_customers(customers uuid[], users uuid[], mode text default 'replace')
returns int
language plpgsql
set search_path = ''
as $$
declare
  n int;
begin
  perform private.crm_require_lead_role();
  if mode not in ('replace', 'add', 'remove') then
    raise exception 'mode is replace, add or remove' using errcode = '22023';
  end if;
  update public.customers c
  set responsibles = case mode when 'replace' then users
                               when 'add' then array(select distinct unnest(c.responsibles || users))
                               else array(select unnest(c.responsibles) except select unnest(users)) end
  where c.id = any(customers);
  get diagnostics n = row_count;
  return n;
end;
$$;
revoke execute on function public.bulk_assign_customers(uuid[], uuid[], text) from public, anon;
grant execute on function public.bulk_assign_customers(uuid[], uuid[], text) to authenticated, service_role;

create or replace function public.bulk_tag_customers(customers uuid[], add_tags text[] default '{}', remove_tags text[] default '{}')
returns int
language plpgsql
set search_path = ''
as $$
declare
  n int;
begin
  perform private.crm_require_lead_role();
  update public.customers c
  set tags = array(select distinct t from unnest(c.tags || coalesce(add_tags, '{}')) t
                   where not lower(t) = any(array(select lower(x) from unnest(coalesce(remove_tags, '{}')) x)))
  where c.id = any(customers);
  get diagnostics n = row_count;
  return n;
end;
$$;
revoke execute on function public.bulk_tag_customers(uuid[], text[], text[]) from public, anon;
grant execute on function public.bulk_tag_customers(uuid[], text[], text[]) to authenticated, service_role;
