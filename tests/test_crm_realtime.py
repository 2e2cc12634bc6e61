"""Targeted realtime for the CRM: a card move reaches the users allowed to see it, and nobody else.

A (agent, responsible for Ahmet) moves Ahmet's card. B (supervisor, same tenant) receives it on the
board topic and on Ahmet's customer topic. C (other tenant) and D (agent2, limited to their own
customers) are refused those topics, and D's own customer topic never carries Ahmet's event."""

import time

from .conftest import DEMO, as_user, token_for
from .test_realtime import Subscriber  # conftest.SseStream, joined awaited by the test

AHMET = "00000000-0000-4000-8005-000000000101"
FATMA = "00000000-0000-4000-8005-000000000102"
CARD_AHMET = "00000000-0000-4000-8005-000000000501"
SUPERVISOR = "00000000-0000-4000-8001-000000000013"


def test_card_move_reaches_only_allowed_subscribers(live_server, conn):
    conn.execute("update tenant_policies set agents_see_assigned_only = true where tenant_id = %s", (DEMO,))
    pipeline = conn.execute("select id from pipelines where tenant_id = %s and is_default", (DEMO,)).fetchone()["id"]
    to_stage = conn.execute("select id from pipeline_stages where pipeline_id = %s and name = 'Görüşülüyor'", (pipeline,)).fetchone()["id"]
    board = f"tenant:{DEMO}:board:{pipeline}"
    customer = f"tenant:{DEMO}:customer:{AHMET}"

    b = Subscriber(live_server, token_for(conn, "supervisor@demo.luna.local"), f"{board},{customer}")
    a_own = Subscriber(live_server, token_for(conn, "agent@demo.luna.local"), customer)
    c_board = Subscriber(live_server, token_for(conn, "owner@demo-2.luna.local"), board)
    c_customer = Subscriber(live_server, token_for(conn, "owner@demo-2.luna.local"), customer)
    d_board = Subscriber(live_server, token_for(conn, "agent2@demo.luna.local"), board)
    d_customer = Subscriber(live_server, token_for(conn, "agent2@demo.luna.local"), customer)
    d_own = Subscriber(live_server, token_for(conn, "agent2@demo.luna.local"), f"tenant:{DEMO}:customer:{FATMA}")
    b_user = Subscriber(live_server, token_for(conn, "supervisor@demo.luna.local"), f"user:{SUPERVISOR}")
    subs = (b, a_own, c_board, c_customer, d_board, d_customer, d_own, b_user)
    for s in subs:
        assert s.joined.wait(10)
    assert b.status == 200 and a_own.status == 200 and d_own.status == 200 and b_user.status == 200
    for refused in (c_board, c_customer, d_board, d_customer):
        assert refused.status == 403 and refused.error["error"]["code"] == "topic_forbidden"

    with as_user(conn, "agent@demo.luna.local") as cur:
        cur.execute("select public.move_card(%s, %s)", (CARD_AHMET, to_stage))

    got = [b.data(timeout=10), b.data(timeout=10)]
    assert {g["topic"] for g in got} == {board, customer}
    for g in got:
        assert g["event"] == "card_moved"
        p = g["payload"]
        # enough for a screen to update without refetching
        assert p["card_id"] == CARD_AHMET and p["to_stage_id"] == str(to_stage) and p["stage"] == "Görüşülüyor"
        assert p["customer_name"] == "Ahmet Yıldız" and p["from_stage_id"] and p["responsibles"]
    assert a_own.data(timeout=10)["event"] == "card_moved"
    # a customer change reaches the customer topic too
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        cur.execute("update customers set quality_score = 95 where id = %s", (AHMET,))
    changed = b.data(timeout=10)
    assert changed["event"] == "customer_updated" and changed["payload"]["customer"]["quality_score"] == 95
    time.sleep(0.5)
    assert d_own.quiet(), "agent2 must not see Ahmet's events"
    assert b_user.quiet()  # the mover's responsibles are notified, not the supervisor
    for s in subs:
        s.close()
