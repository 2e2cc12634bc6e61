"""RLS everywhere, proven: every public table has RLS and a tenant policy; a user of one tenant can
neither read, insert, update nor delete another tenant's rows, for every tenant-owned table."""

import psycopg
import pytest

from .conftest import DEMO, DEMO2, as_user

# Tables that are not tenant-owned, each with why its policy is not a tenant policy.
GLOBAL_TABLES = {
    "tenants": "the tenant itself: members see their own row (id = private.tenant_id())",
    "profiles": "one per auth user: you and your colleagues (private.tenant_user_ids())",
    "features": "the global feature catalogue, read-only",
    "module_health": "system-wide breaker state per external module, read-only",
}


def public_tables(conn):
    return conn.execute("""
        select c.relname as name, c.relrowsecurity as rls,
               exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped) as tenant_owned,
               (select count(*) from pg_policy p where p.polrelid = c.oid) as policies,
               (select string_agg(pg_get_expr(coalesce(p.polqual, p.polwithcheck), p.polrelid), ' ')
                  from pg_policy p where p.polrelid = c.oid) as exprs
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = 'public' and c.relkind in ('r', 'p')
        order by 1""").fetchall()


def test_every_public_table_has_rls_and_a_tenant_policy(conn):
    tables = public_tables(conn)
    assert len(tables) >= 8
    problems = []
    for t in tables:
        if not t["rls"]:
            problems.append(f"{t['name']}: row level security is off")
        elif t["policies"] == 0:
            problems.append(f"{t['name']}: RLS on but no policy")
        elif t["name"] not in GLOBAL_TABLES:
            if not t["tenant_owned"]:
                problems.append(f"{t['name']}: no tenant_id column and not a declared global table")
            elif "private.tenant_id()" not in (t["exprs"] or ""):
                problems.append(f"{t['name']}: no policy checks private.tenant_id()")
    assert problems == []


def test_policies_wrap_helpers_in_select(conn):
    """Supabase's auth_rls_initplan lint: auth.* and helpers must run once per statement."""
    rows = conn.execute("""
        select c.relname, p.polname, pg_get_expr(coalesce(p.polqual, p.polwithcheck), p.polrelid) as expr
        from pg_policy p join pg_class c on c.oid = p.polrelid join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = 'public'""").fetchall()
    bad = []
    for r in rows:
        expr = r["expr"] or ""
        for fn in ("auth.uid()", "auth.jwt()", "private.tenant_id()", "private.can("):
            idx = expr.find(fn)
            while idx != -1:
                if "SELECT " not in expr[max(0, idx - 8):idx]:
                    bad.append(f"{r['relname']}.{r['polname']}: {fn} not wrapped")
                idx = expr.find(fn, idx + 1)
    assert bad == []


def tenant_tables(conn):
    return [t["name"] for t in public_tables(conn) if t["tenant_owned"] and t["name"] not in GLOBAL_TABLES]


def test_seed_covers_both_tenants_for_every_tenant_table(conn):
    """The cross-tenant test below needs a row of each tenant in every table; seeds provide them."""
    missing = []
    for name in tenant_tables(conn):
        counts = conn.execute(
            f"select count(*) filter (where tenant_id = %s) as a, count(*) filter (where tenant_id = %s) as b from public.{name}",
            (DEMO, DEMO2)).fetchone()
        if not counts["a"] or not counts["b"]:
            missing.append(name)
    assert missing == [], "seed/ must give both demo tenants a row in these tables"


ROLES = ["owner", "admin", "supervisor", "agent", "viewer"]


