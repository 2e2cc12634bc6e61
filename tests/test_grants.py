"""Execution is denied by default in the private and audit schemas: a signed-in user (with a direct SQL
connection, as Glide or an analyst would have) cannot call the service helpers, and the helpers every user
action reaches refuse a tenant that is not the caller's."""

import psycopg
import pytest

from .conftest import DEMO, DEMO2, as_service, as_user

VIEWER = "viewer@demo.luna.local"

# What authenticated may execute in private/audit, each for a reason written in docs/security.md.
ALLOWED = {
    # policy helpers
    "private.tenant_id()", "private.tenant_role()", "private.default_allowed(role member_role, action text)",
    "private.can(module text, action text)", "private.sees_all()", "private.tenant_user_ids()",
    "private.can_join_topic(topic text)", "private.crm_can_see_customer(customer uuid)",
    "private.caller_is_service()", "private.assert_caller_tenant(tenant uuid)",
    # writers every user action reaches; they check the tenant
    "audit.record(tenant uuid, action text, resource_type text, resource_id text, before jsonb, after jsonb)",
    "private.broadcast(topic text, event text, payload jsonb)",
    # helpers of security-invoker RPCs
    "private.crm_email(raw text)", "private.crm_phone(raw text, region text)", "private.clean_email(raw text)",
    "private.clean_phone(raw text, region text)", "private.fold_identifier(raw text)",
    "private.phone_from_digits(d text)", "private.csv_text(value text)",
    "private.cursor_encode(doc jsonb)", "private.cursor_decode(cursor text)", "private.crm_require_tenant()",
    "private.crm_require_lead_role()", "private.crm_mask_phone(p text)", "private.crm_mask_email(e text)",
    "private.crm_mask_name(n text)", "private.crm_customer_messages(customer uuid, per_channel integer)",
    "private.inbox_customer_messages(customer uuid, per_channel integer)",
    "private.inbox_timeline(tenant uuid, conv uuid, event text, data jsonb)", "private.inbox_clear_unread(conv uuid)",
    "private.can_join_inbox_topic(record_id text)", "private.message_status_rank(status text)",
    "private.review_lead(lead uuid, verdict text, reason text)",
}


def executable(conn, role):
    return {r["sig"] for r in conn.execute(
        "select n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' as sig "
        "from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname in ('private', 'audit') and has_function_privilege(%s, p.oid, 'execute')", (role,))}


def test_authenticated_executes_only_the_listed_functions(conn):
    got = executable(conn, "authenticated")
    assert got - ALLOWED == set(), "grant these deliberately (and say why in docs/security.md) or revoke them"
    assert executable(conn, "anon") == set()
    # service code keeps everything it calls
    service = executable(conn, "service_role")
    for sig in ("private.ingest_lead(tenant uuid, source text, payload jsonb)", "private.channel_for_worker(channel uuid)",
                "private.jobs_claim(worker text, n integer, lease_seconds integer)"):
        assert sig in service and sig not in got


def test_new_functions_are_not_executable_by_default(conn):
    conn.execute("create function private.zz_probe() returns int language sql as 'select 1'")
    conn.execute("create function audit.zz_probe() returns int language sql as 'select 1'")
    for fn in ("private.zz_probe()", "audit.zz_probe()"):
        for role in ("authenticated", "anon"):
            assert not conn.execute("select has_function_privilege(%s, %s, 'execute') as x", (role, fn)).fetchone()["x"]


@pytest.mark.parametrize("sql,args", [
    ("select audit.record(%s, 'export', 'customers', null, null, '{}')", (DEMO2,)),
    ("select * from private.ingest_lead(%s, 'form', '{\"company\": \"Sızma AŞ\", \"email\": \"x@sizma.example\"}')", (DEMO2,)),
    ("select private.broadcast('tenant:' || %s || ':leads', 'alert', '{}')", (DEMO2,)),
    ("select private.broadcast('user:' || %s, 'notification', '{}')", ("00000000-0000-4000-8001-000000000099",)),
    ("select * from private.channel_for_worker(%s)", (DEMO2,)),
    ("select private.feature_enabled(%s, 'crm.zoho_sync')", (DEMO2,)),
])
def test_other_tenant_refused_with_a_permission_error(conn, sql, args):
    before = conn.execute("select count(*) as n from audit.events where tenant_id = %s", (DEMO2,)).fetchone()["n"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with as_user(conn, VIEWER) as cur:
            cur.execute(sql, args)
    assert conn.execute("select count(*) as n from audit.events where tenant_id = %s", (DEMO2,)).fetchone()["n"] == before
    assert not conn.execute("select 1 from leads where email = 'x@sizma.example'").fetchone()


def test_own_tenant_still_works(conn):
    with as_user(conn, VIEWER) as cur:
        cur.execute("select audit.record(%s, 'login', 'session', null, null, '{}')", (DEMO,))
        cur.execute("select private.broadcast('tenant:' || %s || ':leads', 'alert', '{}')", (DEMO,))
        cur.execute("select private.broadcast('user:' || auth.uid(), 'notification', '{}')")
    assert conn.execute("select 1 from audit.events where tenant_id = %s and action = 'login'", (DEMO,)).fetchone()
    # service code still names any tenant
    with as_service(conn) as cur:
        cur.execute("select audit.record(%s, 'job', 'worker', null, null, '{}')", (DEMO2,))


def other_conversation(conn):
    return conn.execute("select id from conversations where tenant_id = %s limit 1", (DEMO2,)).fetchone()["id"]


def test_inbox_timeline_writes_nothing_in_another_tenant(conn):
    conv = other_conversation(conn)
    before = conn.execute("select count(*) as n from conversation_events where conversation_id = %s", (conv,)).fetchone()["n"]
    try:
        with as_user(conn, VIEWER) as cur:
            cur.execute("select private.inbox_timeline(%s, %s, 'status', '{}')", (DEMO2, conv))
    except psycopg.errors.InsufficientPrivilege:
        pass
    assert conn.execute("select count(*) as n from conversation_events where conversation_id = %s", (conv,)).fetchone()["n"] == before


def test_inbox_timeline_refuses_another_tenant(conn):
    conv = other_conversation(conn)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with as_user(conn, VIEWER) as cur:
            cur.execute("select private.inbox_timeline(%s, %s, 'status', '{}')", (DEMO2, conv))
