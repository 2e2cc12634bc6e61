"""CRM rules through the PostgREST-style harness: tenancy and roles, the assignee restriction, stage
rules, inventory, merges, the board, bulk operations, notifications, work orders, user management."""

import psycopg
import pytest
from psycopg.types.json import Jsonb

from .conftest import DEMO, DEMO2, as_service, as_user

AGENT = "00000000-0000-4000-8001-000000000014"
AGENT2 = "00000000-0000-4000-8001-000000000016"
SUPERVISOR = "00000000-0000-4000-8001-000000000013"
AHMET = "00000000-0000-4000-8005-000000000101"   # agent's customer
FATMA = "00000000-0000-4000-8005-000000000102"   # agent2's customer
HAKAN = "00000000-0000-4000-8005-000000000103"   # nobody's
CARD_AHMET = "00000000-0000-4000-8005-000000000501"
CARD_FATMA = "00000000-0000-4000-8005-000000000502"
CARD_DENIZ = "00000000-0000-4000-8005-000000000601"  # demo-2
ITEM_A1 = "00000000-0000-4000-8005-000000000301"
ITEM_SOLD = "00000000-0000-4000-8005-000000000303"

CRM_TABLES = ["customers", "customer_merges", "tags", "pipelines", "pipeline_stages", "stage_transitions", "cards",
              "inventory_items", "inventory_sales", "activity_types", "activities", "timeline_events", "notes",
              "reminders", "notifications", "work_orders", "work_order_steps", "crm_settings", "assignment_rules"]


def stage(conn, name, tenant=DEMO):
    return conn.execute("""select s.id from pipeline_stages s join pipelines p on p.id = s.pipeline_id
                           where p.tenant_id = %s and p.is_default and s.name = %s""", (tenant, name)).fetchone()["id"]


def pipeline(conn, tenant=DEMO):
    return conn.execute("select id from pipelines where tenant_id = %s and is_default", (tenant,)).fetchone()["id"]


def restrict_agents(conn, on=True):
    conn.execute("update tenant_policies set agents_see_assigned_only = %s where tenant_id = %s", (on, DEMO))


def refused(exc_info, code, state="PT422"):
    e = exc_info.value
    assert e.sqlstate == state, (e.sqlstate, str(e))
    assert e.diag.message_detail == f"code={code}", e.diag.message_detail


def count(conn, sql, *args):
    return conn.execute(sql, args).fetchone()["n"]


# --------------------------------------------------------------------------------------------- tenancy


def test_seed_and_rls_cover_every_crm_table(conn):
    for name in CRM_TABLES:
        row = conn.execute(f"""select count(*) filter (where tenant_id = %s) as a, count(*) filter (where tenant_id = %s) as b,
                                      (select relrowsecurity from pg_class where oid = 'public.{name}'::regclass) as rls
                               from public.{name}""", (DEMO, DEMO2)).fetchone()
        assert row["a"] and row["b"] and row["rls"], name


@pytest.mark.parametrize("role", ["owner", "admin", "supervisor", "agent", "viewer"])
def test_no_cross_tenant_access_to_crm_tables(conn, role):
    user = f"{role}@demo.luna.local"
    for name in CRM_TABLES:
        foreign = conn.execute(f"select to_jsonb(t) as row from public.{name} t where tenant_id = %s limit 1", (DEMO2,)).fetchone()
        with as_user(conn, user, rollback=True) as cur:
            assert cur.execute(f"select count(*) as n from public.{name} where tenant_id = %s", (DEMO2,)).fetchone()["n"] == 0, name
            assert cur.execute(f"update public.{name} set tenant_id = tenant_id where tenant_id = %s", (DEMO2,)).rowcount == 0, name
            assert cur.execute(f"delete from public.{name} where tenant_id = %s", (DEMO2,)).rowcount == 0, name
        row = dict(foreign["row"], id="99999999-9999-4999-8999-999999999999")
        with pytest.raises(psycopg.Error) as exc:
            with as_user(conn, user, rollback=True) as cur:
                cur.execute(f"insert into public.{name} select * from jsonb_populate_record(null::public.{name}, %s)", (Jsonb(row),))
        assert exc.value.sqlstate in ("42501", "428C9"), (name, str(exc.value))


