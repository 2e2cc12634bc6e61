"""CSV/spreadsheet exports never carry a live formula (OWASP "CSV injection"): every text cell that begins with
=, +, -, @, a tab or a carriage return is prefixed with a single quote, in every export path (the edge CSV
download and the SQL function behind it, which analysts and PostgREST clients call directly)."""

import csv
import io

import pytest

from .conftest import DEMO, as_user, token_for

HOSTILE = ['=HYPERLINK("http://example.invalid","Tıkla")', "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0",
           "@SUM(1+1)*cmd|' /C calc'!A0", "\t=1+2", "\r=1+2", "=1+2"]
TEXT_COLUMNS = ["full_name", "region", "source", "campaign", "utm_source", "utm_medium", "utm_campaign", "tags"]
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def plant(conn):
    ids = []
    for i, value in enumerate(HOSTILE):
        ids.append(str(conn.execute(
            "insert into customers (tenant_id, full_name, region, source, campaign, utm_source, utm_medium, "
            "utm_campaign, tags, quality_score) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) returning id",
            (DEMO, value, value, value, value, value, value, value, [value.lower()], i)).fetchone()["id"]))
    return ids


def assert_neutral(row):
    for column in TEXT_COLUMNS:
        value = row[column]
        assert value, column
        assert not value.startswith(TRIGGERS), (column, value)
        assert value.startswith("'") and value[1:] in {h for h in HOSTILE} | {h.lower() for h in HOSTILE}, (column, value)


def test_sql_export_neutralises_every_text_cell(conn):
    ids = plant(conn)
    with as_user(conn, "supervisor@demo.luna.local"):
        for mask in (False, True):
            got = {str(r["id"]): r for r in conn.execute("select * from public.crm_export_customers(%s)", (mask,))}
            for i in ids:
                row = got[i]
                for column in TEXT_COLUMNS:
                    assert not (row[column] or "").startswith(TRIGGERS), (mask, column, row[column])
                if not mask:
                    assert_neutral(row)
                assert isinstance(row["quality_score"], int)  # numbers stay numbers
    # the ordinary cells are untouched (phones are E.164 digits, not formulas)
    with as_user(conn, "supervisor@demo.luna.local"):
        ahmet = conn.execute("select * from public.crm_export_customers() where id = '00000000-0000-4000-8005-000000000101'").fetchone()
    assert ahmet["full_name"] == "Ahmet Yıldız" and ahmet["phone"] == "+905321112233"


def test_edge_csv_export_neutralises_every_text_cell(client, conn):
    ids = plant(conn)
    r = client.get("/v1/crm/customers/export", headers={"authorization": f"Bearer {token_for(conn, 'supervisor@demo.luna.local')}",
                                                         "x-forwarded-for": "127.0.0.1"})
    assert r.status_code == 200
    rows = {x["id"]: x for x in csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"), newline=""))}
    for i in ids:
        assert_neutral(rows[i])
        assert rows[i]["quality_score"].isdigit()
    assert rows["00000000-0000-4000-8005-000000000101"]["full_name"] == "Ahmet Yıldız"


@pytest.mark.parametrize("value,expected", [
    ("=1+2", "'=1+2"), ("+1", "'+1"), ("-x", "'-x"), ("@a", "'@a"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("Ahmet", "Ahmet"), ("", ""), (None, None), ("a=b", "a=b"), ("'=1", "'=1"),
])
def test_the_one_neutraliser(conn, value, expected):
    assert conn.execute("select private.csv_text(%s) as v", (value,)).fetchone()["v"] == expected
