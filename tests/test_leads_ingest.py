"""Ingestion: the one SQL ingestion function, dedupe and merge rules, the set-based bulk path,
CSV edge cases (bad rows reported by line, Windows-1254, BOM, quoted commas), re-upload."""


import psycopg
import pytest

from luna.normalize import clean_domain, normalize_email, normalize_phone, tr_title

from .conftest import DEMO, DEMO2, as_user


def ingest(conn, payload, source="form", tenant=DEMO):
    return conn.execute("select * from private.ingest_lead(%s, %s, %s)",
                        (tenant, source, psycopg.types.json.Jsonb(payload))).fetchone()


def test_normalizers(conn):
    assert normalize_phone("0532 123 45 67") == "+905321234567"
    assert normalize_phone("(212) 444 55 66") == "+902124445566"
    assert normalize_phone("202-555-0143", "US") == "+12025550143"
    assert normalize_phone("12345") is None
    assert normalize_email(" Ali.VELİ@Firma.COM.TR ") == "ali.veli@firma.com.tr"
    assert normalize_email("not-an-email@") is None
    assert clean_domain("https://www.shop.acme.com.tr/urunler?x=1") == "acme.com.tr"
    assert clean_domain("http://user@Acme.co.uk:8080") == "acme.co.uk"

    def company(website=None, email=None):
        return conn.execute("select private.company_domain(%s, %s) as d", (website, email)).fetchone()["d"]

    assert company(email="ali@gmail.com") is None
    assert company(website="gmail.com", email="x@hotmail.com.tr") is None
    assert company(email="ayse@gulusdis.com.tr") == "gulusdis.com.tr"
    assert tr_title("İSTANBUL") == "İstanbul" and tr_title("ıĞDIR") == "Iğdır"


def test_ingest_inserts_raw_and_logs(conn):
    row = ingest(conn, {"company_name": "Acme", "email": "Info@ACME.com.tr", "phone": "0532 000 11 22",
                        "website": "https://www.acme.com.tr/tr"})
    assert row["action"] == "inserted"
    lead = conn.execute("select * from leads where id = %s", (row["lead_id"],)).fetchone()
    assert lead["processing_status"] == "RAW" and lead["next_orchestrator_module"] == "normalize"
    assert lead["email"] == "info@acme.com.tr" and lead["phone"] == "+905320001122"
    assert lead["domain_cleaned"] == "acme.com.tr" and lead["unique_lead_id"] == "d:acme.com.tr"
    assert lead["raw"]["form"]["email"] == "Info@ACME.com.tr"
    log = conn.execute("select * from processing_logs where lead_id = %s", (row["lead_id"],)).fetchall()
    assert [(l["module"], l["action"], l["to_status"]) for l in log] == [("ingest", "insert", "RAW")]


def test_merge_never_blanks_and_records_changes(conn):
    first = ingest(conn, {"company_name": "Acme", "contact_name": "Ali", "email": "ali@acme.com", "city": "İzmir"})
    second = ingest(conn, {"company_name": "", "phone": "05320001122", "website": "acme.com", "city": "Izmir"},
                    source="csv")
    assert second["lead_id"] == first["lead_id"] and second["action"] == "merged"
    lead = conn.execute("select * from leads where id = %s", (first["lead_id"],)).fetchone()
    assert lead["company_name"] == "Acme" and lead["contact_name"] == "Ali"
    assert lead["phone"] == "+905320001122"
    assert lead["city"] == "İzmir", "a merge fills empty columns; it never replaces a value"
    assert set(lead["raw"]) == {"form", "csv"}
    merge = conn.execute("select detail from processing_logs where lead_id = %s and action = 'merge'",
                         (first["lead_id"],)).fetchone()["detail"]
    assert set(merge["filled"]) == {"phone", "website"}
    assert merge["conflicts"] == {"city": {"kept": "İzmir", "offered": "Izmir"}}
    assert conn.execute("select count(*) as n from leads where tenant_id = %s and company_name = 'Acme'",
                        (DEMO,)).fetchone()["n"] == 1


def test_dedupe_by_phone_and_free_mail_is_not_a_company(conn):
    a = ingest(conn, {"contact_name": "Ayşe", "email": "ayse@gmail.com", "phone": "+90 532 999 88 77"})
    b = ingest(conn, {"contact_name": "Mehmet", "email": "mehmet@gmail.com"})
    assert a["lead_id"] != b["lead_id"], "gmail.com must not join two people into one company"
    c = ingest(conn, {"company_name": "Ayşe Butik", "phone": "05329998877"}, source="inbox")
    assert c["lead_id"] == a["lead_id"]
    # the same identity in another tenant is another lead
    d = ingest(conn, {"contact_name": "Ayşe", "phone": "05329998877"}, tenant=DEMO2)
    assert d["action"] == "inserted"


