"""Tenant secrets (issue 10, item 3): provider keys, tokens, passwords and webhook URLs live in the one
encrypted store (private.tenant_secrets through luna.secrets), are written through the API, and are never
returned by a table, view or RPC readable by `authenticated`, nor by a log line or an error.

The scan plants secrets every way a tenant can write them (the settings JSON columns, as superuser and as
an owner through PostgREST-like SQL, PUT /v1/secrets), runs the worker paths that read them against a
failing provider, then reads every relation `authenticated` may select and calls every function it may
execute, as each demo role, and searches the results, the errors and the captured log lines."""

import json
import logging
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

from luna import secrets

from .conftest import DEMO, as_user, token_for
from .fakes import apollo, hunter, serve
from .test_leads_pipeline import run_until, scalar, settled

DEMO2 = "00000000-0000-4000-8000-000000000002"
ROLES = ("owner", "admin", "supervisor", "agent", "viewer")


def planted() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {k: f"PLANTED-{k}-{tag}" for k in
            ("apollo", "hunter", "clearbit", "zoho", "slack", "smtp", "whatsapp", "meta", "apify", "owner_put",
             "api_put", "tenant", "channel")}


def plant(conn, s: dict[str, str]) -> None:
    def feature(key, config):
        conn.execute("""insert into tenant_features (tenant_id, feature, enabled, config) values (%s, %s, true, %s)
                        on conflict (tenant_id, feature) do update set enabled = true, config = excluded.config""",
                     (DEMO, key, Jsonb(config)))

    feature("leads.enrich.apollo", {"base_url": "http://127.0.0.1:9", "api_key": s["apollo"], "retries": 0})
    feature("leads.validate.hunter", {"base_url": "http://127.0.0.1:9", "api_key": s["hunter"], "retries": 0})
    feature("leads.enrich.clearbit", {"base_url": "http://127.0.0.1:9", "api_key": s["clearbit"], "retries": 0})
    feature("leads.alerts.slack", {"webhook_url": f"http://127.0.0.1:9/services/{s['slack']}"})
    feature("crm.zoho_sync", {"base_url": "http://127.0.0.1:9", "access_token": s["zoho"]})
    conn.execute("""update crm_settings set settings = settings || %s where tenant_id = %s""",
                 (Jsonb({"smtp": {"host": "127.0.0.1", "port": 9, "username": "crm", "password": s["smtp"]},
                         "whatsapp": {"phone_number_id": "1", "token": s["whatsapp"]}}), DEMO))
    conn.execute("update lead_sources set config = config || %s where tenant_id = %s and kind = 'meta'",
                 (Jsonb({"access_token": s["meta"]}), DEMO))
    conn.execute("insert into lead_sources (tenant_id, kind, name, config) values (%s, 'apify', 'Apify', %s)",
                 (DEMO, Jsonb({"dataset_id": "ds1", "api_key": s["apify"]})))
    conn.execute("update tenants set settings = settings || %s where id = %s",
                 (Jsonb({"leads": {"hot": 70}, "openai_api_key": s["tenant"]}), DEMO))
    conn.execute("update channel_accounts set settings = settings || %s where tenant_id = %s",
                 (Jsonb({"bot_token": s["channel"]}), DEMO))
    # An owner writing a key through PostgREST (RLS lets settings managers update tenant_features).
    with as_user(conn, "owner@demo.luna.local") as cur:
        cur.execute("update tenant_features set config = config || %s where tenant_id = %s and feature = 'leads.enrich.clearbit'",
                    (Jsonb({"api_key": s["owner_put"]}), DEMO))


def readable_relations(conn) -> list[str]:
    rows = conn.execute("""
        select format('%I.%I', n.nspname, c.relname) as rel
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.relkind in ('r', 'v', 'm', 'p', 'f')
          and n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')
          and has_table_privilege('authenticated', c.oid, 'select')
        order by 1""").fetchall()
    return [r["rel"] for r in rows]


def executable_functions(conn) -> list[dict]:
    return conn.execute("""
        select p.oid::regprocedure::text as sig, format('%I.%I', n.nspname, p.proname) as fn,
               coalesce((select array_agg(format_type(t, null) order by i)
                         from unnest(p.proargtypes) with ordinality as a(t, i)), '{}') as args,
               p.proretset as setof
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname not in ('pg_catalog', 'information_schema') and p.prokind = 'f'
          and p.prorettype <> 'trigger'::regtype and not p.proargtypes::oid[] && array['internal'::regtype::oid]
          and has_function_privilege('authenticated', p.oid, 'execute')
        order by 1""").fetchall()


