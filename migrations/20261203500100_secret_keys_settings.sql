/*
 * Tenant secrets (20261203500000): two kinds of setting are not credentials and stay in the settings JSON.
 *   - Values that are not text: a credential is a string, so `"auth": false` or `"use_auth": true` is an option.
 *     Moving it changed behaviour; an SMTP channel started logging in to a server without AUTH.
 *   - A channel's `webhook_url`: the public URL of our own endpoint, which webhook signatures cover. It was
 *     moved as if it were a Slack hook, and Twilio signatures then failed to match. A Slack hook's
 *     `webhook_url` (tenant_features) is still a secret.
 * From here on, every write goes through the rule below. Settings already moved stay in the store
 * until the row is written again with them (`luna secrets list` shows them).
 */
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
  select w.path, w.value #>> '{}'
  from walk w
  where private.is_secret_key(w.path[cardinality(w.path)]) and jsonb_typeof(w.value) = 'string'
$$;

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
  doc jsonb := rec -> col;
  kept jsonb := '{}';
begin
  if label = 'channel' and jsonb_typeof(doc) = 'object' and doc ? 'webhook_url' then
    kept := jsonb_build_object('webhook_url', doc -> 'webhook_url');  -- our own public URL, not a credential
    doc := doc - 'webhook_url';
  end if;
  if not exists (select 1 from private.secret_paths(doc)) then
    return new;
  end if;
  scope := case kind when 'feature' then rec ->> 'feature'
                     when 'row' then label || '.' || (rec ->> 'id')
                     else label end;
  doc := private.seal_json_secrets(tenant, scope, doc) || kept;
  new := jsonb_populate_record(new, jsonb_build_object(col, doc));
  return new;
end;
$$;
