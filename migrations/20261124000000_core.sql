/*
 * LUNA core: schemas, tenancy, permissions, the policy helpers every table uses, the audit chain,
 * realtime topics, the worker's job queue and the circuit breaker's module health.
 *
 * Works on Supabase (where auth, realtime and extensions already exist) and on plain Postgres with
 * supabase/shim applied first.
 */

-- ===========================================================================================
-- Extensions and schemas
-- ===========================================================================================
create schema if not exists extensions;
create extension if not exists vector with schema extensions;
create extension if not exists pg_trgm with schema extensions;
create extension if not exists btree_gist with schema extensions;
create extension if not exists unaccent with schema extensions;
create extension if not exists citext with schema extensions;

-- private: helpers, security-definer functions and queue internals; never exposed by PostgREST.
create schema if not exists private;
-- Policies call the helpers as the querying role, so the API roles need usage (not table access).
grant usage on schema private to authenticated, service_role;
revoke all on schema private from anon;

-- audit: the append-only audit chain.
create schema if not exists audit;
grant usage on schema audit to service_role;

-- Default-deny execution: a function is callable only by the roles it is granted to. (Per-schema
-- default privileges cannot take away the global EXECUTE for PUBLIC, hence the global form.)
alter default privileges revoke execute on functions from public;
-- private is never exposed by the API; its functions are for the worker (service_role) and for
-- policies evaluated as the signed-in user. anon gets nothing.
alter default privileges in schema private grant execute on functions to authenticated, service_role;

do $$ begin
  create type public.member_role as enum ('owner', 'admin', 'supervisor', 'agent', 'viewer');
exception when duplicate_object then null; end $$;

-- ===========================================================================================
-- Reusable trigger helpers
-- ===========================================================================================

-- Attached to every table with updated_at: keeps it true whoever writes the row.
create or replace function private.set_updated_at() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.updated_at := now();
  return new;
end;
$$;

-- ===========================================================================================
-- Tenants
-- ===========================================================================================
create table public.tenants (
  id uuid primary key default gen_random_uuid(),
  slug text not null unique check (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
  name text not null check (length(trim(name)) > 0),
  -- Phone numbers without a country code are read in this region (ISO 3166 alpha-2).
  default_region text not null default 'TR' check (default_region ~ '^[A-Z]{2}$'),
  timezone text not null default 'Europe/Istanbul',
  locale text not null default 'tr',
  settings jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create trigger set_updated_at before update on public.tenants
  for each row execute function private.set_updated_at();
alter table public.tenants enable row level security;

-- ===========================================================================================
-- Profiles: one per auth.users row
-- ===========================================================================================
create table public.profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  email text,
  full_name text,
  phone text,
  avatar_url text,
  locale text not null default 'tr',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create trigger set_updated_at before update on public.profiles
  for each row execute function private.set_updated_at();
alter table public.profiles enable row level security;

-- Supabase Auth inserts users; every user gets a profile in the same transaction.
create or replace function private.create_profile_for_user() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.profiles (id, email, full_name)
  values (new.id, new.email, coalesce(new.raw_user_meta_data ->> 'full_name', new.email))
  on conflict (id) do nothing;
  return new;
end;
$$;
create trigger on_auth_user_created after insert on auth.users
  for each row execute function private.create_profile_for_user();

-- ===========================================================================================
-- Members and roles
-- ===========================================================================================
create table public.tenant_members (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  user_id uuid not null references public.profiles (id) on delete cascade,
  role public.member_role not null default 'agent',
  active boolean not null default true,
  -- Free-form routing data (region, skills, languages) used by assignment rules.
  attributes jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, user_id)
);
create index tenant_members_user_idx on public.tenant_members (user_id);
create trigger set_updated_at before update on public.tenant_members
  for each row execute function private.set_updated_at();
alter table public.tenant_members enable row level security;

-- Per-module permission overrides. Without a row a role gets its default (private.default_allowed).
create table public.role_permissions (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  role public.member_role not null,
  module text not null check (module ~ '^[a-z_]+$'),
  action text not null check (action in ('read', 'write', 'delete', 'export', 'manage')),
  allowed boolean not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, role, module, action)
);
create trigger set_updated_at before update on public.role_permissions
  for each row execute function private.set_updated_at();
