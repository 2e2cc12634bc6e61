-- functions/crm/lead_sync.sql -- LUNA module 4.1: a qualified lead into the CRM.

-- ---------------------------------------------------------------------------------------------
-- LUNA Module 4.1: a qualified lead into the CRM
-- ---------------------------------------------------------------------------------------------

/*
 * HOT: the customer is matched or created (phone / e-mail), a card opened in the tenant's default
 * pipeline's first stage (or the open one reused), a sales rep assigned (the lead's assignee, else the
 * customer's responsible, else the tenant's rules / round robin), the rep notified in-app (and by
 * e-mail / WhatsApp jobs when the tenant's CRM settings ask), the Zoho sync queued when on.
 * WARM / COLD: NURTURING. Returns {"status": "CRM_SYNCED" | "NURTURING", ...}; a failure raises
 * (PT422 with code=...), which the worker turns into CRM_ERROR with the reason.
 * Leased by the worker: the worker completes the lead with the returned status. Not leased (a person
 * retrying from SQL): the status is applied here through private.advance_lead.
 * Exactly once per lead and pass (private.step_marks 'crm_sync:<lead>:<pass>', taken in this
 * transaction): a retry after a worker died returns the first result with "replayed": true, and
 * writes no second timeline event, notification or job; the timeline event and notification carry
 * the same step key as a second guard.
 */
