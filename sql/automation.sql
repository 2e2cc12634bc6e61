-- Automation views for the debugging screen and dashboards. Security invoker: RLS of the underlying
-- tables decides what each caller sees.

-- A run's history, one row per step: which step, when it was due, when it ran, what it did or why
-- it failed.
create or replace view public.workflow_run_history with (security_invoker = true) as
select s.tenant_id, r.workflow_id, w.name as workflow, r.id as run_id, r.version, r.status as run_status,
       r.end_reason, r.customer_id, r.contact_id, r.event_id, r.started_at, r.finished_at as run_finished_at,
       s.id as step_id, s.seq, s.step_key, s.type, s.status, s.due_at, s.started_at as step_started_at,
       s.finished_at as step_finished_at, s.result, s.error_code, s.error, s.attempts
from public.workflow_steps s
join public.workflow_runs r on r.tenant_id = s.tenant_id and r.id = s.run_id
join public.workflows w on w.tenant_id = r.tenant_id and w.id = r.workflow_id;
grant select on public.workflow_run_history to authenticated, service_role;

-- Per workflow: runs by status, exits by reason, failures by code.
create or replace view public.workflow_run_stats with (security_invoker = true) as
select w.tenant_id, w.id as workflow_id, w.name, w.status as workflow_status, w.current_version,
       count(r.id) as runs,
       count(r.id) filter (where r.status in ('running', 'waiting', 'paused')) as active,
       count(r.id) filter (where r.status = 'completed') as completed,
       count(r.id) filter (where r.status = 'exited' and r.end_reason = 'replied') as exited_replied,
       count(r.id) filter (where r.status = 'exited' and r.end_reason = 'opted_out') as exited_opted_out,
       count(r.id) filter (where r.status = 'failed') as failed,
       count(r.id) filter (where r.status = 'cancelled') as cancelled,
       max(r.started_at) as last_started_at
from public.workflows w
left join public.workflow_runs r on r.tenant_id = w.tenant_id and r.workflow_id = w.id
group by w.tenant_id, w.id, w.name, w.status, w.current_version;
grant select on public.workflow_run_stats to authenticated, service_role;
