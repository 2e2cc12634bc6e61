"""Duplicates merged without loss (issue 9, items 2, 5 and 6): one identity rule inside a batch and
against stored leads, merge vs. possible duplicate decided by the strength of the match, no value
replaced silently, every contact person kept, re-scoring, and leads kept for one bad field."""

import psycopg
import pytest

from .conftest import DEMO, token_for


def _auth(conn, user="admin@demo.luna.local"):
    return {"Authorization": f"Bearer {token_for(conn, user)}", "Content-Type": "text/csv"}


def _import(client, conn, body: str) -> dict:
    r = client.post("/v1/leads/import", headers=_auth(conn), content=body.encode())
    assert r.status_code == 200, r.text
    return r.json()


def _ingest(conn, payload, source="form"):
    return conn.execute("select * from private.ingest_lead(%s, %s, %s)",
                        (DEMO, source, psycopg.types.json.Jsonb(payload))).fetchone()


def _lead(conn, lead_id):
    return conn.execute("select * from leads where id = %s", (lead_id,)).fetchone()


HEADER = "company_name,contact_name,email,phone,website\n"


@pytest.mark.parametrize("rows", [
    # the same person in other notations (the example)
    ["Mavi Tekstil,Deniz Ak,deniz.ak@gmail.com,05441112299,", "Mavi Tekstil,Deniz Ak,DENIZ.AK@GMAIL.COM,+90 544 111 22 99,"],
    # chained through different values: e-mail links 1-2, the website links 2-3
    ["Zeytin Evi,Ali,ali@zeytinevi.com.tr,,", "Zeytin Evi,Ali,ALI@ZEYTINEVI.COM.TR,,https://www.zeytinevi.com.tr",
     "Zeytin Evi A.Ş.,Veli,,,zeytinevi.com.tr"],
    # the phone alone, nothing contradicting
    ["Kuzey Otel,Can,,0532 765 43 21,", ",,,+90 (532) 765 43 21,"],
    # the company name alone, typographic variants
    ["Ayşe'nin Butiği,,,,", "Ayşe\u2019nin  Butiği,,,,"],
])
def test_duplicates_inside_one_file_merge_like_stored_ones(client, conn, rows):
    body = _import(client, conn, HEADER + "\n".join(rows) + "\n")
    assert (body["inserted"], body["merged"], body["duplicates"]) == (1, len(rows) - 1, 0), body
    # The same rows as separate files give the same result: one lead.
    again = _import(client, conn, HEADER + rows[0] + "\n")
    assert (again["inserted"], again["merged"]) == (0, 1)


def test_same_phone_with_another_person_and_company_is_a_possible_duplicate(client, conn):
    first = _ingest(conn, {"company_name": "Acar Mobilya", "contact_name": "Mert Acar",
                           "email": "mert@acarmobilya.com.tr", "phone": "0532 100 20 30"})
    before = _lead(conn, first["lead_id"])
    body = _import(client, conn, HEADER + "Deniz Kafe,Ece Deniz,ece@denizkafe.com,+905321002030,\n")
    assert (body["inserted"], body["merged"], body["duplicates"]) == (0, 0, 1), body
    after = _lead(conn, first["lead_id"])
    for column in ("company_name", "contact_name", "email", "phone", "luna_ai_score", "processing_status"):
        assert after[column] == before[column], column
    dup = conn.execute("select * from leads where duplicate_of = %s", (first["lead_id"],)).fetchone()
    assert dup["company_name"] == "Deniz Kafe" and dup["processing_status"] == "HUMAN_REVIEW_NEEDED"
    log = conn.execute("select detail from processing_logs where lead_id = %s and action = 'possible_duplicate'",
                       (dup["id"],)).fetchone()["detail"]
    assert log["matched_on"] == "phone" and set(log["contradicts"]) == {"email", "domain", "company_name"}


def test_same_phone_contradicting_inside_one_file_is_a_possible_duplicate(client, conn):
    body = _import(client, conn, HEADER + "Kaya Hukuk,Selim,selim@kayahukuk.com,0533 111 22 33,\n"
                                          "Ege Diş,Derya,derya@egedis.com.tr,0533 111 22 33,\n")
    assert (body["inserted"], body["merged"], body["duplicates"]) == (1, 0, 1), body
    kaya = conn.execute("select id from leads where company_name = 'Kaya Hukuk'").fetchone()["id"]
    assert conn.execute("select duplicate_of from leads where company_name = 'Ege Diş'").fetchone()["duplicate_of"] == kaya


