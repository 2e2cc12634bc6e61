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

-- ---------------------------------------------------------------------------------------------
-- The queue protocol, written once. private.install_queue(...) writes a queue's six lease functions
-- from one template, as private.enable_rls writes policies:
--
--   private.<queue>_claim(worker text, n int, lease_seconds int)           -> the claimed rows
--   private.<queue>_complete(worker text, ids <id>[], results jsonb[])      -> how many completed
--   private.<queue>_fail(worker text, row_id <id>, error text, retryable boolean) -> the new state
--   private.<queue>_release(worker text, ids <id>[] default null)          -> how many handed back
--   private.<queue>_snooze(worker text, row_id <id>, seconds int)          -> the new state
--   private.<queue>_rescue()                                               -> how many taken back
--
-- The lease lives in columns every queue table has: locked_by, locked_until (null = not leased),
-- attempts, last_error, a due column and a priority column (higher runs first); optional: locked_at
-- (when the lease began), result (what the handler returned). Only the lease holder (locked_by =
-- worker, lease not yet taken back) completes, fails, releases or snoozes. Verbs:
--   claim     due rows in the available state, by priority (higher first), then due time, then id,
--             skip locked; state -> running, attempts + 1, lease for lease_seconds.
--   complete  state -> succeeded; the lease and last_error cleared. With complete hooks (entity code
--             that may refuse), a batch that cannot complete is completed row by row and a row that
--             still cannot counts as a retryable failure.
--   fail      retryable and attempts < max_attempts: back to available, due after an exponential
--             backoff (1 s, 2 s, 4 s ... capped at an hour); otherwise the visible failed state.
--   release   back to available now, the attempt not counted (shutdown, a row never started).
--   snooze    back to available after `seconds`, the attempt not counted (wait without failing).
--   rescue    an expired lease (its worker died) counts as a failed attempt: back to available
--             after the backoff, or failed when the attempts are used up.
-- The states are the queue's own values (SQL expressions over the row q, as it was): `available`,
-- `running`, `succeeded`, `failed`; `ready` (default: state = available) says which rows a claim may
-- take. docs/HACKING.md has the table of every queue's values.
--
-- What an entity adds plugs in through hook functions, used when they exist (private.<queue>_<hook>):
--   on_<verb>(q <table>, arg jsonb) returns jsonb     column values to set with the move, read before
--                                                       it (arg: complete: the result; fail: {error,
--                                                       retryable, retry}; snooze: {seconds}; rescue: {retry})
--   after_<verb>(worker text, olds <table>[], news <table>[], args jsonb[])   side effects of a batch
--                                                       (logs, metrics, other tables), same transaction
--   claimed(worker text, rows <table>[], lease_seconds int) returns ...      the claim's answer (its shape
--                                                       is the claim's return type); may hand rows back
--   in_doubt(q <table>) returns text                   non-null: the row's side effect may have happened,
--                                                       so it never goes back to available: fail, release,
--                                                       snooze and rescue send it to `doubt_state` with
--                                                       this text in last_error (the outbound queue's
--                                                       exactly-once 'reconcile')
-- Hooks are defined before install_queue is called (in the same repeatable file); calling it again
-- re-installs. private.queues records what was installed, and every queue is re-installed from it
-- when this file changes (private.reinstall_queues, below). The protocol lives here, in the core's
-- file, because repeatable files are applied in name order and every area's file calls it.
-- tests/test_queue_conformance.py runs the protocol against every queue the worker registers.
-- Why a generator rather than one jobs table pointing at entities: a lead or a message *is* its
-- queue row (its status machine, its rate slot, its exactly-once marks are on it), so claiming it in
-- place needs no second row to keep in step, and each table keeps its own partial claim index.
-- ---------------------------------------------------------------------------------------------
create or replace function private.install_queue(
  queue text, tbl regclass,
  state text default 'status',
  available text default '''queued''', running text default '''running''',
  succeeded text default '''succeeded''', failed text default '''failed''',
  ready text default null,
  due text default 'run_at', priority text default 'priority',
  max_attempts text default 'q.max_attempts',
  claimed_state text default null,       -- a column that keeps the state the row was claimed in
  doubt_state text default null
) returns void
language plpgsql
set search_path = ''
as $gen$
declare
  t text := tbl::text;
  idtype text;
  statetype text;
  has_locked_at boolean;
  has_result boolean;
  lease_off jsonb;           -- assignments that end a lease
  backoff text := 'now() + make_interval(secs => least(power(2, greatest(q.attempts - 1, 0)), 3600))';
  back text;                 -- the state a row goes back to (available, or doubt_state when in doubt)
  doubt text;
  shape regprocedure;
  claim_body text;
  verb text;
  missing text;
  retry_state text;          -- after a failed attempt: doubt_state, available (retry) or failed
  retry_due text;
  not_counted text;          -- attempts after a hand-back: the claim's attempt taken back
  complete_stmt text;
  wrapper text := $w$
    create or replace function private.%I(%s) returns %s
    language sql set search_path = '' as $body$
      with %s select %s from moved m
    $body$$w$;
  ret text := format('q.%I::text as state', state);
