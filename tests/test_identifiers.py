"""Identifiers are not text (issue 9, item 1): e-mail addresses, domains and URLs are folded
locale-independently on every path (CSV, form, CRM import, SQL), never by Turkish letter rules, and
rows stored by the old rule are repaired. Python and SQL agree on every case of one table."""

import json

import psycopg
import pytest

from luna.normalize import clean_domain, normalize_email, normalize_phone

from .conftest import DEMO, token_for

# (raw, normalised e-mail, company domain). Upper-case I must stay i, never the dotless ı.
EMAIL_CASES = [
    ("DENIZ.AKSOY@GMAIL.COM", "deniz.aksoy@gmail.com", None),
    ("  Mailto:INFO@ILKIM-MIMARLIK.COM.TR ", "info@ilkim-mimarlik.com.tr", "ilkim-mimarlik.com.tr"),
    ("Ali.VELİ@Firma.COM.TR", "ali.veli@firma.com.tr", "firma.com.tr"),
    ("SIMGE@ISIK.IO", "simge@isik.io", "isik.io"),
    ("KIRMIZI@Hotmail.COM.TR", "kirmizi@hotmail.com.tr", None),
    ("ISTANBUL@YAHOO.COM", "istanbul@yahoo.com", None),
]
DOMAIN_CASES = [
    ("HTTPS://WWW.ILKIM.COM.TR/Iletisim", "ilkim.com.tr"),
    ("SHOP.KIRMIZI.CO.UK", "kirmizi.co.uk"),
    ("http://LINKIT.IO:8080/x?I=1", "linkit.io"),
]


@pytest.mark.parametrize("raw,email,domain", EMAIL_CASES)
def test_email_fold_is_locale_independent_in_python_and_sql(conn, raw, email, domain):
    assert normalize_email(raw) == email
    assert "ı" not in (normalize_email(raw) or "")
    row = conn.execute("select private.clean_email(%s) as e, private.crm_email(%s) as c, "
                       "private.company_domain(null, %s) as d", (raw, raw, raw)).fetchone()
    assert row == {"e": email, "c": email, "d": domain}


@pytest.mark.parametrize("raw,domain", DOMAIN_CASES)
def test_domain_fold_is_locale_independent(raw, domain):
    assert clean_domain(raw) == domain


def _auth(conn, user="admin@demo.luna.local"):
    return {"Authorization": f"Bearer {token_for(conn, user)}"}


def test_upper_case_email_on_every_lead_path_matches_the_stored_person(client, conn):
    # A plain SQL insert (as Glide or an analyst writes rows) is the reference.
    conn.execute("select * from private.ingest_lead(%s, 'manual', %s)",
                 (DEMO, psycopg.types.json.Jsonb({"company_name": "Aksoy Ltd", "email": "deniz.aksoy@gmail.com"})))
    csv_body = "company_name,contact_name,email\nAksoy Ltd,Deniz Aksoy,DENIZ.AKSOY@GMAIL.COM\n"
    r = client.post("/v1/leads/import", headers={**_auth(conn), "Content-Type": "text/csv"}, content=csv_body.encode())
    assert r.status_code == 200, r.text
    assert (r.json()["inserted"], r.json()["merged"]) == (0, 1)
    r = client.post("/v1/leads", headers={"X-Form-Key": "demo-form-key-0001"},
                    json={"company_name": "Aksoy Ltd", "email": "DENIZ.AKSOY@GMAIL.COM"})
    assert r.status_code == 200 and r.json()["action"] == "merged", r.text
    leads = conn.execute("select email, domain_cleaned from leads where tenant_id = %s and email ilike 'deniz.aksoy%%'",
                         (DEMO,)).fetchall()
    assert leads == [{"email": "deniz.aksoy@gmail.com", "domain_cleaned": None}]


def test_within_one_file_the_same_person_in_other_notations_merges(client, conn):
    body = ("company_name,contact_name,email,phone\n"
            "Mavi Tekstil,Deniz Ak,deniz.ak@gmail.com,05441112299\n"
            "Mavi Tekstil,Deniz Ak,DENIZ.AK@GMAIL.COM,+90 544 111 22 99\n")
    r = client.post("/v1/leads/import", headers={**_auth(conn), "Content-Type": "text/csv"}, content=body.encode())
    assert r.status_code == 200, r.text
    assert (r.json()["inserted"], r.json()["merged"]) == (1, 1)