ARG = {"uuid": DEMO, "text": "x", "jsonb": "{}", "json": "{}", "integer": "1", "bigint": "1", "boolean": "true",
       "timestamp with time zone": "now"}


def errored(db_url):
    return lambda: scalar(db_url, "select (select count(*) from leads where last_error is not null) "
                                  "+ (select count(*) from processing_logs where result = 'error') > 0")


def leaks(text: str, s: dict[str, str]) -> list[str]:
    return [k for k, v in s.items() if v in (text or "")]


@pytest.fixture
def log_lines():
    """Every log record of every logger, formatted, while the test runs."""
    lines: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Grab(level=logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield lines
    root.removeHandler(handler)
    root.setLevel(old)


def test_settings_json_keeps_no_secret(conn):
    s = planted()
    plant(conn, s)
    for table, column in (("tenant_features", "config"), ("crm_settings", "settings"), ("lead_sources", "config"),
                          ("tenants", "settings"), ("channel_accounts", "settings")):
        text = json.dumps([r[column] for r in conn.execute(f"select {column} from {table}").fetchall()])
        assert not leaks(text, s), f"{table}.{column} still holds a secret"
    # Non-secret settings stay where they were.
    cfg = conn.execute("select config from tenant_features where tenant_id = %s and feature = 'leads.enrich.apollo'",
                       (DEMO,)).fetchone()["config"]
    assert cfg == {"base_url": "http://127.0.0.1:9", "retries": 0}
    smtp = conn.execute("select settings -> 'smtp' as s from crm_settings where tenant_id = %s", (DEMO,)).fetchone()["s"]
    assert smtp == {"host": "127.0.0.1", "port": 9, "username": "crm"}
    # ... and the values are in the store, encrypted, readable by the one reader.
    assert secrets.tenant_secret(conn, DEMO, "leads.enrich.apollo:api_key") == s["apollo"]
    assert secrets.tenant_secret(conn, DEMO, "crm_settings:smtp.password") == s["smtp"]
    assert secrets.tenant_secret(conn, DEMO, "leads.enrich.clearbit:api_key") == s["owner_put"]
    # Values written by SQL wait as 'pending:' in the private table until read or `luna secrets migrate`.
    assert secrets.migrate(conn)["sealed"] >= 8
    stored = conn.execute("select string_agg(ciphertext, ' ') as t from private.tenant_secrets").fetchone()["t"]
    assert not leaks(stored, s) and "pending:" not in stored
    assert secrets.migrate(conn) == {"rows_moved": 0, "sealed": 0}
    assert secrets.tenant_secret(conn, DEMO, "leads.alerts.slack:webhook_url").endswith(s["slack"])


def test_migrate_moves_existing_plaintext(conn):
    """Rows written before the store existed (simulated by writing with the triggers off)."""
    s = planted()
    conn.execute("set session_replication_role = replica")
    conn.execute("""insert into tenant_features (tenant_id, feature, enabled, config) values (%s, 'leads.enrichment', true, %s)
                    on conflict (tenant_id, feature) do update set config = excluded.config""",
                 (DEMO, Jsonb({"zoho": {"refresh_token": s["zoho"]}, "timeout": 5})))
    conn.execute("update crm_settings set settings = %s where tenant_id = %s",
                 (Jsonb({"smtp": {"host": "h", "password": s["smtp"]}}), DEMO2))
    conn.execute("set session_replication_role = origin")
    first = secrets.migrate(conn)
    assert first["rows_moved"] == 2 and first["sealed"] == 2
    assert secrets.migrate(conn) == {"rows_moved": 0, "sealed": 0}, "idempotent"
    assert conn.execute("select config from tenant_features where tenant_id = %s and feature = 'leads.enrichment'",
                        (DEMO,)).fetchone()["config"] == {"zoho": {}, "timeout": 5}
    assert secrets.tenant_secret(conn, DEMO, "leads.enrichment:zoho.refresh_token") == s["zoho"]
    assert secrets.tenant_secret(conn, DEMO2, "crm_settings:smtp.password") == s["smtp"]
    assert secrets.tenant_secret(conn, DEMO, "crm_settings:smtp.password") is None, "per tenant"


def test_api_writes_secrets_for_owners_and_admins_only(client, conn):
    s = planted()
    owner = {"Authorization": f"Bearer {token_for(conn, 'owner@demo.luna.local')}"}
    admin = {"Authorization": f"Bearer {token_for(conn, 'admin@demo.luna.local')}"}
    r = client.put("/v1/secrets/leads.enrich.apollo:api_key", json={"value": s["api_put"]}, headers=owner)
    assert r.status_code == 204, r.text
    assert secrets.tenant_secret(conn, DEMO, "leads.enrich.apollo:api_key") == s["api_put"]
    assert client.put("/v1/secrets/crm_settings:smtp.password", json={"value": s["smtp"]}, headers=admin).status_code == 204
    for role in ("supervisor", "agent", "viewer"):
        h = {"Authorization": f"Bearer {token_for(conn, f'{role}@demo.luna.local')}"}
        r = client.put("/v1/secrets/leads.enrich.apollo:api_key", json={"value": "nope-nope"}, headers=h)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required", (role, r.text)
        assert client.get("/v1/secrets", headers=h).status_code == 403
    listed = client.get("/v1/secrets", headers=owner)
    assert listed.status_code == 200
    assert {x["name"] for x in listed.json()["secrets"]} >= {"leads.enrich.apollo:api_key", "crm_settings:smtp.password"}
    assert not leaks(listed.text, s)
    assert client.put("/v1/secrets/no-scope", json={"value": "x" * 8}, headers=owner).status_code == 422
    assert secrets.tenant_secret(conn, DEMO, "leads.enrich.apollo:api_key") != "nope-nope"
    # demo-2's owner does not see or change demo's secrets
    other = {"Authorization": f"Bearer {token_for(conn, 'owner@demo-2.luna.local')}"}
    assert "leads.enrich.apollo:api_key" not in client.get("/v1/secrets", headers=other).text
    assert client.delete("/v1/secrets/crm_settings:smtp.password", headers=other).status_code == 404
    assert client.delete("/v1/secrets/crm_settings:smtp.password", headers=owner).status_code == 204
    assert secrets.tenant_secret(conn, DEMO, "crm_settings:smtp.password") is None
    # a plaintext value cannot be pushed through the RPC
    with pytest.raises(psycopg.Error, match="stored encrypted"):
        with as_user(conn, "owner@demo.luna.local") as cur:
            cur.execute("select public.set_tenant_secret('leads.enrich.apollo:api_key', 'plain-text-value')")


async def test_worker_reads_the_store(db_url, conn):
    """The pipeline's adapters get their keys from the store: the fakes accept only the right key."""
    lead = conn.execute("select id from leads where company_name = 'Gülüş Ağız ve Diş Sağlığı Polikliniği'").fetchone()["id"]
    conn.execute("delete from leads where id <> %s", (lead,))
    app, modes = apollo.make_app()
    happ, hmodes = hunter.make_app()
    with serve(app) as base, serve(happ) as hbase:
        for feature, url in (("leads.enrich.apollo", base), ("leads.validate.hunter", hbase)):
            conn.execute("""insert into tenant_features (tenant_id, feature, enabled, config) values (%s, %s, true, %s)
                            on conflict (tenant_id, feature) do update set enabled = true, config = excluded.config""",
                         (DEMO, feature, Jsonb({"base_url": url, "retries": 0})))
        secrets.set_tenant_secret(conn, DEMO, "leads.enrich.apollo:api_key", "apollo-key")
        secrets.set_tenant_secret(conn, DEMO, "leads.validate.hunter:api_key", "hunter-key")
        await run_until(db_url, settled(db_url))
    row = conn.execute("select * from leads where id = %s", (lead,)).fetchone()
    assert row["enrichment"]["employees"] == 320 and row["validation"]["hunter"]["result"] == "deliverable"
    assert {c["key"] for c in modes.calls} == {"apollo-key"} and len(hmodes.calls) == 1


async def test_no_secret_in_any_readable_table_view_rpc_or_log(db_url, conn, client, log_lines):
    s = planted()
    plant(conn, s)
    owner = {"Authorization": f"Bearer {token_for(conn, 'owner@demo.luna.local')}"}
    assert client.put("/v1/secrets/leads.alerts.slack:webhook_url",
                      json={"value": f"http://127.0.0.1:9/services/{s['api_put']}"}, headers=owner).status_code == 204
    # The worker reads the keys and calls providers that are down: the errors go to logs and tables.
    lead = conn.execute("select id from leads where company_name = 'Gülüş Ağız ve Diş Sağlığı Polikliniği'").fetchone()["id"]
    conn.execute("delete from leads where id <> %s", (lead,))
    await run_until(db_url, errored(db_url), timeout=60)
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    from worker.leads import jobs
    from worker.registry import Context

    async with AsyncConnectionPool(db_url, kwargs={"autocommit": True, "row_factory": dict_row}, open=False) as p:
        ctx = Context(p, None, None, "scan")
        conf = await secrets.aconfig(ctx, DEMO, "leads.alerts.slack", {})
        assert conf["webhook_url"].endswith(s["api_put"])
        await jobs._slack(ctx, conf["webhook_url"], "test alert")  # unreachable: logs a warning
        logging.getLogger("worker.test").warning("calling %s with %s", conf["webhook_url"], s["apollo"])

    found: dict[str, list[str]] = {}
    relations = readable_relations(conn)
    functions = executable_functions(conn)
    assert "public.tenant_features" in relations and "public.crm_settings" in relations
    assert any(f["fn"] == "public.tenant_secret_names" for f in functions)
    for role in ROLES:
        email = f"{role}@demo.luna.local"
        for rel in relations:
            try:
                with as_user(conn, email, rollback=True) as cur:
                    cur.execute("set local statement_timeout = '5s'")
                    rows = cur.execute(f"select to_jsonb(x)::text as t from {rel} x").fetchall()
                text = "\n".join(r["t"] for r in rows)
            except psycopg.Error as exc:
                text = str(exc)
            for k in leaks(text, s):
                found.setdefault(f"{rel} as {role}", []).append(k)
        for f in functions:
            args = [ARG.get(t, None) for t in f["args"]]
            sql = f"select to_jsonb(r)::text as t from {f['fn']}({', '.join(['%s::' + t for t in f['args']])}) r"
            try:
                with as_user(conn, email, rollback=True) as cur:
                    cur.execute("set local statement_timeout = '5s'")
                    rows = cur.execute(sql, args).fetchall()
                text = "\n".join(str(r["t"]) for r in rows)
            except psycopg.Error as exc:
                text = f"{exc} {getattr(exc.diag, 'message_detail', '')} {getattr(exc.diag, 'message_hint', '')}"
            for k in leaks(text, s):
                found.setdefault(f"{f['sig']} as {role}", []).append(k)
    # Everything the worker wrote while failing, as superuser (the rows dashboards show).
    for table in ("processing_logs", "leads", "jobs"):
        if conn.execute("select to_regclass(%s) is not null as ok", (f"public.{table}",)).fetchone()["ok"]:
            text = "\n".join(r["t"] for r in conn.execute(f"select to_jsonb(x)::text as t from public.{table} x").fetchall())
            for k in leaks(text, s):
                found.setdefault(f"public.{table}", []).append(k)
    for line in log_lines:
        for k in leaks(line, s):
            found.setdefault(f"log: {line[:120]}", []).append(k)
    assert not found, f"secrets readable: {found}"
    assert any("[REDACTED]" in line for line in log_lines), "the planted log line was redacted, not dropped"


def test_cli_sets_lists_migrates_and_deletes(db_url, conn):
    import os
    import subprocess
    import sys

    def luna(*args, stdin=None):
        proc = subprocess.run([sys.executable, "-m", "luna.cli", *args], env=dict(os.environ, DATABASE_URL=db_url),
                              input=stdin, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout + proc.stderr

    value = f"cli-secret-{uuid.uuid4().hex}"
    out = luna("secrets", "set", "--tenant", "demo", "leads.validate.hunter:api_key", stdin=value + "\n")
    assert value not in out
    assert secrets.tenant_secret(conn, DEMO, "leads.validate.hunter:api_key") == value
    assert "leads.validate.hunter:api_key" in luna("secrets", "list", "--tenant", "demo")
    assert value not in luna("secrets", "list", "--tenant", "demo")
    conn.execute("set session_replication_role = replica")
    conn.execute("update lead_sources set config = config || %s where tenant_id = %s and kind = 'meta'",
                 (Jsonb({"access_token": value + "-meta"}), DEMO))
    conn.execute("set session_replication_role = origin")
    assert "1 rows moved" in luna("secrets", "migrate")
    assert "0 rows moved, 0 values encrypted" in luna("secrets", "migrate")
    source = conn.execute("select id, config from lead_sources where tenant_id = %s and kind = 'meta'", (DEMO,)).fetchone()
    assert "access_token" not in source["config"]
    assert secrets.tenant_secret(conn, DEMO, f"lead_source.{source['id']}:access_token") == value + "-meta"
    luna("secrets", "delete", "--tenant", "demo", "leads.validate.hunter:api_key")
    assert secrets.tenant_secret(conn, DEMO, "leads.validate.hunter:api_key") is None
