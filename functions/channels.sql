/*
 * The channel layer's and the worker's writes (issue 11, items 3 and 6): every row edge or the worker
 * changes is changed by a function here (or in the area's functions file), never by a statement written
 * in Python (tests/test_db_api.py). Each is granted to service_role beside it; all are plpgsql, so this
 * file does not depend on the order in which the repeatable files are applied.
 */

-- ---------------------------------------------------------------------------------- Meta Lead Ads
/*
 * A Meta webhook's `leadgen` changes (entry[].changes[] with field 'leadgen' and value.leadgen_id):
 * each is stored raw in private.lead_webhooks, once per leadgen id (a redelivery stores nothing), with
 * the tenant whose enabled meta lead source has the change's page (value.page_id, else the entry's
 * id); a tenant's change queues the Graph fetch (job leads.meta_fetch), an unknown page's is kept as
 * 'ignored'. Returns {"received", "stored", "queued"}.
 */
create or replace function private.receive_leadgen(payload jsonb) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  ch record;
  tenant uuid;
  hook bigint;
  received int := 0;
  stored int := 0;
  queued int := 0;
begin
  for ch in
    select c.value -> 'value' as v, coalesce(nullif(c.value -> 'value' ->> 'page_id', ''), e.value ->> 'id', '') as page_id
    from jsonb_array_elements(case when jsonb_typeof(payload -> 'entry') = 'array' then payload -> 'entry' else '[]' end) e,
         jsonb_array_elements(case when jsonb_typeof(e.value -> 'changes') = 'array' then e.value -> 'changes' else '[]' end) c
    where c.value ->> 'field' = 'leadgen' and coalesce(c.value -> 'value' ->> 'leadgen_id', '') <> ''
  loop
    received := received + 1;
    select s.tenant_id into tenant from public.lead_sources s
    where s.kind = 'meta' and s.enabled and s.config ->> 'page_id' = ch.page_id
    order by s.created_at limit 1;
    insert into private.lead_webhooks (provider, external_id, tenant_id, payload, status)
    values ('meta_leadgen', ch.v ->> 'leadgen_id', tenant, ch.v, case when tenant is null then 'ignored' else 'received' end)
    on conflict (provider, external_id) do nothing
    returning id into hook;
    continue when hook is null;  -- a redelivery: stored already
    stored := stored + 1;
    if tenant is not null then
      perform private.enqueue_job('leads.meta_fetch',
        jsonb_build_object('webhook_id', hook, 'leadgen_id', ch.v ->> 'leadgen_id', 'page_id', ch.page_id,
                           'form_id', ch.v -> 'form_id'),
        tenant, now(), 'meta-leadgen:' || (ch.v ->> 'leadgen_id'));
      queued := queued + 1;
    end if;
    hook := null;
    tenant := null;
  end loop;
  return jsonb_build_object('received', received, 'stored', stored, 'queued', queued);
end;
$$;
revoke execute on function private.receive_leadgen(jsonb) from public, anon, authenticated;
grant execute on function private.receive_leadgen(jsonb) to service_role;

-- The Graph fetch's outcome on the stored webhook: the lead it became, or the Graph API's reason
-- ('failed' on the last attempt; a record already settled is left as it is).
create or replace function private.lead_webhook_settle(webhook bigint, lead uuid, error text default null,
                                                       terminal boolean default false) returns void
language plpgsql
set search_path = ''
as $$
#variable_conflict use_variable
begin
  if lead is not null then
    update private.lead_webhooks set status = 'processed', lead_id = lead, error = null where id = webhook;
  else
    update private.lead_webhooks set status = case when terminal then 'failed' else status end, error = left(error, 4000)
    where id = webhook and status = 'received';
  end if;
end;
$$;
revoke execute on function private.lead_webhook_settle(bigint, uuid, text, boolean) from public, anon, authenticated;
grant execute on function private.lead_webhook_settle(bigint, uuid, text, boolean) to service_role;

