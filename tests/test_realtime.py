"""Realtime: private.broadcast reaches an authorised SSE subscriber and never an unauthorised one."""

import time

import psycopg

from .conftest import DEMO, DEMO2, SseStream, token_for


def Subscriber(base, token, topics):
    return SseStream(base, token, topics, wait_joined=False, read_timeout=30)


def test_broadcast_reaches_only_authorised_subscribers(live_server, conn, db_url):
    topic = f"tenant:{DEMO}:board"
    a = Subscriber(live_server, token_for(conn, "agent@demo.luna.local"), topic)
    mine = Subscriber(live_server, token_for(conn, "agent@demo.luna.local"), "user:00000000-0000-4000-8001-000000000014")
    b = Subscriber(live_server, token_for(conn, "owner@demo-2.luna.local"), topic)
    b_own = Subscriber(live_server, token_for(conn, "owner@demo-2.luna.local"), f"tenant:{DEMO2}:board")
    spy = Subscriber(live_server, token_for(conn, "owner@demo-2.luna.local"), "user:00000000-0000-4000-8001-000000000014")
    for s in (a, mine, b, b_own, spy):
        assert s.joined.wait(10)
    assert a.status == 200 and mine.status == 200 and b_own.status == 200
    assert b.status == 403 and b.error["error"]["code"] == "topic_forbidden"
    assert spy.status == 403

    started = time.monotonic()
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("select private.broadcast(%s, 'card_moved', '{\"card\": 1}'::jsonb)", (topic,))
        c.execute("select private.broadcast('user:00000000-0000-4000-8001-000000000014', 'notification', '{\"n\": 1}'::jsonb)")
    got = a.data(timeout=10)
    assert got["event"] == "card_moved" and got["payload"]["card"] == 1 and got["topic"] == topic
    assert time.monotonic() - started < 10
    assert mine.data(timeout=10)["payload"]["n"] == 1
    time.sleep(0.5)
    assert b_own.quiet() and a.quiet()
    for s in (a, mine, b_own):
        s.close()


def test_large_payloads_are_fetched_by_the_relay(live_server, conn, db_url):
    topic = f"tenant:{DEMO}:inbox"
    s = Subscriber(live_server, token_for(conn, "viewer@demo.luna.local"), topic)
    assert s.joined.wait(10) and s.status == 200
    big = "ş" * 9000
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("select private.broadcast(%s, 'big', jsonb_build_object('text', %s::text))", (topic, big))
    got = s.data(timeout=10)
    assert got["payload"]["text"] == big
    s.close()


def test_rls_on_realtime_messages_matches_the_relay(conn):
    """supabase-js private channels are authorised by RLS on realtime.messages: same rule."""
    from .conftest import as_user

    conn.execute("select private.broadcast(%s, 'x', '{}'::jsonb)", (f"tenant:{DEMO}:board",))
    for user, expected in (("agent@demo.luna.local", 1), ("owner@demo-2.luna.local", 0)):
        with as_user(conn, user, rollback=True) as cur:
            cur.execute("select set_config('realtime.topic', %s, true)", (f"tenant:{DEMO}:board",))
            n = cur.execute("select count(*) as n from realtime.messages where topic = %s", (f"tenant:{DEMO}:board",)).fetchone()["n"]
            assert n == expected, user
