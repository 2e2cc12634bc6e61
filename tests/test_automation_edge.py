"""Workflows through edge: the published schema, invalid definitions refused with 422, a code and the
JSON path of the error, versions, and run operations as the signed-in user (RLS)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from luna import automation

from .conftest import DEMO, token_for

ROOT = Path(__file__).resolve().parent.parent
GOOD = {"trigger": {"event": "lead.created"},
        "steps": [{"id": "bekle", "type": "delay", "hours": 24},
                  {"id": "takip", "type": "send_message", "channel": "whatsapp", "template": "takip_24s"}]}


def auth(conn, user="owner@demo.luna.local"):
    return {"authorization": f"Bearer {token_for(conn, user)}", "x-forwarded-for": "127.0.0.1"}


def test_schema_is_served_and_is_the_repository_file(client):
    r = client.get("/v1/automation/schema")
    assert r.status_code == 200
    assert r.json() == json.loads((ROOT / "luna/automation/workflow.schema.json").read_text())


def test_invalid_definitions_answer_422_with_code_and_path(client, conn):
    cases = [
        ({"trigger": {"event": "lead.created"}, "steps": [{"id": "a", "type": "teleport"}]}, "$.steps[0].type"),
        ({"trigger": {"event": "lead.created"}, "steps": [{"id": "a", "type": "delay", "hours": "yarın"}]}, "$.steps[0].hours"),
        ({"trigger": {"event": "lead.created"}, "steps": [{"id": "a", "type": "send_message"}]}, "$.steps[0]"),
        ({"trigger": {}, "steps": [{"id": "a", "type": "delay", "hours": 1}]}, "$.trigger"),
        ({"trigger": {"event": "lead.created"}, "steps": []}, "$.steps"),
        ({"trigger": {"event": "lead.created", "if": {"field": "x", "op": "like"}},
          "steps": [{"id": "a", "type": "delay", "hours": 1}]}, "$.trigger.if.op"),
        ("not an object", "$"),
    ]
    for definition, path in cases:
        for url, body in (("/v1/automation/validate", definition),
                          ("/v1/automation/workflows", {"name": "bozuk", "definition": definition})):
            r = client.post(url, json=body, headers=auth(conn))
            assert r.status_code == 422, (url, definition, r.text)
            err = r.json()["error"]
            assert err["code"] == "invalid_workflow" and err["details"]["path"] == path, (definition, err)
    assert conn.execute("select count(*) as n from public.workflows where name = 'bozuk'").fetchone()["n"] == 0
    # What the schema cannot see, the database's check refuses the same way: a branch to no step.
    dangling = {"trigger": {"event": "lead.created"}, "steps": [{"id": "a", "type": "delay", "hours": 1, "next": "yok"}]}
    r = client.post("/v1/automation/workflows", json={"name": "dangling", "definition": dangling}, headers=auth(conn))
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_workflow"
    assert r.json()["error"]["details"]["path"] == "$.steps[0].next"
    assert conn.execute("select count(*) as n from public.workflows where name = 'dangling'").fetchone()["n"] == 0


def test_create_version_activate_and_operate_runs(client, conn):
    r = client.post("/v1/automation/workflows", json={"name": "Takip", "definition": GOOD, "activate": True},
                    headers=auth(conn))
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    assert r.json() == {"id": wid, "version": 1, "status": "active"}
    changed = json.loads(json.dumps(GOOD))
    changed["steps"][0]["hours"] = 48
    r = client.post(f"/v1/automation/workflows/{wid}/versions", json={"definition": changed}, headers=auth(conn))
    assert r.status_code == 201 and r.json()["version"] == 2
    listed = client.get("/v1/automation/workflows", headers=auth(conn, "viewer@demo.luna.local")).json()["workflows"]
    assert any(w["id"] == wid and w["current_version"] == 2 for w in listed)
    # Agents read but may not save workflows (automation manage).
    r = client.post("/v1/automation/workflows", json={"name": "agent", "definition": GOOD}, headers=auth(conn, "agent@demo.luna.local"))
    assert r.status_code == 403
    # A run, paused and cancelled through edge; another tenant does not find it.
    run = conn.execute("insert into public.workflow_runs (tenant_id, workflow_id, version) values (%s, %s, 2) returning id",
                       (DEMO, wid)).fetchone()["id"]
    assert client.post(f"/v1/automation/runs/{run}/pause", headers=auth(conn, "agent@demo.luna.local")).json()["status"] == "paused"
    assert client.post(f"/v1/automation/runs/{run}/pause", headers=auth(conn)).status_code == 409
    assert client.get(f"/v1/automation/runs/{run}", headers=auth(conn, "owner@demo-2.luna.local")).status_code == 404
    assert client.post(f"/v1/automation/runs/{run}/cancel", headers=auth(conn, "owner@demo-2.luna.local")).status_code == 404
    assert client.post(f"/v1/automation/runs/{run}/cancel", headers=auth(conn)).json()["status"] == "cancelled"
    got = client.get(f"/v1/automation/runs/{run}", headers=auth(conn, "viewer@demo.luna.local")).json()
    assert got["run"]["status"] == "cancelled" and got["history"] == []


def test_python_validator_paths():
    try:
        automation.validate({"trigger": {"event": "lead.created"}, "steps": [{"id": "end", "type": "delay", "hours": 1}]})
    except automation.WorkflowInvalid as exc:
        assert exc.path == "$.steps[0].id"
    else:
        raise AssertionError("the reserved id 'end' was accepted")


def test_signature_helper_round_trip():
    sig = automation.sign("s3cret", "1700000000", b'{"a":1}')
    assert sig.startswith("sha256=") and automation.verify("s3cret", "1700000000", b'{"a":1}', sig)
    assert not automation.verify("other", "1700000000", b'{"a":1}', sig)


def test_cli_list_show_validate(db_url, conn, tmp_path):
    from .test_cli import luna

    listed = json.loads(luna(db_url, "automation", "list", "--tenant", "demo", "--json").stdout)["workflows"]
    assert [w["name"] for w in listed] == ["Lead takibi (T+24 saat)"] and listed[0]["runs"] == 1
    shown = json.loads(luna(db_url, "automation", "show", "00000000-0000-4000-8012-000000000121", "--json").stdout)
    assert shown["run"]["status"] == "exited" and [s["step_key"] for s in shown["history"]] == ["bekle", "takip"]
    assert "takip" in luna(db_url, "automation", "show", "00000000-0000-4000-8012-000000000121").stdout
    missing = luna(db_url, "automation", "show", "00000000-0000-4000-8012-000000000999", check=False)
    assert missing.returncode == 1 and "no run" in missing.stderr
    good = tmp_path / "good.json"
    good.write_text(json.dumps(GOOD))
    assert "valid" in luna(db_url, "automation", "validate", str(good)).stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"trigger": {"event": "lead.created"}, "steps": [{"id": "a", "type": "delay"}]}))
    out = luna(db_url, "automation", "validate", str(bad), "--offline", check=False)
    assert out.returncode == 1 and "invalid_workflow at $.steps[0]" in out.stderr
    dangling = tmp_path / "dangling.json"
    dangling.write_text(json.dumps({"trigger": {"event": "x.y"}, "steps": [{"id": "a", "type": "delay", "hours": 1, "next": "b"}]}))
    out = luna(db_url, "automation", "validate", str(dangling), check=False)
    assert out.returncode == 1 and "$.steps[0].next" in out.stderr
