/*
 * One queue protocol (issue 11, item 2). The six lease functions of every queue are written by one
 * generator, private.install_queue (functions/worker.sql), instead of by hand per table. What the
 * tables need for it:
 *   - private.queues: what install_queue installed (queue, table, state values), read by the
 *     conformance test and by anyone asking "which queues are there";
 *   - one priority direction, higher runs first, on every queue: private.jobs.priority flips (the
 *     default, 100, stays; a non-default waiting job keeps its rank), inbound events and outbound
 *     messages get a priority column (the leads' current_orchestrator_priority already runs higher
 *     first);
 *   - claim indexes in the claim's order (priority desc, due, id) and lease indexes over every leased
 *     row (locked_until is not null: the rescuer's one predicate for every queue);
 *   - the hand-written functions the generated ones replace are dropped (verb `defer` is `snooze` now).
 */

create table private.queues (
  name text primary key,                 -- private.<name>_claim ... _rescue
  tbl text not null,                     -- the entity table
  spec jsonb not null,                   -- install_queue's arguments: state column and values, due, priority
  installed_at timestamptz not null default now()
);
revoke all on private.queues from public, anon, authenticated;
grant select on private.queues to service_role;

-- private.jobs: higher priority runs first.
update private.jobs set priority = 200 - priority where status in ('queued', 'running') and priority <> 100;
comment on column private.jobs.priority is 'higher runs first (default 100)';
drop index private.jobs_claim_idx;
create index jobs_claim_idx on private.jobs (priority desc, run_at, id) where status = 'queued';
drop index private.jobs_lease_idx;
create index jobs_lease_idx on private.jobs (locked_until) where locked_until is not null;

-- private.inbound_events
alter table private.inbound_events add column priority smallint not null default 100;
comment on column private.inbound_events.priority is 'higher runs first (default 100)';
drop index private.inbound_events_claim_idx;
create index inbound_events_claim_idx on private.inbound_events (priority desc, run_at, id) where status = 'received';
drop index private.inbound_events_lease_idx;
create index inbound_events_lease_idx on private.inbound_events (locked_until) where locked_until is not null;

-- public.outbound_messages
alter table public.outbound_messages add column priority smallint not null default 100;
comment on column public.outbound_messages.priority is 'higher runs first (default 100)';
drop index public.outbound_claim_idx;
create index outbound_claim_idx on public.outbound_messages (priority desc, run_at, id) where status = 'queued';
drop index public.outbound_lease_idx;
create index outbound_lease_idx on public.outbound_messages (locked_until) where locked_until is not null;

-- public.leads (the lease index is over locked_until is not null already)
drop index public.leads_claim_idx;
create index leads_claim_idx on public.leads (current_orchestrator_priority desc, next_attempt_at, id)
  where next_orchestrator_module is not null and locked_until is null;

drop function if exists private.claim_jobs(text, int, int, text[]), private.complete_jobs(text, bigint[], jsonb[]),
  private.fail_job(text, bigint, text, boolean), private.release_jobs(text, bigint[]), private.defer_job(text, bigint, int),
  private.rescue_jobs(),
  private.claim_leads(text, int, int), private.complete_leads(text, uuid[], jsonb[]),
  private.fail_lead(text, uuid, text, boolean), private.release_leads(text, uuid[]), private.defer_lead(text, uuid, int),
  private.rescue_leads(),
  private.claim_inbound_events(text, int, int), private.complete_inbound_events(text, bigint[], jsonb[]),
  private.fail_inbound_event(text, bigint, text, boolean), private.release_inbound_events(text, bigint[]),
  private.defer_inbound_event(text, bigint, int), private.rescue_inbound_events(),
  private.claim_outbound(text, int, int), private.complete_outbound(text, uuid[], jsonb[]),
  private.fail_outbound(text, uuid, text, boolean), private.release_outbound(text, uuid[]),
  private.defer_outbound(text, uuid, int), private.rescue_outbound(), private.settle_outbound(text, uuid[], jsonb[]);
