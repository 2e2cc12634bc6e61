/*
 * Lead pipeline views for dashboards (Glide, Notion, SQL). security_invoker: each reader sees only
 * their tenant's rows (the tables' RLS applies).
 */

-- Leads per day by status, category and source.
create or replace view public.lead_funnel_daily with (security_invoker = true) as
select l.tenant_id, (l.created_at at time zone 'UTC')::date as day, l.source, l.processing_status,
       l.lead_category, count(*) as leads
from public.leads l
group by 1, 2, 3, 4, 5;

-- Average processing time per lead: the sum of its steps' lease time (claim -> complete), and the
-- wall time from arrival to QUALIFIED.
create or replace view public.lead_processing_time with (security_invoker = true) as
with per_lead as (
  select p.tenant_id, p.lead_id, sum(p.duration_ms) as processing_ms
  from public.processing_logs p
  where p.module in ('normalize', 'enrich', 'qualify', 'recover') and p.result = 'ok'
  group by 1, 2
)
select t.tenant_id, count(*) as leads,
       round(avg(t.processing_ms)) as avg_processing_ms,
       percentile_cont(0.5) within group (order by t.processing_ms) as p50_processing_ms,
       round(avg(extract(epoch from l.qualified_at - l.created_at) * 1000)) as avg_arrival_to_qualified_ms
from per_lead t join public.leads l on l.id = t.lead_id
group by t.tenant_id;

-- Per module and day: calls, errors and error rate (worker metrics), with the breaker's state.
create or replace view public.lead_module_errors with (security_invoker = true) as
select m.tenant_id, m.module, (m.bucket at time zone 'UTC')::date as day,
       sum(m.processed) as processed, sum(m.errors) as errors,
       round(sum(m.errors)::numeric / nullif(sum(m.processed) + sum(m.errors), 0), 4) as error_rate,
       round(sum(m.total_ms)::numeric / nullif(sum(m.processed), 0), 1) as avg_ms,
       max(m.max_ms) as max_ms,
       (select h.health_status from public.module_health h where h.module_name = m.module) as breaker
from public.system_metrics m
group by 1, 2, 3;

-- External API error rate: the breaker's counters per external module (global, not per tenant).
create or replace view public.external_api_error_rate with (security_invoker = true) as
select h.module_name, h.health_status, h.success_count, h.failure_count,
       round(h.failure_count::numeric / nullif(h.success_count + h.failure_count, 0), 4) as error_rate,
       h.last_error, h.last_check
from public.module_health h;

-- AI decision accuracy against human verdicts (OK vs REJECT; HUMAN counts as undecided).
create or replace view public.lead_ai_accuracy with (security_invoker = true) as
select l.tenant_id, l.ai_provider, l.ai_model, l.ai_prompt_version,
       count(*) filter (where l.human_decision is not null) as reviewed,
       count(*) filter (where l.human_decision is not null and l.human_decision = l.luna_ai_decision) as agreed,
       round((count(*) filter (where l.human_decision = l.luna_ai_decision))::numeric
             / nullif(count(*) filter (where l.human_decision is not null), 0), 4) as accuracy
from public.leads l
where l.luna_ai_decision is not null
group by 1, 2, 3, 4;

-- The review queue.
create or replace view public.lead_review_queue with (security_invoker = true) as
select l.id, l.tenant_id, l.company_name, l.contact_name, l.email, l.phone, l.source, l.processing_status,
       l.luna_ai_score, l.luna_ai_decision, l.luna_ai_reason, l.last_error, l.updated_at
from public.leads l
where l.processing_status in ('HUMAN_REVIEW_NEEDED', 'CRM_ERROR', 'TIMEOUT_DETECTED');

revoke all on public.lead_funnel_daily, public.lead_processing_time, public.lead_module_errors,
  public.external_api_error_rate, public.lead_ai_accuracy, public.lead_review_queue from anon;
grant select on public.lead_funnel_daily, public.lead_processing_time, public.lead_module_errors,
  public.external_api_error_rate, public.lead_ai_accuracy, public.lead_review_queue to authenticated, service_role;
