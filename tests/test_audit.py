"""The audit chain: append-only, hash-chained per tenant; `luna audit verify` finds tampering."""

import json
import os
import subprocess
import sys

import psycopg
import pytest

from .conftest import DEMO, DEMO2, as_user


def verify_cli(db_url, *args):
    env = dict(os.environ, DATABASE_URL=db_url)
    proc = subprocess.run([sys.executable, "-m", "luna.cli", "audit", "verify", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout)


def test_changes_to_critical_tables_are_audited_with_request_context(conn):
    headers = {"x-forwarded-for": "203.0.113.7, 10.0.0.1", "user-agent": "pytest-browser", "x-correlation-id": "corr-123"}
    with as_user(conn, "owner@demo.luna.local", headers=headers) as cur:
        cur.execute("update public.tenant_policies set agents_see_assigned_only = true where tenant_id = %s", (DEMO,))
    event = conn.execute("select * from audit.events where resource_type = 'public.tenant_policies' order by id desc limit 1").fetchone()
    assert event["action"] == "update" and event["tenant_id"] is not None
    assert event["before"]["agents_see_assigned_only"] is False and event["after"]["agents_see_assigned_only"] is True
    assert str(event["ip"]) == "203.0.113.7" and event["user_agent"] == "pytest-browser"
    assert event["correlation_id"] == "corr-123" and event["actor_role"] == "owner"
    assert str(event["actor_id"]) == "00000000-0000-4000-8001-000000000011"


def test_append_only(conn):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("update audit.events set action = 'x'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("delete from audit.events")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("truncate audit.events")


def test_users_cannot_read_or_write_audit_directly(conn):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with as_user(conn, "owner@demo.luna.local", rollback=True) as cur:
            cur.execute("select * from audit.events")


def test_chain_is_per_tenant_and_intact(db_url, conn):
    rows = conn.execute("select tenant_id, seq, prev_hash from audit.events order by tenant_id, seq").fetchall()
    by_tenant = {}
    for r in rows:
        by_tenant.setdefault(r["tenant_id"], []).append(r["seq"])
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in by_tenant.values())
    code, out = verify_cli(db_url)
    assert code == 0 and out["ok"] and out["events"] == len(rows)


def tamper(conn, sql, *params):
    """What an attacker with superuser access would do: switch the guard off, edit, switch it on."""
    with conn.transaction():
        conn.execute("alter table audit.events disable trigger append_only")
        conn.execute("alter table audit.events disable trigger chain_event")
        conn.execute(sql, params)
        conn.execute("alter table audit.events enable trigger append_only")
        conn.execute("alter table audit.events enable trigger chain_event")


def test_verify_catches_altered_deleted_and_inserted_rows(db_url, conn):
    conn.execute("select audit.record(%s, 'export', 'customers', null, null, '{\"rows\": 10}')", (DEMO,))
    conn.execute("select audit.record(%s, 'export', 'customers', null, null, '{\"rows\": 20}')", (DEMO,))
    ids = [r["id"] for r in conn.execute("select id from audit.events where tenant_id = %s order by seq", (DEMO,))]
    assert len(ids) >= 4

    tamper(conn, "update audit.events set after = '{\"rows\": 1}' where id = %s", ids[-1])
    code, out = verify_cli(db_url, "--tenant", "demo")
    assert code == 1 and [p["problem"].split(":")[0] for p in out["problems"]] == ["altered"]

    tamper(conn, "update audit.events set after = '{\"rows\": 20}' where id = %s", ids[-1])  # undo
    tamper(conn, "delete from audit.events where id = %s", ids[1])
    code, out = verify_cli(db_url, "--tenant", "demo")
    assert code == 1 and any(p["problem"].startswith("missing") for p in out["problems"])

    # Inserted: a forged event slipped into demo-2's chain with a plausible next seq.
    last = conn.execute("select seq, hash from audit.events where tenant_id = %s order by seq desc limit 1", (DEMO2,)).fetchone()
    tamper(conn, "insert into audit.events (tenant_id, seq, action, resource_type, prev_hash, hash) values (%s, %s, 'forged', 'x', %s, 'f00')",
           DEMO2, last["seq"] + 1, last["hash"])
    code, out = verify_cli(db_url, "--tenant", "demo-2")
    assert code == 1 and any(p["problem"].startswith("altered") for p in out["problems"])
    # A row whose link to its predecessor was rewired is reported as inserted.
    row = conn.execute("select * from audit.events where tenant_id = %s and seq = 2", (DEMO2,)).fetchone()
    tamper(conn, "update audit.events set prev_hash = 'deadbeef' where id = %s", row["id"])
    problems = conn.execute("select problem from audit.verify(%s)", (DEMO2,)).fetchall()
    assert any(p["problem"].startswith("inserted") for p in problems)


def test_concurrent_writers_keep_one_chain(db_url):
    import threading

    def write(n):
        with psycopg.connect(db_url, autocommit=True) as c:
            for i in range(n):
                c.execute("select audit.record(%s, 'ping', 'probe', %s)", (DEMO, str(i)))

    threads = [threading.Thread(target=write, args=(25,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with psycopg.connect(db_url) as c:
        assert c.execute("select count(*) from audit.verify(%s)", (DEMO,)).fetchone()[0] == 0
        assert c.execute("select count(*) from audit.events where action = 'ping'").fetchone()[0] == 100


def test_a_non_address_forwarded_for_still_audits(conn):
    """A proxy that sends a host name (or garbage) must not make audited writes fail."""
    with as_user(conn, "owner@demo.luna.local", headers={"x-forwarded-for": "testclient"}) as cur:
        cur.execute("update public.tenant_policies set mfa_required = true where tenant_id = %s", (DEMO,))
    event = conn.execute("select ip, after from audit.events where resource_type = 'public.tenant_policies' order by id desc limit 1").fetchone()
    assert event["ip"] is None and event["after"]["mfa_required"] is True
