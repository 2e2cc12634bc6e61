"""The shim's auth.* and realtime.* behave as Supabase's for the same request settings."""

import json

import psycopg
import pytest

CLAIMS = {"sub": "00000000-0000-4000-8001-000000000014", "role": "authenticated", "email": "agent@demo.luna.local",
          "aal": "aal1", "tenant_id": "00000000-0000-4000-8000-000000000001"}


def run_as(conn, sql, settings):
    with conn.transaction(force_rollback=True):
        for key, value in settings.items():
            conn.execute("select set_config(%s, %s, true)", (key, value))
        return conn.execute(sql).fetchone()


def test_auth_functions_read_request_jwt_claims(conn):
    row = run_as(conn, "select auth.uid() as uid, auth.role() as role, auth.email() as email, auth.jwt() as jwt",
                 {"request.jwt.claims": json.dumps(CLAIMS)})
    assert str(row["uid"]) == CLAIMS["sub"]
    assert row["role"] == "authenticated"
    assert row["email"] == "agent@demo.luna.local"
    assert row["jwt"] == CLAIMS


def test_single_claim_settings_take_precedence_as_on_supabase(conn):
    row = run_as(conn, "select auth.uid() as uid, auth.role() as role",
                 {"request.jwt.claims": json.dumps(CLAIMS), "request.jwt.claim.sub": "00000000-0000-4000-8001-000000000099",
                  "request.jwt.claim.role": "service_role"})
    assert str(row["uid"]) == "00000000-0000-4000-8001-000000000099"
    assert row["role"] == "service_role"


def test_auth_functions_are_null_without_claims(conn):
    row = run_as(conn, "select auth.uid() as uid, auth.role() as role, auth.jwt() as jwt", {})
    assert row == {"uid": None, "role": None, "jwt": None}
    row = run_as(conn, "select auth.uid() as uid", {"request.jwt.claims": ""})
    assert row["uid"] is None


def test_roles_exist_with_supabase_attributes(conn):
    roles = {r["rolname"]: r for r in conn.execute(
        "select rolname, rolbypassrls, rolcanlogin from pg_roles where rolname in ('anon','authenticated','service_role','authenticator')")}
    assert set(roles) == {"anon", "authenticated", "service_role", "authenticator"}
    assert roles["service_role"]["rolbypassrls"] and not roles["authenticated"]["rolbypassrls"]
    assert roles["authenticator"]["rolcanlogin"] and not roles["anon"]["rolcanlogin"]
    assert conn.execute("select count(*) as n from pg_publication where pubname = 'supabase_realtime'").fetchone()["n"] == 1


def test_realtime_send_stores_adds_id_and_notifies(db_url, conn):
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen realtime")
        conn.execute("select realtime.send('{\"a\": 1}'::jsonb, 'ping', 'tenant:x:test', true)")
        note = next(listener.notifies(timeout=5))
    message = json.loads(note.payload)
    assert message["topic"] == "tenant:x:test" and message["event"] == "ping"
    assert message["payload"]["a"] == 1 and message["payload"]["id"] == message["id"]
    row = conn.execute("select extension, private, payload from realtime.messages where topic = 'tenant:x:test'").fetchone()
    assert row["extension"] == "broadcast" and row["private"] is True and row["payload"]["id"] == message["id"]


def test_realtime_send_failure_is_a_warning_not_an_error(conn):
    # A topic that violates NOT NULL makes the insert fail; the caller's transaction must survive.
    with conn.transaction():
        conn.execute("select realtime.send('{}'::jsonb, 'x', null, true)")
        assert conn.execute("select 1 as ok").fetchone()["ok"] == 1


def test_broadcast_changes_shape_and_statement_level_refused(conn):
    conn.execute("""
        create table public.rt_probe (id int primary key, v text);
        alter table public.rt_probe enable row level security;
        create function public.rt_probe_trg() returns trigger language plpgsql as $$
        begin
          perform realtime.broadcast_changes('probe', tg_op, tg_op, tg_table_name, tg_table_schema, new, old);
          return null;
        end $$;
        create trigger t after insert or update on public.rt_probe for each row execute function public.rt_probe_trg();
        insert into public.rt_probe values (1, 'a');
        update public.rt_probe set v = 'b';""")
    rows = conn.execute("select event, payload from realtime.messages where topic = 'probe' order by inserted_at").fetchall()
    assert [r["event"] for r in rows] == ["INSERT", "UPDATE"]
    assert rows[1]["payload"]["record"] == {"id": 1, "v": "b"} and rows[1]["payload"]["old_record"] == {"id": 1, "v": "a"}
    assert rows[1]["payload"]["table"] == "rt_probe" and rows[1]["payload"]["operation"] == "UPDATE"
    with pytest.raises(psycopg.Error, match="each row"):
        conn.execute("select realtime.broadcast_changes('t', 'e', 'INSERT', 'x', 'public', null::record, null::record, 'STATEMENT')")


def test_access_token_hook_adds_tenant_claims(conn):
    event = {"user_id": "00000000-0000-4000-8001-000000000014", "claims": {"sub": "00000000-0000-4000-8001-000000000014", "role": "authenticated"},
             "authentication_method": "password"}
    out = conn.execute("select public.custom_access_token_hook(%s::jsonb) as o", (json.dumps(event),)).fetchone()["o"]
    assert out["claims"]["tenant_id"] == "00000000-0000-4000-8000-000000000001"
    assert out["claims"]["tenant_role"] == "agent"
    assert out["claims"]["sub"] == event["claims"]["sub"]
    # Not callable by API roles.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with conn.transaction(force_rollback=True):
            conn.execute("set local role authenticated")
            conn.execute("select public.custom_access_token_hook('{}'::jsonb)")