def test_cross_tenant_rpcs_are_refused(conn):
    foreign_pipeline, foreign_stage = pipeline(conn, DEMO2), stage(conn, "Görüşülüyor", DEMO2)
    with as_user(conn, "owner@demo.luna.local", rollback=True) as cur:
        with pytest.raises(psycopg.errors.NoDataFound):
            cur.execute("select public.crm_board(%s)", (foreign_pipeline,))
    with as_user(conn, "owner@demo.luna.local", rollback=True) as cur:
        with pytest.raises(psycopg.errors.NoDataFound):
            cur.execute("select public.move_card(%s, %s)", (CARD_DENIZ, foreign_stage))
    with as_user(conn, "owner@demo.luna.local", rollback=True) as cur:
        with pytest.raises(psycopg.errors.NoDataFound):
            cur.execute("select public.customer_viewer(%s)", ("00000000-0000-4000-8005-000000000201",))
    with as_user(conn, "owner@demo.luna.local", rollback=True) as cur:
        with pytest.raises(psycopg.errors.NoDataFound):
            cur.execute("select public.merge_customers(%s, %s)", (AHMET, "00000000-0000-4000-8005-000000000201"))
    # service-only functions are not callable by signed-in users
    with as_user(conn, "owner@demo.luna.local", rollback=True) as cur:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute("select private.match_or_create_customer(%s, 'x', '+905550000000', null, '{}')", (DEMO2,))


# --------------------------------------------------------------------------------------------- customers


def test_customers_are_deduplicated_by_normalised_phone_and_email(conn):
    with as_user(conn, "supervisor@demo.luna.local", rollback=True) as cur:
        with pytest.raises(psycopg.errors.UniqueViolation):
            cur.execute("insert into customers (tenant_id, full_name, phone) values (%s, 'Tekrar', '0532 111 22 33')", (DEMO,))
    with as_user(conn, "supervisor@demo.luna.local", rollback=True) as cur:
        with pytest.raises(psycopg.errors.UniqueViolation):
            cur.execute("insert into customers (tenant_id, full_name, email) values (%s, 'Tekrar', ' AHMET@Example.com ')", (DEMO,))
    with as_user(conn, "supervisor@demo.luna.local", rollback=True) as cur:
        with pytest.raises(psycopg.Error) as exc:
            cur.execute("insert into customers (tenant_id, full_name, phone) values (%s, 'Bozuk', '12')", (DEMO,))
        refused(exc, "invalid_phone")
    # the same phone in another tenant is another customer
    with as_service(conn) as cur:
        same = cur.execute("select private.match_or_create_customer(%s, 'Ahmet', '+90 (532) 111-22-33', null, '{}') as id", (DEMO,)).fetchone()["id"]
        other = cur.execute("select private.match_or_create_customer(%s, 'Ahmet', '05321112233', null, %s) as id",
                            (DEMO2, Jsonb({"source": "instagram", "utm_campaign": "x"}))).fetchone()["id"]
        by_mail = cur.execute("select private.match_or_create_customer(%s, 'F', null, 'Fatma@Example.com', '{}') as id", (DEMO,)).fetchone()["id"]
    assert str(same) == AHMET and str(by_mail) == FATMA
    row = conn.execute("select tenant_id, phone, source, campaign from customers where id = %s", (other,)).fetchone()
    assert str(row["tenant_id"]) == DEMO2 and row["phone"] == "+905321112233" and row["source"] == "instagram" and row["campaign"] == "x"


def test_agent_creates_customers_that_are_theirs(conn):
    restrict_agents(conn)
    with as_user(conn, "agent@demo.luna.local") as cur:
        cur.execute("insert into customers (tenant_id, full_name, phone) values (%s, 'Yeni', '05400000001')", (DEMO,))
        row = cur.execute("select responsibles, phone from customers where full_name = 'Yeni'").fetchone()
    assert [str(r) for r in row["responsibles"]] == [AGENT] and row["phone"] == "+905400000001"
    assert count(conn, "select count(*) as n from timeline_events where event_type = 'customer_created' and data is not null") >= 1
    with pytest.raises(psycopg.Error) as exc:
        with as_user(conn, "supervisor@demo.luna.local") as cur:
            cur.execute("update customers set responsibles = %s where id = %s", (["00000000-0000-4000-8001-000000000024"], AHMET))
    refused(exc, "invalid_responsible")


