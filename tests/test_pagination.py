"""Every list an RPC returns is bounded and walks with a keyset cursor (issue 10, item 8): the customer
viewer's lists (notes, timeline, cards, activities, reminders, messages, ...), the board's cards per stage,
the inbox's conversation list and a conversation's messages. Walking a cursor returns every row exactly
once, in the list's order, ties included (rows with one timestamp are told apart by id)."""

import base64
import json

import psycopg
import pytest
from psycopg.types.json import Jsonb

from .conftest import DEMO, as_user

AGENT_EMAIL = "agent@demo.luna.local"
OWNER_EMAIL = "owner@demo.luna.local"
AHMET = "00000000-0000-4000-8005-000000000101"   # agent's customer
WA_CHANNEL = "00000000-0000-4000-8006-000000000101"
AGENT = "00000000-0000-4000-8001-000000000014"


def refused(exc_info, code, state="PT422"):
    e = exc_info.value
    assert e.sqlstate == state, (e.sqlstate, str(e))
    assert e.diag.message_detail == f"code={code}", e.diag.message_detail


def walk(cur, sql, args, page_of, max_pages=10_000):
    """Follow next_cursor from the first page (cursor null) to the end; returns (items, pages)."""
    items, cursor, pages = [], None, 0
    while True:
        page = page_of(cur.execute(sql, (*args, cursor)).fetchone()["p"])
        items += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return items, pages
        assert pages < max_pages, "the cursor never ends"


def _page_walk(cur, customer, list_name, limit, channel):
    items, cursor, pages = [], None, 0
    while True:
        p = cur.execute("select public.customer_page(%s, %s, %s, %s, %s) as p",
                        (customer, list_name, cursor, limit, channel)).fetchone()["p"]
        assert len(p["items"]) <= limit
        items += p["items"]
        pages += 1
        cursor = p["next_cursor"]
        if cursor is None:
            return items, pages
        assert pages < 10_000


# --------------------------------------------------------------------------------------------- notes


