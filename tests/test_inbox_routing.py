"""Routing strategies (least busy, sticky, availability, team/skills), template submission and the
credentials endpoint."""

from __future__ import annotations

import json

from .conftest import DEMO, as_user, token_for
from .fakes import serve
from .fakes.graph import FakeGraph
from .test_inbox import WA_CHANNEL, drain, meta_app, post, text_message, wa_event  # noqa: F401


def _uid(conn, email):
    return conn.execute("select id from auth.users where email = %s", (email,)).fetchone()["id"]


def _assignee_of(conn, handle):
    return conn.execute("select v.assignee_id from public.conversations v join public.contacts c on c.id = v.contact_id "
                        "where c.handle = %s order by v.created_at desc limit 1", (handle,)).fetchone()["assignee_id"]


def test_least_busy_sticky_and_availability(client, conn, db_url, meta_app):
    agent, agent2 = _uid(conn, "agent@demo.luna.local"), _uid(conn, "agent2@demo.luna.local")
    conn.execute("update public.routing_rules set strategy = 'least_busy' where tenant_id = %s", (DEMO,))
    # agent already has the seeded open conversation: the least busy is agent2.
    post(client, wa_event([text_message("wamid.LB1", sender="905550010001")]))
    drain(db_url)
    assert _assignee_of(conn, "905550010001") == agent2
    # Offline agents get nothing.
    conn.execute("update public.agent_availability set status = 'offline' where user_id = %s", (agent2,))
    post(client, wa_event([text_message("wamid.LB2", sender="905550010002")]))
    drain(db_url)
    assert _assignee_of(conn, "905550010002") == agent
    # Sticky: a returning contact goes back to the agent of their previous conversation.
    conn.execute("update public.agent_availability set status = 'online' where user_id = %s", (agent2,))
    conn.execute("update public.routing_rules set strategy = 'sticky' where tenant_id = %s", (DEMO,))
    conn.execute("update public.conversations set status = 'resolved' where contact_id = "
                 "(select id from public.contacts where handle = '905550010002')")
    post(client, wa_event([text_message("wamid.LB3", sender="905550010002")]))
    drain(db_url)
    assert conn.execute("select count(*) as n from public.conversations v join public.contacts c on c.id = v.contact_id "
                        "where c.handle = '905550010002'").fetchone()["n"] == 2
    assert _assignee_of(conn, "905550010002") == agent
    # Skills: only an agent with every skill of the rule.
    conn.execute("update public.routing_rules set strategy = 'round_robin', skills = '{en}' where tenant_id = %s", (DEMO,))
    for i in range(3):
        post(client, wa_event([text_message(f"wamid.SK{i}", sender=f"90555002000{i}")]))
    drain(db_url)
    assert {_assignee_of(conn, f"90555002000{i}") for i in range(3)} == {agent}


def test_submit_template_to_whatsapp(conn, db_url):
    fake = FakeGraph()
    from luna import secrets

    with serve(fake.app) as base:
        conn.execute("update public.channel_accounts set settings = settings || %s::jsonb where id = %s",
                     (json.dumps({"base_url": base}), WA_CHANNEL))
        secrets.set_channel_credentials(conn, WA_CHANNEL, {"access_token": "test-token"})
        with as_user(conn, "supervisor@demo.luna.local") as cur:
            tpl = cur.execute("select * from public.submit_template(%s, 'kampanya_kis', 'tr', 'marketing', %s)",
                              (WA_CHANNEL, json.dumps([{"type": "BODY", "text": "Merhaba {{1}}, %%{{2}} indirim!",
                                                        "example": {"body_text": [["Ayşe", "20"]]}}]))).fetchone()
        assert tpl["status"] == "PENDING" and tpl["variables"] == 2
        drain(db_url, "jobs")
    assert fake.created_templates[0]["name"] == "kampanya_kis" and fake.created_templates[0]["category"] == "MARKETING"
    row = conn.execute("select * from public.message_templates where id = %s", (tpl["id"],)).fetchone()
    assert row["provider_template_id"] and row["status"] == "PENDING"


def test_credentials_endpoint_encrypts_and_never_returns(client, conn):
    owner = token_for(conn, "owner@demo.luna.local")
    agent = token_for(conn, "agent@demo.luna.local")
    url = f"/v1/inbox/channels/{WA_CHANNEL}/credentials"
    body = {"credentials": {"access_token": "EAAG-from-api"}}
    assert client.put(url, json=body, headers={"Authorization": f"Bearer {agent}"}).status_code == 403
    r = client.put(url, json=body, headers={"Authorization": f"Bearer {owner}"})
    assert r.status_code == 204 and r.content == b""
    stored = conn.execute("select secret from private.channel_credentials where channel_account_id = %s", (WA_CHANNEL,)).fetchone()
    assert stored["secret"].startswith("fernet:") and "EAAG" not in stored["secret"]