def test_assignee_restriction(conn):
    restrict_agents(conn)

    def visible(user, table, col="customer_id"):
        with as_user(conn, user, rollback=True) as cur:
            return sorted(str(r["c"]) for r in cur.execute(f"select {col} as c from public.{table}"))

    assert visible("agent@demo.luna.local", "customers", "id") == [AHMET]
    assert visible("agent2@demo.luna.local", "customers", "id") == [FATMA]
    assert visible("supervisor@demo.luna.local", "customers", "id") == sorted([AHMET, FATMA, HAKAN])
    assert set(visible("agent@demo.luna.local", "cards")) == {AHMET}
    assert set(visible("agent@demo.luna.local", "notes")) <= {AHMET}
    assert set(visible("agent@demo.luna.local", "timeline_events")) == {AHMET}
    assert set(visible("agent2@demo.luna.local", "activities")) == {FATMA}
    # the agent can neither change nor move nor view nor annotate someone else's customer
    with as_user(conn, "agent@demo.luna.local", rollback=True) as cur:
        assert cur.execute("update customers set full_name = 'x' where id = %s", (FATMA,)).rowcount == 0
        assert cur.execute("update customers set responsibles = %s where id = %s", ([AGENT], FATMA)).rowcount == 0
    with as_user(conn, "agent@demo.luna.local", rollback=True) as cur:
        with pytest.raises(psycopg.errors.NoDataFound):
            cur.execute("select public.move_card(%s, %s)", (CARD_FATMA, stage(conn, "Randevu")))
    with as_user(conn, "agent@demo.luna.local", rollback=True) as cur:
        with pytest.raises(psycopg.errors.NoDataFound):
            cur.execute("select public.customer_viewer(%s)", (FATMA,))
    with as_user(conn, "agent@demo.luna.local", rollback=True) as cur:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute("insert into notes (tenant_id, customer_id, body) values (%s, %s, 'gizli')", (DEMO, FATMA))
    # the board shows the agent only their cards, the supervisor all
    with as_user(conn, "agent@demo.luna.local", rollback=True) as cur:
        board = cur.execute("select public.crm_board(%s) as b", (pipeline(conn),)).fetchone()["b"]
    assert {c["customer_id"] for s in board["stages"] for c in s["cards"]} == {AHMET}
    with as_user(conn, "supervisor@demo.luna.local", rollback=True) as cur:
        board = cur.execute("select public.crm_board(%s) as b", (pipeline(conn),)).fetchone()["b"]
    assert {c["customer_id"] for s in board["stages"] for c in s["cards"]} == {AHMET, FATMA, HAKAN}
    # policy off: agents see the whole tenant again
    restrict_agents(conn, False)
    assert len(visible("agent@demo.luna.local", "customers", "id")) == 3


def test_viewer_reads_but_cannot_write(conn):
    with as_user(conn, "viewer@demo.luna.local", rollback=True) as cur:
        assert cur.execute("select count(*) as n from customers").fetchone()["n"] == 3
        assert cur.execute("update customers set full_name = 'x'").rowcount == 0
    with as_user(conn, "viewer@demo.luna.local", rollback=True) as cur:
        with pytest.raises(psycopg.errors.NoDataFound):
            cur.execute("select public.move_card(%s, %s)", (CARD_AHMET, stage(conn, "Görüşülüyor")))
    with as_user(conn, "viewer@demo.luna.local", rollback=True) as cur:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute("insert into customers (tenant_id, full_name, phone) values (%s, 'x', '05400000009')", (DEMO,))
    # module permissions are data: take crm read away from viewers
    conn.execute("insert into role_permissions (tenant_id, role, module, action, allowed) values (%s, 'viewer', 'crm', 'read', false)", (DEMO,))
    board = pipeline(conn)
    with as_user(conn, "viewer@demo.luna.local", rollback=True) as cur:
        assert cur.execute("select count(*) as n from customers").fetchone()["n"] == 0
    with as_user(conn, "viewer@demo.luna.local", rollback=True) as cur:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute("select public.crm_board(%s)", (board,))


def test_pipeline_configuration_is_for_managers(conn):
    with as_user(conn, "supervisor@demo.luna.local", rollback=True) as cur:
        assert cur.execute("update pipeline_stages set name = name || '!'").rowcount == 0
    with as_user(conn, "admin@demo.luna.local", rollback=True) as cur:
        cur.execute("insert into pipelines (tenant_id, name) values (%s, 'Kiralama')", (DEMO,))
        assert cur.execute("update pipeline_stages set color = 'red' where tenant_id = %s", (DEMO,)).rowcount == 7


# --------------------------------------------------------------------------------------------- stage moves


def timeline_count(conn, card):
    return count(conn, "select count(*) as n from timeline_events where card_id = %s", card)


def test_defaults_are_the_turkish_stages(conn):
    names = [r["name"] for r in conn.execute(
        "select name from pipeline_stages where pipeline_id = %s order by position", (pipeline(conn),))]
    assert names == ["Potansiyel", "Görüşülüyor", "Randevu", "Kapora", "Satış Tamamlandı", "Takip Edilecek", "Kaybedildi"]


