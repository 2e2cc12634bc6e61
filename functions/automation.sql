/*
 * Automation engine (issue 12): events, workflow runs and their steps, templates, opt-outs.
 * Tables, triggers and the send guard: migrations/20261204050000_automation.sql. Docs: docs/automation.md.
 *
 * The worker's entry points (service_role only), each called by one generic job handler
 * (worker/automation/__init__.py):
 *   private.automation_start_runs(event)      'automation.event' jobs: one run per (workflow, event)
 *   private.automation_run_step(step)         'automation.step' jobs: one step, its effects and the next
 *                                             step's row and job in one transaction
 *   private.automation_step_done(step, ...)   an external step (webhook) reports its outcome
 *   private.automation_opt_out_confirm(id)    'automation.opt_out_confirm' jobs: the one confirmation
 */

-- ---------------------------------------------------------------------------------------------
-- Events: the one function later areas call (appointment.booked, order.status_changed,
-- cart.abandoned, payment.received ...). Triggers of this area write the same table directly.
-- ---------------------------------------------------------------------------------------------

/*
 * Record a business event; returns its id. `refs` names what it is about, where known:
 * {"customer_id", "contact_id", "conversation_id", "lead_id", "card_id"} (uuids). With `dedupe_key`
 * (the producer's id of the happening) a second call returns the first event and records nothing.
 * An active workflow listening to `type` gets a job in this same transaction (the dispatch trigger).
 */
create or replace function private.emit_event(tenant uuid, type text, subject_type text, subject_id uuid,
                                              payload jsonb default '{}', dedupe_key text default null,
                                              refs jsonb default '{}', occurred_at timestamptz default now())
returns bigint
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  r jsonb := coalesce(refs, '{}');
  new_id bigint;
begin
  insert into public.automation_events (tenant_id, type, subject_type, subject_id, customer_id, contact_id,
                                        conversation_id, lead_id, card_id, payload, dedupe_key, caused_by_run, occurred_at)
  values (tenant, type, subject_type, subject_id, (r ->> 'customer_id')::uuid, (r ->> 'contact_id')::uuid,
          (r ->> 'conversation_id')::uuid, (r ->> 'lead_id')::uuid, (r ->> 'card_id')::uuid, coalesce(payload, '{}'),
          dedupe_key, private.automation_current_run(), coalesce(emit_event.occurred_at, now()))
  on conflict (tenant_id, dedupe_key) do nothing
  returning id into new_id;
  if new_id is null then
    select e.id into new_id from public.automation_events e
    where e.tenant_id = tenant and e.dedupe_key = emit_event.dedupe_key;
  end if;
  return new_id;
end;
$$;
revoke execute on function private.emit_event(uuid, text, text, uuid, jsonb, text, jsonb, timestamptz) from public, authenticated;
grant execute on function private.emit_event(uuid, text, text, uuid, jsonb, text, jsonb, timestamptz) to service_role;

-- ---------------------------------------------------------------------------------------------
-- Definitions
-- ---------------------------------------------------------------------------------------------
create or replace function private.automation_invalid(message text, path text) returns void
language plpgsql
set search_path = ''
as $$
begin
  raise exception '%', message using errcode = 'PT422', detail = 'code=invalid_workflow; path=' || path,
    hint = 'the definition is checked against luna/automation/workflow.schema.json (GET /v1/automation/schema)';
end;
$$;

/*
 * The database's own check of a definition (what the engine relies on), whoever saves it: a trigger,
 * at least one step, unique step ids, known step types, branch targets that exist. The full JSON
 * Schema (luna/automation/workflow.schema.json) is applied by edge and the CLI before this.
 * Refuses with PT422, code invalid_workflow and the JSON path of the first error in the detail.
 */
create or replace function private.automation_check_definition(def jsonb) returns void
language plpgsql
set search_path = ''
as $$
declare
  s jsonb;
  i int := 0;
  ids text[] := '{}';
  ref text;
  k text;
