"""`luna bench workflow`: workflow steps executed by 4 workers through the generic job queue.

In a scratch database: R customers, each with a WhatsApp contact and an open conversation; one active
workflow of five steps (a condition on tags, region and channel, add a tag, set a custom field, send
a template message through public.send_message into the outbound queue, remove a tag); R events
emitted and their runs started (not timed: the figure is about steps); then 4 workers (one process,
the shipped Worker on the generic job queue) execute every step until every run has ended.
Figures: steps_per_s, lost (steps that should have run and did not), duplicated (messages or step
rows beyond one per run step), and a same-run baseline: the same 4 workers claiming and completing
as many no-op jobs (the bare queue under the steps), with the ratio of the two.
"""

from __future__ import annotations

import asyncio
import resource
import time

from . import bench, scratch_database

DEMO = "00000000-0000-4000-8000-000000000001"
OWNER = "00000000-0000-4000-8001-000000000011"
WA_CHANNEL = "00000000-0000-4000-8006-000000000101"
DEFINITION = {
    "trigger": {"event": "bench.start"},
    "steps": [
        {"id": "uygun-mu", "type": "condition",
         "if": {"all": [{"has_tag": "bench"}, {"channel": "whatsapp"}, {"field": "region", "op": "eq", "value": "İstanbul"}]},
         "then": "etiket", "else": "end"},
        {"id": "etiket", "type": "add_tag", "tag": "takipte"},
        {"id": "alan", "type": "update_field", "field": "custom_fields.son_otomasyon", "value": "{{isim}} takipte"},
        {"id": "mesaj", "type": "send_message", "channel": "whatsapp", "template": "bench_mesaj"},
        {"id": "etiket-kaldir", "type": "remove_tag", "tag": "bench"},
    ],
}
STEPS_PER_RUN = len(DEFINITION["steps"])


def _server_cpu(conn) -> float | None:
    """CPU seconds the database server has used so far: the postmaster's live children plus those it
    reaped (backends that ended), when the server runs on this machine (embedded); else None."""
    try:
        import psutil

        backend = psutil.Process(conn.execute("select pg_backend_pid() as p").fetchone()["p"])
        postmaster = backend.parent()
        t = postmaster.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in postmaster.children():
            try:
                c = child.cpu_times()
                total += c.user + c.system
            except psutil.Error:
                pass
        return total
    except Exception:  # a remote server, or no permission: the figure is left out
        return None


async def _run_workers(url: str, workers: int, done) -> float:
    """Run `workers` shipped workers on the job queue until `done(conn)` is true; the elapsed seconds."""
    import psycopg

    from worker.runner import Worker

    ws = [Worker(url, queues=["jobs"], worker_id=f"bench-workflow-{i}", batch=128, concurrency=128, poll_seconds=0.05)
          for i in range(workers)]
    start = time.perf_counter()
    tasks = [asyncio.create_task(w.run()) for w in ws]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while not await done(conn):
            await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - start
    for w in ws:
        w.stop()
    await asyncio.gather(*tasks)
    return elapsed


