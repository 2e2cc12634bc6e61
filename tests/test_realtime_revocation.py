"""Realtime access re-checked after the join (issue 10, item 13): a stream stops delivering a topic the
moment its reader may no longer join it — role changed, membership deactivated, assignment removed,
tenant policy switched on — and says why (`revoked`, or `closed` when nothing is left); a stream whose
token expires is closed with `token_expired`. The event that would have leaked is never delivered."""

from __future__ import annotations

import pytest

from .conftest import DEMO, SseStream, as_user, token_for

AHMET = "00000000-0000-4000-8005-000000000101"
FATMA = "00000000-0000-4000-8005-000000000102"
CARD_AHMET = "00000000-0000-4000-8005-000000000501"
LEAKY = {"card_moved", "card_updated", "customer_updated", "conversation_updated", "message_created", "notification"}


Stream = SseStream


def policy(conn, on: bool):
    conn.execute("update tenant_policies set agents_see_assigned_only = %s where tenant_id = %s", (on, DEMO))


def uid(conn, email):
    return str(conn.execute("select id from auth.users where email = %s", (email,)).fetchone()["id"])


def leaks(stream: Stream, topic: str) -> list:
    return [(e, d) for e, d in stream.seen if e in LEAKY and d.get("topic") == topic]


def touch_ahmet(conn):
    """A card move and a customer change on Ahmet's topic (as the supervisor, who always sees them)."""
    pipeline = conn.execute("select id from pipelines where tenant_id = %s and is_default", (DEMO,)).fetchone()["id"]
    stage = conn.execute("select id from pipeline_stages where pipeline_id = %s and name = 'Görüşülüyor'",
                         (pipeline,)).fetchone()["id"]
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        cur.execute("select public.move_card(%s, %s)", (CARD_AHMET, stage))
        cur.execute("update customers set quality_score = coalesce(quality_score, 0) + 1, phone = '+905321119999' where id = %s",
                    (AHMET,))


@pytest.fixture
def witness(live_server, conn):
    """The owner on Ahmet's topic: proves the events were sent."""
    s = Stream(live_server, token_for(conn, "owner@demo.luna.local"), f"tenant:{DEMO}:customer:{AHMET}")
    yield s
    s.close()


def assert_sent(witness):
    assert {witness.until("card_moved")[0], witness.until("customer_updated")[0]} == {"card_moved", "customer_updated"}


def test_tenant_policy_switched_on(live_server, conn, witness):
    topic = f"tenant:{DEMO}:customer:{AHMET}"
    policy(conn, False)
    s = Stream(live_server, token_for(conn, "agent2@demo.luna.local"), topic)
    assert s.status == 200  # agent2 sees every customer while the policy is off
    policy(conn, True)
    touch_ahmet(conn)
    assert_sent(witness)
    seen = s.rest()
    assert seen[-1] == ("closed", {"reason": "topic_forbidden", "topics": [topic]})
    assert leaks(s, topic) == []
    # and a fresh join is refused, as before
    again = Stream(live_server, token_for(conn, "agent2@demo.luna.local"), topic)
    assert again.status == 403


def test_role_changed(live_server, conn, witness):
    topic = f"tenant:{DEMO}:customer:{AHMET}"
    policy(conn, True)
    sup = uid(conn, "supervisor@demo.luna.local")
    assert sup not in [str(x) for x in conn.execute("select responsibles from customers where id = %s",
                                                    (AHMET,)).fetchone()["responsibles"]]
    s = Stream(live_server, token_for(conn, "supervisor@demo.luna.local"), topic)
    assert s.status == 200
    conn.execute("update tenant_members set role = 'agent' where user_id = %s and tenant_id = %s", (sup, DEMO))
    with as_user(conn, "owner@demo.luna.local") as cur:
        cur.execute("update customers set quality_score = coalesce(quality_score, 0) + 1 where id = %s", (AHMET,))
    witness.until("customer_updated")
    assert s.rest()[-1] == ("closed", {"reason": "topic_forbidden", "topics": [topic]})
    assert leaks(s, topic) == []


def test_membership_deactivated_ends_every_topic(live_server, conn, witness):
    policy(conn, False)
    agent = uid(conn, "agent@demo.luna.local")
    topics = [f"tenant:{DEMO}:customer:{AHMET}", f"user:{agent}"]
    s = Stream(live_server, token_for(conn, "agent@demo.luna.local"), ",".join(topics))
    assert s.status == 200
    conn.execute("update tenant_members set active = false where user_id = %s and tenant_id = %s", (agent, DEMO))
    touch_ahmet(conn)
    assert_sent(witness)
    assert s.rest()[-1] == ("closed", {"reason": "membership_revoked", "topics": sorted(topics)})
    assert leaks(s, topics[0]) == []