alter table public.role_permissions enable row level security;

-- Tenant-wide behaviour switches that policies and functions read.
create table public.tenant_policies (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null unique references public.tenants (id) on delete cascade,
  -- Agents see and edit only the records they are responsible for.
  agents_see_assigned_only boolean not null default false,
  mfa_required boolean not null default false,
  settings jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id)
);
create trigger set_updated_at before update on public.tenant_policies
  for each row execute function private.set_updated_at();
alter table public.tenant_policies enable row level security;

-- The catalogue of switchable modules and behaviours (global, read-only for users).
create table public.features (
  key text primary key check (key ~ '^[a-z_.]+$'),
  description text not null,
  default_enabled boolean not null default true,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create trigger set_updated_at before update on public.features
  for each row execute function private.set_updated_at();
alter table public.features enable row level security;

-- A module or behaviour switched on or off per tenant ("one toggle" activation, per-feature rollback).
create table public.tenant_features (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  feature text not null references public.features (key) on update cascade,
  enabled boolean not null,
  config jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, feature)
);
create index tenant_features_feature_idx on public.tenant_features (feature);
create trigger set_updated_at before update on public.tenant_features
  for each row execute function private.set_updated_at();
alter table public.tenant_features enable row level security;

-- Every tenant starts with its policy row.
create or replace function private.init_tenant() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.tenant_policies (tenant_id) values (new.id) on conflict (tenant_id) do nothing;
  return new;
end;
$$;
create trigger init_tenant after insert on public.tenants
  for each row execute function private.init_tenant();

-- ===========================================================================================
-- Policy helpers. Policies call them wrapped in (select ...) so they run once per statement.
-- They are security definer so a policy never recurses into another table's policies.
-- ===========================================================================================

-- The caller's active tenant: the JWT's tenant_id claim, honoured only while the membership is active
-- (a removed member loses access at once, not when the token expires).
-- The helpers are plpgsql so their one query keeps a cached plan for the session.
create or replace function private.tenant_id() returns uuid
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  result uuid;
begin
  select m.tenant_id into result
  from public.tenant_members m
  where m.user_id = auth.uid()
    and m.tenant_id = nullif(auth.jwt() ->> 'tenant_id', '')::uuid
    and m.active;
  return result;
end;
$$;

-- The caller's role in the active tenant, read live from tenant_members (not from the token).
create or replace function private.tenant_role() returns public.member_role
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  result public.member_role;
begin
  select m.role into result
  from public.tenant_members m
  where m.user_id = auth.uid()
    and m.tenant_id = nullif(auth.jwt() ->> 'tenant_id', '')::uuid
    and m.active;
  return result;
end;
$$;

-- Defaults when role_permissions has no row: viewers read; agents read and write; supervisors
-- also delete and export; owners and admins do everything.
create or replace function private.default_allowed(role public.member_role, action text) returns boolean
language sql immutable
set search_path = ''
as $$
  select case role
    when 'owner' then true
    when 'admin' then true
    when 'supervisor' then action in ('read', 'write', 'delete', 'export')
    when 'agent' then action in ('read', 'write')
    when 'viewer' then action = 'read'
    else false
  end
$$;

-- May the caller do `action` in `module` in their active tenant? (One lookup: the membership and
-- its override, if any.)
create or replace function private.can(module text, action text) returns boolean
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  result boolean;
begin
  select coalesce(p.allowed, private.default_allowed(m.role, can.action)) into result
  from public.tenant_members m
  left join public.role_permissions p
    on p.tenant_id = m.tenant_id and p.role = m.role and p.module = can.module and p.action = can.action
  where m.user_id = auth.uid()
    and m.tenant_id = nullif(auth.jwt() ->> 'tenant_id', '')::uuid
    and m.active;
  return coalesce(result, false);
end;
$$;

-- False only for an agent whose tenant limits agents to their assigned records.
create or replace function private.sees_all() returns boolean
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  result boolean;
begin
  select m.role <> 'agent' or not coalesce(tp.agents_see_assigned_only, false) into result
  from public.tenant_members m
  left join public.tenant_policies tp on tp.tenant_id = m.tenant_id
  where m.user_id = auth.uid()
    and m.tenant_id = nullif(auth.jwt() ->> 'tenant_id', '')::uuid
    and m.active;
  return coalesce(result, false);