begin
  if jsonb_typeof(def) is distinct from 'object' then
    perform private.automation_invalid('a workflow definition is a JSON object', '$');
  end if;
  if jsonb_typeof(def #> '{trigger,event}') is distinct from 'string' then
    perform private.automation_invalid('trigger.event names the event that starts the workflow', '$.trigger.event');
  end if;
  if jsonb_typeof(def -> 'steps') is distinct from 'array' or jsonb_array_length(def -> 'steps') = 0 then
    perform private.automation_invalid('steps is a non-empty array', '$.steps');
  end if;
  for s in select * from jsonb_array_elements(def -> 'steps') loop
    if jsonb_typeof(s -> 'id') is distinct from 'string' then
      perform private.automation_invalid('every step has a string id', format('$.steps[%s].id', i));
    end if;
    if (s ->> 'id') = any(ids) or (s ->> 'id') = 'end' then
      perform private.automation_invalid(format('step id %s is used twice (or is the reserved "end")', s ->> 'id'),
                                         format('$.steps[%s].id', i));
    end if;
    ids := ids || (s ->> 'id');
    if not coalesce(s ->> 'type', '') = any(array['condition', 'delay', 'send_message', 'add_tag', 'remove_tag',
        'assign', 'move_stage', 'create_task', 'update_field', 'webhook', 'handover', 'wait_for_reply']) then
      perform private.automation_invalid(format('unknown step type %s', coalesce(s ->> 'type', 'null')),
                                         format('$.steps[%s].type', i));
    end if;
    i := i + 1;
  end loop;
  i := 0;
  for s in select * from jsonb_array_elements(def -> 'steps') loop
    foreach k in array array['next', 'then', 'else', 'on_reply', 'on_timeout'] loop
      ref := s ->> k;
      if ref is not null and ref <> 'end' and not ref = any(ids) then
        perform private.automation_invalid(format('%s points at a step that does not exist: %s', k, ref),
                                           format('$.steps[%s].%s', i, k));
      end if;
    end loop;
    i := i + 1;
  end loop;
end;
$$;

-- {"days", "hours", "minutes", "seconds"} -> interval.
create or replace function private.automation_interval(spec jsonb) returns interval
language sql immutable
set search_path = ''
as $$
  select make_interval(days => coalesce((spec ->> 'days')::int, 0), hours => coalesce((spec ->> 'hours')::int, 0),
                       mins => coalesce((spec ->> 'minutes')::int, 0),
                       secs => coalesce((spec ->> 'seconds')::double precision, 0))
$$;

-- ---------------------------------------------------------------------------------------------
-- Text: opt-out keyword folding and template rendering (the one copy of each rule)
-- ---------------------------------------------------------------------------------------------

/*
 * The form two short texts are compared in: private.name_key (NFKC, Turkish lower-case: İ -> i,
 * I -> ı), then Turkish letters to their base letter (so "IPTAL", "iptal", "İptal" and "ıptal" match,
 * as do "ABONELIKTEN CIK" and "abonelikten çık"), punctuation and emoji dropped, spaces collapsed.
 */
create or replace function private.automation_keyword_fold(raw text) returns text
language sql immutable parallel safe
set search_path = ''
as $$
  select nullif(pg_catalog.btrim(pg_catalog.regexp_replace(
           pg_catalog.translate(coalesce(private.name_key(raw), ''), 'ışçğöüâîû', 'iscgouaiu'),
           '[^[:alnum:]]+', ' ', 'g')), '')
$$;

/*
 * Render a template: {{name}} takes the variable, {{name|Merhaba}} falls back to the text after the
 * bar; a dotted name reads a path ({{customer.city}}). A variable with no value and no default
 * refuses the render (PT422, code template_variable_missing, the variable in the hint): that
 * recipient's step fails visibly, nothing is sent with a hole in it.
 */
create or replace function private.automation_render(body text, vars jsonb) returns text
language plpgsql immutable
set search_path = ''
as $$
declare
  m text[];
  val text;
  result text := body;
begin
  for m in select regexp_matches(body, '(\{\{\s*([^{}|]+?)\s*(\|([^{}]*))?\}\})', 'g') loop
    val := coalesce(vars ->> m[2], vars #>> string_to_array(m[2], '.'));
    if coalesce(btrim(val), '') = '' then
      if m[3] is null then
        raise exception 'template variable {{%}} has no value for this recipient', m[2]
          using errcode = 'PT422', detail = 'code=template_variable_missing', hint = m[2];
      end if;
      val := m[4];
    end if;
    result := replace(result, m[1], val);
  end loop;
  return result;
end;
$$;
grant execute on function private.automation_render(text, jsonb), private.automation_keyword_fold(text) to service_role;

-- ---------------------------------------------------------------------------------------------
-- The record a run sees (conditions and templates): customer, lead, contact, conversation, card,
-- the event, and the usual Turkish variables
-- ---------------------------------------------------------------------------------------------

/*
 * {"isim": first name, "ad_soyad", "firma", "telefon", "eposta", "channel", "language", "tags": [...],
 *  every customer column and custom field and lead column at the top level (custom fields win),
 *  "customer": {...}, "lead": {...}, "contact": {...}, "conversation": {...}, "card": {...}, "event": {...}}
 */
create or replace function private.automation_record(r public.workflow_runs) returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  cust public.customers;
  ld public.leads;
  ct public.contacts;
  conv jsonb;
  card jsonb;
  locale text;
  full_name text;
  cust_j jsonb;
  lead_j jsonb;
begin
  -- Only what the run has (each lookup is a query; a step builds the record once).
  if r.customer_id is not null then
    select * into cust from public.customers c where c.tenant_id = r.tenant_id and c.id = r.customer_id;
  end if;
  if r.lead_id is not null then
    select * into ld from public.leads l where l.tenant_id = r.tenant_id and l.id = r.lead_id;
  end if;
  if r.contact_id is not null then
    select * into ct from public.contacts t where t.tenant_id = r.tenant_id and t.id = r.contact_id;
  end if;
  if r.conversation_id is not null then
    select to_jsonb(c) || jsonb_build_object('channel', a.kind) into conv
    from public.conversations c join public.channel_accounts a on a.id = c.channel_account_id
    where c.tenant_id = r.tenant_id and c.id = r.conversation_id;
  end if;
  if r.card_id is not null then
    select to_jsonb(k) || jsonb_build_object('stage', s.name) into card
    from public.cards k join public.pipeline_stages s on s.id = k.stage_id
    where k.tenant_id = r.tenant_id and k.id = r.card_id;
  end if;
  if cust.custom_fields ->> 'language' is null then
    select t.locale into locale from public.tenants t where t.id = r.tenant_id;
  end if;
  cust_j := case when cust.id is not null then to_jsonb(cust) end;
  lead_j := case when ld.id is not null then to_jsonb(ld) - array['raw', 'enrichment', 'validation', 'locked_by',
    'locked_at', 'locked_until', 'claimed_status', 'resume_status', 'attempts', 'last_error'] end;
  full_name := nullif(btrim(coalesce(cust.full_name, ld.contact_name, ct.display_name)), '');
  return jsonb_strip_nulls(
    coalesce(lead_j, '{}') || coalesce(cust_j - 'custom_fields', '{}') || coalesce(cust.custom_fields, '{}')
    || jsonb_build_object(
      'isim', split_part(full_name, ' ', 1), 'ad_soyad', full_name,
      'firma', coalesce(cust.custom_fields ->> 'firma', ld.company_name),
      'telefon', coalesce(cust.phone, ld.phone, ct.phone), 'eposta', coalesce(cust.email, ld.email, ct.email),
      'channel', conv ->> 'channel',
      'language', coalesce(cust.custom_fields ->> 'language', locale, 'tr'),
      'tags', to_jsonb(coalesce(cust.tags, '{}')),
      'customer', cust_j, 'lead', lead_j, 'contact', case when ct.id is not null then to_jsonb(ct) end,
      'conversation', conv, 'card', card, 'event', r.context -> 'event'));
end;
$$;

/*
 * A condition over the record: {"all": [...]}, {"any": [...]}, {"not": {...}},
 * {"has_tag": "vip"}, {"channel": "whatsapp"},
 * {"field": "city" | "lead.lead_category" | ..., "op": "eq|ne|in|exists|not_exists|contains|gt|gte|lt|lte", "value": ...}.
 */
create or replace function private.automation_test(cond jsonb, rec jsonb) returns boolean
language plpgsql stable
set search_path = ''
as $$
declare
  v jsonb;
  t text;
  op text;
begin
  if cond is null or cond = '{}'::jsonb then
    return true;
  elsif cond ? 'all' then
    return coalesce((select bool_and(private.automation_test(c, rec)) from jsonb_array_elements(cond -> 'all') c), true);
  elsif cond ? 'any' then
    return coalesce((select bool_or(private.automation_test(c, rec)) from jsonb_array_elements(cond -> 'any') c), false);
  elsif cond ? 'not' then
    return not private.automation_test(cond -> 'not', rec);
  elsif cond ? 'has_tag' then
    return exists (select 1 from jsonb_array_elements_text(coalesce(rec -> 'tags', '[]')) x
                   where lower(x) = lower(cond ->> 'has_tag'));
  elsif cond ? 'channel' then
    return rec ->> 'channel' is not distinct from cond ->> 'channel';
  elsif cond ? 'field' then
    v := coalesce(rec -> (cond ->> 'field'), rec #> string_to_array(cond ->> 'field', '.'));
    t := v #>> '{}';
    op := coalesce(cond ->> 'op', 'eq');
    return case op
      when 'eq' then t is not distinct from cond #>> '{value}'
      when 'ne' then t is distinct from cond #>> '{value}'
      when 'in' then t in (select jsonb_array_elements_text(cond -> 'value'))
      when 'exists' then coalesce(btrim(t), '') <> ''
      when 'not_exists' then coalesce(btrim(t), '') = ''
      when 'contains' then case when jsonb_typeof(v) = 'array' then v ? (cond ->> 'value')
                                else strpos(lower(coalesce(t, '')), lower(cond ->> 'value')) > 0 end
      when 'gt' then t::numeric > (cond ->> 'value')::numeric
      when 'gte' then t::numeric >= (cond ->> 'value')::numeric
      when 'lt' then t::numeric < (cond ->> 'value')::numeric
      when 'lte' then t::numeric <= (cond ->> 'value')::numeric
      else null end is true;
  end if;
  raise exception 'unknown condition %', cond using errcode = 'PT422', detail = 'code=invalid_condition';
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Runs
-- ---------------------------------------------------------------------------------------------

-- The step that follows `key`: the explicit target ('end' = none), else the next one in the list.
create or replace function private.automation_next_key(def jsonb, key text, explicit text) returns text
language sql immutable
set search_path = ''
as $$
  select case when explicit = 'end' then null
              when explicit is not null then explicit
              else (select s.value ->> 'id' from jsonb_array_elements(def -> 'steps') with ordinality s
                    where s.ordinality = (select p.ordinality + 1 from jsonb_array_elements(def -> 'steps') with ordinality p
                                          where p.value ->> 'id' = key)) end
$$;

-- Queue a step: its row and its job (one job per run step: the idempotency key is the step's id).
create or replace function private.automation_schedule(r public.workflow_runs, step_key text, seq int,
                                                       due timestamptz, def jsonb)
returns uuid
language plpgsql
set search_path = ''
as $$
declare
  step_id uuid;
begin
  insert into public.workflow_steps (tenant_id, run_id, seq, step_key, type, due_at)
  values (r.tenant_id, r.id, seq, step_key,
          coalesce((select s ->> 'type' from jsonb_array_elements(def -> 'steps') s where s ->> 'id' = step_key), 'unknown'),
          due)
  returning id into step_id;
  perform private.enqueue_job('automation.step', jsonb_build_object('step_id', step_id), r.tenant_id, due,
                              'automation.step:' || step_id, 100::smallint, 5);
  return step_id;
end;
$$;

-- Move a run on from a finished step: the next step queued (due at `due`), or the run completed.
create or replace function private.automation_advance(r public.workflow_runs, seq int, next_key text, due timestamptz,
                                                      def jsonb)
returns void
language plpgsql
set search_path = ''
as $$
begin
  if next_key is null then
    update public.workflow_runs set status = 'completed', finished_at = now(), end_reason = coalesce(end_reason, 'completed')
    where id = r.id;
  else
    if r.status = 'waiting' then
      update public.workflow_runs set status = 'running' where id = r.id and status = 'waiting';
    end if;
    perform private.automation_schedule(r, next_key, seq + 1, greatest(coalesce(due, now()), now()), def);
  end if;
end;
$$;

-- End a run before its last step (replied, opted out, cancelled, failed): open steps are cancelled.
create or replace function private.automation_end_run(run uuid, status text, reason text) returns void
language sql
set search_path = ''
as $$
  update public.workflow_steps set status = 'cancelled', finished_at = now(), error = reason
  where tenant_id = (select x.tenant_id from public.workflow_runs x where x.id = run) and run_id = run
    and status in ('due', 'waiting');
  update public.workflow_runs set status = automation_end_run.status, end_reason = reason, finished_at = now()
  where id = run and status in ('running', 'waiting', 'paused');
$$;

/*
 * Start the runs an event calls for: each active workflow of the tenant whose trigger names the
 * event's type (and whose trigger condition "if" holds), at most once per (workflow, event) — a
 * re-delivered event starts nothing more. The run keeps the workflow's current version. Its first
 * step is due at once, or `trigger.after` ({"hours": 24} ...) after the event (T+N triggers).
 * Returns the number of runs started.
 */
create or replace function private.automation_start_runs(ev bigint) returns int
language plpgsql
set search_path = ''
as $$
declare
  e public.automation_events;
  w record;
  r public.workflow_runs;
  started int := 0;
  lead uuid;
  contact uuid;
  customer uuid;
  conversation uuid;
begin
  select * into e from public.automation_events where id = ev;
  if e.id is null then
    return 0;
  end if;
  -- What the event is about, completed from the links between leads, contacts and customers.
  lead := e.lead_id;
  contact := coalesce(e.contact_id, (select t.id from public.contacts t where t.tenant_id = e.tenant_id and t.lead_id = lead
                                     order by t.created_at limit 1));
  customer := coalesce(e.customer_id,
                       (select t.customer_id from public.contacts t where t.tenant_id = e.tenant_id and t.id = contact),
                       (select c.id from public.customers c where c.tenant_id = e.tenant_id and c.lead_id = lead limit 1));
  if contact is null and customer is not null then
    contact := (select t.id from public.contacts t where t.tenant_id = e.tenant_id and t.customer_id = customer
                order by t.updated_at desc limit 1);
  end if;
  if lead is null and customer is not null then
    lead := (select c.lead_id from public.customers c where c.tenant_id = e.tenant_id and c.id = customer);
  end if;
  conversation := coalesce(e.conversation_id,
                           (select c.id from public.conversations c where c.tenant_id = e.tenant_id and c.contact_id = contact
                            order by c.last_message_at desc nulls last limit 1));
  for w in select wf.id, wf.current_version, v.definition
           from public.workflows wf
           join public.workflow_versions v on v.workflow_id = wf.id and v.version = wf.current_version
           where wf.tenant_id = e.tenant_id and wf.status = 'active' and wf.trigger_type = e.type
           order by wf.created_at loop
    -- A workflow is not started by an event its own run caused (no loops).
    if e.caused_by_run is not null
       and exists (select 1 from public.workflow_runs x where x.id = e.caused_by_run and x.workflow_id = w.id) then
      continue;
    end if;
    r := null;
    r.tenant_id := e.tenant_id; r.workflow_id := w.id; r.version := w.current_version; r.event_id := e.id;
    r.customer_id := customer; r.contact_id := contact; r.conversation_id := conversation; r.lead_id := lead;
    r.card_id := e.card_id;
    r.context := jsonb_build_object('event', e.payload || jsonb_build_object('type', e.type, 'id', e.id));
    if w.definition #> '{trigger,if}' is not null
       and not private.automation_test(w.definition #> '{trigger,if}', private.automation_record(r)) then
      continue;
    end if;
    insert into public.workflow_runs (tenant_id, workflow_id, version, event_id, customer_id, contact_id,
                                      conversation_id, lead_id, card_id, context, replies_after)
    values (r.tenant_id, r.workflow_id, r.version, r.event_id, r.customer_id, r.contact_id, r.conversation_id,
            r.lead_id, r.card_id, r.context, e.occurred_at)
    on conflict (workflow_id, event_id) do nothing
    returning * into r;
    if r.id is null then
      continue;  -- started before: the run key holds
    end if;
    perform private.automation_schedule(r, w.definition #>> '{steps,0,id}', 1,
      greatest(e.occurred_at + private.automation_interval(w.definition #> '{trigger,after}'), now()), w.definition);
    started := started + 1;
  end loop;
  return started;
end;
$$;

-- The conversation a run writes on (on a channel kind, or its own): the run's, else the contact's
-- (or the customer's contacts') latest on an active account of that kind.
create or replace function private.automation_conversation(r public.workflow_runs, kind text) returns uuid
language sql stable
set search_path = ''
as $$
  select coalesce(
    (select c.id from public.conversations c join public.channel_accounts a on a.id = c.channel_account_id
     where c.tenant_id = r.tenant_id and c.id = r.conversation_id and (kind is null or a.kind = kind) and a.active),
    (select c.id from public.conversations c
     join public.contacts t on t.tenant_id = c.tenant_id and t.id = c.contact_id
     join public.channel_accounts a on a.id = c.channel_account_id
     where c.tenant_id = r.tenant_id and a.active and (kind is null or a.kind = kind)
       and (t.id = r.contact_id or (r.customer_id is not null and t.customer_id = r.customer_id))
     order by c.last_message_at desc nulls last limit 1))
$$;

/*
 * The "send a template message" action: the template in the recipient's language (else the tenant's,
 * else Turkish), rendered for this recipient, queued by public.send_message (the one send path;
 * idempotency key 'automation:<step id>'). On WhatsApp outside the 24-hour window the template's
 * approved WhatsApp template goes instead, its variables rendered the same way. Returns the result.
 */
create or replace function private.automation_send(r public.workflow_runs, step_id uuid, sd jsonb, rec jsonb) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  conv public.conversations;
  acc public.channel_accounts;
  tpl public.automation_templates;
  lang text := coalesce(sd ->> 'language', rec ->> 'language', 'tr');
  body text;
  vars jsonb;
  msg public.messages;
  o public.outbound_messages;
  key text := 'automation:' || step_id;
begin
  select * into conv from public.conversations where id = private.automation_conversation(r, sd ->> 'channel');
  if conv.id is null then
    raise exception 'no conversation with this recipient on %', coalesce(sd ->> 'channel', 'any channel')
      using errcode = 'PT422', detail = 'code=no_conversation';
  end if;
  select * into acc from public.channel_accounts where id = conv.channel_account_id;
  select * into tpl from public.automation_templates t
  where t.tenant_id = r.tenant_id and t.name = sd ->> 'template'
  order by (t.language = lang) desc, (t.language = (select x.locale from public.tenants x where x.id = r.tenant_id)) desc,
           (t.language = 'tr') desc
  limit 1;
  if tpl.id is null then
    raise exception 'no template named %', sd ->> 'template' using errcode = 'PT422', detail = 'code=template_not_found';
  end if;
  body := private.automation_render(tpl.body, rec);
  perform set_config('luna.send_category', 'automated', true);
  if acc.kind = 'whatsapp' and (conv.last_inbound_at is null or conv.last_inbound_at <= now() - interval '24 hours') then
    if tpl.whatsapp_template is null then
      raise exception 'outside the 24-hour window and template % names no approved WhatsApp template', tpl.name
        using errcode = 'PT422', detail = 'code=outside_24h_window';
    end if;
    select coalesce(jsonb_agg(private.automation_render('{{' || v || '}}', rec) order by i), '[]') into vars
    from unnest(tpl.whatsapp_variables) with ordinality u(v, i);
    msg := public.send_message(conv.id, null, jsonb_build_object('name', tpl.whatsapp_template, 'language', tpl.language,
                                                                 'variables', vars), key);
  else
    msg := public.send_message(conv.id, body, null, key);
  end if;
  perform set_config('luna.send_category', '', true);
  select * into o from public.outbound_messages where tenant_id = r.tenant_id and idempotency_key = key;
  return jsonb_strip_nulls(jsonb_build_object('message_id', msg.id, 'conversation_id', conv.id, 'channel', acc.kind,
    'template', tpl.name, 'language', tpl.language, 'body', body, 'outbound_status', o.status,
    'skipped', case when o.status = 'cancelled' and o.error_code = 'opted_out' then 'opted_out' end));
end;
$$;

-- Run an action as the workflow's author would (the CRM's RPCs read the caller from the token:
-- role-restricted stage moves then apply to the automation as to its author).
create or replace function private.automation_act_as(r public.workflow_runs) returns uuid
language plpgsql
set search_path = ''
as $$
declare
  author uuid := (select w.created_by from public.workflows w where w.id = r.workflow_id);
begin
  if author is null then
    raise exception 'the workflow has no author to act for' using errcode = 'PT422', detail = 'code=no_author';
  end if;
  perform set_config('request.jwt.claims',
                     jsonb_build_object('sub', author, 'role', 'authenticated', 'tenant_id', r.tenant_id)::text, true);
  return author;
end;
$$;

/*
 * One step's action: returns {"next": step key or null (end), "due": when the next is due,
 * "result": {...}, "status": 'done' | 'skipped' | 'waiting', "end": reason to end the run}. Raises
 * (PT422 with a code) when the action is refused; the caller records that as the step's failure.
 */
create or replace function private.automation_action(r public.workflow_runs, s public.workflow_steps, sd jsonb, def jsonb)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  rec jsonb;
  ok boolean;
  due timestamptz;
  tz text;
  local_now timestamp;
  target timestamp;
  res jsonb;
  tag text;
  usr uuid;
  card_id uuid;
  stage_id uuid;
  owner uuid;
  conv uuid;
  field text;
  val jsonb;
  next_default text := private.automation_next_key(def, s.step_key, sd ->> 'next');
begin
  case s.type
  when 'condition' then
    ok := private.automation_test(sd -> 'if', private.automation_record(r));
    return jsonb_build_object('result', jsonb_build_object('matched', ok),
      'next', private.automation_next_key(def, s.step_key, case when ok then sd ->> 'then' else sd ->> 'else' end));
  when 'delay' then
    if sd ? 'until' then
      -- Until a time of day in the tenant's time zone: today if it is still ahead, else tomorrow.
      select t.timezone into tz from public.tenants t where t.id = r.tenant_id;
      local_now := now() at time zone tz;
      target := date_trunc('day', local_now) + (sd ->> 'until')::time;
      if target <= local_now then
        target := target + interval '1 day';
      end if;
      due := (target + private.automation_interval(sd - 'until')) at time zone tz;
    else
      due := now() + private.automation_interval(sd);
    end if;
    return jsonb_build_object('result', jsonb_build_object('until', due), 'next', next_default, 'due', due);
  when 'send_message' then
    res := private.automation_send(r, s.id, sd, private.automation_record(r));
    if res ? 'skipped' then
      return jsonb_build_object('result', res, 'status', 'skipped', 'end', 'opted_out');
    end if;
    return jsonb_build_object('result', res, 'next', next_default);
  when 'add_tag', 'remove_tag' then
    if r.customer_id is null then
      raise exception 'no customer to tag' using errcode = 'PT422', detail = 'code=no_customer';
    end if;
    tag := lower(btrim(sd ->> 'tag'));
    update public.customers c
    set tags = case when s.type = 'add_tag' then array(select distinct x from unnest(c.tags || tag) x)
                    else array(select x from unnest(c.tags) x where lower(x) <> tag) end
    where c.tenant_id = r.tenant_id and c.id = r.customer_id;
    return jsonb_build_object('result', jsonb_build_object('tag', tag), 'next', next_default);
  when 'assign' then
    usr := (sd ->> 'user')::uuid;
    if usr is not null and not private.crm_members_ok(r.tenant_id, array[usr]) then
      raise exception 'the assignee is not a member of the tenant' using errcode = 'PT422', detail = 'code=invalid_assignee';
    end if;
    conv := private.automation_conversation(r, null);
    if conv is not null then
      if usr is null then
        usr := private.route_conversation(conv);
      else
        perform private.assign_conversation(conv, usr, sd ->> 'team', null, 'assigned', 'automation');
      end if;
    end if;
    if r.customer_id is not null and usr is not null then
      update public.customers c set responsibles = array(select distinct x from unnest(c.responsibles || usr) x)
      where c.tenant_id = r.tenant_id and c.id = r.customer_id;
    end if;
    if conv is null and r.customer_id is null then
      raise exception 'nothing to assign: no conversation and no customer' using errcode = 'PT422', detail = 'code=no_customer';
    end if;
    return jsonb_build_object('result', jsonb_strip_nulls(jsonb_build_object('assignee_id', usr, 'conversation_id', conv)),
                              'next', next_default);
  when 'move_stage' then
    card_id := coalesce(r.card_id, (select k.id from public.cards k where k.tenant_id = r.tenant_id
                                    and k.customer_id = r.customer_id and k.status = 'open' order by k.updated_at desc limit 1));
    if card_id is null then
      raise exception 'no open card to move' using errcode = 'PT422', detail = 'code=no_card';
    end if;
    select st.id into stage_id from public.pipeline_stages st join public.cards k on k.pipeline_id = st.pipeline_id
    where k.id = card_id and (st.id::text = sd ->> 'stage' or st.name = sd ->> 'stage');
    if stage_id is null then
      raise exception 'no stage % in the card''s pipeline', sd ->> 'stage' using errcode = 'PT422', detail = 'code=stage_not_found';
    end if;
    perform private.automation_act_as(r);
    res := public.move_card(card_id, stage_id, coalesce(sd -> 'fields', '{}'));
    perform set_config('request.jwt.claims', '', true);
    return jsonb_build_object('result', res, 'next', next_default);
  when 'create_task' then
    owner := coalesce((sd ->> 'owner')::uuid,
                      (select c.responsibles[1] from public.customers c where c.tenant_id = r.tenant_id and c.id = r.customer_id),
                      (select w.created_by from public.workflows w where w.id = r.workflow_id));
    if owner is null then
      raise exception 'no one to own the task' using errcode = 'PT422', detail = 'code=no_owner';
    end if;
    insert into public.reminders (tenant_id, customer_id, card_id, owner_id, title, due_at)
    values (r.tenant_id, r.customer_id, r.card_id, owner,
            private.automation_render(coalesce(sd ->> 'title', 'Takip'), private.automation_record(r)),
            now() + private.automation_interval(sd -> 'due_in'))
    returning jsonb_build_object('reminder_id', id, 'owner_id', owner_id, 'due_at', due_at) into res;
    return jsonb_build_object('result', res, 'next', next_default);
  when 'update_field' then
    if r.customer_id is null then
      raise exception 'no customer to update' using errcode = 'PT422', detail = 'code=no_customer';
    end if;
    field := sd ->> 'field';
    val := case when jsonb_typeof(sd -> 'value') = 'string' and strpos(sd ->> 'value', '{{') > 0
                then to_jsonb(private.automation_render(sd ->> 'value', private.automation_record(r))) else sd -> 'value' end;
    if field like 'custom_fields.%' then
      update public.customers c set custom_fields = jsonb_set(c.custom_fields, array[substr(field, 15)], val, true)
      where c.tenant_id = r.tenant_id and c.id = r.customer_id;
    elsif field in ('region', 'source', 'campaign', 'quality_score') then
      execute format('update public.customers set %I = ($1 #>> ''{}'')::%s where tenant_id = $2 and id = $3',
                     field, case field when 'quality_score' then 'int' else 'text' end)
        using val, r.tenant_id, r.customer_id;
    else
      raise exception 'field % cannot be set by a workflow (custom_fields.<key>, region, source, campaign, quality_score)', field
        using errcode = 'PT422', detail = 'code=field_not_allowed';
    end if;
    return jsonb_build_object('result', jsonb_build_object('field', field, 'value', val), 'next', next_default);
  when 'handover' then
    conv := private.automation_conversation(r, null);
    if conv is null then
      raise exception 'no conversation to hand over' using errcode = 'PT422', detail = 'code=no_conversation';
    end if;
    update public.conversations set status = 'open', snoozed_until = null where id = conv and status <> 'open';
    usr := coalesce((select c.assignee_id from public.conversations c where c.id = conv), private.route_conversation(conv));
    perform private.inbox_timeline(r.tenant_id, conv, 'handover',
      jsonb_strip_nulls(jsonb_build_object('run_id', r.id, 'note', sd ->> 'note', 'assignee_id', usr)));
    return jsonb_build_object('result', jsonb_strip_nulls(jsonb_build_object('conversation_id', conv, 'assignee_id', usr)),
                              'next', next_default);
  when 'wait_for_reply' then
    if s.status = 'due' then
      -- Start waiting: a reply resolves it (private.automation_on_inbound), else the timeout does.
      return jsonb_build_object('status', 'waiting',
        'due', now() + coalesce(private.automation_interval(sd -> 'timeout'), interval '1 day'));
    end if;
    return jsonb_build_object('result', jsonb_build_object('replied', false),
                              'next', private.automation_next_key(def, s.step_key, sd ->> 'on_timeout'));
  when 'webhook' then
    return jsonb_build_object('external', 'webhook');
  else
    raise exception 'unknown step type %', s.type using errcode = 'PT422', detail = 'code=unknown_step';
  end case;
end;
$$;

/*
 * Execute one due step (the 'automation.step' job). In one transaction: the step row locked, the
 * run's state checked (paused: left due; ended: the step cancelled; the contact replied and the
 * workflow exits on reply: the run exits), the action done, the step recorded with its result and
 * the next step's row and job queued. A crash anywhere rolls all of it back; a re-run of the job
 * finds the step done and does nothing (the step's status is its mark, committed with its effects).
 * A refused action fails the step and its run visibly (error code and message), and only that run.
 * Returns {"status": ...} or, for an external step, {"external": "webhook", ...} for the worker.
 */
create or replace function private.automation_run_step(step_id uuid) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  got record;
  s public.workflow_steps;
  r public.workflow_runs;
  def jsonb;
  sd jsonb;
  act jsonb;
  msg text;
  det text;
  code text;
  state text;
begin
  -- The step and its run, locked, with the run's definition and the step's own part of it: one query.
  select st, ru, v.definition, (select x from jsonb_array_elements(v.definition -> 'steps') x where x ->> 'id' = st.step_key)
  into got
  from public.workflow_steps st
  join public.workflow_runs ru on ru.tenant_id = st.tenant_id and ru.id = st.run_id
  join public.workflow_versions v on v.workflow_id = ru.workflow_id and v.version = ru.version
  where st.id = step_id
  for update of st, ru;
  if got is null then
    return jsonb_build_object('status', 'missing');
  end if;
  s := got.st;
  r := got.ru;
  def := got.definition;
  sd := got.x;
  if s.status not in ('due', 'waiting') then
    return jsonb_build_object('status', s.status, 'replayed', true);
  end if;
  if r.status in ('completed', 'failed', 'cancelled', 'exited') then
    update public.workflow_steps set status = 'cancelled', finished_at = now(), error = 'run ' || r.status where id = s.id;
    return jsonb_build_object('status', 'cancelled');
  end if;
  if r.status = 'paused' then
    return jsonb_build_object('status', 'paused');  -- resuming queues the step again
  end if;
  if s.due_at > now() then
    -- Early (the job was queued for an older due time): queue it for its due time.
    perform private.enqueue_job('automation.step', jsonb_build_object('step_id', s.id), s.tenant_id, s.due_at,
                                'automation.step:' || s.id || ':at:' || extract(epoch from s.due_at)::text, 100::smallint, 5);
    return jsonb_build_object('status', 'not_due', 'due_at', s.due_at);
  end if;
  -- A contact who replied leaves the sequence (unless the workflow says otherwise). The reply's own
  -- transaction ends running sequences (private.automation_on_inbound); this check before a message
  -- goes covers a run started (from an earlier event) while the reply was being stored.
  if s.type in ('send_message', 'handover') and coalesce((def ->> 'exit_on_reply')::boolean, true) and r.contact_id is not null
     and exists (select 1 from public.conversations c
                 join public.messages m on m.tenant_id = c.tenant_id and m.conversation_id = c.id
                 where c.tenant_id = r.tenant_id and c.contact_id = r.contact_id and m.direction = 'inbound'
                   and m.created_at > r.replies_after) then
    perform private.automation_end_run(r.id, 'exited', 'replied');
    return jsonb_build_object('status', 'cancelled', 'end', 'replied');
  end if;
  -- Events the action causes name this run (the loop guard); transaction-local, the next step sets its own.
  perform set_config('luna.automation_run', r.id::text, true);
  begin
    if sd is null then
      raise exception 'step % is not in version % of the workflow', s.step_key, r.version
        using errcode = 'PT422', detail = 'code=unknown_step';
    end if;
    act := private.automation_action(r, s, sd, def);
  exception when others then
    get stacked diagnostics msg = message_text, det = pg_exception_detail, state = returned_sqlstate;
    if state in ('40001', '40P01', '55P03', '57014') then
      raise;  -- transient: the job is retried
    end if;
    code := case when det like 'code=%' then split_part(substr(det, 6), ';', 1) else 'sqlstate_' || state end;
    update public.workflow_steps
    set status = 'failed', error_code = code, error = left(msg, 2000), started_at = coalesce(started_at, now()),
        finished_at = now(), attempts = attempts + 1
    where id = s.id;
    update public.workflow_runs set status = 'failed', end_reason = code || ': ' || left(msg, 500), finished_at = now()
    where id = r.id;
    return jsonb_build_object('status', 'failed', 'error_code', code, 'error', msg);
  end;
  if act ? 'external' then
    return act || jsonb_build_object('step_id', s.id, 'run_id', r.id, 'tenant_id', r.tenant_id, 'spec', sd,
      'record', private.automation_record(r));
  end if;
  return private.automation_finish(r, s, def, act);
end;
$$;

/*
 * Several due steps in one transaction (the worker coalesces the step jobs it holds at the same
 * moment): each step exactly as private.automation_run_step, in id order (locks are taken in one
 * order by every batch); one commit for all, so a batch's effects, records and next jobs commit
 * together or not at all. At most 32 steps (each refused action is a subtransaction; Postgres keeps
 * 64 per transaction cheap). Returns {"<step id>": outcome, ...}. A transient error (deadlock,
 * serialization) aborts the batch: every job in it is retried.
 */
create or replace function private.automation_run_steps(ids uuid[]) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  id uuid;
  result jsonb := '{}';
begin
  if cardinality(ids) > 32 then
    raise exception 'at most 32 steps per call' using errcode = '22023';
  end if;
  for id in select distinct x from unnest(ids) x order by x loop
    result := result || jsonb_build_object(id::text, private.automation_run_step(id));
  end loop;
  return result;
end;
$$;

-- Record a step's outcome (from private.automation_action's answer) and move the run on.
create or replace function private.automation_finish(r public.workflow_runs, s public.workflow_steps, def jsonb, act jsonb)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  st text := coalesce(act ->> 'status', 'done');
begin
  if st = 'waiting' then
    update public.workflow_steps set status = 'waiting', due_at = (act ->> 'due')::timestamptz,
      started_at = now(), attempts = attempts + 1 where id = s.id;
    update public.workflow_runs set status = 'waiting' where id = r.id;
    perform private.enqueue_job('automation.step', jsonb_build_object('step_id', s.id), r.tenant_id,
                                (act ->> 'due')::timestamptz, 'automation.step:' || s.id || ':timeout', 100::smallint, 5);
    return jsonb_build_object('status', 'waiting', 'until', act ->> 'due');
  end if;
  update public.workflow_steps
  set status = st, result = act -> 'result', started_at = coalesce(started_at, now()), finished_at = now(),
      attempts = attempts + 1
  where id = s.id;
  if act ? 'end' then
    perform private.automation_end_run(r.id, 'exited', act ->> 'end');
  else
    perform private.automation_advance(r, s.seq, act ->> 'next', (act ->> 'due')::timestamptz, def);
  end if;
  return jsonb_build_object('status', st);
end;
$$;

/*
 * An external step's outcome (the worker did the call, once, under a step mark): ok moves the run
 * on; not ok fails the step and the run with `error_code` and `error`. A repeat is a no-op.
 */
create or replace function private.automation_step_done(step_id uuid, ok boolean, outcome jsonb,
                                                       code text default null, message text default null)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  s public.workflow_steps;
  r public.workflow_runs;
  def jsonb;
  sd jsonb;
begin
  select * into s from public.workflow_steps where id = step_id for update;
  if s.id is null or s.status <> 'due' then
    return jsonb_build_object('status', coalesce(s.status, 'missing'), 'replayed', true);
  end if;
  select * into r from public.workflow_runs where id = s.run_id for update;
  if not ok then
    update public.workflow_steps set status = 'failed', result = outcome, error_code = code,
      error = left(message, 2000), started_at = coalesce(started_at, now()), finished_at = now(),
      attempts = attempts + 1
    where id = s.id;
    update public.workflow_runs set status = 'failed', finished_at = now(),
      end_reason = coalesce(code, 'failed') || ': ' || left(coalesce(message, ''), 500)
    where id = r.id and status in ('running', 'waiting', 'paused');
    return jsonb_build_object('status', 'failed');
  end if;
  if r.status not in ('running', 'waiting') then
    update public.workflow_steps set status = 'done', result = outcome, finished_at = now() where id = s.id;
    return jsonb_build_object('status', 'done', 'run', r.status);
  end if;
  select v.definition into def from public.workflow_versions v where v.workflow_id = r.workflow_id and v.version = r.version;
  sd := (select x from jsonb_array_elements(def -> 'steps') x where x ->> 'id' = s.step_key);
  return private.automation_finish(r, s, def, jsonb_build_object('result', outcome,
    'next', private.automation_next_key(def, s.step_key, sd ->> 'next')));
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Replies and opt-outs (called by the messages trigger, in the inbound message's transaction)
-- ---------------------------------------------------------------------------------------------

/*
 * An inbound message from a contact. An opt-out keyword of the tenant (the whole message, folded by
 * private.automation_keyword_fold) records the opt-out at once, ends the contact's running sequences
 * and queues the one confirmation. Any other message is a reply: a waiting wait_for_reply step takes
 * its on_reply branch; a run that exits on reply (the default) exits.
 */
create or replace function private.automation_on_inbound(tenant uuid, contact uuid, message uuid, body text,
                                                        at timestamptz)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  folded text := private.automation_keyword_fold(body);
  keyword text;
  opt uuid;
  cust uuid;
  x record;
  def jsonb;
begin
  if contact is null then
    return;
  end if;
  if folded is not null and char_length(folded) <= 40 then
    select k into keyword
    from unnest(coalesce((select s.opt_out_keywords from public.automation_settings s where s.tenant_id = tenant),
                         array['STOP', 'DUR', 'İPTAL', 'ABONELİKTEN ÇIK'])) k
    where private.automation_keyword_fold(k) = folded
    limit 1;
  end if;
  if keyword is not null then
    select t.customer_id into cust from public.contacts t where t.tenant_id = tenant and t.id = contact;
    insert into public.opt_outs (tenant_id, contact_id, customer_id, channel, handle, keyword, message_id)
    select t.tenant_id, t.id, t.customer_id, t.channel, t.handle, keyword, message
    from public.contacts t where t.tenant_id = tenant and t.id = contact
    on conflict (tenant_id, contact_id) do nothing
    returning id into opt;
    if opt is not null then
      for x in select r.id from public.workflow_runs r
               where r.tenant_id = tenant and r.status in ('running', 'waiting', 'paused')
                 and (r.contact_id = contact or (cust is not null and r.customer_id = cust)) loop
        perform private.automation_end_run(x.id, 'exited', 'opted_out');
      end loop;
      perform private.emit_event(tenant, 'contact.opted_out', 'contact', contact,
        jsonb_build_object('keyword', keyword, 'message_id', message), 'opt_out:' || opt,
        jsonb_build_object('contact_id', contact, 'customer_id', cust));
      perform private.enqueue_job('automation.opt_out_confirm', jsonb_build_object('opt_out_id', opt), tenant, now(),
                                  'automation.opt_out_confirm:' || opt, 50::smallint, 5);
    end if;
    return;
  end if;
  for x in select r.*, s.id as step_id, s.seq as step_seq, s.step_key as step_key
           from public.workflow_runs r
           left join public.workflow_steps s on s.tenant_id = r.tenant_id and s.run_id = r.id and s.status = 'waiting'
           where r.tenant_id = tenant and r.contact_id = contact and r.status in ('running', 'waiting')
           for update of r loop
    select v.definition into def from public.workflow_versions v where v.workflow_id = x.workflow_id and v.version = x.version;
    if x.step_id is not null then
      update public.workflow_steps set status = 'done', finished_at = now(),
        result = jsonb_build_object('replied', true, 'message_id', message)
      where id = x.step_id;
      update public.workflow_runs set replies_after = at, status = 'running' where id = x.id;
      perform private.automation_advance((select r from public.workflow_runs r where r.id = x.id), x.step_seq,
        private.automation_next_key(def, x.step_key,
          coalesce((select st ->> 'on_reply' from jsonb_array_elements(def -> 'steps') st where st ->> 'id' = x.step_key), 'end')),
        now(), def);
    elsif coalesce((def ->> 'exit_on_reply')::boolean, true) and at > x.replies_after then
      perform private.automation_end_run(x.id, 'exited', 'replied');
    end if;
  end loop;
end;
$$;

/*
 * The one confirmation of an opt-out (the 'automation.opt_out_confirm' job), in the tenant's text for
 * the contact's language, through public.send_message (transactional: not blocked by the opt-out it
 * confirms; idempotency key per opt-out, so a replayed job sends nothing more).
 */
create or replace function private.automation_opt_out_confirm(opt_out uuid) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  o public.opt_outs;
  conv uuid;
  lang text;
  texts jsonb;
  msg public.messages;
begin
  select * into o from public.opt_outs where id = opt_out for update;
  if o.id is null or o.confirmed_at is not null then
    return jsonb_build_object('confirmed', o.confirmed_at is not null, 'replayed', true);
  end if;
  select c.id into conv from public.conversations c where c.tenant_id = o.tenant_id and c.contact_id = o.contact_id
  order by c.last_inbound_at desc nulls last limit 1;
  if conv is null then
    update public.opt_outs set confirmed_at = now() where id = o.id;
    return jsonb_build_object('confirmed', false, 'reason', 'no conversation');
  end if;
  lang := coalesce((select c.custom_fields ->> 'language' from public.customers c where c.id = o.customer_id),
                   (select t.locale from public.tenants t where t.id = o.tenant_id), 'tr');
  texts := coalesce((select s.opt_out_confirmation from public.automation_settings s where s.tenant_id = o.tenant_id),
                    jsonb_build_object('tr', 'Aboneliğiniz iptal edildi; size artık otomatik mesaj göndermeyeceğiz.'));
  perform set_config('luna.send_category', 'transactional', true);
  msg := public.send_message(conv, coalesce(texts ->> lang, texts ->> 'tr', texts ->> 'en'), null,
                             'automation.opt_out_confirm:' || o.id);
  perform set_config('luna.send_category', '', true);
  update public.opt_outs set confirmed_at = now() where id = o.id;
  return jsonb_build_object('confirmed', true, 'message_id', msg.id);
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Operating runs
-- ---------------------------------------------------------------------------------------------

/*
 * Pause, resume or cancel a run (`action` = 'pause' | 'resume' | 'cancel'). Callers: the worker and
 * service code, or a signed-in user with automation write permission in the run's tenant. Resuming
 * queues the open step again (at its due time). Returns the run.
 */
create or replace function public.set_workflow_run_status(run uuid, action text) returns public.workflow_runs
language plpgsql
security definer
set search_path = ''
as $$
declare
  r public.workflow_runs;
  s record;
begin
  select * into r from public.workflow_runs x where x.id = run for update;
  if r.id is null or (not private.caller_is_service() and r.tenant_id is distinct from (select private.tenant_id())) then
    raise exception 'run not found' using errcode = 'P0002';
  end if;
  if not private.caller_is_service() and not (select private.can('automation', 'write')) then
    raise exception 'no permission to operate workflow runs' using errcode = '42501';
  end if;
  if action = 'pause' then
    if r.status not in ('running', 'waiting') then
      raise exception 'only a running run can be paused (this one is %)', r.status using errcode = 'PT409', detail = 'code=run_not_running';
    end if;
    update public.workflow_runs set status = 'paused', context = context || jsonb_build_object('paused_from', r.status)
    where id = r.id returning * into r;
  elsif action = 'resume' then
    if r.status <> 'paused' then
      raise exception 'only a paused run can be resumed (this one is %)', r.status using errcode = 'PT409', detail = 'code=run_not_paused';
    end if;
    update public.workflow_runs set status = coalesce(r.context ->> 'paused_from', 'running'), context = context - 'paused_from'
    where id = r.id returning * into r;
    for s in select st.id, st.due_at from public.workflow_steps st
             where st.tenant_id = r.tenant_id and st.run_id = r.id and st.status in ('due', 'waiting') loop
      perform private.enqueue_job('automation.step', jsonb_build_object('step_id', s.id), r.tenant_id,
        greatest(s.due_at, now()), 'automation.step:' || s.id || ':resume:' || extract(epoch from clock_timestamp())::text,
        100::smallint, 5);
    end loop;
  elsif action = 'cancel' then
    if r.status not in ('running', 'waiting', 'paused') then
      raise exception 'the run has ended already (%)', r.status using errcode = 'PT409', detail = 'code=run_ended';
    end if;
    perform private.automation_end_run(r.id, 'cancelled', 'cancelled by ' || coalesce((select auth.uid())::text, 'service'));
    select * into r from public.workflow_runs x where x.id = run;
  else
    raise exception 'action is pause, resume or cancel' using errcode = 'PT422', detail = 'code=invalid_action';
  end if;
  return r;
end;
$$;
revoke execute on function public.set_workflow_run_status(uuid, text) from public, anon;
grant execute on function public.set_workflow_run_status(uuid, text) to authenticated, service_role;

/*
 * The clock override for tests and operators: make a run's open step due `by` earlier (its row and
 * its job) by `shift`, as if that much time had passed. Returns the steps moved. Service role only.
 */
create or replace function private.automation_advance_clock(run uuid, shift interval) returns int
language plpgsql
set search_path = ''
as $$
declare
  n int;
begin
  with moved as (
    update public.workflow_steps s set due_at = s.due_at - shift
    where s.tenant_id = (select x.tenant_id from public.workflow_runs x where x.id = run) and s.run_id = run
      and s.status in ('due', 'waiting') returning s.id
  ), jobs as (
    update private.jobs j set run_at = j.run_at - shift
    from moved
    where j.status = 'queued' and j.kind = 'automation.step' and j.payload ->> 'step_id' = moved.id::text
      and j.idempotency_key like 'automation.step:' || moved.id || '%'
    returning 1
  )
  select count(*) into n from moved;
  return n;
end;
$$;

revoke execute on function private.automation_start_runs(bigint), private.automation_run_step(uuid),
  private.automation_run_steps(uuid[]),
  private.automation_step_done(uuid, boolean, jsonb, text, text), private.automation_opt_out_confirm(uuid),
  private.automation_advance_clock(uuid, interval), private.automation_check_definition(jsonb)
  from public, authenticated;
grant execute on function private.automation_start_runs(bigint), private.automation_run_step(uuid),
  private.automation_run_steps(uuid[]),
  private.automation_step_done(uuid, boolean, jsonb, text, text), private.automation_opt_out_confirm(uuid),
  private.automation_advance_clock(uuid, interval), private.automation_check_definition(jsonb)
  to service_role;

/*
 * Workflow editing, as the caller (security invoker: the workflows / workflow_versions policies
 * decide who may write). A version's number is assigned by the table's trigger; the definition is
 * checked by the database's own validation on insert.
 *   public.save_workflow(name, description)                      -> the new workflow's id
 *   public.save_workflow_version(workflow, definition, activate) -> {id, version, status}; null when the
 *     caller cannot see the workflow. activate: true = active, false = paused, null = unchanged
 *   public.set_workflow_status(workflow, status)                 -> {id, status, current_version} or null
 */
create or replace function public.save_workflow(name text, description text default null) returns uuid
language sql
security invoker
set search_path = ''
as $$
  insert into public.workflows (tenant_id, name, description)
  values ((select private.tenant_id()), save_workflow.name, save_workflow.description)
  returning id
$$;
revoke execute on function public.save_workflow(text, text) from public, anon;
grant execute on function public.save_workflow(text, text) to authenticated, service_role;

create or replace function public.save_workflow_version(workflow uuid, definition jsonb, activate boolean default null)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v int;
  st text;
begin
  insert into public.workflow_versions (tenant_id, workflow_id, version, definition)
  select w.tenant_id, w.id, 0, save_workflow_version.definition from public.workflows w where w.id = workflow
  returning version into v;
  if v is null then
    return null;
  end if;
  if activate is not null then
    update public.workflows set status = case when activate then 'active' else 'paused' end where id = workflow;
  end if;
  select w.status into st from public.workflows w where w.id = workflow;
  return jsonb_build_object('id', workflow, 'version', v, 'status', st);
end;
$$;
revoke execute on function public.save_workflow_version(uuid, jsonb, boolean) from public, anon;
grant execute on function public.save_workflow_version(uuid, jsonb, boolean) to authenticated, service_role;

create or replace function public.set_workflow_status(workflow uuid, status text) returns jsonb
language sql
security invoker
set search_path = ''
as $$
  update public.workflows w set status = set_workflow_status.status where w.id = workflow
  returning jsonb_build_object('id', w.id, 'status', w.status, 'current_version', w.current_version)
$$;
revoke execute on function public.set_workflow_status(uuid, text) from public, anon;
grant execute on function public.set_workflow_status(uuid, text) to authenticated, service_role;

-- lead.created for every inserted lead, one statement per insert (a bulk import writes its events in
-- one pass). The causing run is read once per statement, not per row: a function with SET is never
-- inlined, and a 100,000-row import paid for each call.
create or replace function private.automation_leads_inserted() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  run uuid := private.automation_current_run();
begin
  insert into public.automation_events (tenant_id, type, subject_type, subject_id, lead_id, payload, caused_by_run)
  select n.tenant_id, 'lead.created', 'lead', n.id, n.id,
         jsonb_strip_nulls(jsonb_build_object('source', n.source, 'company_name', n.company_name,
                                              'contact_name', n.contact_name, 'lead_category', n.lead_category)),
         run
  from new_rows n;
  return null;
end;
$$;