def test_move_refused_by_rule_leaves_nothing_behind(conn):
    before = timeline_count(conn, CARD_AHMET)
    jobs = count(conn, "select count(*) as n from private.jobs where kind = 'crm.card_moved'")
    notes = count(conn, "select count(*) as n from notifications")
    # Kapora needs a deposit amount
    with pytest.raises(psycopg.Error) as exc:
        with as_user(conn, "agent@demo.luna.local") as cur:
            cur.execute("select public.move_card(%s, %s)", (CARD_AHMET, stage(conn, "Kapora")))
    refused(exc, "deposit_required")
    assert "Kapora" in str(exc.value) and "deposit" in str(exc.value)
    # Potansiyel -> nothing but allowed moves; the won stage is final
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        cur.execute("select public.move_card(%s, %s)", (CARD_AHMET, stage(conn, "Satış Tamamlandı")))
    with pytest.raises(psycopg.Error) as exc:
        with as_user(conn, "supervisor@demo.luna.local") as cur:
            cur.execute("select public.move_card(%s, %s)", (CARD_AHMET, stage(conn, "Görüşülüyor")))
    refused(exc, "move_not_allowed")
    # also when written directly (PATCH /cards): the trigger checks every move
    with pytest.raises(psycopg.Error) as exc:
        with as_user(conn, "supervisor@demo.luna.local") as cur:
            cur.execute("update cards set stage_id = %s where id = %s", (stage(conn, "Potansiyel"), CARD_AHMET))
    refused(exc, "move_not_allowed")
    assert timeline_count(conn, CARD_AHMET) == before + 1   # only the one allowed move
    assert count(conn, "select count(*) as n from private.jobs where kind = 'crm.card_moved'") == jobs + 1
    assert count(conn, "select count(*) as n from notifications") == notes + 1
    # lost needs a reason
    with pytest.raises(psycopg.Error) as exc:
        with as_user(conn, "supervisor@demo.luna.local") as cur:
            cur.execute("select public.move_card(%s, %s)", (CARD_FATMA, stage(conn, "Kaybedildi")))
    refused(exc, "lost_reason_required")


def test_move_writes_timeline_notifies_broadcasts_and_queues_the_hook(conn):
    kapora = stage(conn, "Kapora")
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        moved = cur.execute("select public.move_card(%s, %s, %s) as m", (CARD_AHMET, kapora, Jsonb({"deposit_amount": 50000}))).fetchone()["m"]
    assert moved["stage_id"] == str(kapora) and moved["status"] == "open"
    ev = conn.execute("select * from timeline_events where card_id = %s and event_type = 'stage_changed'", (CARD_AHMET,)).fetchone()
    assert ev["data"]["from_stage"] == "Potansiyel" and ev["data"]["to_stage"] == "Kapora" and str(ev["actor_id"]) == SUPERVISOR
    n = conn.execute("select * from notifications where user_id = %s and kind = 'card_moved'", (AGENT,)).fetchone()
    assert n and n["title"] == "Ahmet Yıldız: Kapora"
    topics = {r["topic"] for r in conn.execute("select topic from realtime.messages where event = 'card_moved'")}
    assert topics == {f"tenant:{DEMO}:board:{pipeline(conn)}", f"tenant:{DEMO}:customer:{AHMET}"}
    assert conn.execute("select 1 from realtime.messages where topic = %s and event = 'notification'", (f"user:{AGENT}",)).fetchone()
    job = conn.execute("select payload from private.jobs where kind = 'crm.card_moved'").fetchone()
    assert job["payload"]["card_id"] == CARD_AHMET and job["payload"]["stage"] == "Kapora"
    assert conn.execute("select deposit_amount from cards where id = %s", (CARD_AHMET,)).fetchone()["deposit_amount"] == 50000


def test_transition_limited_to_roles(conn):
    conn.execute("update stage_transitions set roles = '{supervisor,admin,owner}' where to_stage_id = %s", (stage(conn, "Randevu"),))
    with pytest.raises(psycopg.Error) as exc:
        with as_user(conn, "agent2@demo.luna.local") as cur:
            cur.execute("select public.move_card(%s, %s)", (CARD_FATMA, stage(conn, "Randevu")))
    refused(exc, "move_role_forbidden", "PT403")
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        cur.execute("select public.move_card(%s, %s)", (CARD_FATMA, stage(conn, "Randevu")))


# --------------------------------------------------------------------------------------------- inventory