end;
$$;

-- Active user ids of the caller's tenant (to see colleagues' profiles).
create or replace function private.tenant_user_ids() returns uuid[]
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(array_agg(m.user_id), '{}')
  from public.tenant_members m
  where m.tenant_id = (select private.tenant_id())
$$;

-- Is a feature on for a tenant? The tenant's switch, else the catalogue's default. Functions and the
-- worker ask only this.
create or replace function private.feature_enabled(tenant uuid, feature_key text) returns boolean
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(
    (select tf.enabled from public.tenant_features tf where tf.tenant_id = tenant and tf.feature = feature_key),
    (select f.default_enabled from public.features f where f.key = feature_key),
    false)
$$;

grant execute on function private.tenant_id(), private.tenant_role(), private.default_allowed(public.member_role, text),
  private.can(text, text), private.sees_all(), private.tenant_user_ids(), private.feature_enabled(uuid, text)
  to authenticated, service_role;

/*
 * private.enable_rls: the one tenant policy. Enables RLS on a tenant-owned public table and creates
 * its select / insert / update / delete policies for `authenticated`:
 *   - the row's tenant_id is the caller's active tenant (membership checked);
 *   - with `module`, the caller's role needs the module's read / write / delete permission;
 *   - with `assigned_column` (a uuid or uuid[] of responsible users), an agent limited to assigned
 *     records only sees and changes rows naming them.
 * Called by migrations as `select private.enable_rls('table', 'module', 'assigned_column')`.
 */
create or replace function private.enable_rls(tbl text, module text default null, assigned_column text default null)
returns void
language plpgsql
set search_path = ''
as $$
declare
  qualified text := format('public.%I', tbl);
  tenant_check text := '(tenant_id = (select private.tenant_id()))';
  assigned_check text := '';
  col_type text;
begin
  execute format('alter table %s enable row level security', qualified);
  if assigned_column is not null then
    select format_type(a.atttypid, a.atttypmod) into col_type
    from pg_attribute a where a.attrelid = qualified::regclass and a.attname = assigned_column;
    assigned_check := format(
      case when col_type like '%%[]' then ' and ((select private.sees_all()) or (select auth.uid()) = any(%I))'
           else ' and ((select private.sees_all()) or %I = (select auth.uid()))' end,
      assigned_column);
  end if;
  execute format('drop policy if exists tenant_select on %s', qualified);
  execute format('drop policy if exists tenant_insert on %s', qualified);
  execute format('drop policy if exists tenant_update on %s', qualified);
  execute format('drop policy if exists tenant_delete on %s', qualified);
  execute format('create policy tenant_select on %s for select to authenticated using (%s%s%s)',
    qualified, tenant_check, coalesce(format(' and (select private.can(%L, ''read''))', module), ''), assigned_check);
  execute format('create policy tenant_insert on %s for insert to authenticated with check (%s%s%s)',
    qualified, tenant_check, coalesce(format(' and (select private.can(%L, ''write''))', module), ''), assigned_check);
  execute format('create policy tenant_update on %s for update to authenticated using (%s%s%s) with check (%s%s%s)',
    qualified, tenant_check, coalesce(format(' and (select private.can(%L, ''write''))', module), ''), assigned_check,
    tenant_check, coalesce(format(' and (select private.can(%L, ''write''))', module), ''), assigned_check);
  execute format('create policy tenant_delete on %s for delete to authenticated using (%s%s%s)',
    qualified, tenant_check, coalesce(format(' and (select private.can(%L, ''delete''))', module), ''), assigned_check);
  -- Anonymous callers never touch tenant data directly (public endpoints go through edge or RPCs).
  execute format('revoke all on %s from anon', qualified);
end;
$$;

-- ===========================================================================================
-- Policies of the core tables
-- ===========================================================================================

-- Tenants: members see their active tenant; owners and admins rename it. Created by service role.
create policy tenants_select on public.tenants for select to authenticated
  using (id = (select private.tenant_id()));