begin
  select string_agg(c, ', ') into missing
  from unnest(array['id', 'locked_by', 'locked_until', 'attempts', 'last_error', state, due, priority]) c
  where not exists (select 1 from pg_catalog.pg_attribute a where a.attrelid = tbl and a.attname = c
                    and a.attnum > 0 and not a.attisdropped);
  if missing is not null then
    raise exception 'install_queue(%): % lacks the queue columns %', queue, t, missing
      using hint = 'add them in a migration: locked_by text, locked_until timestamptz, attempts int, last_error text, '
                   'a due timestamptz and a priority (higher runs first)';
  end if;
  select pg_catalog.format_type(a.atttypid, a.atttypmod) into idtype
  from pg_catalog.pg_attribute a where a.attrelid = tbl and a.attname = 'id';
  select pg_catalog.format_type(a.atttypid, a.atttypmod) into statetype
  from pg_catalog.pg_attribute a where a.attrelid = tbl and a.attname = state;
  has_locked_at := exists (select 1 from pg_catalog.pg_attribute a where a.attrelid = tbl and a.attname = 'locked_at'
                           and not a.attisdropped);
  has_result := exists (select 1 from pg_catalog.pg_attribute a where a.attrelid = tbl and a.attname = 'result'
                        and not a.attisdropped);
  if private.queue_hook(queue, 'in_doubt', t) is not null and doubt_state is null then
    raise exception 'install_queue(%): an in_doubt hook needs a doubt_state', queue;
  end if;
  doubt := case when private.queue_hook(queue, 'in_doubt', t) is not null
                then format('private.%I(q)', queue || '_in_doubt') else 'null::text' end;
  lease_off := jsonb_build_object('locked_by', 'null', 'locked_until', 'null')
               || case when has_locked_at then '{"locked_at": "null"}'::jsonb else '{}' end
               || case when claimed_state is not null then jsonb_build_object(claimed_state, 'null') else '{}' end;
  back := format('case when h.doubt is not null then %s else %s end', coalesce(quote_literal(doubt_state), 'null'), available);

  -- claim
  shape := private.queue_hook(queue, 'claimed', t);
  claim_body := private.queue_statement(queue, 'claim', t, doubt,
    arg => 'null::jsonb', picks => format('where (%s) and q.%I <= now() order by q.%I desc, q.%I, q.id limit n',
                                          coalesce(ready, format('q.%I = %s', state, available)), due, priority, due),
    skip_locked => true,
    sets => jsonb_build_object(state, format('(%s)::%s', running, statetype), 'locked_by', 'worker',
                               'locked_until', 'now() + make_interval(secs => lease_seconds)',
                               'attempts', 'q.attempts + 1')
            || case when has_locked_at then '{"locked_at": "clock_timestamp()"}'::jsonb else '{}' end
            || case when claimed_state is not null then jsonb_build_object(claimed_state, format('q.%I', state)) else '{}' end,
    answer => case when shape is null then 'q.*' else 'q' end);
  if shape is null then
    execute format($f$
      create or replace function private.%I(worker text, n int, lease_seconds int) returns setof %s
      language sql set search_path = '' as $body$
        with %s select m.* from moved m
      $body$$f$, queue || '_claim', t, claim_body);
  else
    execute format($f$
      create or replace function private.%I(worker text, n int, lease_seconds int) returns %s
      language plpgsql set search_path = '' as $body$
      declare
        claimed %s[];
      begin
        with %s select coalesce(array_agg(m.q), '{}') into claimed from moved m;
        return query select * from %s(worker, claimed, lease_seconds);
      end $body$$f$, queue || '_claim',
      pg_catalog.pg_get_function_result(shape::oid), t, claim_body, shape::regproc::text);
  end if;

  -- complete. With entity code in it (complete hooks), a batch that fails is completed row by row
  -- and a row that still fails is a retryable failure; without, it is the one update (no savepoint).
  complete_stmt :=
    private.queue_statement(queue, 'complete', t, doubt, answer => ret, arg => 'r.arg',
      joins => 'join unnest(ids, coalesce(results, array_fill(null::jsonb, array[cardinality(ids)]))) r(id, arg) on r.id = q.id',
      source => 'unnest(ids, coalesce(results, array_fill(null::jsonb, array[cardinality(ids)]))) h(id, arg)',
      picks => 'where q.locked_by = worker and q.locked_until is not null',
      sets => lease_off || jsonb_build_object(state, format('(%s)::%s', succeeded, statetype), 'last_error', 'null')
              || case when has_result then '{"result": "h.arg"}'::jsonb else '{}' end);
  if private.queue_hook(queue, 'on_complete', t) is null and private.queue_hook(queue, 'after_complete', t) is null then
    execute format(wrapper, queue || '_complete', format('worker text, ids %s[], results jsonb[] default null', idtype),
                   'int', complete_stmt, 'count(*)::int');
  else
    execute format($f$
      create or replace function private.%I(worker text, ids %s[], results jsonb[] default null) returns int
      language plpgsql set search_path = '' as $body$
      declare
        n int := 0;
        i int;
      begin
        begin
          with %s select count(*)::int into n from moved;
          return n;
        exception when others then
          if coalesce(cardinality(ids), 0) = 1 then
            perform private.%I(worker, ids[1], format('completing failed (%%s: %%s)', sqlstate, sqlerrm), true);
            return 0;
          elsif coalesce(cardinality(ids), 0) = 0 then
            raise;
          end if;
        end;
        for i in 1 .. cardinality(ids) loop
          n := n + private.%I(worker, array[ids[i]], case when results is not null then array[results[i]] end);
        end loop;
        return n;
      end $body$$f$, queue || '_complete', idtype,
      complete_stmt, queue || '_fail', queue || '_complete');
  end if;

  -- fail, release, snooze, rescue: one statement each, answering the new state or how many moved
  retry_state := format('(case when h.doubt is not null then %s when h.retry then %s else %s end)::%s',
                        coalesce(quote_literal(doubt_state), 'null'), available, failed, statetype);
  retry_due := format('case when h.doubt is not null then now() when h.retry then %s else q.%I end', backoff, due);
  not_counted := 'case when h.doubt is not null then q.attempts else greatest(q.attempts - 1, 0) end';
  execute format(wrapper, queue || '_fail', format('worker text, row_id %s, error text, retryable boolean default true', idtype),
    'text',
    private.queue_statement(queue, 'fail', t, doubt, answer => ret,
      arg => format('jsonb_build_object(''error'', error, ''retryable'', retryable, ''retry'', retryable and q.attempts < (%s))', max_attempts),
      retry => format('retryable and q.attempts < (%s)', max_attempts),
      picks => 'where q.id = row_id and q.locked_by = worker and q.locked_until is not null',
      sets => lease_off || jsonb_build_object(state, retry_state, due, retry_due,
                                              'last_error', 'left(error || coalesce(''; '' || h.doubt, ''''), 4000)')),
    'm.state');
  execute format(wrapper, queue || '_release', format('worker text, ids %s[] default null', idtype), 'int',
    private.queue_statement(queue, 'release', t, doubt, answer => ret, arg => 'null::jsonb',
      picks => 'where q.locked_by = worker and q.locked_until is not null and (ids is null or q.id = any(ids))',
      sets => lease_off || jsonb_build_object(state, format('(%s)::%s', back, statetype), 'attempts', not_counted,
        'last_error', 'case when h.doubt is not null then left(''handed back; '' || h.doubt, 4000) else q.last_error end')),
    'count(*)::int');
  execute format(wrapper, queue || '_snooze', format('worker text, row_id %s, seconds int', idtype), 'text',
    private.queue_statement(queue, 'snooze', t, doubt, answer => ret, arg => 'jsonb_build_object(''seconds'', seconds)',
      picks => 'where q.id = row_id and q.locked_by = worker and q.locked_until is not null',
      sets => lease_off || jsonb_build_object(state, format('(%s)::%s', back, statetype), 'attempts', not_counted,
        due, 'case when h.doubt is not null then now() else now() + make_interval(secs => seconds) end',
        'last_error', 'case when h.doubt is not null then left(''snoozed; '' || h.doubt, 4000) else q.last_error end')),
    'm.state');
  execute format(wrapper, queue || '_rescue', '', 'int',
    private.queue_statement(queue, 'rescue', t, doubt, answer => ret,
      arg => format('jsonb_build_object(''retry'', q.attempts < (%s))', max_attempts),
      retry => format('q.attempts < (%s)', max_attempts),
      picks => 'where q.locked_until < now()', skip_locked => true,
      sets => lease_off || jsonb_build_object(state, retry_state, due, retry_due,
        'last_error', '''lease expired (worker '' || coalesce(q.locked_by, ''?'') || '' stopped answering)'' || coalesce(''; '' || h.doubt, '''')')),
    'count(*)::int');

  foreach verb in array array['claim', 'complete', 'fail', 'release', 'snooze', 'rescue'] loop
    execute format('revoke execute on function %s from public, anon, authenticated',
                   private.queue_function(queue, verb));
    execute format('grant execute on function %s to service_role', private.queue_function(queue, verb));
  end loop;
  insert into private.queues as x (name, tbl, spec)
  values (queue, t, jsonb_build_object('state', state, 'available', available, 'running', running,
                                       'succeeded', succeeded, 'failed', failed, 'ready', ready, 'due', due,
                                       'priority', priority, 'max_attempts', max_attempts,
                                       'claimed_state', claimed_state, 'doubt_state', doubt_state))
  on conflict (name) do update set tbl = excluded.tbl, spec = excluded.spec, installed_at = now();
end;
$gen$;

-- A queue's hook function, if it is defined: its regprocedure, else null.
create or replace function private.queue_hook(queue text, hook text, tbl text) returns regprocedure
language sql stable
set search_path = ''
as $$
  select coalesce(
    to_regprocedure(format('private.%I(%s, jsonb)', queue || '_' || hook, tbl)),
    to_regprocedure(format('private.%I(text, %s[], %s[], jsonb[])', queue || '_' || hook, tbl, tbl)),
    to_regprocedure(format('private.%I(text, %s[], int)', queue || '_' || hook, tbl)),
    to_regprocedure(format('private.%I(%s)', queue || '_' || hook, tbl)))
$$;

-- A generated function's signature (for grants).
create or replace function private.queue_function(queue text, verb text) returns regprocedure
language sql stable
set search_path = ''
as $$
  select p.oid::regprocedure from pg_catalog.pg_proc p
  where p.pronamespace = 'private'::regnamespace and p.proname = queue || '_' || verb
$$;

/*
 * The one statement every verb is, as the CTE list the generated function reads `moved` from: pick
 * the rows, then move them in one update. A claim and the rescuer lock what they pick (skip locked);
 * the lease holder's verbs re-check in the update that the lease is still theirs. `sets` maps a
 * column to its new value (SQL over q, the row before the move, and h, the picked row: h.arg,
 * h.retry, h.doubt, h.p); an on_<verb> hook's answer h.p overrides any column it names. An
 * after_<verb> hook gets the batch. Without hooks the update computes everything itself: the lease
 * holder's verbs are then one plain update of the held rows.
 */
create or replace function private.queue_statement(
  queue text, verb text, tbl text, doubt text, arg text, picks text, sets jsonb, answer text,
  joins text default '', retry text default 'null::boolean', skip_locked boolean default false,
  source text default ''
) returns text
language plpgsql stable
set search_path = ''
as $$
declare
  hook_on regprocedure := private.queue_hook(queue, 'on_' || verb, tbl);
  hook_after regprocedure := case when verb <> 'claim' then private.queue_hook(queue, 'after_' || verb, tbl) end;
  hooked boolean := hook_on is not null or hook_after is not null;
  lock text := case when skip_locked then ' for update of q skip locked' else '' end;
  recheck text := case when skip_locked then '' else ' and q.locked_by = worker and q.locked_until is not null' end;
  assignments text;
begin
  select string_agg(format('%I = %s', a.attname,
           case when hook_on is not null
                then format('case when h.p ? %L then %s else %s end', a.attname,
                            case when a.atttypid = 'jsonb'::regtype then format('h.p -> %L', a.attname)
                                 else format('(h.p ->> %L)::%s', a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)) end,
                            coalesce(sets ->> a.attname::text, format('q.%I', a.attname)))
                else sets ->> a.attname::text end), ', ' order by a.attnum)
  into assignments
  from pg_catalog.pg_attribute a
  where a.attrelid = tbl::regclass and a.attnum > 0 and not a.attisdropped and a.attgenerated = ''
    and a.attname <> 'id' and (hook_on is not null or sets ? a.attname::text);
  assignments := case when hooked then assignments
                      else replace(replace(assignments, 'h.retry', '(' || retry || ')'), 'h.doubt', '(' || doubt || ')') end;
  if not hooked and not skip_locked then
    -- the lease holder's verb: one update of the held rows (h: the source's id and arg)
    return format('moved as (update %s q set %s%s %s%s returning %s)', tbl, assignments,
                  case when source <> '' then ' from ' || source else '' end, picks,
                  case when source <> '' then ' and q.id = h.id' else '' end, answer);
  elsif not hooked then
    return format('moved as (update %s q set %s from (select q.id, %s as arg from %s q %s %s%s) h '
                  'where q.id = h.id%s returning %s)',
                  tbl, assignments, arg, tbl, joins, picks, lock, recheck, answer);
  end if;
  return format('picked as (select x.*, %s as p from (select q.id, q as old, %s as arg, %s as retry, %s as doubt '
                'from %s q %s %s%s) x), '
                '%s as (update %s q set %s from picked h where q.id = h.id%s returning %s%s)%s',
                case when hook_on is not null then format('%s(x.old, x.arg)', hook_on::regproc::text) else 'null::jsonb' end,
                arg, retry, doubt, tbl, joins, picks, lock,
                case when hook_after is not null then 'moved0' else 'moved' end, tbl, assignments, recheck, answer,
                case when hook_after is not null then ', q as row_new, h.old as row_old, h.arg as row_arg' else '' end,
                case when hook_after is not null then format(
                  ', after as (select %s(%s, array_agg(m.row_old), array_agg(m.row_new), array_agg(m.row_arg)) '
                  'from moved0 m), moved as (select m.* from moved0 m where (select count(*) from after) >= 0)',
                  hook_after::regproc::text,
                  case when verb = 'rescue' then 'null::text' else 'worker' end) -- the rescuer holds no lease
                else '' end);
end;
$$;

-- Re-install every recorded queue (this file changed: the generator may have), from its recorded
-- arguments and the hooks its area defines. Returns how many.
create or replace function private.reinstall_queues() returns int
language plpgsql
set search_path = ''
as $$
declare
  x record;
  n int := 0;
begin
  for x in select * from private.queues order by name loop
    perform private.install_queue(x.name, x.tbl::regclass, x.spec ->> 'state', x.spec ->> 'available',
      x.spec ->> 'running', x.spec ->> 'succeeded', x.spec ->> 'failed', x.spec ->> 'ready', x.spec ->> 'due',
      x.spec ->> 'priority', x.spec ->> 'max_attempts', x.spec ->> 'claimed_state', x.spec ->> 'doubt_state');
    n := n + 1;
  end loop;
  return n;
end;
$$;
revoke execute on function private.install_queue(text, regclass, text, text, text, text, text, text, text, text, text, text, text),
  private.queue_hook(text, text, text), private.queue_function(text, text),
  private.queue_statement(text, text, text, text, text, text, jsonb, text, text, text, boolean, text),
  private.reinstall_queues() from public, anon, authenticated;
select private.reinstall_queues();