def test_viewer_with_10001_notes_is_bounded_and_the_cursor_walks_every_note_once_in_order(conn):
    # 10,001 notes; many share a created_at (ties broken by id) and some are pinned (listed first).
    conn.execute("""insert into public.notes (tenant_id, customer_id, body, pinned, created_at)
                    select %s, %s, 'not ' || i || ' ' || repeat('x', 200), i %% 997 = 0,
                           timestamptz '2026-01-01' + (i / 7) * interval '1 second'
                    from generate_series(1, 10001) i""", (DEMO, AHMET))
    expected = [str(r["id"]) for r in conn.execute(
        "select id from public.notes where customer_id = %s order by pinned desc, created_at desc, id desc", (AHMET,))]
    assert len(expected) >= 10001
    with as_user(conn, AGENT_EMAIL) as cur:
        v = cur.execute("select public.customer_viewer(%s) as v", (AHMET,)).fetchone()["v"]
        size = len(json.dumps(v))
        assert len(v["notes"]) == 50
        assert [n["id"] for n in v["notes"]] == expected[:50]
        assert size < 300_000, size                    # today: 3.1 MB
        assert v["next_cursor"]["notes"]
        assert len(v["timeline"]) <= 200               # each note also wrote a timeline event
        # Walk on from the viewer's cursor, then from scratch: every note once, in order.
        rest, _ = [], None
        cursor = v["next_cursor"]["notes"]
        while cursor:
            p = cur.execute("select public.customer_page(%s, 'notes', %s, 200) as p", (AHMET, cursor)).fetchone()["p"]
            rest += p["items"]
            cursor = p["next_cursor"]
        assert [n["id"] for n in v["notes"] + rest] == expected
        items, pages = _page_walk(cur, AHMET, "notes", 200, None)
    ids = [n["id"] for n in items]
    assert ids == expected and len(set(ids)) == len(ids)
    assert pages == -(-len(expected) // 200)
    assert "tenant_id" not in items[0] and "_k" not in items[0]


def test_page_size_has_a_hard_maximum(conn):
    conn.execute("""insert into public.notes (tenant_id, customer_id, body) select %s, %s, 'n' || i
                    from generate_series(1, 450) i""", (DEMO, AHMET))
    with as_user(conn, AGENT_EMAIL) as cur:
        for asked in (201, 100000):
            p = cur.execute("select public.customer_page(%s, 'notes', null, %s) as p", (AHMET, asked)).fetchone()["p"]
            assert len(p["items"]) == 200 and p["next_cursor"]
        v = cur.execute("select public.customer_viewer(%s, 100000) as v", (AHMET,)).fetchone()["v"]
        assert len(v["timeline"]) == 200 and v["next_cursor"]["timeline"]
        p = cur.execute("select public.customer_page(%s, 'notes', null, 0) as p", (AHMET,)).fetchone()["p"]
        assert len(p["items"]) == 1


# --------------------------------------------------------------------------------------------- every list of the viewer


def test_every_list_of_the_viewer_is_bounded_and_walks(conn):
    n = 130
    call = conn.execute("select id from activity_types where tenant_id = %s and key = 'call'", (DEMO,)).fetchone()["id"]
    appt = conn.execute("select id from activity_types where tenant_id = %s and key = 'appointment'", (DEMO,)).fetchone()["id"]
    stage = conn.execute("""select s.id, s.pipeline_id from pipeline_stages s join pipelines p on p.id = s.pipeline_id
                            where p.tenant_id = %s and p.is_default order by s.position limit 1""", (DEMO,)).fetchone()
    same = "timestamptz '2026-02-01' + (i / 4) * interval '1 minute'"
    conn.execute(f"""insert into public.activities (tenant_id, customer_id, type_id, title, created_at)
                     select %s, %s, %s, 'arama ' || i, {same} from generate_series(1, {n}) i""", (DEMO, AHMET, call))
    conn.execute(f"""insert into public.activities (tenant_id, customer_id, type_id, title, scheduled_at)
                     select %s, %s, %s, 'randevu ' || i, case when i %% 10 = 0 then null else {same} end
                     from generate_series(1, {n}) i""", (DEMO, AHMET, appt))
    conn.execute(f"""insert into public.reminders (tenant_id, customer_id, owner_id, title, due_at)
                     select %s, %s, %s, 'hatırlat ' || i, {same} from generate_series(1, {n}) i""", (DEMO, AHMET, AGENT))
    conn.execute(f"""insert into public.cards (tenant_id, pipeline_id, stage_id, customer_id, title, created_at)
                     select %s, %s, %s, %s, 'kart ' || i, {same} from generate_series(1, {n}) i""",
                 (DEMO, stage["pipeline_id"], stage["id"], AHMET))
    conn.execute(f"""insert into public.timeline_events (tenant_id, customer_id, event_type, occurred_at)
                     select %s, %s, 'note_added', {same} from generate_series(1, {n}) i""", (DEMO, AHMET))
    conn.execute(f"""insert into public.work_orders (tenant_id, customer_id, title, created_at)
                     select %s, %s, 'iş ' || i, {same} from generate_series(1, {n}) i""", (DEMO, AHMET))
    expected = {
        "activities": "select a.id from activities a where customer_id = %s order by created_at desc, id desc",
        "appointments": """select a.id from activities a join activity_types t on t.id = a.type_id where customer_id = %s
                           and t.key = 'appointment' order by coalesce(scheduled_at, 'infinity'), a.id""",
        "reminders": "select id from reminders where customer_id = %s order by due_at, id",
        "cards": "select id from cards where customer_id = %s order by created_at, id",
        "timeline": "select id from timeline_events where customer_id = %s order by occurred_at desc, id desc",
        "work_orders": "select id from work_orders where customer_id = %s order by created_at desc, id desc",
    }
    with as_user(conn, AGENT_EMAIL) as cur:
        v = cur.execute("select public.customer_viewer(%s, 50) as v", (AHMET,)).fetchone()["v"]
        for name, sql in expected.items():
            want = [str(r["id"]) for r in cur.execute(sql, (AHMET,))]
            assert len(want) > 100, name
            assert len(v[name]) == 50 and v["next_cursor"][name], name
            assert [x["id"] for x in v[name]] == want[:50], name
            items, _ = _page_walk(cur, AHMET, name, 37, None)
            assert [x["id"] for x in items] == want, name
        for name in ("notes", "inventory", "merges"):
            assert name in v["next_cursor"]


def test_cursors_are_checked(conn):
    stage = str(conn.execute("select s.id from pipeline_stages s join pipelines p on p.id = s.pipeline_id "
                                 "where p.tenant_id = %s and p.is_default limit 1", (DEMO,)).fetchone()["id"])
    conn.execute("insert into public.notes (tenant_id, customer_id, body) select %s, %s, 'n' || i from generate_series(1, 3) i",
                 (DEMO, AHMET))
    with as_user(conn, AGENT_EMAIL) as cur:
        notes_cursor = cur.execute("select public.customer_page(%s, 'notes', null, 1) as p", (AHMET,)).fetchone()["p"]["next_cursor"]
    assert notes_cursor
    for bad, list_name, code in (("not-a-cursor", "notes", "invalid_cursor"), ("", "notes", "invalid_cursor"),
                                 (notes_cursor, "timeline", "invalid_cursor"), (notes_cursor + "x", "notes", "invalid_cursor"),
                                 (None, "everything", "unknown_list"), (None, "messages", "channel_required")):
        with pytest.raises(psycopg.Error) as e, as_user(conn, AGENT_EMAIL) as cur:
            cur.execute("select public.customer_page(%s, %s, %s, 10) as p", (AHMET, list_name, bad))
        refused(e, code)
    # forged cursors (keys of the wrong type, missing, null; not an object) are refused, not a 500
    for payload in ({"l": "notes", "c": None, "k": ["x", "y", "z"]}, {"l": "notes", "c": None},
                    {"l": "notes", "c": None, "k": []}, {"l": "notes", "c": None, "k": [None, None, None]},
                    {"l": "notes", "c": None, "k": "abc"}, ["notes"], 5):
        forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
        for sql, args in (("select public.customer_page(%s, 'notes', %s, 10) as p", (AHMET, forged)),
                          ("select public.inbox_conversations('{}', %s, 10) as p", (forged,)),
                          ("select public.conversation_messages('00000000-0000-4000-8006-000000000131', %s, 10) as p", (forged,)),
                          ("select public.crm_board_page((select pipeline_id from pipeline_stages where id = %s), %s, %s) as p",
                           (stage, stage, forged))):
            with pytest.raises(psycopg.Error) as e, as_user(conn, AGENT_EMAIL) as cur:
                cur.execute(sql, args)
            refused(e, "invalid_cursor")


# --------------------------------------------------------------------------------------------- messages


def _conversation(conn, contact_handle, customer=None, assignee=AGENT):
    contact = conn.execute("""insert into public.contacts (tenant_id, channel, handle, display_name, customer_id)
                              values (%s, 'whatsapp', %s, 'Sayfa Test', %s) returning id""",
                           (DEMO, contact_handle, customer)).fetchone()["id"]
    return conn.execute("""insert into public.conversations (tenant_id, channel_account_id, contact_id, assignee_id, last_message_at)
                           values (%s, %s, %s, %s, now()) returning id""", (DEMO, WA_CHANNEL, contact, assignee)).fetchone()["id"]


def _messages(conn, conv, n, start="2026-03-01"):
    conn.execute("""insert into public.messages (tenant_id, conversation_id, direction, type, body, status, created_at)
                    select %s, %s, case when i %% 9 = 0 then 'internal' when i %% 2 = 0 then 'outbound' else 'inbound' end,
                           case when i %% 9 = 0 then 'note' else 'text' end, 'mesaj ' || i,
                           case when i %% 9 = 0 then 'note' when i %% 2 = 0 then 'sent' else 'received' end,
                           %s::timestamptz + (i / 5) * interval '1 second'
                    from generate_series(1, %s) i""", (DEMO, conv, start, n))


def test_customer_messages_per_channel_are_bounded_and_walk(conn):
    # Two conversations on one channel: the bound is per channel, not per conversation.
    a = _conversation(conn, "905550000001", AHMET)
    b = _conversation(conn, "905550000002", AHMET)
    _messages(conn, a, 90)
    _messages(conn, b, 90, "2026-03-01 00:00:03")
    with as_user(conn, AGENT_EMAIL) as cur:
        want = [str(r["id"]) for r in cur.execute(
            """select m.id from messages m join conversations v on v.id = m.conversation_id join contacts ct on ct.id = v.contact_id
               where ct.customer_id = %s and ct.channel = 'whatsapp' and m.direction <> 'internal'
               order by m.created_at desc, m.id desc""", (AHMET,))]
        assert len(want) == 160
        v = cur.execute("select public.customer_viewer(%s) as v", (AHMET,)).fetchone()["v"]
        shown = v["messages"]["whatsapp"]
        assert [m["id"] for m in shown] == want[:50]
        cursor = v["next_cursor"]["messages"]["whatsapp"]
        rest = []
        while cursor:
            p = cur.execute("select public.customer_page(%s, 'messages', %s, 25, 'whatsapp') as p", (AHMET, cursor)).fetchone()["p"]
            assert len(p["items"]) <= 25
            rest += p["items"]
            cursor = p["next_cursor"]
        assert [m["id"] for m in shown + rest] == want
        items, _ = _page_walk(cur, AHMET, "messages", 30, "whatsapp")
        assert [m["id"] for m in items] == want
        with pytest.raises(psycopg.Error) as e:
            cur.execute("select public.customer_page(%s, 'messages', %s, 25, 'email')",
                        (AHMET, v["next_cursor"]["messages"]["whatsapp"]))
        refused(e, "invalid_cursor")
    history = conn.execute("select private.inbox_customer_messages(%s, 50) as h", (AHMET,)).fetchone()["h"]
    assert len(history["whatsapp"]) == 50


def test_conversation_messages_walk_newest_first_with_notes(conn):
    conv = _conversation(conn, "905550000003", AHMET)
    _messages(conn, conv, 333)
    with as_user(conn, AGENT_EMAIL) as cur:
        want = [str(r["id"]) for r in cur.execute(
            "select id from messages where conversation_id = %s order by created_at desc, id desc", (conv,))]
        items, pages = walk(cur, "select public.conversation_messages(%s, %s, 40) as p", (conv,), lambda p: p)
        first = cur.execute("select public.conversation_messages(%s, null, 100000) as p", (conv,)).fetchone()["p"]
    assert [m["id"] for m in items] == want and len(want) == 333 and pages == 9
    assert any(m["direction"] == "internal" for m in items)
    assert "payload" not in items[0] and "tenant_id" not in items[0]
    assert len(first["items"]) == 200 and first["next_cursor"]
    # another conversation's cursor, or a conversation the caller may not see
    other = _conversation(conn, "905550000004", AHMET)
    with pytest.raises(psycopg.Error) as e, as_user(conn, AGENT_EMAIL) as cur:
        cur.execute("select public.conversation_messages(%s, %s, 40)", (other, first["next_cursor"]))
    refused(e, "invalid_cursor")
    with pytest.raises(psycopg.Error) as e, as_user(conn, "owner@demo-2.luna.local") as cur:
        cur.execute("select public.conversation_messages(%s)", (conv,))
    assert e.value.sqlstate == "P0002"


# --------------------------------------------------------------------------------------------- conversations


def test_conversation_list_walks_every_visible_conversation_once(conn):
    for i in range(130):
        _conversation(conn, f"9055510{i:05d}", None, AGENT if i % 3 else None)
    # ties on last_message_at, and conversations with none
    conn.execute("update public.conversations set last_message_at = case when random() < 0.1 then null "
                 "else timestamptz '2026-04-01' + (abs(hashtext(id::text)) %% 20) * interval '1 minute' end "
                 "where tenant_id = %s", (DEMO,))
    for user in (OWNER_EMAIL, AGENT_EMAIL):
        with as_user(conn, user) as cur:
            want = [str(r["id"]) for r in cur.execute(
                "select id from inbox_conversation_list order by coalesce(last_message_at, '-infinity') desc, id desc")]
            items, _ = walk(cur, "select public.inbox_conversations('{}', %s, 17) as p", (), lambda p: p)
            first = cur.execute("select public.inbox_conversations('{}', null, 100000) as p").fetchone()["p"]
            assigned = [str(r["id"]) for r in cur.execute(
                "select id from inbox_conversation_list where assignee_id = %s "
                "order by coalesce(last_message_at, '-infinity') desc, id desc", (AGENT,))]
            mine, _ = walk(cur, "select public.inbox_conversations(%s, %s, 11) as p", (Jsonb({"assignee_id": AGENT}),), lambda p: p)
        assert [c["id"] for c in items] == want and len(want) >= 80, user
        assert len(first["items"]) == min(200, len(want))
        assert [c["id"] for c in mine] == assigned
        assert {"unread", "window_open", "display_name"} <= set(items[0])
    with pytest.raises(psycopg.Error) as e, as_user(conn, OWNER_EMAIL) as cur:
        cursor = cur.execute("select public.inbox_conversations('{}', null, 5) as p").fetchone()["p"]["next_cursor"]
        cur.execute("select public.inbox_conversations(%s, %s, 5)", (Jsonb({"status": "open"}), cursor))
    refused(e, "invalid_cursor")


# --------------------------------------------------------------------------------------------- board


def test_board_cards_per_stage_are_bounded_and_each_stage_walks(conn):
    stage = conn.execute("""select s.id, s.pipeline_id from pipeline_stages s join pipelines p on p.id = s.pipeline_id
                            where p.tenant_id = %s and p.is_default order by s.position limit 1""", (DEMO,)).fetchone()
    # 620 cards, positions with ties (told apart by created_at, then id), 1/3 of them with another owner
    conn.execute("""insert into public.cards (tenant_id, pipeline_id, stage_id, customer_id, title, position, created_at)
                    select %s, %s, %s, %s, 'kart ' || i, (i / 6)::double precision / 3, timestamptz '2026-05-01' + (i %% 4) * interval '1 hour'
                    from generate_series(1, 620) i""", (DEMO, stage["pipeline_id"], stage["id"], AHMET))
    with as_user(conn, OWNER_EMAIL) as cur:
        want = [str(r["id"]) for r in cur.execute(
            "select id from cards where stage_id = %s order by position, created_at, id", (stage["id"],))]
        board = cur.execute("select public.crm_board(%s, '{}', 100000) as b", (stage["pipeline_id"],)).fetchone()["b"]
        st = next(s for s in board["stages"] if s["id"] == str(stage["id"]))
        assert st["count"] == len(want) > 620 - 1 and len(st["cards"]) == 500 and st["next_cursor"]
        assert all(s["next_cursor"] is None for s in board["stages"] if s["count"] <= 500)
        assert [c["id"] for c in st["cards"]] == want[:500]
        small = cur.execute("select public.crm_board(%s) as b", (stage["pipeline_id"],)).fetchone()["b"]
        assert len(next(s for s in small["stages"] if s["id"] == str(stage["id"]))["cards"]) == 500
        items, pages = [], 0
        cursor = None
        while True:
            p = cur.execute("select public.crm_board_page(%s, %s, %s, '{}', 64) as p",
                            (stage["pipeline_id"], stage["id"], cursor)).fetchone()["p"]
            assert p["id"] == str(stage["id"]) and p["count"] == len(want) and len(p["cards"]) <= 64
            items += p["cards"]
            pages += 1
            cursor = p["next_cursor"]
            if not cursor:
                break
        assert [c["id"] for c in items] == want and pages == -(-len(want) // 64)
        # the board's own cursor continues where the board stopped
        p = cur.execute("select public.crm_board_page(%s, %s, %s, '{}', 500) as p",
                        (stage["pipeline_id"], stage["id"], st["next_cursor"])).fetchone()["p"]
        assert [c["id"] for c in p["cards"]] == want[500:] and p["next_cursor"] is None
        other = next(s for s in board["stages"] if s["id"] != str(stage["id"]))
    with pytest.raises(psycopg.Error) as e, as_user(conn, OWNER_EMAIL) as cur:
        cur.execute("select public.crm_board_page(%s, %s, %s)", (stage["pipeline_id"], other["id"], st["next_cursor"]))
    refused(e, "invalid_cursor")
    with pytest.raises(psycopg.Error) as e, as_user(conn, OWNER_EMAIL) as cur:
        cur.execute("select public.crm_board(%s, %s)", (stage["pipeline_id"], Jsonb({"stage": "x"})))
    refused(e, "invalid_filter")
