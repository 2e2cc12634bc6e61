-- Supabase shim: roles. Applied only to plain Postgres (never to a Supabase project).
-- Roles are cluster-wide, so each is created only if missing.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
  -- Supabase Auth runs hooks as this role; we grant execute on the access token hook to it.
  if not exists (select 1 from pg_roles where rolname = 'supabase_auth_admin') then
    create role supabase_auth_admin nologin noinherit;
  end if;
end
$$;

grant anon, authenticated, service_role to authenticator;
grant anon, authenticated, service_role to current_user;

-- The API schemas PostgREST exposes (Supabase's linter reads this setting).
alter role authenticator set pgrst.db_schemas = 'public, graphql_public';

grant usage on schema public to anon, authenticated, service_role;

-- A new Supabase project grants everything in public to the API roles by default; RLS and revoked
-- execute are what protect data. Reproduce that so local tests fail where production would leak.
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;

create schema if not exists extensions;
grant usage on schema extensions to anon, authenticated, service_role;
