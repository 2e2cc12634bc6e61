/*
 * Deny execution by default in the private and audit schemas (issue 10, item 5).
 *
 * Until now every private function was executable by `authenticated` (a default privilege and a blanket
 * grant in the core migration), so a signed-in user with a direct SQL connection could call the worker's
 * and the ingestion's security-definer helpers with any tenant: audit.record for another tenant's chain,
 * private.ingest_lead, private.broadcast, private.channel_for_worker (decrypted credentials' envelope) ...
 *
 * From here on:
 *   - nothing in private/audit is executable by PUBLIC, anon or authenticated unless granted by name;
 *   - service_role (the worker, edge's service calls) keeps execution (its default privilege is kept);
 *   - authenticated gets back, by name, only what runs as the signed-in user: the policy helpers, the
 *     helpers of security-invoker RPCs, and the two writers every user action reaches (audit.record and
 *     private.broadcast), which now refuse a tenant that is not the caller's.
 * docs/security.md lists every grant and why.
 */

-- New functions: no EXECUTE for authenticated unless their file grants it.
alter default privileges revoke execute on functions from public;
alter default privileges in schema private revoke execute on functions from authenticated, anon;
alter default privileges in schema audit revoke execute on functions from public, authenticated, anon;

revoke execute on all functions in schema private from public, anon, authenticated;
revoke execute on all functions in schema audit from public, anon, authenticated;
grant execute on all functions in schema private to service_role;
grant execute on all functions in schema audit to service_role;

/*
 * Trusted callers are service code: no role set (the migration / worker login) or service_role. Any other
 * role (authenticated, anon, an analyst's login role) acts for the tenant of its token only.
 * (current_setting('role') is the SET ROLE of the session: security definer does not change it.)
 */
create or replace function private.caller_is_service() returns boolean
language sql stable
set search_path = ''
as $$
  select coalesce(nullif(current_setting('role', true), ''), 'none') in ('none', 'service_role')
$$;

-- Refuse (42501) a tenant argument that is not the signed-in caller's active tenant.
create or replace function private.assert_caller_tenant(tenant uuid) returns void
language plpgsql stable
set search_path = ''
as $$
begin
  if not private.caller_is_service() and tenant is distinct from (select private.tenant_id()) then
    raise exception 'this tenant is not yours' using errcode = '42501', detail = 'code=tenant_mismatch';
  end if;
end;
$$;

-- audit.record: as before, and a signed-in caller records in its own tenant's chain only.
create or replace function audit.record(
  tenant uuid, action text, resource_type text, resource_id text,
  before jsonb default null, after jsonb default null
) returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  ctx jsonb;
begin
  perform private.assert_caller_tenant(tenant);
  ctx := audit.request_context();
  insert into audit.events (tenant_id, seq, actor_id, actor_role, action, resource_type, resource_id,
                            before, after, ip, user_agent, correlation_id, hash)
  values (tenant, 0, (ctx ->> 'actor_id')::uuid, ctx ->> 'actor_role', action, resource_type, resource_id,
          before, after, audit.try_inet(ctx ->> 'ip'), ctx ->> 'user_agent', ctx ->> 'correlation_id', '');
end;
$$;

-- private.broadcast: a signed-in caller sends on its own tenant's topics and to its colleagues only.
create or replace function private.broadcast(topic text, event text, payload jsonb) returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  kind text := split_part(topic, ':', 1);
  target text := split_part(topic, ':', 2);
begin
  if not private.caller_is_service() then
    if kind = 'tenant' then
      perform private.assert_caller_tenant(case when target ~* '^[0-9a-f-]{36}$' then target::uuid end);
    elsif not (kind = 'user' and target ~* '^[0-9a-f-]{36}$'
               and (target::uuid = (select auth.uid()) or target::uuid = any (private.tenant_user_ids()))) then
      raise exception 'you may not broadcast on this topic' using errcode = '42501', detail = 'code=topic_forbidden';
    end if;
  end if;
  perform realtime.send(payload, event, topic, true);
end;
$$;

-- What runs as the signed-in user (policies, security-invoker RPCs and their helpers).
grant execute on function
  private.caller_is_service(), private.assert_caller_tenant(uuid),
  -- policy helpers
  private.tenant_id(), private.tenant_role(), private.default_allowed(public.member_role, text),
  private.can(text, text), private.sees_all(), private.tenant_user_ids(),
  private.can_join_topic(text), private.crm_can_see_customer(uuid),
  -- writers reached by every user action (they check the tenant themselves)
  audit.record(uuid, text, text, text, jsonb, jsonb), private.broadcast(text, text, jsonb),
  -- the normalisers public.crm_import_customers (security invoker) uses
  private.crm_email(text), private.crm_phone(text, text), private.clean_email(text),
  private.clean_phone(text, text), private.fold_identifier(text), private.phone_from_digits(text)
  to authenticated;
grant usage on schema audit to authenticated;

/*
 * Functions of the repeatable files (functions/ files) that run as the signed-in user. On a fresh database
 * they do not exist yet (repeatables run after migrations) and their files grant them; on an existing one
 * the revoke above took their grant away, so it is given back here.
 */
do $$
declare
  sig text;
begin
  foreach sig in array array[
    -- functions/core.sql, functions/crm.sql (security-invoker RPC helpers)
    'private.csv_text(text)', 'private.crm_require_tenant()', 'private.crm_require_lead_role()',
    'private.crm_mask_phone(text)', 'private.crm_mask_email(text)', 'private.crm_mask_name(text)',
    'private.crm_customer_messages(uuid, integer)',
    -- functions/inbox.sql (granted beside their definitions there)
    'private.inbox_customer_messages(uuid, integer)', 'private.inbox_timeline(uuid, uuid, text, jsonb)',
    'private.inbox_clear_unread(uuid)', 'private.can_join_inbox_topic(text)', 'private.message_status_rank(text)',
    -- functions/leads.sql (public.approve_lead / reject_lead / requeue_lead are security invoker)
    'private.review_lead(uuid, text, text)']
  loop
    if to_regprocedure(sig) is not null then
      execute format('grant execute on function %s to authenticated', sig);
    end if;
  end loop;
end $$;