-- ------------------------------------------------------------------------------------ lead pulls
-- A scheduled pull of one source ran: when, its error (null when it worked), and a processing_logs row
-- with the counts ({"fetched", "inserted", "merged", "skipped"}).
create or replace function private.lead_source_pulled(source uuid, counts jsonb, error text default null) returns void
language plpgsql
set search_path = ''
as $$
#variable_conflict use_variable
declare
  s public.lead_sources;
begin
  update public.lead_sources x set last_pulled_at = now(), last_error = error where x.id = source returning * into s;
  if s.id is not null then
    insert into public.processing_logs (tenant_id, module, action, result, detail, error)
    values (s.tenant_id, s.kind, 'pull', case when error is null then 'ok' else 'error' end, coalesce(counts, '{}'), error);
  end if;
end;
$$;
revoke execute on function private.lead_source_pulled(uuid, jsonb, text) from public, anon, authenticated;
grant execute on function private.lead_source_pulled(uuid, jsonb, text) to service_role;

/*
 * Lead alerts (job leads.alerts): the processing_logs errors after the cursor private.cursors['leads.alerts']
 * (at most n), each an in-app notification for the tenant's owners, admins and supervisors
 * (private.crm_notify, step key 'lead_alert:<log id>', so a row is never notified twice), the cursor
 * moved past them in the same transaction. The first call only places the cursor at the newest row.
 * Returns the rows: [{"id", "tenant_id", "lead_id", "module", "to_status", "error", "slack"}] (slack: the
 * tenant enabled leads.alerts.slack).
 */
create or replace function private.lead_alerts_take(n int default 200) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  pos bigint;
  rows jsonb;
begin
  select c.position into pos from private.cursors c where c.name = 'leads.alerts' for update;
  if not found then
    insert into private.cursors (name, position)
    select 'leads.alerts', coalesce(max(p.id), 0) from public.processing_logs p
    on conflict (name) do nothing;
    return '[]';
  end if;
  select coalesce(jsonb_agg(to_jsonb(a) order by a.id), '[]') into rows from (
    select p.id, p.tenant_id, p.lead_id, p.module, p.to_status, left(p.error, 300) as error,
           exists (select 1 from public.tenant_features tf where tf.tenant_id = p.tenant_id
                   and tf.feature = 'leads.alerts.slack' and tf.enabled) as slack
    from public.processing_logs p
    where p.id > pos and p.result = 'error' order by p.id limit n) a;
  if jsonb_array_length(rows) > 0 then
    perform private.crm_notify((r ->> 'tenant_id')::uuid,
              jsonb_build_object('user_ids', (select coalesce(jsonb_agg(m.user_id), '[]') from public.tenant_members m
                                              where m.tenant_id = (r ->> 'tenant_id')::uuid and m.active
                                                and m.role in ('owner', 'admin', 'supervisor'))),
              'lead_alert', 'Lead needs attention: ' || (r ->> 'module'), r ->> 'error',
              jsonb_build_object('lead_id', r -> 'lead_id', 'status', r -> 'to_status', 'module', r -> 'module'),
              null, 'lead_alert:' || (r ->> 'id'))
    from jsonb_array_elements(rows) r;
    update private.cursors set position = (rows -> -1 ->> 'id')::bigint, updated_at = now() where name = 'leads.alerts';
  end if;
  return rows;
end;
$$;
revoke execute on function private.lead_alerts_take(int) from public, anon, authenticated;
grant execute on function private.lead_alerts_take(int) to service_role;

-- ------------------------------------------------------------------------------- Meta ads, templates
-- Insights of one ad account stored (private.upsert_ad_insights) and the account marked synced.
create or replace function private.ad_insights_synced(ad_account uuid, level text, rows jsonb) returns int
language plpgsql
set search_path = ''
as $$
declare
  n int := private.upsert_ad_insights(ad_account, level, rows);
begin
  update public.ad_accounts set last_synced_at = now() where id = ad_account;
  return n;
end;
$$;
revoke execute on function private.ad_insights_synced(uuid, text, jsonb) from public, anon, authenticated;
grant execute on function private.ad_insights_synced(uuid, text, jsonb) to service_role;