create policy tenants_update on public.tenants for update to authenticated
  using (id = (select private.tenant_id()) and (select private.can('settings', 'manage')))
  with check (id = (select private.tenant_id()));
revoke all on public.tenants from anon;

-- Profiles: your own, and your tenant's colleagues (read); you edit only your own.
create policy profiles_select on public.profiles for select to authenticated
  using (id = (select auth.uid()) or (select private.tenant_user_ids()) @> array[id]);
create policy profiles_update on public.profiles for update to authenticated
  using (id = (select auth.uid())) with check (id = (select auth.uid()));
revoke all on public.profiles from anon;

-- Members: everyone in the tenant sees the team; changes go through RPCs (functions/core.sql)
-- or owners/admins with the settings.manage permission.
select private.enable_rls('tenant_members', 'team');
drop policy tenant_insert on public.tenant_members;
drop policy tenant_update on public.tenant_members;
drop policy tenant_delete on public.tenant_members;
create policy tenant_insert on public.tenant_members for insert to authenticated
  with check (tenant_id = (select private.tenant_id()) and (select private.can('team', 'manage')));
create policy tenant_update on public.tenant_members for update to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('team', 'manage')))
  with check (tenant_id = (select private.tenant_id()) and (select private.can('team', 'manage')));
create policy tenant_delete on public.tenant_members for delete to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('team', 'manage')));

-- Permissions, policies and features: readable by the tenant, changed by those who manage settings.
do $$
declare t text;
begin
  foreach t in array array['role_permissions', 'tenant_policies', 'tenant_features'] loop
    perform private.enable_rls(t);
    execute format('drop policy tenant_insert on public.%I', t);
    execute format('drop policy tenant_update on public.%I', t);
    execute format('drop policy tenant_delete on public.%I', t);
    execute format($p$create policy tenant_insert on public.%I for insert to authenticated
      with check (tenant_id = (select private.tenant_id()) and (select private.can('settings', 'manage')))$p$, t);
    execute format($p$create policy tenant_update on public.%I for update to authenticated
      using (tenant_id = (select private.tenant_id()) and (select private.can('settings', 'manage')))
      with check (tenant_id = (select private.tenant_id()) and (select private.can('settings', 'manage')))$p$, t);
    execute format($p$create policy tenant_delete on public.%I for delete to authenticated
      using (tenant_id = (select private.tenant_id()) and (select private.can('settings', 'manage')))$p$, t);
  end loop;
end $$;

-- The feature catalogue is global and read-only to users.
create policy features_select on public.features for select to authenticated using (true);
revoke insert, update, delete on public.features from authenticated, anon;