def test_merge_never_replaces_and_keeps_every_contact_person(client, conn):
    body = _import(client, conn, HEADER + "Ilgaz Yapı,Deniz Ak,deniz@ilgazyapi.com,,ilgazyapi.com\n"
                                          "Ilgaz Yapı Ltd,Ece Kara,ece@ilgazyapi.com,0532 222 33 44,\n")
    assert (body["inserted"], body["merged"]) == (1, 1), body
    lead = conn.execute("select * from leads where domain_cleaned = 'ilgazyapi.com'").fetchone()
    assert (lead["company_name"], lead["contact_name"], lead["email"]) == ("Ilgaz Yapı", "Deniz Ak", "deniz@ilgazyapi.com")
    assert lead["phone"] == "+905322223344", "an empty column is filled"
    # A later file with a third person of the same company.
    _import(client, conn, HEADER + "Ilgaz,Can Öz,can@ilgazyapi.com,,\n")
    contacts = conn.execute("select name, email, phone from lead_contacts where lead_id = %s order by created_at, name",
                            (lead["id"],)).fetchall()
    assert [c["name"] for c in contacts] == ["Ece Kara", "Can Öz"]
    assert _lead(conn, lead["id"])["contact_name"] == "Deniz Ak"
    merges = conn.execute("select detail from processing_logs where lead_id = %s and action = 'merge' order by id",
                          (lead["id"],)).fetchall()
    assert merges[-1]["detail"]["conflicts"]["company_name"] == {"kept": "Ilgaz Yapı", "offered": "Ilgaz"}
    assert merges[-1]["detail"]["offered"]["contact_name"] == "Can Öz", "what was offered stays in the merge record"
    # A later row that names a contact person's e-mail reaches the same lead.
    again = _ingest(conn, {"email": "ECE@ilgazyapi.com", "city": "Bolu"})
    assert again["lead_id"] == lead["id"] and again["action"] == "merged"


def _qualified_lead(conn) -> dict:
    lead = _ingest(conn, {"company_name": "Nar Bahçe", "email": "info@narbahce.com"})
    for status in ("NORMALIZED", "ENRICHED", "QUALIFIED"):
        conn.execute("update leads set processing_status = %s where id = %s", (status, lead["lead_id"]))
    conn.execute("update leads set luna_ai_score = 40 where id = %s", (lead["lead_id"],))
    return lead


def test_a_scored_lead_whose_qualifying_fields_are_filled_is_scored_again(client, conn):
    lead = _qualified_lead(conn)
    body = _import(client, conn, HEADER + "Nar Bahçe,Elif,info@narbahce.com,0532 909 80 70,narbahce.com\n")
    assert (body["merged"], body["rescored"]) == (1, 1), body
    row = _lead(conn, lead["lead_id"])
    assert row["processing_status"] == "RAW" and row["next_orchestrator_module"] == "normalize"
    assert row["phone"] == "+905329098070"
    # Nothing new: no re-score.
    _qualified_lead(conn)
    body = _import(client, conn, HEADER + "Nar Bahçe,,info@narbahce.com,,\n")
    assert body["rescored"] == 0


@pytest.mark.parametrize("bad", [("email", "satis@acarmobilya"), ("email", "satis@@acar.com"),
                                 ("phone", "12345"), ("website", "http://")])
def test_one_bad_field_never_costs_the_lead_on_any_path(client, conn, bad):
    field, value = bad
    good = {"company_name": "Acar Mobilya", "phone": "0532 100 20 30", "website": "acarmobilya.com.tr",
            "email": "mert@acarmobilya.com.tr"}
    row = {**good, field: value}
    # CSV
    body = _import(client, conn, "company_name,email,phone,website\n" + ",".join(row[c] for c in
                                   ("company_name", "email", "phone", "website")) + "\n")
    assert (body["inserted"], body["rejected"]) == (1, 0), body
    assert body["warnings"][0]["line"] == 2 and value in body["warnings"][0]["reason"]
    lead = conn.execute("select * from leads where company_name = 'Acar Mobilya'").fetchone()
    assert lead[field] is None and lead["raw"]["csv"][field] == value
    conn.execute("delete from leads where id = %s", (lead["id"],))
    # the web form / API
    r = client.post("/v1/leads", headers={"X-Form-Key": "demo-form-key-0001"}, json=row)
    assert r.status_code == 201, r.text
    assert [w["field"] for w in r.json()["warnings"]] == [field]
    assert _lead(conn, r.json()["lead_id"])[field] is None


def test_a_company_name_alone_is_a_lead_on_every_path(client, conn):
    body = _import(client, conn, "company_name,email\nSadece İsim Ltd,\n")
    assert (body["inserted"], body["rejected"]) == (1, 0), body
    r = client.post("/v1/leads", headers={"X-Form-Key": "demo-form-key-0001"}, json={"company_name": "Form İsim Ltd"})
    assert r.status_code == 201, r.text


def test_a_row_with_nothing_valid_is_rejected_with_its_reasons(client, conn):
    body = _import(client, conn, "company_name,email,phone\n,bozuk@,123\n")
    assert (body["inserted"], body["rejected"]) == (0, 1)
    assert body["errors"][0]["line"] == 2 and "bozuk@" in body["errors"][0]["reason"]
    r = client.post("/v1/leads", headers={"X-Form-Key": "demo-form-key-0001"}, json={"email": "bozuk@", "phone": "123"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "lead_unidentifiable"