def test_inventory_follows_the_stage_and_is_never_sold_twice(conn):
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        cur.execute("select public.move_card(%s, %s, %s)", (CARD_AHMET, stage(conn, "Kapora"),
                                                            Jsonb({"deposit_amount": 1000, "inventory_item_id": ITEM_A1})))
    item = conn.execute("select status, customer_id from inventory_items where id = %s", (ITEM_A1,)).fetchone()
    assert item["status"] == "deposit" and str(item["customer_id"]) == AHMET
    # Fatma's card cannot take the held item
    with pytest.raises(psycopg.Error) as exc:
        with as_user(conn, "supervisor@demo.luna.local") as cur:
            cur.execute("update cards set inventory_item_id = %s where id = %s", (ITEM_A1, CARD_FATMA))
    assert exc.value.sqlstate in ("PT409", "23505")
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        cur.execute("select public.move_card(%s, %s)", (CARD_AHMET, stage(conn, "Satış Tamamlandı")))
    assert conn.execute("select status from inventory_items where id = %s", (ITEM_A1,)).fetchone()["status"] == "sold"
    assert count(conn, "select count(*) as n from inventory_sales where item_id = %s", ITEM_A1) == 1
    # sold again through another deal: refused, and the move with it (one transaction)
    before = timeline_count(conn, CARD_FATMA)
    with pytest.raises(psycopg.Error) as exc:
        with as_user(conn, "supervisor@demo.luna.local") as cur:
            cur.execute("select public.move_card(%s, %s, %s)", (CARD_FATMA, stage(conn, "Satış Tamamlandı"), Jsonb({"inventory_item_id": ITEM_A1})))
    refused(exc, "already_sold", "PT409")
    assert timeline_count(conn, CARD_FATMA) == before
    # nor by writing the item, nor by a second sale row
    with pytest.raises(psycopg.Error) as exc:
        with as_user(conn, "admin@demo.luna.local") as cur:
            cur.execute("update inventory_items set status = 'available', customer_id = null where id = %s", (ITEM_SOLD,))
    refused(exc, "already_sold", "PT409")
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("insert into inventory_sales (tenant_id, item_id, customer_id) values (%s, %s, %s)", (DEMO, ITEM_SOLD, FATMA))


def test_lost_releases_the_item(conn):
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        cur.execute("update cards set inventory_item_id = %s where id = %s", (ITEM_A1, CARD_FATMA))
    assert conn.execute("select status from inventory_items where id = %s", (ITEM_A1,)).fetchone()["status"] == "reserved"
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        cur.execute("select public.move_card(%s, %s, %s)", (CARD_FATMA, stage(conn, "Kaybedildi"), Jsonb({"lost_reason": "bütçe"})))
    row = conn.execute("select status, customer_id from inventory_items where id = %s", (ITEM_A1,)).fetchone()
    assert row["status"] == "available" and row["customer_id"] is None
    assert conn.execute("select status from cards where id = %s", (CARD_FATMA,)).fetchone()["status"] == "lost"


# --------------------------------------------------------------------------------------------- merge


def test_merge_keeps_every_timeline_event(conn):
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        cur.execute("insert into notes (tenant_id, customer_id, body) values (%s, %s, 'ikinci kayıt')", (DEMO, HAKAN))
        cur.execute("update customers set tags = tags || '{sicak}' where id = %s", (HAKAN,))
    events = {r["id"] for r in conn.execute("select id from timeline_events where customer_id in (%s, %s)", (AHMET, HAKAN))}
    assert len(events) >= 5
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        result = cur.execute("select public.merge_customers(%s, %s) as r", (AHMET, HAKAN)).fetchone()["r"]
    assert result["moved"]["public.timeline_events"] >= 3 and result["moved"]["public.cards"] == 1
    after = {r["id"] for r in conn.execute("select id from timeline_events where customer_id = %s", (AHMET,))}
    assert events < after  # every event kept, plus the merge's own
    assert conn.execute("select 1 from timeline_events where customer_id = %s and event_type = 'customers_merged'", (AHMET,)).fetchone()
    assert not conn.execute("select 1 from customers where id = %s", (HAKAN,)).fetchone()
    ahmet = conn.execute("select tags, responsibles from customers where id = %s", (AHMET,)).fetchone()
    assert {"vip", "geri-arama", "sicak"} <= set(ahmet["tags"])
    merge = conn.execute("select * from customer_merges where merged_id = %s", (HAKAN,)).fetchone()
    assert merge["merged_snapshot"]["full_name"] == "Hakan Çınar" and str(merge["merged_by"]) == SUPERVISOR
    # the sold item and its sale moved too
    assert str(conn.execute("select customer_id from inventory_items where id = %s", (ITEM_SOLD,)).fetchone()["customer_id"]) == AHMET
    # agents may not merge; the timeline stays append-only
    with as_user(conn, "agent@demo.luna.local", rollback=True) as cur:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute("select public.merge_customers(%s, %s)", (AHMET, FATMA))
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("update timeline_events set event_type = 'forged' where customer_id = %s", (AHMET,))
    refused(exc, "timeline_append_only", "PT409")


