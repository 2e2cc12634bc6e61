"""`luna bench workflow`: workflow steps executed by 4 workers through the generic job queue.

In a scratch database: R customers, each with a WhatsApp contact and an open conversation, and two
workflows measured one after the other, each over all R customers:

- `sequence` (the figure `steps_per_s`): the shape of the ready-made lead follow-up (T+24h / T+72h /
  T+7d while there is no reply): condition, delay, send a template message, delay, condition, send,
  delay, add a tag. The delays are zero-length here — a delay step is executed exactly as a 24-hour one
  (its due time computed, the next step's row and job queued for then); the bench measures execution,
  not waiting.
- `actions` (the figure `action_steps_per_s`): five steps that each write through another area's rules:
  condition, add a tag, set a custom field, send a template message, remove a tag (each customer write
  runs the CRM's triggers: timeline, realtime broadcast, tags catalogue).

R events are emitted and their runs started before the clock starts (the figures are about steps);
then 4 shipped workers (one process, the generic job queue) execute every step until every run has
ended. `lost` = steps that should have run and did not; `duplicated` = step rows or queued messages
beyond one per run step. Baseline (same run): the same 4 workers claiming and completing as many no-op
jobs. `db_cpu_ms_per_step`: CPU the database server spent per step (embedded server only).
"""

from __future__ import annotations

import asyncio
import resource
import time

from . import bench, scratch_database

DEMO = "00000000-0000-4000-8000-000000000001"
OWNER = "00000000-0000-4000-8001-000000000011"
WA_CHANNEL = "00000000-0000-4000-8006-000000000101"
SEQUENCE = {
    "trigger": {"event": "bench.sequence"},
    "steps": [
        {"id": "yanit-yok", "type": "condition",
         "if": {"all": [{"not": {"has_tag": "yanitladi"}}, {"channel": "whatsapp"}]}, "then": "bekle-24s", "else": "end"},
        {"id": "bekle-24s", "type": "delay", "seconds": 0},
        {"id": "takip-1", "type": "send_message", "channel": "whatsapp", "template": "bench_mesaj"},
        {"id": "bekle-72s", "type": "delay", "seconds": 0},
        {"id": "hala-yok", "type": "condition", "if": {"field": "region", "op": "in", "value": ["İstanbul", "Ankara"]},
         "then": "takip-2", "else": "end"},
        {"id": "takip-2", "type": "send_message", "channel": "whatsapp", "template": "bench_mesaj"},
        {"id": "bekle-7g", "type": "delay", "seconds": 0},
        {"id": "soguk", "type": "add_tag", "tag": "yanitsiz"},
    ],
}
ACTIONS = {
    "trigger": {"event": "bench.actions"},
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
SENDS = {"sequence": 2, "actions": 1}


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


def _measure(conn, url: str, name: str, definition: dict, workers: int) -> dict:
    """Switch the workflow on, start one run per bench customer, execute every step; the figures."""
    from psycopg.types.json import Jsonb

    wid = conn.execute("insert into public.workflows (tenant_id, name, created_by) values (%s, %s, %s) returning id",
                       (DEMO, f"bench {name}", OWNER)).fetchone()["id"]
    conn.execute("insert into public.workflow_versions (tenant_id, workflow_id, version, definition) values (%s, %s, 0, %s)",
                 (DEMO, wid, Jsonb(definition)))
    conn.execute("update public.workflows set status = 'active' where id = %s", (wid,))
    event = definition["trigger"]["event"]
    t0 = time.perf_counter()
    conn.execute("select private.emit_event(%s, %s, 'customer', c.id, '{}', %s || c.id, jsonb_build_object('customer_id', c.id)) "
                 "from public.customers c where 'bench' = any(c.tags)", (DEMO, event, event + ":"))
    conn.execute("select private.automation_start_runs((j.payload ->> 'event_id')::bigint) from private.jobs j "
                 "where j.kind = 'automation.event' and j.status = 'queued'")
    conn.execute("update private.jobs set status = 'succeeded' where kind = 'automation.event' and status = 'queued'")
    runs = conn.execute("select count(*) as n from public.workflow_runs where workflow_id = %s", (wid,)).fetchone()["n"]
    start_seconds = time.perf_counter() - t0

    async def runs_ended(aconn) -> bool:
        row = await (await aconn.execute("select count(*) from public.workflow_runs where workflow_id = %s "
                                         "and status in ('running', 'waiting')", (wid,))).fetchone()
        return row[0] == 0

    cpu0, db0 = resource.getrusage(resource.RUSAGE_SELF), _server_cpu(conn)
    elapsed = asyncio.run(_run_workers(url, workers, runs_ended))
    time.sleep(0.5)  # the workers' backends end and are reaped
    cpu1, db1 = resource.getrusage(resource.RUSAGE_SELF), _server_cpu(conn)
    steps = runs * len(definition["steps"])
    got = conn.execute("""
        select count(*) filter (where s.status = 'done') as done_steps, count(*) as step_rows,
               count(distinct (s.run_id, s.step_key)) as distinct_steps,
               count(distinct s.run_id) filter (where r.status = 'completed') as completed,
               count(distinct s.run_id) filter (where r.status = 'failed') as failed
        from public.workflow_steps s join public.workflow_runs r on r.tenant_id = s.tenant_id and r.id = s.run_id
        where r.workflow_id = %s""", (wid,)).fetchone()
    messages = conn.execute("""
        select count(*) as n, count(distinct o.idempotency_key) as keys
        from public.outbound_messages o join public.workflow_steps s on o.idempotency_key = 'automation:' || s.id
        join public.workflow_runs r on r.id = s.run_id where r.workflow_id = %s""", (wid,)).fetchone()
    worker_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"steps": steps, "runs": runs, "seconds": elapsed, "start_seconds": start_seconds,
            "steps_per_s": steps / elapsed, "lost": steps - got["done_steps"],
            "duplicated": (got["step_rows"] - got["distinct_steps"]) + (messages["n"] - messages["keys"]),
            "messages": messages["n"], "expected_messages": runs * SENDS[name],
            "completed": got["completed"], "failed": got["failed"],
            "db_cpu_ms_per_step": (db1 - db0) / steps * 1000 if db0 is not None and db1 is not None else None,
            "worker_cpu_ms_per_step": worker_cpu / steps * 1000}


