"""Public web chat limits (issue 10, item 7): floods of sessions and messages are refused with 429 and
Retry-After from buckets every edge process shares (private.take_token), blank and invisible-only
messages are refused with 422, and a visitor becomes a lead only with contact details or a real
message, never for opening the chat and saying hello."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from fastapi.testclient import TestClient

from .conftest import DEMO
from .test_inbox import drain

WIDGET = "demo-widget-1"
WEBCHAT_CHANNEL = "00000000-0000-4000-8006-000000000103"
URL = f"/v1/webchat/{WIDGET}/messages"


def session() -> str:
    return f"s-{uuid.uuid4()}"


def send(client, sess, text="Fiyat listesi alabilir miyim?", mid=None, **extra):
    return client.post(URL, json={"session_id": sess, "client_message_id": mid or uuid.uuid4().hex, "text": text, **extra})


def set_limits(conn, **limits):
    conn.execute("update channel_accounts set settings = settings || jsonb_build_object('limits', %s::jsonb) where id = %s",
                 (json.dumps(limits), WEBCHAT_CHANNEL))


def webchat_counts(conn) -> dict:
    return conn.execute("""
        select (select count(*) from contacts where tenant_id = %(t)s and channel = 'webchat') as contacts,
               (select count(*) from contacts where tenant_id = %(t)s and channel = 'webchat' and lead_id is not null) as leads,
               (select count(*) from leads where tenant_id = %(t)s and source = 'webchat') as lead_rows,
               (select count(*) from conversations where channel_account_id = %(c)s) as conversations,
               (select count(*) from private.inbound_events where provider = 'webchat') as events""",
                        {"t": DEMO, "c": WEBCHAT_CHANNEL}).fetchone()


def assert_429(r, limit):
    assert r.status_code == 429, r.text
    body = r.json()["error"]
    assert body["code"] == "rate_limited" and body["details"]["limit"] == limit
    assert int(r.headers["retry-after"]) >= 1 and int(r.headers["retry-after"]) == body["details"]["retry_after_s"]


SLOW = 0.01  # tokens a minute: no refill while a test runs, so counts do not depend on speed


def test_a_flood_of_new_sessions_from_one_address_is_capped(client, conn, db_url):
    set_limits(conn, new_sessions_per_address={"per_minute": SLOW})
    before = webchat_counts(conn)
    answers = [send(client, session(), "Merhaba") for _ in range(100)]
    accepted = [r for r in answers if r.status_code == 202]
    refused = [r for r in answers if r.status_code != 202]
    assert len(accepted) == 5  # the default burst of new sessions per address
    for r in refused:
        assert_429(r, "new_sessions_per_address")
    drain(db_url)
    after = webchat_counts(conn)
    assert after["contacts"] - before["contacts"] == 5
    assert after["conversations"] - before["conversations"] == 5
    assert after["leads"] == before["leads"] and after["lead_rows"] == before["lead_rows"]  # hellos make no leads


def test_new_sessions_per_widget_cap_across_addresses(conn):
    """Sessions from many addresses still meet the widget's own cap (SQL, so the address can vary)."""
    set_limits(conn, new_sessions_per_widget={"burst": 7, "per_minute": SLOW})
    results = [conn.execute("select private.webchat_receive(%s, %s, '1', 'Merhaba', client_addr => %s) as r",
                            (WIDGET, session(), f"198.51.100.{i}")).fetchone()["r"] for i in range(20)]
    assert sum(1 for r in results if "event_id" in r) == 7
    assert {r.get("refused") for r in results if "event_id" not in r} == {"new_sessions_per_widget"}
    assert all(r["retry_after_s"] >= 1 for r in results if "refused" in r)


def test_one_session_sending_300_messages_is_limited(client, conn):
    set_limits(conn, messages_per_session={"per_minute": SLOW})
    sess = session()
    answers = [send(client, sess, f"mesaj {i}") for i in range(300)]
    assert sum(1 for r in answers if r.status_code == 202) == 10  # the session's default burst
    for r in answers[10:]:
        assert_429(r, "messages_per_session")
    # a retry of a message already accepted is still answered (a no-op), never refused
    first = json.loads(answers[0].request.content)
    again = send(client, sess, first["text"], mid=first["client_message_id"])
    assert again.status_code == 202 and again.json()["duplicate"] is True


def test_messages_per_address_and_per_widget(client, conn):
    set_limits(conn, new_sessions_per_address={"burst": 1000, "per_minute": 60},
               messages_per_address={"burst": 12, "per_minute": SLOW})
    answers = [send(client, session()) for _ in range(20)]
    assert sum(1 for r in answers if r.status_code == 202) == 12
    assert_429(answers[-1], "messages_per_address")

    set_limits(conn, new_sessions_per_address={"burst": 1000, "per_minute": 60},
               messages_per_address={"burst": 1000, "per_minute": 60}, messages_per_widget={"burst": 3, "per_minute": SLOW})
    conn.execute("delete from private.rate_limits")
    answers = [send(client, session()) for _ in range(6)]
    assert [r.status_code for r in answers] == [202] * 3 + [429] * 3
    assert_429(answers[-1], "messages_per_widget")


def test_buckets_are_shared_by_every_edge_process(db_url, conn):
    """Two edge apps (two processes' worth of state) against one database draw from one bucket."""
    from edge.app import create_app

    set_limits(conn, messages_per_session={"per_minute": SLOW})
    sess = session()
    with TestClient(create_app(db_url)) as a, TestClient(create_app(db_url)) as b:
        codes = [send(c, sess, f"m{i}").status_code for i in range(10) for c in (a, b)]
    assert codes.count(202) == 10 and codes.count(429) == 10