# --------------------------------------------------------------------------------------------- board


def test_board_shape_and_filters(conn):
    conn.execute("insert into reminders (tenant_id, customer_id, owner_id, title, due_at) values (%s, %s, %s, 'ara', now() + interval '3 hours')",
                 (DEMO, AHMET, AGENT))
    conn.execute("update customers set unread_messages = 2 where id = %s", (AHMET,))
    conn.execute("update customers set last_contact_at = now() - interval '10 days' where id = %s", (FATMA,))
    with as_user(conn, "supervisor@demo.luna.local", rollback=True) as cur:
        board = cur.execute("select public.crm_board(%s) as b", (pipeline(conn),)).fetchone()["b"]
        only_ig = cur.execute("select public.crm_board(%s, %s) as b", (pipeline(conn), Jsonb({"source": "instagram"}))).fetchone()["b"]
        by_resp = cur.execute("select public.crm_board(%s, %s) as b", (pipeline(conn), Jsonb({"responsible": AGENT2}))).fetchone()["b"]
        by_tag = cur.execute("select public.crm_board(%s, %s) as b", (pipeline(conn), Jsonb({"tag": "VIP", "quality_min": 50}))).fetchone()["b"]
        by_campaign = cur.execute("select public.crm_board(%s, %s) as b", (pipeline(conn), Jsonb({"campaign": "google-arama"}))).fetchone()["b"]
    assert [s["name"] for s in board["stages"]][:2] == ["Potansiyel", "Görüşülüyor"]
    potansiyel = board["stages"][0]
    assert potansiyel["count"] == 2
    ahmet = next(c for c in potansiyel["cards"] if c["customer_id"] == AHMET)
    assert ahmet["customer_name"] == "Ahmet Yıldız" and ahmet["phone"] == "+905321112233"
    assert ahmet["responsibles"] == [AGENT] and ahmet["source"] == "instagram" and ahmet["unread_count"] == 2
    assert ahmet["overdue"] is False and ahmet["next_reminder_at"] and ahmet["next_appointment_at"]
    fatma = board["stages"][1]["cards"][0]
    assert fatma["customer_id"] == FATMA and fatma["overdue"] is True

    def ids(b):
        return {c["customer_id"] for s in b["stages"] for c in s["cards"]}
    assert ids(only_ig) == {AHMET} and ids(by_resp) == {FATMA} and ids(by_tag) == {AHMET} and ids(by_campaign) == {FATMA}


def test_bulk_operations_are_for_supervisors_and_admins(conn):
    with pytest.raises(psycopg.Error) as exc:
        with as_user(conn, "agent@demo.luna.local") as cur:
            cur.execute("select public.bulk_tag_customers(%s, '{x}')", ([AHMET],))
    refused(exc, "supervisor_required", "PT403")
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        cur.execute("select public.move_card(%s, %s, %s)", (CARD_FATMA, stage(conn, "Kaybedildi"), Jsonb({"lost_reason": "fiyat"})))
        r = cur.execute("select public.bulk_move_cards(%s, %s) as r",
                        ([CARD_AHMET, CARD_FATMA, "00000000-0000-4000-8005-000000000503"], stage(conn, "Görüşülüyor"))).fetchone()["r"]
        assert r["moved"] == 2 and len(r["errors"]) == 1 and r["errors"][0]["card_id"] == CARD_FATMA
        assert r["errors"][0]["code"] == "move_not_allowed"
        assert cur.execute("select public.bulk_assign_customers(%s, %s, 'add') as n", ([AHMET, HAKAN], [AGENT2])).fetchone()["n"] == 2
        assert cur.execute("select public.bulk_tag_customers(%s, '{Sıcak}', '{vip}') as n", ([AHMET, FATMA],)).fetchone()["n"] == 2
    ahmet = conn.execute("select tags, responsibles from customers where id = %s", (AHMET,)).fetchone()
    assert ahmet["tags"] == ["sıcak"] and {str(x) for x in ahmet["responsibles"]} == {AGENT, AGENT2}
    # responsibles flow to the cards (and so to the board and RLS)
    card = conn.execute("select responsibles from cards where id = %s", (CARD_AHMET,)).fetchone()
    assert {str(x) for x in card["responsibles"]} == {AGENT, AGENT2}
    assert conn.execute("select 1 from notifications where user_id = %s and kind = 'customer_assigned' and customer_id = %s",
                        (AGENT2, HAKAN)).fetchone()