@bench("workflow")
def run(quick: bool = False, workers: int = 4) -> dict:
    """Workflow steps by 4 workers: steps_per_s (follow-up sequence), action_steps_per_s, lost, duplicated."""
    import psycopg
    from psycopg.rows import dict_row

    from worker.registry import job

    @job("bench.noop")
    async def noop(ctx, row):  # the baseline: claim and complete, nothing else
        return None

    customers = 500 if quick else 4_000
    with scratch_database("workflow") as url:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            conn.execute("insert into public.automation_templates (tenant_id, name, language, body) values "
                         "(%s, 'bench_mesaj', 'tr', 'Merhaba {{isim|}}, {{firma|ekibimiz}} olarak dönüş yapıyoruz.')", (DEMO,))
            conn.execute("""
                with c as (
                  insert into public.customers (tenant_id, full_name, phone, region, tags)
                  select %(t)s, 'Bench Kişi ' || i, '+90555' || lpad(i::text, 7, '0'), 'İstanbul', '{bench}'
                  from generate_series(1, %(n)s) i returning id, phone, full_name),
                ct as (
                  insert into public.contacts (tenant_id, channel, handle, display_name, phone, customer_id)
                  select %(t)s, 'whatsapp', substr(c.phone, 2), c.full_name, c.phone, c.id from c returning id)
                insert into public.conversations (tenant_id, channel_account_id, contact_id, last_inbound_at)
                select %(t)s, %(ch)s, ct.id, now() from ct""", {"t": DEMO, "n": customers, "ch": WA_CHANNEL})
            sequence = _measure(conn, url, "sequence", SEQUENCE, workers)
            actions = _measure(conn, url, "actions", ACTIONS, workers)
            total = sequence["steps"]
            # The baseline: as many no-op jobs, claimed and completed by the same 4 workers.
            conn.execute("insert into private.jobs (kind, payload) select 'bench.noop', '{}' from generate_series(1, %s)", (total,))

            async def noops_done(aconn) -> bool:
                row = await (await aconn.execute("select count(*) from private.jobs where kind = 'bench.noop' "
                                                 "and status <> 'succeeded'")).fetchone()
                return row[0] == 0

            baseline = asyncio.run(_run_workers(url, workers, noops_done))
    baseline_per_s = total / baseline

    def r(x, n=1):
        return round(x, n) if x is not None else None

    return {"bench": "workflow", "figures": {
        "steps_per_s": r(sequence["steps_per_s"]), "action_steps_per_s": r(actions["steps_per_s"]),
        "lost": sequence["lost"] + actions["lost"], "duplicated": sequence["duplicated"] + actions["duplicated"],
        "baseline_noop_jobs_per_s": r(baseline_per_s), "ratio": r(sequence["steps_per_s"] / baseline_per_s, 3),
        "action_ratio": r(actions["steps_per_s"] / baseline_per_s, 3),
        "db_cpu_ms_per_step": r(sequence["db_cpu_ms_per_step"], 3),
        "action_db_cpu_ms_per_step": r(actions["db_cpu_ms_per_step"], 3),
        "worker_cpu_ms_per_step": r(sequence["worker_cpu_ms_per_step"], 3),
        "messages_queued": sequence["messages"] + actions["messages"],
        "messages_expected": sequence["expected_messages"] + actions["expected_messages"],
        "runs_failed": sequence["failed"] + actions["failed"]},
        "conditions": {
            "runs_per_workflow": customers, "workers": workers,
            "sequence": {"steps": sequence["steps"], "seconds": r(sequence["seconds"], 2),
                         "step_types": "condition, delay (0 s), send_message, delay (0 s), condition, send_message, delay (0 s), add_tag",
                         "runs_started_before_timing_s": r(sequence["start_seconds"], 2)},
            "actions": {"steps": actions["steps"], "seconds": r(actions["seconds"], 2),
                        "step_types": "condition, add_tag, update_field, send_message, remove_tag",
                        "runs_started_before_timing_s": r(actions["start_seconds"], 2)},
            "worker": "shipped worker.runner.Worker x4 in one process, batch 128, concurrency 128, generic job queue; "
                      "a worker's concurrent step jobs share one transaction (up to 32)",
            "send_path": "public.send_message -> outbound queue (messages stay queued: no inbox worker runs)",
            "baseline": f"{total} no-op jobs claimed and completed by the same workers in the same run"}}
