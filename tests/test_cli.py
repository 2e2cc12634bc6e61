"""The `luna` command line against a test database (DATABASE_URL mode)."""

import json
import os
import subprocess
import sys

import jwt


def luna(db_url, *args, check=True):
    env = dict(os.environ, DATABASE_URL=db_url)
    proc = subprocess.run([sys.executable, "-m", "luna.cli", *args], env=env, capture_output=True, text=True, timeout=180)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_migrate_twice_is_a_noop_and_status_is_current(db_url):
    assert "already current" in luna(db_url, "db", "migrate").stderr
    status = json.loads(luna(db_url, "db", "status").stdout)
    assert status["current"] and not status["supabase"] and status["pending_migrations"] == []


def test_db_url_prints_the_url_in_use(db_url):
    assert luna(db_url, "db", "url").stdout.strip() == db_url


def test_token_has_supabase_shape_and_tenant_claims(db_url):
    out = luna(db_url, "token", "--user", "agent@demo.luna.local", "--tenant", "demo").stdout.strip()
    claims = jwt.decode(out, os.environ["LUNA_JWT_SECRET"], algorithms=["HS256"], audience="authenticated")
    assert claims["role"] == "authenticated" and claims["email"] == "agent@demo.luna.local"
    assert claims["tenant_id"] == "00000000-0000-4000-8000-000000000001" and claims["tenant_role"] == "agent"
    assert {"sub", "exp", "iat", "aal", "amr", "session_id", "app_metadata"} <= set(claims)
    by_id = luna(db_url, "token", "--user", "agent@demo.luna.local", "--tenant", "00000000-0000-4000-8000-000000000001").stdout.strip()
    assert jwt.decode(by_id, options={"verify_signature": False})["tenant_id"] == claims["tenant_id"]


def test_token_errors_say_what_to_do(db_url):
    proc = luna(db_url, "token", "--user", "nobody@example.com", check=False)
    assert proc.returncode == 1 and "no user" in proc.stderr
    proc = luna(db_url, "token", "--user", "agent@demo.luna.local", "--tenant", "demo-2", check=False)
    assert proc.returncode == 1 and "not an active member" in proc.stderr


def test_reset_rebuilds_and_reseeds(db_url, conn):
    conn.execute("delete from public.tenant_features")
    luna(db_url, "db", "reset", "--yes")
    with __import__("psycopg").connect(db_url) as c:
        assert c.execute("select count(*) from public.tenant_features").fetchone()[0] > 0
        assert c.execute("select count(*) from public.tenants where slug in ('demo', 'demo-2')").fetchone()[0] == 2
    assert luna(db_url, "db", "reset", check=False).returncode == 1  # refuses without --yes


def test_bench_list_names_the_benchmarks(db_url):
    out = luna(db_url, "bench", "list").stdout
    assert "rls" in out and "claim" in out