# --------------------------------------------------------------------------------------------- viewer, activities


def test_customer_viewer_has_everything_for_one_screen(conn):
    with as_user(conn, "agent@demo.luna.local") as cur:
        call = cur.execute("select id from activity_types where key = 'call'").fetchone()["id"]
        act = cur.execute("insert into activities (tenant_id, customer_id, card_id, type_id, title) values (%s, %s, %s, %s, 'ilk arama') returning id",
                          (DEMO, AHMET, CARD_AHMET, call)).fetchone()["id"]
        cur.execute("update activities set status = 'done', result = 'ulaşıldı' where id = %s", (act,))
        v = cur.execute("select public.customer_viewer(%s) as v", (AHMET,)).fetchone()["v"]
    assert v["customer"]["full_name"] == "Ahmet Yıldız" and v["responsibles"][0]["id"] == AGENT
    kinds = [e["event_type"] for e in v["timeline"]]
    assert {"customer_created", "card_created", "note_added", "appointment_set", "call_made", "activity_completed"} <= set(kinds)
    done = next(e for e in v["timeline"] if e["event_type"] == "activity_completed")
    assert done["data"]["result"] == "ulaşıldı" and done["actor_id"] == AGENT
    assert v["appointments"] and v["notes"] and v["cards"][0]["stage"] == "Potansiyel"
    assert v["work_orders"][0]["progress"] == 50 and len(v["work_orders"][0]["steps"]) == 2
    assert v["messages"] == {} or isinstance(v["messages"], dict)
    assert set(v) >= {"reminders", "inventory", "orders", "tags", "quality_score", "merges"}
    act_row = conn.execute("select closed_by, closed_at from activities where id = %s", (act,)).fetchone()
    assert str(act_row["closed_by"]) == AGENT and act_row["closed_at"]


def test_work_order_progress_derives_from_steps(conn):
    wo = "00000000-0000-4000-8005-000000000741"
    assert conn.execute("select status, progress from work_orders where id = %s", (wo,)).fetchone() == {"status": "in_progress", "progress": 50}
    with as_user(conn, "agent@demo.luna.local") as cur:
        cur.execute("update work_order_steps set done_at = now() where work_order_id = %s and done_at is null", (wo,))
    assert conn.execute("select status, progress from work_orders where id = %s", (wo,)).fetchone() == {"status": "done", "progress": 100}
    step = conn.execute("select done_by from work_order_steps where work_order_id = %s and position = 2", (wo,)).fetchone()
    assert str(step["done_by"]) == AGENT


# --------------------------------------------------------------------------------------------- notifications, reminders


def test_targeted_notifications_and_read_state(conn):
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        assert cur.execute("select public.send_notification(%s, 'Toplantı') as n", (Jsonb({"role": "agent"}),)).fetchone()["n"] == 2
        assert cur.execute("select public.send_notification(%s, 'Ahmet aradı', null, %s) as n",
                           (Jsonb({"customer_id": AHMET}), AHMET)).fetchone()["n"] == 1
        assert cur.execute("select public.send_notification(%s, 'Sana') as n", (Jsonb({"user_id": AGENT2}),)).fetchone()["n"] == 1
    with as_user(conn, "agent@demo.luna.local") as cur:
        mine = cur.execute("select title, read_at from notifications order by created_at").fetchall()
        assert {m["title"] for m in mine} >= {"Toplantı", "Ahmet aradı"} and "Sana" not in {m["title"] for m in mine}
        assert cur.execute("select public.mark_notifications_read() as n").fetchone()["n"] == len(mine)
    reads = conn.execute("select count(*) as n from realtime.messages where topic = %s and event = 'notification_read'", (f"user:{AGENT}",)).fetchone()
    assert reads["n"] == len(mine)
    with as_user(conn, "agent@demo.luna.local", rollback=True) as cur:  # others' notifications are invisible
        assert cur.execute("update notifications set read_at = now() where user_id <> %s", (AGENT,)).rowcount == 0


def test_due_reminders_become_notifications_once(conn):
    conn.execute("update reminders set due_at = now() - interval '1 minute' where id = '00000000-0000-4000-8005-000000000721'")
    with as_service(conn) as cur:
        assert cur.execute("select private.crm_fire_due_reminders() as n").fetchone()["n"] == 1
        assert cur.execute("select private.crm_fire_due_reminders() as n").fetchone()["n"] == 0
    n = conn.execute("select * from notifications where kind = 'reminder_due'").fetchone()
    assert str(n["user_id"]) == AGENT2 and n["title"] == "Fatma Hanım'ı geri ara" and n["body"] == "Fatma Koç"