@bench("workflow")
def run(quick: bool = False, workers: int = 4) -> dict:
    """5-step workflow runs executed by 4 workers: steps_per_s, lost, duplicated; baseline no-op jobs."""
    import psycopg
    from psycopg.rows import dict_row
    from psycopg.types.json import Jsonb

    from worker.registry import job

    @job("bench.noop")
    async def noop(ctx, row):  # the baseline: claim and complete, nothing else
        return None

    runs = 400 if quick else 4_000
    total_steps = runs * STEPS_PER_RUN
    with scratch_database("workflow") as url:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            conn.execute("insert into public.automation_templates (tenant_id, name, language, body) values "
                         "(%s, 'bench_mesaj', 'tr', 'Merhaba {{isim|}}, {{firma|ekibimiz}} olarak dönüş yapıyoruz.')", (DEMO,))
            wid = conn.execute("insert into public.workflows (tenant_id, name, created_by) values (%s, 'bench', %s) returning id",
                               (DEMO, OWNER)).fetchone()["id"]
            conn.execute("insert into public.workflow_versions (tenant_id, workflow_id, version, definition) values (%s, %s, 0, %s)",
                         (DEMO, wid, Jsonb(DEFINITION)))
            conn.execute("update public.workflows set status = 'active' where id = %s", (wid,))
            conn.execute("""
                with c as (
                  insert into public.customers (tenant_id, full_name, phone, region, tags)
                  select %(t)s, 'Bench Kişi ' || i, '+90555' || lpad(i::text, 7, '0'), 'İstanbul', '{bench}'
                  from generate_series(1, %(n)s) i returning id, phone, full_name),
                ct as (
                  insert into public.contacts (tenant_id, channel, handle, display_name, phone, customer_id)
                  select %(t)s, 'whatsapp', substr(c.phone, 2), c.full_name, c.phone, c.id from c returning id)
                insert into public.conversations (tenant_id, channel_account_id, contact_id, last_inbound_at)
                select %(t)s, %(ch)s, ct.id, now() from ct""", {"t": DEMO, "n": runs, "ch": WA_CHANNEL})
            t0 = time.perf_counter()
            conn.execute("select private.emit_event(%s, 'bench.start', 'customer', c.id, '{}', 'bench:' || c.id, "
                         "jsonb_build_object('customer_id', c.id)) from public.customers c where 'bench' = any(c.tags)", (DEMO,))
            conn.execute("select private.automation_start_runs((j.payload ->> 'event_id')::bigint) from private.jobs j "
                         "where j.kind = 'automation.event' and j.status = 'queued'")
            conn.execute("update private.jobs set status = 'succeeded' where kind = 'automation.event' and status = 'queued'")
            start_seconds = time.perf_counter() - t0

            async def runs_ended(aconn) -> bool:
                row = await (await aconn.execute("select count(*) from public.workflow_runs where workflow_id = %s "
                                                 "and status in ('running', 'waiting')", (wid,))).fetchone()
                return row[0] == 0

            cpu0, db0 = resource.getrusage(resource.RUSAGE_SELF), _server_cpu(conn)
            elapsed = asyncio.run(_run_workers(url, workers, runs_ended))
            time.sleep(0.5)  # the workers' backends end and are reaped
            cpu1, db1 = resource.getrusage(resource.RUSAGE_SELF), _server_cpu(conn)
            db_cpu = db1 - db0 if db0 is not None and db1 is not None else None
            worker_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            got = conn.execute("""
                select count(*) filter (where s.status = 'done') as done_steps, count(*) as step_rows,
                       count(distinct (s.run_id, s.step_key)) as distinct_steps,
                       (select count(*) from public.workflow_runs r where r.workflow_id = %(w)s and r.status = 'completed') as completed,
                       (select count(*) from public.workflow_runs r where r.workflow_id = %(w)s and r.status = 'failed') as failed
                from public.workflow_steps s join public.workflow_runs r on r.id = s.run_id where r.workflow_id = %(w)s""",
                               {"w": wid}).fetchone()
            messages = conn.execute("""
                select count(*) as n, count(distinct o.idempotency_key) as keys,
                       count(distinct m.conversation_id) as conversations
                from public.outbound_messages o join public.messages m on m.id = o.message_id
                where o.idempotency_key like 'automation:%%'""").fetchone()
            # The baseline: as many no-op jobs, claimed and completed by the same 4 workers.
            conn.execute("insert into private.jobs (kind, payload) select 'bench.noop', '{}' from generate_series(1, %s)",
                         (total_steps,))

            async def noops_done(aconn) -> bool:
                row = await (await aconn.execute("select count(*) from private.jobs where kind = 'bench.noop' "
                                                 "and status <> 'succeeded'")).fetchone()
                return row[0] == 0

            baseline = asyncio.run(_run_workers(url, workers, noops_done))
    steps_per_s = total_steps / elapsed
    baseline_per_s = total_steps / baseline
    duplicated = (got["step_rows"] - got["distinct_steps"]) + (messages["n"] - messages["conversations"])
    return {"bench": "workflow", "figures": {
        "steps_per_s": round(steps_per_s, 1), "lost": total_steps - got["done_steps"], "duplicated": duplicated,
        "baseline_noop_jobs_per_s": round(baseline_per_s, 1), "ratio": round(steps_per_s / baseline_per_s, 3),
        "runs_completed": got["completed"], "runs_failed": got["failed"], "messages_queued": messages["n"],
        "seconds": round(elapsed, 2), "baseline_seconds": round(baseline, 2),
        "db_cpu_ms_per_step": round(db_cpu / total_steps * 1000, 3) if db_cpu is not None else None,
        "worker_cpu_ms_per_step": round(worker_cpu / total_steps * 1000, 3)},
        "conditions": {"runs": runs, "steps_per_run": STEPS_PER_RUN, "steps": total_steps, "workers": workers,
                       "worker": "shipped worker.runner.Worker x4 in one process, batch 100, concurrency 32, generic job queue",
                       "step_types": "condition, add_tag, update_field, send_message (public.send_message -> outbound queue), remove_tag",
                       "runs_started_before_timing_s": round(start_seconds, 2),
                       "worker_process_cpu_s": round(worker_cpu, 2),
                       "baseline": f"{total_steps} no-op jobs claimed and completed by the same workers in the same run"}}
