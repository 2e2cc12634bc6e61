"""CSV import (field mapping, errors by line) and export (RLS, masking, audit) through edge."""

import csv
import io
import json

from .conftest import DEMO, token_for


def auth(conn, user):
    # TestClient's peer is "testclient", not an address: audit.record would refuse it as x-forwarded-for.
    return {"authorization": f"Bearer {token_for(conn, user)}", "x-forwarded-for": "127.0.0.1"}


def rows(response):
    return list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))


def test_import_with_mapping_and_errors_by_line(client, conn):
    body = ("Müşteri;GSM;Mail;Geldiği Yer;Etiket\n"
            "Ali Veli;0544 123 45 67;ali@example.com;instagram;vip, sicak\n"
            "Bozuk Telefon;12;;web;\n"
            "Ahmet Tekrar;+90 532 111 22 33;;web;\n"          # Ahmet's phone: a duplicate
            ";05449998877;;web;\n"                              # no name
            "Londra;+44 20 7946 0958;london@example.co.uk;web;\n")
    mapping = {"Müşteri": "full_name", "GSM": "phone", "Mail": "email", "Geldiği Yer": "source", "Etiket": "tags"}
    r = client.post("/v1/crm/customers/import", content=body.encode(), params={"mapping": json.dumps(mapping)},
                    headers={**auth(conn, "agent@demo.luna.local"), "content-type": "text/csv"})
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["rows"] == 5 and result["inserted"] == 2 and result["skipped"] == 1
    assert [(e["line"], e["code"]) for e in result["errors"]] == [(3, "invalid_phone"), (5, "name_required")]
    ali = conn.execute("select phone, email, source, tags, responsibles from customers where full_name = 'Ali Veli'").fetchone()
    assert ali["phone"] == "+905441234567" and ali["source"] == "instagram" and ali["tags"] == ["sicak", "vip"]
    assert [str(x) for x in ali["responsibles"]] == ["00000000-0000-4000-8001-000000000014"]  # the importing agent's
    assert conn.execute("select phone from customers where full_name = 'Londra'").fetchone()["phone"] == "+442079460958"
    assert conn.execute("select 1 from audit.events where action = 'import' and resource_type = 'customers'").fetchone()
    # unknown target fields are refused up front
    bad = client.post("/v1/crm/customers/import", content=body.encode(), params={"mapping": json.dumps({"GSM": "salary"})},
                      headers={**auth(conn, "agent@demo.luna.local"), "content-type": "text/csv"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_mapping"


def test_import_by_header_names_and_viewer_refused(client, conn):
    body = "ad_soyad,telefon,e_posta,kampanya\nZehra Ak,05321239876,zehra@example.com,bahar\n"
    r = client.post("/v1/crm/customers/import", content=body.encode(), params={"on_duplicate": "update"},
                    headers={**auth(conn, "supervisor@demo.luna.local"), "content-type": "text/csv"})
    assert r.status_code == 200 and r.json()["inserted"] == 1
    assert conn.execute("select campaign from customers where email = 'zehra@example.com'").fetchone()["campaign"] == "bahar"
    r = client.post("/v1/crm/customers/import", content=body.encode(),
                    headers={**auth(conn, "viewer@demo.luna.local"), "content-type": "text/csv"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_export_respects_rls_masks_and_is_audited(client, conn):
    r = client.get("/v1/crm/customers/export", headers=auth(conn, "supervisor@demo.luna.local"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    full = rows(r)
    assert {x["full_name"] for x in full} == {"Ahmet Yıldız", "Fatma Koç", "Hakan Çınar"}  # never demo-2's
    assert any(x["phone"] == "+905321112233" for x in full)
    masked = rows(client.get("/v1/crm/customers/export", params={"mask": "true"}, headers=auth(conn, "supervisor@demo.luna.local")))
    ahmet = next(x for x in masked if x["id"] == "00000000-0000-4000-8005-000000000101")
    assert ahmet["full_name"] == "Ahmet Y." and ahmet["phone"] == "+905*******33" and ahmet["email"] == "a***@example.com"
    # agents may not export by default; with the permission and the assignee restriction they get only theirs
    assert client.get("/v1/crm/customers/export", headers=auth(conn, "agent@demo.luna.local")).status_code == 403
    conn.execute("insert into role_permissions (tenant_id, role, module, action, allowed) values (%s, 'agent', 'crm', 'export', true)", (DEMO,))
    conn.execute("update tenant_policies set agents_see_assigned_only = true where tenant_id = %s", (DEMO,))
    mine = rows(client.get("/v1/crm/customers/export", headers=auth(conn, "agent@demo.luna.local")))
    # agents lack the 'pii' export permission: masked whatever they ask
    assert [x["full_name"] for x in mine] == ["Ahmet Y."]
    events = conn.execute("select after from audit.events where action = 'export' and resource_type = 'customers' order by seq").fetchall()
    assert [(e["after"]["rows"], e["after"]["masked"]) for e in events] == [(3, False), (3, True), (1, True)]


def test_cli_board_as_a_role_sees_what_rls_allows(db_url, conn):
    from .test_cli import luna

    conn.execute("update tenant_policies set agents_see_assigned_only = true where tenant_id = %s", (DEMO,))
    board = json.loads(luna(db_url, "crm", "board", "--tenant", "demo", "--user", "agent", "--json").stdout)
    assert [c["customer_name"] for s in board["stages"] for c in s["cards"]] == ["Ahmet Yıldız"]
    assert json.loads(luna(db_url, "crm", "reminders").stdout) == {"notified": 0}
