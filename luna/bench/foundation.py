"""Foundation benchmarks: `rls` (policy overhead) and `claim` (queue throughput)."""

from __future__ import annotations

import asyncio
import json
import random
import time

import psycopg
from rich.progress import Progress

from . import bench, median, percentile, scratch_database


def _progress():
    from rich.console import Console

    return Progress(console=Console(stderr=True), transient=True)


@bench("rls")
def rls(quick: bool = False) -> dict:
    """Tenant-scoped list query as service_role vs as an authenticated user under RLS (ratio of medians)."""
    rows, tenants, iterations = (100_000, 20, 200) if quick else (1_000_000, 100, 1000)
    with scratch_database("rls") as url, psycopg.connect(url, autocommit=True) as conn:
        with _progress() as progress:
            task = progress.add_task("loading rows", total=None)
            conn.execute("""
                create table public.bench_items (
                  id uuid primary key default gen_random_uuid(),
                  tenant_id uuid not null references public.tenants (id),
                  assigned_to uuid, title text not null, amount numeric, created_at timestamptz not null);
                create index bench_items_tenant_created on public.bench_items (tenant_id, created_at desc);
                select private.enable_rls('bench_items', 'crm', 'assigned_to');
                grant select on public.bench_items to authenticated;""")
            conn.execute("""
                insert into public.tenants (id, slug, name)
                select gen_random_uuid(), 'bench-' || i, 'Bench ' || i from generate_series(1, %s) i""", (tenants,))
            conn.execute("""
                insert into auth.users (id, email, aud, role)
                select gen_random_uuid(), t.slug || '@bench.local', 'authenticated', 'authenticated'
                from public.tenants t where t.slug like 'bench-%%';
                insert into public.tenant_members (tenant_id, user_id, role)
                select t.id, u.id, 'agent' from public.tenants t join auth.users u on u.email = t.slug || '@bench.local';""")
            conn.execute("""
                insert into public.bench_items (tenant_id, title, amount, created_at)
                select t.ids[1 + (i %% array_length(t.ids, 1))], 'item ' || i, i %% 1000,
                       now() - make_interval(secs => i)
                from generate_series(1, %s) i,
                     (select array_agg(id) as ids from public.tenants where slug like 'bench-%%') t""", (rows,))
            progress.update(task, description="analyze")
            conn.execute("vacuum analyze public.bench_items")
            members = conn.execute("""select m.tenant_id::text, m.user_id::text from public.tenant_members m
                                      join public.tenants t on t.id = m.tenant_id where t.slug like 'bench-%%'""").fetchall()
            query = ("select id, title, amount, created_at from public.bench_items where tenant_id = %s "
                     "order by created_at desc limit 50")

            def timed(role, tenant, user):
                claims = ({"sub": user, "role": "authenticated", "aud": "authenticated", "tenant_id": tenant}
                          if role == "authenticated" else {"role": "service_role"})
                t0 = time.perf_counter()
                with conn.transaction():
                    conn.execute("select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                                 (role, json.dumps(claims)))
                    got = conn.execute(query, (tenant,)).fetchall()
                elapsed = (time.perf_counter() - t0) * 1000
                assert len(got) == 50, "every tenant has at least 50 rows"
                return elapsed

            progress.update(task, description="measuring", total=iterations * 2)
            for tenant, user in members[:10]:  # warm both paths
                timed("service_role", tenant, user), timed("authenticated", tenant, user)
            service, user_rls = [], []
            rng = random.Random(7)
            for _ in range(iterations):
                tenant, user = rng.choice(members)
                # Interleave so drift on a shared machine hits both sides alike.
                service.append(timed("service_role", tenant, user))
                user_rls.append(timed("authenticated", tenant, user))
                progress.advance(task, 2)
    return {"bench": "rls", "figures": {
        "ratio": round(median(user_rls) / median(service), 3),
        "service_median_ms": round(median(service), 3), "rls_median_ms": round(median(user_rls), 3),
        "service_p95_ms": round(percentile(service, 95), 3), "rls_p95_ms": round(percentile(user_rls, 95), 3)},
        "conditions": {"rows": rows, "tenants": tenants, "iterations": iterations, "page_size": 50,
                       "policy": "private.enable_rls(module permission + assignee restriction)",
                       "measured": "one transaction per request as PostgREST: set role + claims, then the query"}}


@bench("claim")
def claim(quick: bool = False, workers: int = 4, batch: int = 100) -> dict:
    """N workers claiming and completing jobs (no handler work): jobs per second."""
    from worker.registry import JOBS
    from worker.runner import Worker

    total = 10_000 if quick else 100_000

    @JOBS.handler("bench.noop")
    async def noop(ctx, job):
        return None

    with scratch_database("claim") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("insert into private.jobs (kind, payload) select 'bench.noop', jsonb_build_object('i', i) "
                         "from generate_series(1, %s) i", (total,))
            conn.execute("vacuum analyze private.jobs")

        async def run() -> float:
            pool_workers = [Worker(url, worker_id=f"bench-{i}", batch=batch, concurrency=batch, poll_seconds=0.05,
                                   queues=["jobs"]) for i in range(workers)]
            t0 = time.perf_counter()
            tasks = [asyncio.create_task(w.run()) for w in pool_workers]
            with _progress() as progress:
                task = progress.add_task("claiming", total=total)
                while True:
                    done = sum(w.processed for w in pool_workers)
                    progress.update(task, completed=done)
                    if done >= total:
                        break
                    await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - t0
            for w in pool_workers:
                w.stop()
            await asyncio.gather(*tasks)
            return elapsed

        elapsed = asyncio.run(run())
        with psycopg.connect(url) as conn:
            succeeded = conn.execute("select count(*) from private.jobs where status = 'succeeded'").fetchone()[0]
        baseline = asyncio.run(_bare_claim(url, total, workers, batch))
    jobs_per_s = succeeded / elapsed
    return {"bench": "claim", "figures": {"jobs_per_s": round(jobs_per_s), "seconds": round(elapsed, 2),
                                          "succeeded": succeeded, "baseline_jobs_per_s": round(total / baseline),
                                          "ratio": round(jobs_per_s / (total / baseline), 3)},
            "conditions": {"jobs": total, "workers": workers, "batch": batch, "process": "one asyncio process",
                           "claim": "private.jobs_claim (install_queue: pick … for update skip locked limit n, then one update)",
                           "complete": "private.jobs_complete (one statement per batch)",
                           "baseline": "the bare operation underneath, same run and database: the same workers "
                                       "claiming empty rows of a plain table with update ... for update skip locked "
                                       "limit n and completing each batch in one update (no leases, no logs)"}}


async def _bare_claim(url: str, total: int, workers: int, batch: int) -> float:
    """Seconds for `workers` connections to claim and complete `total` empty rows, batch by batch."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("drop table if exists bench_bare_jobs")
        conn.execute("create table bench_bare_jobs (id bigint generated always as identity primary key, "
                     "status text not null default 'queued', locked_by text)")
        conn.execute("insert into bench_bare_jobs (status) select 'queued' from generate_series(1, %s)", (total,))
        conn.execute("create index on bench_bare_jobs (id) where status = 'queued'")
        conn.execute("vacuum analyze bench_bare_jobs")

    async def loop(i: int) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while True:
                rows = await (await conn.execute(
                    "update bench_bare_jobs set status = 'running', locked_by = %s where id in ("
                    "select id from bench_bare_jobs where status = 'queued' order by id limit %s for update skip locked) "
                    "returning id", (f"bare-{i}", batch))).fetchall()
                if not rows:
                    return
                await conn.execute("update bench_bare_jobs set status = 'done' where id = any(%s)", ([r[0] for r in rows],))

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(workers)))
    elapsed = time.perf_counter() - t0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("drop table bench_bare_jobs")
    return elapsed
