/*
 * Scheduled work runs once per due time, whatever the number of workers (issue 11, item 1). Each
 * worker's scheduler only *enqueues* a tick: a private.jobs row of kind 'schedule:<name>' whose
 * idempotency key is the schedule's name and due time, so the first worker's enqueue wins and the
 * others are no-ops; the tick then runs once, retried like any job, visible in the job table.
 *
 * Cursors (how far a scheduled reader got, e.g. the lead alerts' last processing_logs id) live here,
 * not in a process, so a restart or a second worker continues where the last run stopped.
 */
create table private.cursors (
  name text primary key,
  position bigint not null,
  updated_at timestamptz not null default now()
);
grant select, insert, update on private.cursors to service_role;

-- Finished ticks are history of little worth: keep a day of them.
create index jobs_schedule_done_idx on private.jobs (updated_at)
  where kind like 'schedule:%' and status in ('succeeded', 'cancelled');
