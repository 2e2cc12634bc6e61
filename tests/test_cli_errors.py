"""One error path for the CLI (issue 10, item 16): a clear sentence on stderr, a non-zero exit, a traceback
only with the global `--debug` option. Every test runs the real `luna` command in a subprocess."""

import json
import os
import subprocess
import sys

import jwt
import pytest

DEMO = "00000000-0000-4000-8000-000000000001"
DEMO2 = "00000000-0000-4000-8000-000000000002"


def luna(db_url, *args, env=None, stdin=subprocess.DEVNULL):
    full_env = dict(os.environ, DATABASE_URL=db_url, COLUMNS="200", **(env or {}))
    full_env.pop("LUNA_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "luna.cli", *args], env=full_env, capture_output=True, text=True,
                          timeout=180, stdin=stdin)


def assert_clear_error(proc, *phrases):
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out and "──" not in out, out  # no plain or rich (boxed) traceback
    message = proc.stderr.strip()
    assert message and len(message.splitlines()) <= 3, out
    for phrase in phrases:
        assert phrase in message, out


@pytest.mark.parametrize("args, phrases", [
    (["leads", "--tenant", "nosuch"], ["no tenant 'nosuch'"]),
    (["audit", "verify", "--tenant", "nosuch"], ["no tenant 'nosuch'"]),
    (["crm", "board", "--user", "nobody"], ["no user 'nobody'", "--tenant"]),
    (["crm", "board", "--tenant", "demo", "--user", "nobody"], ["no user 'nobody@demo.luna.local'"]),
    (["crm", "board", "--tenant", "nosuch"], ["no tenant 'nosuch'"]),
    (["crm", "board", "--tenant", "demo", "--pipeline", "not-a-pipeline"], ["not-a-pipeline"]),
    (["crm", "reminders", "--tenant", "nosuch"], ["no tenant 'nosuch'"]),
    (["crm", "sync-lead", "00000000-0000-4000-8000-00000000dead"], ["lead"]),
    (["token", "--user", "nobody@example.com"], ["no user 'nobody@example.com'"]),
    (["token", "--user", "agent@demo.luna.local", "--tenant", "demo-2"], ["not an active member"]),
    (["token"], ["--user", "--service"]),
    (["sql", "--as", "nobody@example.com", "-c", "select 1"], ["no user 'nobody@example.com'"]),
])
def test_bad_input_is_one_sentence_and_a_non_zero_exit(db_url, args, phrases):
    assert_clear_error(luna(db_url, *args), *phrases)


def test_csv_import_to_an_unknown_tenant(db_url, tmp_path):
    csv = tmp_path / "leads.csv"
    csv.write_text("company_name,email\nAcar Mobilya,mert@acarmobilya.com.tr\n")
    assert_clear_error(luna(db_url, "ingest", "csv", str(csv), "--tenant", "nosuch"), "no tenant 'nosuch'")


def test_unreachable_database_is_a_sentence(db_url):
    proc = luna("postgresql://luna@127.0.0.1:1/luna?connect_timeout=2", "leads", "--tenant", "demo")
    assert_clear_error(proc, "cannot reach the database")


def test_debug_shows_the_traceback(db_url):
    proc = luna(db_url, "--debug", "leads", "--tenant", "nosuch")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "no tenant 'nosuch'" in proc.stderr


def test_database_rule_errors_keep_their_code(db_url):
    # The card cannot go from Potansiyel straight to Kapora without a deposit: PT422 code=deposit_required.
    sql = ("select public.move_card('00000000-0000-4000-8005-000000000501', "
           "(select id from public.pipeline_stages where name = 'Kapora' and tenant_id = private.tenant_id()))")
    proc = luna(db_url, "sql", "--as", "agent@demo.luna.local", "-c", sql)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out and "deposit" in proc.stderr, out


def test_token_service_needs_no_user(db_url):
    proc = luna(db_url, "token", "--service")
    assert proc.returncode == 0, proc.stderr
    claims = jwt.decode(proc.stdout.strip(), os.environ["LUNA_JWT_SECRET"], algorithms=["HS256"])
    assert claims["role"] == "service_role"


def test_reminders_take_a_tenant(db_url, conn):
    conn.execute("update public.reminders set due_at = now() - interval '1 minute', done_at = null, notified_at = null")
    due = {r["tenant_id"]: r["n"] for r in conn.execute(
        "select tenant_id::text, count(*) as n from public.reminders group by 1").fetchall()}
    assert due.get(DEMO) and due.get(DEMO2), due
    proc = luna(db_url, "crm", "reminders", "--tenant", "demo")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"notified": due[DEMO], "tenant": DEMO}
    left = {r["tenant_id"]: r["n"] for r in conn.execute(
        "select tenant_id::text, count(*) as n from public.reminders where notified_at is null group by 1").fetchall()}
    assert left == {DEMO2: due[DEMO2]}
    proc = luna(db_url, "crm", "reminders")
    assert proc.returncode == 0 and json.loads(proc.stdout)["notified"] == due[DEMO2], proc.stderr


def test_sql_as_a_user_runs_under_rls(db_url):
    proc = luna(db_url, "sql", "--as", "agent@demo.luna.local", "-At", "-c",
                "select current_user, private.tenant_id(), private.tenant_role(), (select count(distinct tenant_id) from public.customers)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"authenticated|{DEMO}|agent|1"
    proc = luna(db_url, "sql", "--as", "owner@demo-2.luna.local", "-At", "-c", "select private.tenant_id()")
    assert proc.stdout.strip() == DEMO2, proc.stderr