create or replace function private.sync_lead_to_crm(lead_id uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  l public.leads;
  cfg public.crm_settings;
  customer uuid;
  cust public.customers;
  rep uuid;
  pipe uuid;
  first_stage uuid;
  card uuid;
  card_created boolean := false;
  result jsonb;
  display_name text;
  pass int;
  step text;
  again text;
begin
  select * into l from public.leads x where x.id = lead_id;
  if not found then
    raise exception 'no lead %', lead_id using errcode = 'PT404', detail = 'code=lead_not_found';
  end if;
  if coalesce(l.claimed_status, l.processing_status) not in ('QUALIFIED', 'CRM_ERROR') then
    raise exception 'lead % is %, not QUALIFIED', lead_id, l.processing_status using errcode = 'PT409', detail = 'code=not_qualified';
  end if;
  if coalesce(l.lead_category, 'COLD') <> 'HOT' then
    result := jsonb_build_object('status', 'NURTURING', 'category', l.lead_category);
  else
    -- Once per lead and pass: a worker that died after this committed (before its batch settled)
    -- hands the lead out again, and the retry finds the step done. A later pass (the lead synced,
    -- then came back through review) is a new step.
    pass := (select count(*) from public.processing_logs g
             where g.tenant_id = l.tenant_id and g.lead_id = l.id and g.module = 'crm_sync' and g.to_status = 'CRM_SYNCED');
    step := l.id || ':' || pass;
    again := case when pass > 0 then ':' || pass else '' end;
    result := private.step_claim('crm_sync:' || step, l.tenant_id);
  end if;
  if result is not null then
    result := case when result ? 'customer_id' then result || '{"replayed": true}' else result end;
  else
    display_name := coalesce(nullif(trim(l.contact_name), ''), nullif(trim(l.company_name), ''));
    customer := private.match_or_create_customer(l.tenant_id, display_name, l.phone, l.email,
      jsonb_build_object('source', l.source, 'utm_source', l.utm_source, 'utm_medium', l.utm_medium,
                         'utm_campaign', l.utm_campaign, 'utm_term', l.utm_term, 'utm_content', l.utm_content,
                         'campaign', l.utm_campaign, 'region', l.city, 'lead_id', l.id, 'quality_score', l.luna_ai_score,
                         'company', l.company_name, 'sector', l.sector_category));
    select * into cust from public.customers c where c.id = customer;
    select * into cfg from public.crm_settings s where s.tenant_id = l.tenant_id;
    -- the rep: the lead's assignee, the customer's responsible, else rules / round robin
    rep := (select m.user_id from public.tenant_members m
            where m.tenant_id = l.tenant_id and m.active and m.user_id = l.assigned_to);
    if rep is null and cardinality(cust.responsibles) > 0 then
      rep := (select m.user_id from public.tenant_members m
              where m.tenant_id = l.tenant_id and m.active and m.user_id = any(cust.responsibles)
              order by array_position(cust.responsibles, m.user_id) limit 1);
    end if;
    if rep is null then
      rep := private.crm_pick_rep(l.tenant_id, jsonb_strip_nulls(jsonb_build_object(
        'region', l.city, 'source', l.source, 'campaign', l.utm_campaign, 'sector', l.sector_category,
        'country', l.country)));
    end if;
    if rep is null then
      raise exception 'no active sales rep to assign the lead to' using errcode = 'PT422', detail = 'code=no_rep';
    end if;
    if not rep = any(cust.responsibles) then
      update public.customers c set responsibles = c.responsibles || rep where c.id = customer;
    end if;
    update public.customers c set quality_score = greatest(c.quality_score, l.luna_ai_score),
           lead_id = coalesce(c.lead_id, l.id)
    where c.id = customer and (c.quality_score is distinct from greatest(c.quality_score, l.luna_ai_score) or c.lead_id is null);
    select p.id into pipe from public.pipelines p where p.tenant_id = l.tenant_id and p.is_default and not p.archived;
    if pipe is null then
      raise exception 'the tenant has no default pipeline' using errcode = 'PT422', detail = 'code=no_pipeline';
    end if;
    select s.id into first_stage from public.pipeline_stages s
    where s.pipeline_id = pipe and s.kind = 'open' order by s.position limit 1;
    select c.id into card from public.cards c
    where c.customer_id = customer and c.pipeline_id = pipe and c.status = 'open' limit 1;
    if card is null then
      insert into public.cards (tenant_id, pipeline_id, stage_id, customer_id, title)
      values (l.tenant_id, pipe, first_stage, customer, coalesce(l.company_name, display_name, 'Lead'))
      returning id into card;
      card_created := true;
    end if;
    perform private.crm_timeline(l.tenant_id, customer, 'lead_synced',
      jsonb_build_object('lead_id', l.id, 'category', l.lead_category, 'score', l.luna_ai_score,
                         'reason', l.luna_ai_reason, 'rep', rep, 'source', l.source), card, null, 'lead_synced:' || step);
    perform private.crm_notify(l.tenant_id, jsonb_build_object('user_id', rep), 'lead_assigned',
      'Yeni HOT lead: ' || coalesce(display_name, cust.full_name),
      concat_ws(' · ', l.company_name, cust.phone, l.source),
      jsonb_build_object('lead_id', l.id, 'card_id', card, 'score', l.luna_ai_score), customer, 'lead_assigned:' || step);
    if coalesce(cfg.notify_email, false) then
      perform private.enqueue_job('crm.notify_rep', jsonb_build_object('channel', 'email', 'rep', rep,
        'customer_id', customer, 'lead_id', l.id, 'card_id', card), l.tenant_id, now(), 'crm.notify_rep:email:' || l.id || again);
    end if;
    if coalesce(cfg.notify_whatsapp, false) then
      perform private.enqueue_job('crm.notify_rep', jsonb_build_object('channel', 'whatsapp', 'rep', rep,
        'customer_id', customer, 'lead_id', l.id, 'card_id', card), l.tenant_id, now(), 'crm.notify_rep:whatsapp:' || l.id || again);
    end if;
    if coalesce(cfg.zoho_sync, false) or private.feature_enabled(l.tenant_id, 'crm.zoho_sync') then
      perform private.enqueue_job('crm.zoho_sync', jsonb_build_object('customer_id', customer), l.tenant_id, now(),
        'crm.zoho_sync:lead:' || l.id || again);
    end if;
    update public.leads x set assigned_to = rep where x.id = l.id and x.assigned_to is distinct from rep;
    result := jsonb_build_object('status', 'CRM_SYNCED', 'customer_id', customer, 'card_id', card,
                                 'card_created', card_created, 'rep', rep);
    perform private.step_done('crm_sync:' || step, l.tenant_id, result);
  end if;
  if l.locked_until is null then
    perform private.advance_lead(l.id, result ->> 'status', 'crm_sync', 'sync', 'ok', null, result);
  end if;
  return result;
end;
$$;
revoke execute on function private.sync_lead_to_crm(uuid) from public, anon, authenticated;
grant execute on function private.sync_lead_to_crm(uuid) to service_role;