def test_crm_customer_import_keeps_the_address(client, conn):
    body = "ad_soyad,telefon,e_posta\nIşıl Kaya,05321239876,ISIL.KAYA@GMAIL.COM\n"
    r = client.post("/v1/crm/customers/import", content=body.encode(),
                    headers={**_auth(conn, "supervisor@demo.luna.local"), "content-type": "text/csv"})
    assert r.status_code == 200 and r.json()["inserted"] == 1, r.text
    assert conn.execute("select email from customers where full_name = 'Işıl Kaya'").fetchone()["email"] == \
        "isil.kaya@gmail.com"


def test_repair_recomputes_rows_folded_by_turkish_rules(conn):
    bad = conn.execute(
        "insert into leads (tenant_id, unique_lead_id, company_name, email, domain_cleaned, source, raw) "
        "values (%s, 'e:denız.aksoy@gmaıl.com', 'Aksoy', 'denız.aksoy@gmaıl.com', 'xn--gmal-nza.com', 'csv', %s) "
        "returning id", (DEMO, json.dumps({"csv": {"email": "DENIZ.AKSOY@GMAIL.COM"}}))).fetchone()["id"]
    changed = conn.execute("select private.repair_folded_identifiers() as n").fetchone()["n"]
    assert changed == 1
    lead = conn.execute("select email, domain_cleaned, unique_lead_id from leads where id = %s", (bad,)).fetchone()
    assert lead == {"email": "deniz.aksoy@gmail.com", "domain_cleaned": None, "unique_lead_id": "e:deniz.aksoy@gmail.com"}
    assert conn.execute("select private.repair_folded_identifiers() as n").fetchone()["n"] == 0


NAME_CASES = json.loads((__import__("pathlib").Path(__file__).parent / "cases" / "name_keys.json").read_text("utf-8"))


@pytest.mark.parametrize("raw,key", NAME_CASES)
def test_name_key_python_and_sql_agree_on_the_case_table(conn, raw, key):
    from luna.normalize import name_key

    assert name_key(raw) == key
    assert conn.execute("select private.name_key(%s) as k", (raw,)).fetchone()["k"] == key


def test_typographic_variants_of_a_company_are_one_lead(conn):
    names = ["Ayşe'nin Butiği", "Ayşe\u2019nin Butiği", "Ayşe\u2019nin\u00a0Butiği", "AYŞE'NİN  BUTİĞİ"]
    for name in names:
        conn.execute("select * from private.ingest_lead(%s, 'form', %s)",
                     (DEMO, psycopg.types.json.Jsonb({"company_name": name})))
    keys = conn.execute("select distinct unique_lead_id from leads where tenant_id = %s and company_name ilike 'ay%%butiğ%%'",
                        (DEMO,)).fetchall()
    assert keys == [{"unique_lead_id": "c:ayşe'nin butiği"}]


def test_duplicate_columns_are_coalesced_and_raw_keeps_both(client, conn):
    body = ("company_name,contact_name,email,phone,phone,city\n"
            "Deniz Balık,Deniz Ak,,,0544 111 22 77,İzmir\n"
            "Ege Balık,Ece Ak,,0532 100 20 31,0544 111 22 78,İzmir\n")
    r = client.post("/v1/leads/import", headers={**_auth(conn), "Content-Type": "text/csv"}, content=body.encode())
    assert r.status_code == 200 and r.json()["inserted"] == 2, r.text
    rows = {x["company_name"]: x for x in conn.execute(
        "select company_name, phone, raw from leads where tenant_id = %s and company_name like '%% Balık'", (DEMO,))}
    assert rows["Deniz Balık"]["phone"] == "+905441112277"
    assert rows["Deniz Balık"]["raw"]["csv"]["phone (2)"] == "0544 111 22 77"
    assert rows["Ege Balık"]["phone"] == "+905321002031"  # the first non-empty value is used
    assert rows["Ege Balık"]["raw"]["csv"] == {"company_name": "Ege Balık", "contact_name": "Ece Ak",
                                              "phone": "0532 100 20 31", "phone (2)": "0544 111 22 78", "city": "İzmir"}