@pytest.mark.parametrize("role", ROLES)
def test_no_cross_tenant_access_for_any_table(conn, role):
    user = f"{role}@demo.luna.local"
    for name in tenant_tables(conn):
        foreign = conn.execute(f"select to_jsonb(t) as row from public.{name} t where tenant_id = %s limit 1",
                               (DEMO2,)).fetchone()
        assert foreign, f"no demo-2 row in {name}"
        with as_user(conn, user, rollback=True) as cur:
            seen = cur.execute(f"select count(*) as n from public.{name} where tenant_id = %s", (DEMO2,)).fetchone()
            assert seen["n"] == 0, f"{role} reads demo-2 rows of {name}"
            changed = cur.execute(f"update public.{name} set tenant_id = tenant_id where tenant_id = %s", (DEMO2,))
            assert changed.rowcount == 0, f"{role} updates demo-2 rows of {name}"
            deleted = cur.execute(f"delete from public.{name} where tenant_id = %s", (DEMO2,))
            assert deleted.rowcount == 0, f"{role} deletes demo-2 rows of {name}"
        # Insert a copy of the foreign row (new id): refused by the policy's with check.
        row = dict(foreign["row"])
        if "id" in row:
            row["id"] = "99999999-9999-4999-8999-999999999999" if isinstance(row["id"], str) else row["id"]
        with pytest.raises(psycopg.Error) as refused:
            with as_user(conn, user, rollback=True) as cur:
                cur.execute(f"insert into public.{name} select * from jsonb_populate_record(null::public.{name}, %s)",
                            (psycopg.types.json.Jsonb(row),))
        assert refused.value.sqlstate in ("42501", "428C9"), f"{role} inserting into demo-2's {name}: {refused.value}"


def test_anon_sees_no_tenant_data(conn):
    for name in tenant_tables(conn) + ["tenants", "profiles"]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with as_user(conn, None, role="anon", rollback=True) as cur:
                cur.execute(f"select count(*) from public.{name}")


def test_removed_member_loses_access_at_once(conn):
    from .conftest import claims_for

    claims = claims_for(conn, "agent@demo.luna.local")
    with as_user(conn, None, claims=claims, rollback=True) as cur:
        assert cur.execute("select count(*) as n from public.tenant_members").fetchone()["n"] > 0
    conn.execute("update public.tenant_members set active = false where user_id = %s", (claims["sub"],))
    with as_user(conn, None, claims=claims, rollback=True) as cur:
        assert cur.execute("select count(*) as n from public.tenant_members").fetchone()["n"] == 0


def test_agent_limited_to_assigned_records(conn):
    """private.enable_rls with an assignee column: with the tenant policy on, an agent sees only rows
    assigned to them; supervisors still see all."""
    conn.execute("""
        create table public.assign_probe (id uuid primary key default gen_random_uuid(), tenant_id uuid not null,
                                          assigned_to uuid, title text);
        select private.enable_rls('assign_probe', null, 'assigned_to');
        grant all on public.assign_probe to authenticated;""")
    agent = conn.execute("select id from auth.users where email = 'agent@demo.luna.local'").fetchone()["id"]
    other = conn.execute("select id from auth.users where email = 'agent2@demo.luna.local'").fetchone()["id"]
    conn.execute("insert into public.assign_probe (tenant_id, assigned_to, title) values (%s, %s, 'mine'), (%s, %s, 'theirs'), (%s, null, 'nobody')",
                 (DEMO, agent, DEMO, other, DEMO))
    def titles(user):
        with as_user(conn, user, rollback=True) as cur:
            return sorted(r["title"] for r in cur.execute("select title from public.assign_probe"))
    assert titles("agent@demo.luna.local") == ["mine", "nobody", "theirs"]  # policy off: all
    conn.execute("update public.tenant_policies set agents_see_assigned_only = true where tenant_id = %s", (DEMO,))
    assert titles("agent@demo.luna.local") == ["mine"]
    assert titles("agent2@demo.luna.local") == ["theirs"]
    assert titles("supervisor@demo.luna.local") == ["mine", "nobody", "theirs"]
    # and the agent cannot hand a row to themselves that they cannot see
    with as_user(conn, "agent@demo.luna.local", rollback=True) as cur:
        assert cur.execute("update public.assign_probe set assigned_to = %s where title = 'theirs'", (agent,)).rowcount == 0


def test_viewer_cannot_write_and_permissions_override(conn):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with as_user(conn, "viewer@demo.luna.local", rollback=True) as cur:
            cur.execute("insert into public.tenant_features (tenant_id, feature, enabled) values (%s, 'ai.autoreply', false)", (DEMO,))
    with as_user(conn, "viewer@demo.luna.local", rollback=True) as cur:
        assert cur.execute("select private.can('leads', 'write') as ok").fetchone()["ok"] is False
        assert cur.execute("select private.can('leads', 'read') as ok").fetchone()["ok"] is True
    conn.execute("insert into public.role_permissions (tenant_id, role, module, action, allowed) values (%s, 'viewer', 'leads', 'write', true)", (DEMO,))
    with as_user(conn, "viewer@demo.luna.local", rollback=True) as cur:
        assert cur.execute("select private.can('leads', 'write') as ok").fetchone()["ok"] is True