def test_round_robin_and_rules_pick_reps(conn):
    with as_service(conn) as cur:
        picks = [str(cur.execute("select private.crm_pick_rep(%s) as r", (DEMO,)).fetchone()["r"]) for _ in range(4)]
    assert set(picks) == {AGENT, AGENT2} and picks[0] != picks[1] and picks[0] == picks[2]
    conn.execute("update crm_settings set assignment_mode = 'rules' where tenant_id = %s", (DEMO,))
    with as_service(conn) as cur:
        assert str(cur.execute("select private.crm_pick_rep(%s, %s) as r", (DEMO, Jsonb({"region": "Ankara", "source": "web"}))).fetchone()["r"]) == AGENT2


# --------------------------------------------------------------------------------------------- user management


def test_user_management_is_audited(conn):
    with as_user(conn, "admin@demo.luna.local") as cur:
        uid = cur.execute("select public.invite_member('Yeni.Kisi@Demo.luna.local', 'agent', 'Yeni Kişi') as u").fetchone()["u"]
        cur.execute("select public.change_member_role(%s, 'supervisor')", (uid,))
        cur.execute("select public.deactivate_member(%s)", (uid,))
    m = conn.execute("select role, active from tenant_members where user_id = %s", (uid,)).fetchone()
    assert m == {"role": "supervisor", "active": False}
    actions = [r["action"] for r in conn.execute(
        "select action from audit.events where tenant_id = %s and action like 'member.%%' order by seq", (DEMO,))]
    assert actions == ["member.invite", "member.change_role", "member.deactivate"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with as_user(conn, "supervisor@demo.luna.local") as cur:
            cur.execute("select public.invite_member('x@y.z', 'agent')")
    with pytest.raises(psycopg.Error) as exc:
        with as_user(conn, "admin@demo.luna.local") as cur:
            cur.execute("select public.change_member_role('00000000-0000-4000-8001-000000000011', 'agent')")
    refused(exc, "owner_required", "PT403")
    with pytest.raises(psycopg.Error) as exc:
        with as_user(conn, "owner@demo.luna.local") as cur:
            cur.execute("select public.change_member_role('00000000-0000-4000-8001-000000000011', 'admin')")
    refused(exc, "last_owner", "PT409")


# --------------------------------------------------------------------------------------------- reports


def test_reporting_views_follow_rls(conn):
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        cur.execute("select public.move_card(%s, %s)", (CARD_AHMET, stage(conn, "Görüşülüyor")))
        cur.execute("select public.move_card(%s, %s, %s)", (CARD_AHMET, stage(conn, "Kapora"), Jsonb({"deposit_amount": 10})))
    with as_user(conn, "supervisor@demo.luna.local", rollback=True) as cur:
        perf = cur.execute("select * from report_crm_source_performance order by source").fetchall()
        conv = cur.execute("select * from report_crm_stage_conversion").fetchall()
        tis = cur.execute("select * from report_crm_time_in_stage where stage = 'Potansiyel'").fetchone()
        appts = cur.execute("select sum(appointments) as n from report_crm_appointments_per_day").fetchone()
        backlog = cur.execute("select * from report_crm_reminder_backlog").fetchall()
        load = {str(r["user_id"]): r for r in cur.execute("select * from report_crm_rep_workload")}
    assert {r["source"] for r in perf} == {"instagram", "web", "whatsapp"} and all(str(r["tenant_id"]) == DEMO for r in perf)
    assert {(r["from_stage"], r["to_stage"]) for r in conv} == {("Potansiyel", "Görüşülüyor"), ("Görüşülüyor", "Kapora")}
    assert tis["exits"] == 1 and tis["open_cards"] == 1
    assert appts["n"] == 1 and backlog[0]["open"] == 1
    assert load[AGENT]["customers"] == 1 and load[AGENT]["open_cards"] == 1 and load[AGENT]["open_work_orders"] == 1
    restrict_agents(conn)
    with as_user(conn, "agent@demo.luna.local", rollback=True) as cur:
        assert cur.execute("select sum(customers) as n from report_crm_source_performance").fetchone()["n"] == 1
    with as_user(conn, "owner@demo-2.luna.local", rollback=True) as cur:
        assert all(str(r["tenant_id"]) == DEMO2 for r in cur.execute("select tenant_id from report_crm_source_performance"))
