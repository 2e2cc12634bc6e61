"""Anchors outside the database catch what the hash chain alone cannot: deleting a tenant's newest events
(truncation) and rewriting an event with every later hash recomputed (a rewrite)."""

import json
import os
import subprocess
import sys

from .conftest import DEMO
from .test_audit import tamper

KEY = "anchor-test-key-" + "k" * 32


def audit(db_url, anchor_file, *args, key=KEY):
    env = dict(os.environ, DATABASE_URL=db_url, LUNA_AUDIT_ANCHOR_FILE=str(anchor_file))
    env.pop("LUNA_AUDIT_ANCHOR_KEY", None)
    if key:
        env["LUNA_AUDIT_ANCHOR_KEY"] = key
    proc = subprocess.run([sys.executable, "-m", "luna.cli", "audit", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        out = None
    return proc.returncode, out, proc.stderr


def record(conn, n):
    for i in range(n):
        conn.execute("select audit.record(%s, 'export', 'customers', null, null, %s)", (DEMO, json.dumps({"rows": i})))


def kinds(out):
    return [p["problem"].split(":")[0] for p in out["problems"]]


def test_deleting_the_last_three_events_is_a_truncation(db_url, conn, tmp_path):
    anchors = tmp_path / "anchors.jsonl"
    record(conn, 5)
    code, out, err = audit(db_url, anchors, "anchor")
    assert code == 0, err
    assert {t["tenant_id"] for t in out["tenants"]} >= {DEMO}
    code, out, _ = audit(db_url, anchors, "verify")
    assert code == 0 and out["ok"] and out["anchors_checked"] >= 2
    # anchoring again with nothing new appends nothing
    assert audit(db_url, anchors, "anchor")[1]["anchored"] == 0

    last = conn.execute("select max(seq) as s from audit.events where tenant_id = %s", (DEMO,)).fetchone()["s"]
    tamper(conn, "delete from audit.events where tenant_id = %s and seq > %s", DEMO, last - 3)
    # the chain alone still looks intact ...
    assert conn.execute("select count(*) as n from audit.verify(%s)", (DEMO,)).fetchone()["n"] == 0
    # ... the anchor does not
    code, out, _ = audit(db_url, anchors, "verify", "--tenant", "demo")
    assert code == 1 and kinds(out) == ["truncated"]
    assert "3 event(s) gone" in out["problems"][0]["problem"]


def test_a_rewrite_with_recomputed_hashes_is_caught(db_url, conn, tmp_path):
    anchors = tmp_path / "anchors.jsonl"
    record(conn, 4)
    assert audit(db_url, anchors, "anchor")[0] == 0
    record(conn, 2)  # events after the anchor
    target = conn.execute("select max(seq) - 4 as s from audit.events where tenant_id = %s", (DEMO,)).fetchone()["s"]
    # rewrite one event and recompute its hash and every later one, the chain stays self-consistent
    tamper(conn, """
        do $$
        declare e audit.events; prev text;
        begin
          update audit.events set after = '{"rows": 999}' where tenant_id = '%s' and seq = %s;
          select hash into prev from audit.events where tenant_id = '%s' and seq = %s - 1;
          for e in select * from audit.events where tenant_id = '%s' and seq >= %s order by seq loop
            e.prev_hash := prev;
            e.hash := audit.event_hash(e);
            update audit.events set prev_hash = e.prev_hash, hash = e.hash where id = e.id;
            prev := e.hash;
          end loop;
        end $$""".replace("'%s'", "'" + DEMO + "'").replace("%s", str(target)))
    assert conn.execute("select count(*) as n from audit.verify(%s)", (DEMO,)).fetchone()["n"] == 0
    code, out, _ = audit(db_url, anchors, "verify", "--tenant", DEMO)
    assert code == 1 and kinds(out) == ["rewritten"]


def test_a_forged_or_removed_anchor_is_reported_and_the_key_is_required(db_url, conn, tmp_path):
    anchors = tmp_path / "anchors.jsonl"
    record(conn, 1)
    audit(db_url, anchors, "anchor")
    record(conn, 1)
    audit(db_url, anchors, "anchor")
    original = anchors.read_text().splitlines()
    lines = list(original)
    demo = [i for i, line in enumerate(lines) if json.loads(line)["tenant_id"] == DEMO]
    forged = json.loads(lines[demo[-1]])
    forged["seq"] -= 1  # an administrator "fixing" the anchor to match a truncated chain
    lines[demo[-1]] = json.dumps(forged)
    anchors.write_text("\n".join(lines) + "\n")
    code, out, _ = audit(db_url, anchors, "verify", "--tenant", "demo")
    assert code == 1 and kinds(out) == ["anchor forged"]
    # dropping the first anchor line breaks the link of the next one
    anchors.write_text("\n".join(line for i, line in enumerate(original) if i != demo[0]) + "\n")
    code, out, _ = audit(db_url, anchors, "verify", "--tenant", "demo")
    assert code == 1 and "anchor removed" in kinds(out)
    code, out, err = audit(db_url, anchors, "anchor", key=None)
    assert code != 0 and "LUNA_AUDIT_ANCHOR_KEY" in err