def test_assignment_removed(live_server, conn, witness):
    topic = f"tenant:{DEMO}:customer:{AHMET}"
    policy(conn, True)
    agent = uid(conn, "agent@demo.luna.local")
    conn.execute("update customers set responsibles = array[%s::uuid] where id = %s", (agent, AHMET))
    s = Stream(live_server, token_for(conn, "agent@demo.luna.local"), topic)
    assert s.status == 200
    # the supervisor hands Ahmet to agent2: that change is itself an event on Ahmet's topic
    agent2 = uid(conn, "agent2@demo.luna.local")
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        cur.execute("update customers set responsibles = array[%s::uuid] where id = %s", (agent2, AHMET))
    witness.until("customer_updated")
    touch_ahmet(conn)
    assert_sent(witness)
    assert s.rest()[-1] == ("closed", {"reason": "topic_forbidden", "topics": [topic]})
    assert leaks(s, topic) == []


def test_one_revoked_topic_leaves_the_others_streaming(live_server, conn, witness):
    policy(conn, False)
    agent = uid(conn, "agent@demo.luna.local")
    conn.execute("update customers set responsibles = array[%s::uuid] where id = %s", (agent, AHMET))
    conn.execute("update customers set responsibles = '{}' where id = %s", (FATMA,))
    mine, other = f"tenant:{DEMO}:customer:{AHMET}", f"tenant:{DEMO}:customer:{FATMA}"
    s = Stream(live_server, token_for(conn, "agent@demo.luna.local"), f"{mine},{other}")
    policy(conn, True)
    with as_user(conn, "owner@demo.luna.local") as cur:
        cur.execute("update customers set quality_score = 11 where id = %s", (FATMA,))
        cur.execute("update customers set quality_score = 12 where id = %s", (AHMET,))
    assert s.until("revoked")[1] == {"topics": [other], "reason": "topic_forbidden"}
    event, data = s.until("customer_updated")
    assert data["topic"] == mine and data["payload"]["customer"]["quality_score"] == 12
    assert leaks(s, other) == []
    assert not s.ended.is_set()
    s.close()


def test_inbox_conversation_reassigned(live_server, conn):
    """The inbox guard is re-checked too: a conversation handed to someone else stops streaming."""
    policy(conn, True)
    agent, agent2 = uid(conn, "agent@demo.luna.local"), uid(conn, "agent2@demo.luna.local")
    conv = conn.execute("select id from conversations where tenant_id = %s order by created_at limit 1", (DEMO,)).fetchone()
    if conv is None:
        pytest.skip("no seeded conversation")
    conv = str(conv["id"])
    conn.execute("update conversations set assignee_id = %s where id = %s", (agent, conv))
    topic = f"tenant:{DEMO}:inbox:{conv}"
    s = Stream(live_server, token_for(conn, "agent@demo.luna.local"), topic)
    assert s.status == 200
    conn.execute("update conversations set assignee_id = %s, priority = priority where id = %s", (agent2, conv))
    conn.execute("select private.broadcast(%s, 'message_created', '{\"body\": \"secret\"}'::jsonb)", (topic,))
    assert s.rest()[-1] == ("closed", {"reason": "topic_forbidden", "topics": [topic]})
    assert leaks(s, topic) == []


def test_token_expiry_closes_the_stream(live_server, conn):
    agent = uid(conn, "agent@demo.luna.local")
    s = Stream(live_server, token_for(conn, "agent@demo.luna.local", ttl=4), f"user:{agent}")
    assert s.status == 200
    event, data = s.until("closed", timeout=30)
    assert data == {"reason": "token_expired", "topics": [f"user:{agent}"]}
    assert s.rest()[-1][0] == "closed"


def test_revocation_without_any_event_closes_at_the_next_check(live_server, conn, monkeypatch):
    """No event on the topic: the periodic re-check (at each keep-alive) still closes the stream."""
    from edge.routes import realtime

    monkeypatch.setattr(realtime, "KEEPALIVE_SECONDS", 0.3)
    topic = f"tenant:{DEMO}:customer:{AHMET}"
    policy(conn, False)
    s = Stream(live_server, token_for(conn, "agent2@demo.luna.local"), topic)
    policy(conn, True)
    assert s.rest()[-1] == ("closed", {"reason": "topic_forbidden", "topics": [topic]})