# ------------------------------------------------------------------ one normaliser per identifier
CASES = json.loads((__import__("pathlib").Path(__file__).parent / "cases" / "identifiers.json").read_text("utf-8"))


def _sql_answers(conn, fn: str, args: list[tuple]) -> list:
    """One round trip for a whole column of the case table."""
    placeholders = ", ".join(["%s"] * len(args[0]))
    sql = f"select {fn}({placeholders}) as v"
    return [conn.execute(sql, a).fetchone()["v"] for a in args]


def test_phone_rule_database_and_fast_path_agree_on_the_case_table(conn):
    cases = CASES["phones"]
    sql = _sql_answers(conn, "private.clean_phone", [(raw, region) for raw, region, _ in cases])
    wrong = [(raw, region, want, got_sql, normalize_phone(raw, region))
             for (raw, region, want), got_sql in zip(cases, sql) if not (got_sql == want == normalize_phone(raw, region))]
    assert wrong == [], "(input, region, expected, database, python)"


def test_email_rule_database_and_fast_path_agree_on_the_case_table(conn):
    cases = CASES["emails"]
    sql = _sql_answers(conn, "private.clean_email", [(raw,) for raw, _ in cases])
    wrong = [(raw, want, got, normalize_email(raw)) for (raw, want), got in zip(cases, sql)
             if not (got == want == normalize_email(raw))]
    assert wrong == [], "(input, expected, database, python)"


def test_domain_rule_database_and_fast_path_agree_on_the_case_table(conn):
    cases = CASES["domains"]
    sql = _sql_answers(conn, "private.website_domain", [(raw,) for raw, _ in cases])
    wrong = [(raw, want, got, clean_domain(raw)) for (raw, want), got in zip(cases, sql)
             if not (got == want == clean_domain(raw))]
    assert wrong == [], "(input, expected, database, python)"


def test_company_domain_rule_free_mail_and_fallback(conn):
    cases = CASES["company_domains"]
    sql = _sql_answers(conn, "private.company_domain", [(w, e) for w, e, _ in cases])
    assert [(w, e, got) for (w, e, _), got in zip(cases, sql)] == [tuple(c) for c in cases]


def test_crm_and_leads_share_the_phone_rule(conn):
    for raw, region, want in CASES["phones"]:
        assert conn.execute("select private.crm_phone(%s, %s) as v", (raw, region)).fetchone()["v"] == want, raw


def test_fast_path_agrees_with_the_database_on_generated_numbers(conn):
    """Beyond the table: every region's example numbers from libphonenumber's metadata, written
    nationally and internationally, get the same answer from both."""
    import phonenumbers

    inputs = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            inputs.append((phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.INTERNATIONAL), "TR"))
            inputs.append((phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL), region))
    sql = _sql_answers(conn, "private.clean_phone", inputs)
    wrong = [(raw, region, got, normalize_phone(raw, region)) for (raw, region), got in zip(inputs, sql)
             if got != normalize_phone(raw, region)]
    assert wrong == [], "(input, region, database, python)"


async def test_a_lead_written_straight_into_the_table_is_normalised_by_the_database_rules(db_url, conn):
    """Glide or an analyst inserts a row without the ingest function: the normalize step applies the
    same rules (private.lead_identifiers at claim time), free mail included."""
    from .test_leads_pipeline import run_until, settled

    conn.execute("insert into leads (tenant_id, unique_lead_id, company_name, email, phone, website) values "
                 "(%s, 'manual:1', 'Elle Girilen', 'ELIF.SAHIN@GMAIL.COM', '0532 765 12 34', 'HTTPS://WWW.ELLE-GIRILEN.COM.TR/x')",
                 (DEMO,))
    await run_until(db_url, settled(db_url))
    lead = conn.execute("select * from leads where unique_lead_id = 'manual:1'").fetchone()
    assert (lead["email"], lead["phone"], lead["domain_cleaned"]) == (
        "elif.sahin@gmail.com", "+905327651234", "elle-girilen.com.tr")
    assert lead["validation"]["free_mail"] is True and lead["validation"]["phone_valid"] is True
