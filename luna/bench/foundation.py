"""Foundation benchmark `rls` (policy overhead); `claim` (queue throughput) is in claim.py."""

from __future__ import annotations

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
