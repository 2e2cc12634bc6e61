/*
 * CRM reporting views for Glide / Notion dashboards and analysts. security_invoker: whoever queries
 * sees only what RLS lets them see (their tenant; an assigned-only agent their own customers).
 */

-- Source / campaign performance: customers, deals, won / lost, conversion, revenue.
create or replace view public.report_crm_source_performance with (security_invoker = true) as
select c.tenant_id,
       coalesce(c.source, '(yok)') as source,
       coalesce(c.campaign, '(yok)') as campaign,
       count(distinct c.id) as customers,
       count(cd.id) as cards,
       count(cd.id) filter (where cd.status = 'open') as open_cards,
       count(cd.id) filter (where cd.status = 'won') as won,
       count(cd.id) filter (where cd.status = 'lost') as lost,
       round(count(cd.id) filter (where cd.status = 'won')::numeric / nullif(count(cd.id), 0), 4) as win_rate,
       coalesce(sum(cd.value) filter (where cd.status = 'won'), 0) as won_value,
       round(avg(c.quality_score), 1) as avg_quality
from public.customers c
left join public.cards cd on cd.customer_id = c.id
group by c.tenant_id, coalesce(c.source, '(yok)'), coalesce(c.campaign, '(yok)');

-- Stage-to-stage conversion: of the cards that left a stage, how many went where.
create or replace view public.report_crm_stage_conversion with (security_invoker = true) as
with moves as (
  select e.tenant_id, (e.data ->> 'from_stage_id')::uuid as from_stage_id, (e.data ->> 'to_stage_id')::uuid as to_stage_id
  from public.timeline_events e
  where e.event_type = 'stage_changed'
)
select m.tenant_id, fs.pipeline_id, fs.name as from_stage, fs.position as from_position, ts.name as to_stage,
       ts.position as to_position, count(*) as moves,
       round(count(*)::numeric / sum(count(*)) over (partition by m.tenant_id, m.from_stage_id), 4) as share_of_exits
from moves m
join public.pipeline_stages fs on fs.id = m.from_stage_id
join public.pipeline_stages ts on ts.id = m.to_stage_id
group by m.tenant_id, m.from_stage_id, fs.pipeline_id, fs.name, fs.position, m.to_stage_id, ts.name, ts.position;

-- Time in stage: how long cards stayed in a stage before they moved on (and how long the open ones wait).
create or replace view public.report_crm_time_in_stage with (security_invoker = true) as
with left_stage as (
  select e.tenant_id, (e.data ->> 'from_stage_id')::uuid as stage_id, (e.data ->> 'seconds_in_stage')::numeric as seconds
  from public.timeline_events e where e.event_type = 'stage_changed'
), waiting as (
  select cd.tenant_id, cd.stage_id, extract(epoch from now() - cd.stage_entered_at) as seconds
  from public.cards cd where cd.status = 'open'
)
select s.tenant_id, s.pipeline_id, s.id as stage_id, s.name as stage, s.position,
       (select count(*) from left_stage l where l.stage_id = s.id) as exits,
       (select round(avg(l.seconds) / 3600, 2) from left_stage l where l.stage_id = s.id) as avg_hours_before_exit,
       (select round((percentile_cont(0.5) within group (order by l.seconds))::numeric / 3600, 2)
          from left_stage l where l.stage_id = s.id) as median_hours_before_exit,
       (select count(*) from waiting w where w.stage_id = s.id) as open_cards,
       (select round(avg(w.seconds) / 3600, 2) from waiting w where w.stage_id = s.id) as avg_hours_waiting
from public.pipeline_stages s;

-- Appointments per day (in the tenant's time zone).
create or replace view public.report_crm_appointments_per_day with (security_invoker = true) as
select a.tenant_id,
       (a.scheduled_at at time zone t.timezone)::date as day,
       count(*) as appointments,
       count(*) filter (where a.status = 'open') as open,
       count(*) filter (where a.status = 'done') as done,
       count(*) filter (where a.status = 'cancelled') as cancelled,
       count(distinct a.assigned_to) as reps
from public.activities a
join public.activity_types ty on ty.id = a.type_id and ty.key = 'appointment'
join public.tenants t on t.id = a.tenant_id
where a.scheduled_at is not null
group by a.tenant_id, (a.scheduled_at at time zone t.timezone)::date;

-- Reminder backlog per owner.
create or replace view public.report_crm_reminder_backlog with (security_invoker = true) as
select r.tenant_id, r.owner_id, p.full_name as owner_name,
       count(*) filter (where r.done_at is null) as open,
       count(*) filter (where r.done_at is null and r.due_at < now()) as overdue,
       count(*) filter (where r.done_at is null and r.due_at >= now() and r.due_at < now() + interval '1 day') as due_24h,
       min(r.due_at) filter (where r.done_at is null and r.due_at < now()) as oldest_overdue_at
from public.reminders r
left join public.profiles p on p.id = r.owner_id
group by r.tenant_id, r.owner_id, p.full_name;

-- Per-rep workload: customers, open deals and their value, open activities, overdue reminders.
create or replace view public.report_crm_rep_workload with (security_invoker = true) as
select m.tenant_id, m.user_id, p.full_name, m.role,
       (select count(*) from public.customers c where c.tenant_id = m.tenant_id and m.user_id = any(c.responsibles)) as customers,
       (select count(*) from public.cards cd where cd.tenant_id = m.tenant_id and cd.status = 'open' and m.user_id = any(cd.responsibles)) as open_cards,
       (select coalesce(sum(cd.value), 0) from public.cards cd where cd.tenant_id = m.tenant_id and cd.status = 'open' and m.user_id = any(cd.responsibles)) as open_value,
       (select count(*) from public.activities a where a.tenant_id = m.tenant_id and a.assigned_to = m.user_id and a.status = 'open') as open_activities,
       (select count(*) from public.reminders r where r.tenant_id = m.tenant_id and r.owner_id = m.user_id and r.done_at is null and r.due_at < now()) as overdue_reminders,
       (select count(*) from public.work_orders w where w.tenant_id = m.tenant_id and m.user_id = any(w.responsibles) and w.status in ('open', 'in_progress')) as open_work_orders
from public.tenant_members m
left join public.profiles p on p.id = m.user_id
where m.active;

revoke all on public.report_crm_source_performance, public.report_crm_stage_conversion, public.report_crm_time_in_stage,
  public.report_crm_appointments_per_day, public.report_crm_reminder_backlog, public.report_crm_rep_workload from anon;
grant select on public.report_crm_source_performance, public.report_crm_stage_conversion, public.report_crm_time_in_stage,
  public.report_crm_appointments_per_day, public.report_crm_reminder_backlog, public.report_crm_rep_workload
  to authenticated, service_role;