-- One Conversions API attempt of a conversion event: sent (error null) or its error kept.
create or replace function private.conversion_event_attempted(event uuid, error text default null) returns void
language plpgsql
set search_path = ''
as $$
#variable_conflict use_variable
begin
  update public.conversion_events
  set attempts = attempts + 1,
      status = case when error is null then 'sent' else status end,
      sent_at = case when error is null then now() else sent_at end,
      last_error = case when error is null then last_error else left(error, 2000) end
  where id = event;
end;
$$;
revoke execute on function private.conversion_event_attempted(uuid, text) from public, anon, authenticated;
grant execute on function private.conversion_event_attempted(uuid, text) to service_role;

-- Meta's answer to a template submission: {"id", "status"} kept, or the refusal's reason (REJECTED).
create or replace function private.template_submitted(template uuid, answer jsonb, refusal text default null) returns void
language plpgsql
set search_path = ''
as $$
#variable_conflict use_variable
begin
  if refusal is not null then
    update public.message_templates set status = 'REJECTED', rejected_reason = left(refusal, 500) where id = template;
  else
    update public.message_templates
    set provider_template_id = answer ->> 'id', status = coalesce(answer ->> 'status', 'PENDING'), synced_at = now()
    where id = template;
  end if;
end;
$$;
revoke execute on function private.template_submitted(uuid, jsonb, text) from public, anon, authenticated;
grant execute on function private.template_submitted(uuid, jsonb, text) to service_role;

-- -------------------------------------------------------------------------------------- staff notices
/*
 * A message to a member of staff goes through the outbound queue like any other (rate slots, the
 * channel's limits, WhatsApp's 24-hour window, retries, exactly-once sends, dead letters): the member
 * is a contact of the channel (handle = the wa_id of their phone, or their e-mail address; made here
 * directly, so no lead is created for them), with one conversation labelled 'staff' per channel account,
 * and the message is queued by public.send_message. Outside WhatsApp's window a free-form text is
 * refused (422 outside_24h_window): pass `template` ({"name", "language", "variables"}) to send an
 * approved template there instead. Returns the queued public.messages row (the same one again for the
 * same idempotency key).
 */
create or replace function private.queue_staff_message(channel_account uuid, member uuid, body text, idempotency_key text,
                                                       subject text default null, template jsonb default null)
returns public.messages
language plpgsql
set search_path = ''
as $$
#variable_conflict use_variable
declare
  acc public.channel_accounts;
  p public.profiles;
  address text;
  contact uuid;
  conv public.conversations;
  window_open boolean;
begin
  select * into acc from public.channel_accounts a where a.id = channel_account and a.active;
  select * into p from public.profiles x where x.id = member;
  if acc.id is null or p.id is null
     or not exists (select 1 from public.tenant_members m where m.tenant_id = acc.tenant_id and m.user_id = member and m.active) then
    raise exception 'no active channel % with member %', channel_account, member using errcode = 'P0002';
  end if;
  address := case when acc.kind = 'email' then lower(nullif(btrim(p.email), ''))
                  when acc.kind in ('whatsapp', 'sms_twilio', 'sms_netgsm') then nullif(regexp_replace(coalesce(p.phone, ''), '[^0-9]', '', 'g'), '')
             end;
  if address is null then
    raise exception 'member % has no address for a % channel', member, acc.kind
      using errcode = 'PT422', detail = 'code=no_staff_address';
  end if;
  if acc.kind in ('sms_twilio', 'sms_netgsm') then
    address := '+' || address;
  end if;
  insert into public.contacts (tenant_id, channel, handle, display_name, phone, email)
  values (acc.tenant_id, acc.kind, address, p.full_name, nullif(p.phone, ''), lower(nullif(p.email, '')))
  on conflict (tenant_id, channel, handle) do update set display_name = coalesce(public.contacts.display_name, excluded.display_name)
  returning id into contact;
  select * into conv from public.conversations v
  where v.tenant_id = acc.tenant_id and v.channel_account_id = acc.id and v.contact_id = contact and 'staff' = any(v.labels)
  order by v.created_at limit 1;
  if conv.id is null then
    insert into public.conversations (tenant_id, channel_account_id, contact_id, labels, subject, assignee_id)
    values (acc.tenant_id, acc.id, contact, '{staff}', subject, member)
    returning * into conv;
  end if;
  window_open := conv.last_inbound_at is not null and conv.last_inbound_at > now() - interval '24 hours';
  if acc.kind in ('whatsapp', 'instagram', 'messenger') and not window_open and template is not null then
    return public.send_message(conv.id, null, template, idempotency_key);
  end if;
  return public.send_message(conv.id, body, null, idempotency_key);