-- ===========================================================================================
-- Custom access token hook: Supabase Auth calls it when it issues a token; it adds the active
-- tenant and the member's role. The active tenant is app_metadata.tenant_id when the user is an
-- active member there, else the user's oldest active membership.
-- ===========================================================================================
create or replace function public.custom_access_token_hook(event jsonb) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  claims jsonb := coalesce(event -> 'claims', '{}'::jsonb);
  uid uuid := nullif(event ->> 'user_id', '')::uuid;
  wanted uuid := nullif(claims #>> '{app_metadata,tenant_id}', '')::uuid;
  member record;
begin
  select m.tenant_id, m.role into member
  from public.tenant_members m
  where m.user_id = uid and m.active
  order by (m.tenant_id = wanted) desc nulls last, m.created_at
  limit 1;
  if found then
    claims := claims || jsonb_build_object('tenant_id', member.tenant_id, 'tenant_role', member.role);
  else
    claims := claims - 'tenant_id' - 'tenant_role';
  end if;
  return jsonb_build_object('claims', claims);
end;
$$;
revoke execute on function public.custom_access_token_hook(jsonb) from public, anon, authenticated;
grant execute on function public.custom_access_token_hook(jsonb) to supabase_auth_admin, service_role;
grant select on public.tenant_members to supabase_auth_admin;
create policy auth_admin_reads_members on public.tenant_members for select to supabase_auth_admin using (true);

-- ===========================================================================================
-- Audit chain: append-only, one hash chain per tenant (tenant-less events share the nil chain).
-- ===========================================================================================
create table audit.events (
  id bigint generated always as identity primary key,
  tenant_id uuid,
  seq bigint not null,
  occurred_at timestamptz not null default clock_timestamp(),
  actor_id uuid,
  actor_role text,
  action text not null,
  resource_type text not null,
  resource_id text,
  before jsonb,
  after jsonb,
  ip inet,
  user_agent text,
  correlation_id text,
  prev_hash text,
  hash text not null,
  unique nulls not distinct (tenant_id, seq)
);
create index events_resource_idx on audit.events (tenant_id, resource_type, resource_id);
create index events_time_idx on audit.events (tenant_id, occurred_at desc);

-- The hash of one event: its content and the previous event's hash.
create or replace function audit.event_hash(e audit.events) returns text
language sql immutable
set search_path = ''
as $$
  select encode(sha256(convert_to(concat_ws('|',
    coalesce(e.tenant_id::text, '-'), e.seq::text,
    to_char(e.occurred_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'),
    coalesce(e.actor_id::text, '-'), coalesce(e.actor_role, '-'), e.action, e.resource_type,
    coalesce(e.resource_id, '-'), coalesce(e.before::text, '-'), coalesce(e.after::text, '-'),
    coalesce(host(e.ip), '-'), coalesce(e.user_agent, '-'), coalesce(e.correlation_id, '-'),
    coalesce(e.prev_hash, '-')), 'UTF8')), 'hex')
$$;

-- Links each new event to its chain. Serialised per tenant by an advisory lock so concurrent
-- writers never fork the chain.
create or replace function audit.chain_event() returns trigger
language plpgsql
set search_path = ''
as $$
declare
  last record;
begin
  perform pg_advisory_xact_lock(hashtextextended('audit:' || coalesce(new.tenant_id::text, '-'), 0));
  select e.seq, e.hash into last from audit.events e
  where e.tenant_id is not distinct from new.tenant_id
  order by e.seq desc limit 1;
  new.seq := coalesce(last.seq, 0) + 1;
  new.prev_hash := last.hash;
  new.occurred_at := clock_timestamp();
  new.hash := audit.event_hash(new);
  return new;
end;
$$;
create trigger chain_event before insert on audit.events
  for each row execute function audit.chain_event();

create or replace function audit.refuse_change() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  raise exception 'audit.events is append-only' using errcode = 'insufficient_privilege';
end;
$$;
create trigger append_only before update or delete on audit.events
  for each row execute function audit.refuse_change();
create trigger append_only_truncate before truncate on audit.events
  for each statement execute function audit.refuse_change();

-- A header's address as inet, or null when it is not one (a proxy may send a name or garbage;
-- the audit record must still be written).
create or replace function audit.try_inet(value text) returns inet
language plpgsql immutable
set search_path = ''
as $$
begin
  return trim(value)::inet;
exception when others then
  return null;
end;
$$;

-- Who is acting and from where, as PostgREST / edge put it in the request settings.
create or replace function audit.request_context() returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'actor_id', (select auth.uid()),
    'actor_role', coalesce((select private.tenant_role())::text, (select auth.role()), current_user),
    'ip', coalesce(
      nullif(split_part(nullif(current_setting('request.headers', true), '')::jsonb ->> 'x-forwarded-for', ',', 1), ''),
      nullif(current_setting('request.headers', true), '')::jsonb ->> 'x-real-ip'),
    'user_agent', nullif(current_setting('request.headers', true), '')::jsonb ->> 'user-agent',
    'correlation_id', nullif(current_setting('request.headers', true), '')::jsonb ->> 'x-correlation-id')
$$;

-- Record one semantic event (login, export, permission change, AI decision ...).
create or replace function audit.record(
  tenant uuid, action text, resource_type text, resource_id text,
  before jsonb default null, after jsonb default null
) returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  ctx jsonb := audit.request_context();
begin
  insert into audit.events (tenant_id, seq, actor_id, actor_role, action, resource_type, resource_id,
                            before, after, ip, user_agent, correlation_id, hash)
  values (tenant, 0, (ctx ->> 'actor_id')::uuid, ctx ->> 'actor_role', action, resource_type, resource_id,
          before, after, audit.try_inet(ctx ->> 'ip'), ctx ->> 'user_agent', ctx ->> 'correlation_id', '');