BLANK = ["", " ", "   \t\n\r ", "\u00a0", "\u3000", "\u2002\u2003\u2009", "\u202f\u205f", "\u1680", "\u2028\u2029",
         "\u200b", "\u200b\u200c\u200d", "\u2060", "\ufeff", "\u00ad", "\u180e", "\u200e\u200f", "\u202a\u202c",
         "\u2066\u2069", "\u2061\u2064", "\u061c", "\u034f", "\ufe0f", "\U000e0020\U000e007f", "\u115f\u1160",
         "\u3164", "\uffa0", "\u2800", "\u0085", "\u0007\u001b", " \u200b \ufeff \u00ad "]


@pytest.mark.parametrize("text", BLANK)
def test_blank_and_invisible_messages_are_refused(client, conn, text):
    before = webchat_counts(conn)
    r = send(client, session(), text)
    assert r.status_code == 422, (repr(text), r.text)
    assert r.json()["error"]["code"] == "empty_message"
    assert webchat_counts(conn) == before


def test_visible_text_is_kept_and_trimmed(client, conn, db_url):
    sess = session()
    assert send(client, sess, "\u200b  Randevu almak istiyorum \ufeff\n").status_code == 202
    family = "👨\u200d👩\u200d👧"  # joiners inside an emoji are part of it
    assert send(client, session(), family).status_code == 202
    drain(db_url)
    bodies = {r["body"] for r in conn.execute(
        "select m.body from messages m join conversations v on v.id = m.conversation_id where v.channel_account_id = %s",
        (WEBCHAT_CHANNEL,)).fetchall()}
    assert "Randevu almak istiyorum" in bodies and family in bodies


def test_nul_characters_are_refused_with_a_code(client):
    r = send(client, session(), "a\x00b")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input"
    r = client.get(URL, params={"session_id": "abc\x00defghij"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input"


def test_a_lead_only_with_contact_details_or_a_real_message(client, conn, db_url):
    def lead_of(sess):
        return conn.execute("select lead_id from contacts where channel = 'webchat' and handle = %s", (sess,)).fetchone()["lead_id"]

    hello, real, contact, greetings_only = session(), session(), session(), session()
    assert send(client, hello, "Merhaba").status_code == 202
    assert send(client, real, "Selam").status_code == 202
    assert send(client, contact, "hi 👋").status_code == 202
    for i, g in enumerate(["selam!!", "İyi günler", "Merhabaaa 🙂", "GÜNAYDIN", "hello there", "sa"]):
        assert send(client, greetings_only, g, mid=f"g{i}").status_code == 202
    drain(db_url)
    for s in (hello, real, contact, greetings_only):
        assert lead_of(s) is None, s
    # the visitor asks something real: now a lead
    assert send(client, real, "Saç ekimi fiyatı nedir?").status_code == 202
    assert lead_of(real) is not None
    # the visitor leaves an e-mail: a lead with it
    assert send(client, contact, "hi", email="ziyaretci2@example.com", name="Ayşe").status_code == 202
    drain(db_url)
    lead = conn.execute("select email, source from leads where id = %s", (lead_of(contact),)).fetchone()
    assert lead["email"] == "ziyaretci2@example.com" and lead["source"] == "webchat"
    assert lead_of(hello) is None and lead_of(greetings_only) is None
    # each visitor still has their conversation
    n = conn.execute("select count(*) as n from conversations v join contacts c on c.id = v.contact_id "
                     "where c.handle = any(%s)", ([hello, real, contact, greetings_only],)).fetchone()["n"]
    assert n == 4


def test_lead_rule_is_configurable_per_widget(client, conn):
    conn.execute("update channel_accounts set settings = settings || '{\"lead_on\": \"first_message\"}' where id = %s",
                 (WEBCHAT_CHANNEL,))
    s1 = session()
    assert send(client, s1, "Merhaba").status_code == 202
    assert conn.execute("select lead_id from contacts where handle = %s", (s1,)).fetchone()["lead_id"] is not None
    conn.execute("update channel_accounts set settings = settings || '{\"lead_on\": \"contact\"}' where id = %s",
                 (WEBCHAT_CHANNEL,))
    s2 = session()
    assert send(client, s2, "Saç ekimi fiyatı nedir?").status_code == 202
    assert conn.execute("select lead_id from contacts where handle = %s", (s2,)).fetchone()["lead_id"] is None


def test_take_token_buckets(db_url):
    """The shared primitive: capacity, refusal with a wait, no token taken when refused, keys apart."""
    with psycopg.connect(db_url, autocommit=True) as a, psycopg.connect(db_url, autocommit=True) as b:
        take = "select allowed, retry_after_s from private.take_token(%s, %s::int, %s::numeric)"
        got = [(a if i % 2 else b).execute(take, ("t:one", 3, 0.5)).fetchone() for i in range(4)]
        assert [g[0] for g in got] == [True, True, True, False]
        assert got[3][1] == 2  # one token regained in 2 s at 0.5/s
        assert a.execute(take, ("t:other", 1, 0)).fetchone() == (True, 0)
        assert a.execute(take, ("t:other", 1, 0)).fetchone()[0] is False
        assert a.execute(take, ("t:off", 0, 1)).fetchone()[0] is False
        tokens = a.execute("select tokens from private.rate_limits where key = 't:one'").fetchone()[0]
        assert 0 <= tokens < 1  # the refused call took nothing
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("set role authenticated")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(take, ("t:x", 1, 1))