def test_unidentifiable_lead_refused(conn):
    with pytest.raises(psycopg.Error) as err:
        ingest(conn, {"city": "Ankara"})
    assert err.value.sqlstate == "PT422"


def test_status_machine_refuses_skipping(conn):
    lead = ingest(conn, {"company_name": "Atla", "email": "x@atla.com"})["lead_id"]
    with pytest.raises(psycopg.Error) as err:
        conn.execute("update leads set processing_status = 'QUALIFIED' where id = %s", (lead,))
    assert err.value.sqlstate == "PT409"
    conn.execute("update leads set processing_status = 'NORMALIZED' where id = %s", (lead,))
    assert conn.execute("select next_orchestrator_module as m from leads where id = %s",
                        (lead,)).fetchone()["m"] == "enrich"


def test_rls_tenant_isolation_on_leads(conn):
    with as_user(conn, "agent@demo.luna.local", rollback=True) as cur:
        rows = cur.execute("select distinct tenant_id from leads").fetchall()
        assert [str(r["tenant_id"]) for r in rows] == [DEMO]
    with as_user(conn, "agent@demo-2.luna.local", rollback=True) as cur:
        assert cur.execute("select count(*) as n from processing_logs where tenant_id = %s", (DEMO,)).fetchone()["n"] == 0


def test_logs_and_metrics_are_read_only_for_users(conn):
    with pytest.raises(psycopg.Error) as err:
        with as_user(conn, "owner@demo.luna.local", rollback=True) as cur:
            cur.execute("insert into processing_logs (tenant_id, module, action, result) values (%s, 'x', 'y', 'ok')", (DEMO,))
    assert err.value.sqlstate == "42501"
    with as_user(conn, "owner@demo.luna.local", rollback=True) as cur:
        assert cur.execute("select count(*) as n from processing_logs").fetchone()["n"] > 0
        assert cur.execute("update system_metrics set errors = 99").rowcount == 0
        assert cur.execute("delete from processing_logs").rowcount == 0


def test_turkish_phone_fast_path_agrees_with_phonenumbers():
    import random

    import phonenumbers

    def _parse_phone(text, region):
        number = phonenumbers.parse(text, region)
        return phonenumbers.format_number(number, 0) if phonenumbers.is_valid_number(number) else None

    rng = random.Random(5)
    for _ in range(3000):
        national = rng.choice(["561", "532", "212", "444", "850", "505", "216", "599", "400"]) + \
            "".join(str(rng.randint(0, 9)) for _ in range(7))
        for written in ("0" + national, "+90 " + national, f"({national[:3]}) {national[3:]}"):
            assert normalize_phone(written) == _parse_phone("+90" + national, "TR"), written


def test_csv_decoding_and_copy_text():
    from luna.normalize import sniff_encoding
    from luna.lead_import import ImportResult, parse

    data = "Firma;E-posta;Not\n\"Tab\tve\\ters, bölü\";a@tabfirma.com;\"çok\nsatırlı\"\n".encode("cp1254")
    assert sniff_encoding(data) == "cp1254"
    result = ImportResult()
    rows = list(parse([data[:7], data[7:]], "TR", result))
    assert result.rows == 1 and rows[0][0] == 2 and rows[0][3] == "Tab ve\\ters, bölü"
    import uuid
    block = "".join(parse([data], "TR", ImportResult(), copy_batch=uuid.UUID(int=1)))
    assert block.count("\n") == 1 and "\\\\ters" in block and "\\n" in block  # escaped for COPY


def test_priority_from_source_freshness_category_and_tenant_rules(conn):
    def prio(payload, source="form"):
        lead = ingest(conn, payload, source)["lead_id"]
        return conn.execute("select current_orchestrator_priority as p from leads where id = %s", (lead,)).fetchone()["p"]

    fresh = prio({"company_name": "Taze", "email": "a@taze.com"}, "meta")
    stale = prio({"company_name": "Bayat", "email": "a@bayat.com", "created_time": "2026-01-01T10:00:00+0000"}, "meta")
    epoch = prio({"company_name": "Dün", "email": "a@dun.com", "created_time": 1000000000}, "meta")
    listed = prio({"company_name": "Liste", "email": "a@liste.com"}, "csv")
    assert fresh == 70 and stale == 50 and epoch == 50 and listed == 30
    conn.execute("update tenants set settings = '{\"leads\": {\"priority\": {\"csv\": 25}}}' where id = %s", (DEMO,))
    assert prio({"company_name": "Liste 2", "email": "a@liste2.com"}, "csv") == 55
    assert conn.execute("select private.lead_priority('form', 'HOT') as p").fetchone()["p"] == 90