end;
$$;
revoke execute on function private.queue_staff_message(uuid, uuid, text, text, text, jsonb) from public, anon, authenticated;
grant execute on function private.queue_staff_message(uuid, uuid, text, text, text, jsonb) to service_role;

/*
 * The CRM's notice to the rep a lead was assigned to (job crm.notify_rep, kind 'email' or 'whatsapp'):
 * queued to the rep through the tenant's channel of that kind (crm_settings.settings.notify_channels.<kind>,
 * else the tenant's oldest active channel account of the kind) by private.queue_staff_message. A WhatsApp
 * notice outside the rep's 24-hour window is the approved template crm_settings.settings.whatsapp.template
 * ({"name", "language"}; variables: customer name, phone, source, as many as it has) when one is set. Returns
 * {"message_id", "status", "channel_account_id"}, or {"skipped": reason} when the tenant has no such
 * channel or the rep no address on it.
 */
create or replace function private.crm_queue_rep_notice(tenant uuid, rep uuid, customer uuid, kind text, idempotency_key text)
returns jsonb
language plpgsql
set search_path = ''
as $$
#variable_conflict use_variable
declare
  settings jsonb := coalesce((select s.settings from public.crm_settings s where s.tenant_id = tenant), '{}');
  channel uuid;
  c public.customers;
  text_body text;
  tpl jsonb;
  msg public.messages;
begin
  channel := coalesce(
    (select a.id from public.channel_accounts a where a.tenant_id = tenant and a.kind = kind and a.active
       and a.id::text = settings -> 'notify_channels' ->> kind),
    (select a.id from public.channel_accounts a where a.tenant_id = tenant and a.kind = kind and a.active
     order by a.created_at, a.id limit 1));
  if channel is null then
    return jsonb_build_object('skipped', 'no ' || kind || ' channel');
  end if;
  select * into c from public.customers x where x.id = customer and x.tenant_id = tenant;
  text_body := format('Yeni HOT lead size atandı: %s %s (%s)', c.full_name, coalesce(c.phone, ''), coalesce(c.source, '-'));
  if settings -> 'whatsapp' -> 'template' ->> 'name' is not null then
    -- As many of (customer name, phone, source) as the template has variables.
    tpl := jsonb_build_object('name', settings -> 'whatsapp' -> 'template' ->> 'name',
                              'language', coalesce(settings -> 'whatsapp' -> 'template' ->> 'language', 'tr'));
    tpl := tpl || jsonb_build_object('variables', coalesce((
      select jsonb_agg(v.value order by v.i) from unnest(array[coalesce(c.full_name, '-'), coalesce(c.phone, '-'),
                                                               coalesce(c.source, '-')]) with ordinality v(value, i)
      where v.i <= (select t.variables from public.message_templates t
                    where t.channel_account_id = channel and t.name = tpl ->> 'name' and t.language = tpl ->> 'language'
                    order by (t.status = 'APPROVED') desc limit 1)), '[]'));
  end if;
  begin
    msg := private.queue_staff_message(channel, rep, text_body, idempotency_key, 'LUNA: yeni müşteri ataması', tpl);
  exception when sqlstate 'PT422' then
    get stacked diagnostics text_body = pg_exception_detail;
    if text_body = 'code=no_staff_address' then
      return jsonb_build_object('skipped', 'the rep has no ' || kind || ' address');
    end if;
    raise;
  end;
  return jsonb_build_object('message_id', msg.id, 'status', msg.status, 'channel_account_id', channel);
end;
$$;
revoke execute on function private.crm_queue_rep_notice(uuid, uuid, uuid, text, text) from public, anon, authenticated;
grant execute on function private.crm_queue_rep_notice(uuid, uuid, uuid, text, text) to service_role;