end;
$$;
grant execute on function audit.record(uuid, text, text, text, jsonb, jsonb) to authenticated, service_role;
grant usage on schema audit to authenticated;

-- Generic trigger for critical tables: one event per insert / update / delete with before and after.
create or replace function audit.log_change() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  old_row jsonb := case when tg_op in ('UPDATE', 'DELETE') then to_jsonb(old) end;
  new_row jsonb := case when tg_op in ('INSERT', 'UPDATE') then to_jsonb(new) end;
  row_data jsonb := coalesce(new_row, old_row);
begin
  if tg_op = 'UPDATE' and old_row - 'updated_at' = new_row - 'updated_at' then
    return null;  -- nothing but the timestamp changed
  end if;
  perform audit.record(
    coalesce((row_data ->> 'tenant_id')::uuid, case when tg_table_name = 'tenants' then (row_data ->> 'id')::uuid end),
    lower(tg_op), tg_table_schema || '.' || tg_table_name, row_data ->> 'id', old_row, new_row);
  return null;
end;
$$;

do $$
declare t text;
begin
  foreach t in array array['tenants', 'tenant_members', 'role_permissions', 'tenant_policies', 'tenant_features'] loop
    execute format('create trigger audit_change after insert or update or delete on public.%I
                    for each row execute function audit.log_change()', t);
  end loop;
end $$;

/*
 * audit.verify: walks a tenant's chain (or every chain) and reports each event whose hash does not
 * match its content (altered), whose link to the previous event is broken (inserted), or whose
 * sequence number skips (deleted before it). No rows means the chain is intact.
 */
create or replace function audit.verify(tenant uuid default null)
returns table (tenant_id uuid, seq bigint, event_id bigint, problem text)
language sql stable
set search_path = ''
as $$
  with chain as (
    select e.*, audit.event_hash(e) as recomputed,
           lag(e.hash) over w as expected_prev, lag(e.seq) over w as prev_seq
    from audit.events e
    where tenant is null or e.tenant_id = tenant
    window w as (partition by e.tenant_id order by e.seq)
  )
  select c.tenant_id, c.seq, c.id, p.problem
  from chain c
  cross join lateral (values
    (case when c.hash <> c.recomputed then 'altered: content does not match its hash' end),
    (case when c.prev_seq is null and c.seq <> 1 then format('missing: %s event(s) before the first', c.seq - 1)
          when c.seq > c.prev_seq + 1 then format('missing: %s event(s) deleted before this one', c.seq - c.prev_seq - 1) end),
    (case when c.seq = c.prev_seq then 'inserted: duplicate sequence number'
          when c.prev_hash is distinct from c.expected_prev and c.seq = coalesce(c.prev_seq, 0) + 1
            then 'inserted: link to the previous event is broken' end)
  ) as p(problem)
  where p.problem is not null
  order by c.tenant_id, c.seq
$$;

-- ===========================================================================================
-- Realtime: one helper broadcasts; RLS on realtime.messages decides who joins a private topic.
-- Topics: tenant:<tenant id>:<area>[:<record id>] and user:<user id>.
-- ===========================================================================================
create or replace function private.broadcast(topic text, event text, payload jsonb) returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform realtime.send(payload, event, topic, true);
end;
$$;
grant execute on function private.broadcast(text, text, jsonb) to authenticated, service_role;

-- Areas that restrict some records further (an agent sees only assigned customers, say) register a
-- guard: a function (record_id text) returns boolean, checked for topics tenant:<id>:<area>:<record id>.
create table private.topic_guards (
  area text primary key,
  guard regprocedure not null
);

-- May the caller join this topic? Used by the RLS policy on realtime.messages and by the local relay.
create or replace function private.can_join_topic(topic text) returns boolean
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  parts text[] := string_to_array(topic, ':');
  guard regprocedure;
  allowed boolean;
begin
  if parts[1] = 'user' then
    return array_length(parts, 1) = 2 and parts[2] = (select auth.uid())::text;
  end if;
  if parts[1] <> 'tenant' or array_length(parts, 1) < 3
     or parts[2] is distinct from (select private.tenant_id())::text then
    return false;
  end if;
  if array_length(parts, 1) >= 4 then
    select g.guard into guard from private.topic_guards g where g.area = parts[3];
    if guard is not null then
      execute format('select %s($1)', guard::regproc) into allowed using parts[4];
      return coalesce(allowed, false);
    end if;
  end if;
  return true;
end;
$$;
grant execute on function private.can_join_topic(text) to authenticated, service_role;

create policy luna_topics_read on realtime.messages for select to authenticated
  using (extension in ('broadcast', 'presence') and (select private.can_join_topic((select realtime.topic()))));
create policy luna_topics_write on realtime.messages for insert to authenticated
  with check (extension in ('broadcast', 'presence') and (select private.can_join_topic((select realtime.topic()))));

-- ===========================================================================================
-- Jobs: the worker's generic queue (reminders, syncs, sends). Lease columns live on the row.
-- ===========================================================================================
do $$ begin
  create type private.job_status as enum ('queued', 'running', 'succeeded', 'failed', 'cancelled');
exception when duplicate_object then null; end $$;

create table private.jobs (
  id bigint generated always as identity primary key,
  tenant_id uuid references public.tenants (id) on delete cascade,
  kind text not null,
  payload jsonb not null default '{}'::jsonb,
  status private.job_status not null default 'queued',
  priority smallint not null default 100,   -- lower runs first
  run_at timestamptz not null default now(),
  attempts int not null default 0,
  max_attempts int not null default 5 check (max_attempts > 0),
  locked_by text,
  locked_until timestamptz,
  last_error text,
  result jsonb,
  -- Enqueueing the same key twice is a no-op (idempotent producers).
  idempotency_key text unique,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
-- Only claimable rows are in the claim index, so it stays small however long the history.
create index jobs_claim_idx on private.jobs (priority, run_at, id) where status = 'queued';
create index jobs_lease_idx on private.jobs (locked_until) where status = 'running';

-- Wake sleeping workers at once; they poll as a fallback.
create or replace function private.notify_jobs() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  perform pg_notify('luna_jobs', tg_table_name);
  return null;
end;
$$;
create trigger notify_jobs after insert on private.jobs
  for each statement execute function private.notify_jobs();

-- ===========================================================================================
-- Module health and the circuit breaker (state shared by every worker).
-- ===========================================================================================
do $$ begin
  create type public.breaker_state as enum ('CLOSED', 'HALF_OPEN', 'OPEN');
exception when duplicate_object then null; end $$;

create table public.module_health (
  module_name text primary key,
  health_status public.breaker_state not null default 'CLOSED',
  error_count int not null default 0,          -- consecutive failures
  success_count bigint not null default 0,
  failure_count bigint not null default 0,
  failure_threshold int not null default 5 check (failure_threshold > 0),
  cooldown_seconds int not null default 30 check (cooldown_seconds > 0),
  opened_at timestamptz,
  probe_started_at timestamptz,
  last_check timestamptz,
  last_error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create trigger set_updated_at before update on public.module_health
  for each row execute function private.set_updated_at();
alter table public.module_health enable row level security;
-- System-wide (one row per external module): any signed-in user may look, only the worker writes.
create policy module_health_select on public.module_health for select to authenticated using (true);
revoke insert, update, delete on public.module_health from authenticated, anon;
revoke all on public.module_health from anon;

-- The worker acts as service_role (bypasses RLS) and reaches the private queue only through the
-- functions in functions/worker.sql.
grant all on all tables in schema private to service_role;
grant all on all sequences in schema private to service_role;
alter default privileges in schema private grant all on tables to service_role;
alter default privileges in schema private grant all on sequences to service_role;

-- Functions created above before the default changed, or by the shim's defaults, stay closed too.
revoke execute on all functions in schema private from public;
revoke execute on all functions in schema audit from public;
grant execute on all functions in schema private to authenticated, service_role;
revoke execute on function private.enable_rls(text, text, text) from authenticated, service_role;
grant execute on function audit.record(uuid, text, text, text, jsonb, jsonb) to authenticated, service_role;
