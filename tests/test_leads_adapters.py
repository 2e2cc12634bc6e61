"""Every lead adapter against its fake (documented shapes), including the failures: timeout, 429
with Retry-After, 500, malformed JSON, wrong schema. In the pipeline a failing provider makes the
lead wait (breaker open) or retry and then go to HUMAN_REVIEW_NEEDED: it never vanishes."""

import time

import psycopg
import pytest
from psycopg.types.json import Jsonb

from luna.channels.graph import GraphAdapter
from luna.channels.http import AdapterError
from worker.adapters.apify import ApifyAdapter
from worker.adapters.apollo import ApolloAdapter
from worker.adapters.clearbit import ClearbitAdapter
from worker.adapters.google_places import GooglePlacesAdapter
from worker.adapters.hunter import HunterAdapter
from worker.adapters.slack import SlackAdapter
from worker.adapters.web_search import WebSearchAdapter

from .conftest import DEMO
from .fakes import apify, apollo, clearbit, google_places, hunter, serve, slack, web_search
from .fakes.graph import FakeGraph
from .test_leads_pipeline import run_until, settled


async def test_adapters_parse_documented_answers():
    with serve(apollo.make_app()[0]) as base:
        a = ApolloAdapter("apollo-key", base_url=base)
        org = await a.enrich_organization("gulusdis.com.tr")
        assert org["employees"] == 320 and org["industry"] == "hospital & health care"
        assert await a.enrich_organization("unknown.com") is None
        people = await a.search_people({"q_keywords": "diş"})
        assert [p["company_name"] for p in people] == ["Gülüş Diş", "Ak Yapı"]
        await a.aclose()
    with serve(hunter.make_app({"yok@firma.com"})[0]) as base:
        h = HunterAdapter("hunter-key", base_url=base)
        assert (await h.verify("ali@firma.com"))["result"] == "deliverable"
        assert (await h.verify("yok@firma.com"))["result"] == "undeliverable"
        await h.aclose()
    with serve(clearbit.make_app()[0]) as base:
        c = ClearbitAdapter("cb", base_url=base)
        assert (await c.company("gulusdis.com.tr"))["employees"] == 45
        assert await c.company("nowhere.com") is None  # 404 = unknown company, not an error
        await c.aclose()
    with serve(web_search.make_app()[0]) as base:
        w = WebSearchAdapter("ws", base_url=base)
        assert (await w.search("Gülüş Diş"))[0]["url"] == "https://example.com.tr"
        await w.aclose()
    with serve(FakeGraph(token="page-token").app) as base:
        m = GraphAdapter(base)
        payload = GraphAdapter.lead_payload(await m.lead("4444000000001", "page-token"))
        assert payload["contact_name"] == "Dr. Ayşe Kılıç" and payload["phone"] == "+905321112233"
        assert payload["answers"] == {"hangi_tedavi": "implant"} and payload["external_id"] == "4444000000001"
        await m.aclose()
    with serve(apify.make_app()[0]) as base:
        ap = ApifyAdapter("apify-token", base_url=base)
        assert [i["company_name"] for i in await ap.dataset_items("ds1")] == ["Deniz Otel", "Kuzey Lojistik"]
        await ap.aclose()
    with serve(google_places.make_app()[0]) as base:
        g = GooglePlacesAdapter("places-key", base_url=base)
        places = await g.search_text("diş kliniği izmir")
        assert places[0]["company_name"] == "Ege Diş Kliniği" and places[0]["website"] == "https://egedis.com.tr/"
        await g.aclose()
    app, modes = slack.make_app()
    with serve(app) as base:
        s = SlackAdapter(f"{base}/services/T0/B0/x")
        await s.post("deneme")
        assert modes.calls == [{"text": "deneme"}]
        await s.aclose()


@pytest.mark.parametrize("mode,code", [("timeout", "timeout"), ("500", "http_500"), ("malformed", "malformed_json"),
                                       ("wrong_schema", "wrong_schema")])
async def test_adapter_failures_are_classified(mode, code):
    app, modes = apollo.make_app()
    modes.default = mode
    modes.delay = 1.0
    with serve(app) as base:
        a = ApolloAdapter("apollo-key", base_url=base, timeout=0.3, retries=0)
        with pytest.raises(AdapterError) as err:
            await a.enrich_organization("gulusdis.com.tr")
        assert err.value.code == code and err.value.retryable
        await a.aclose()


async def test_429_retry_after_is_honoured():
    app, modes = hunter.make_app()
    modes.queue = ["429"]
    with serve(app) as base:
        h = HunterAdapter("hunter-key", base_url=base, retries=2)
        started = time.monotonic()
        assert (await h.verify("ali@firma.com"))["result"] == "deliverable"
        assert time.monotonic() - started >= 1.0, "waited for Retry-After: 1"
        assert len(modes.calls) == 2
        await h.aclose()


def enable(conn, feature, config, tenant=DEMO):
    conn.execute("""insert into tenant_features (tenant_id, feature, enabled, config) values (%s, %s, true, %s)
                    on conflict (tenant_id, feature) do update set enabled = true, config = excluded.config""",
                 (tenant, feature, Jsonb(config)))


def only_demo_lead(conn, company="Gülüş Ağız ve Diş Sağlığı Polikliniği"):
    """Keep one seeded lead to watch (the others are finished first, so they do not call the fakes)."""
    lead = conn.execute("select id from leads where company_name = %s", (company,)).fetchone()["id"]
    conn.execute("delete from leads where id <> %s", (lead,))
    return lead


async def test_enrichment_and_validation_through_the_pipeline(db_url, conn):
    lead = only_demo_lead(conn)
    app, modes = apollo.make_app()
    happ, hmodes = hunter.make_app()
    with serve(app) as base, serve(happ) as hbase:
        enable(conn, "leads.enrich.apollo", {"base_url": base, "api_key": "apollo-key", "retries": 0})
        enable(conn, "leads.validate.hunter", {"base_url": hbase, "api_key": "hunter-key", "retries": 0})
        await run_until(db_url, settled(db_url))
    row = conn.execute("select * from leads where id = %s", (lead,)).fetchone()
    assert row["qualified_at"] is not None and row["lead_category"] == "HOT"
    assert row["enrichment"]["employees"] == 320 and row["company_size_category"] == "Büyük"
    assert row["validation"]["hunter"]["result"] == "deliverable"
    assert "email_verified +10" in row["luna_ai_reason"] and "large_company +10" in row["luna_ai_reason"]
    assert [c["domains"] for c in modes.calls] == [["gulusdis.com.tr"]] and len(hmodes.calls) == 1


async def test_apollo_lookups_of_concurrent_leads_share_bulk_calls():
    """Lookups made together go out as bulk requests of at most 10 domains; unknown ones are None."""
    import asyncio

    from luna.channels.http import KeyBatcher

    app, modes = apollo.make_app({f"firma{i}.com.tr": {"name": f"Firma {i}", "estimated_num_employees": i}
                                  for i in range(23)})
    with serve(app) as base:
        a = ApolloAdapter("apollo-key", base_url=base, retries=0)
        batcher = KeyBatcher(a.enrich_organizations, 10)
        domains = [f"firma{i}.com.tr" for i in range(23)] + ["yok.com.tr", "firma1.com.tr"]
        found = await asyncio.gather(*(batcher.get(d) for d in domains))
        await a.aclose()
    assert [f["employees"] if f else None for f in found] == list(range(23)) + [None, 1]
    sizes = sorted(len(c["domains"]) for c in modes.calls)
    assert sizes == [4, 10, 10] and all(c["path"] == "bulk_enrich" for c in modes.calls)

    app, modes = apollo.make_app()
    modes.queue = ["500"]
    with serve(app) as base:
        a = ApolloAdapter("apollo-key", base_url=base, retries=0)
        batcher = KeyBatcher(a.enrich_organizations, 10)
        results = await asyncio.gather(*(batcher.get(d) for d in ("a.com", "b.com")), return_exceptions=True)
        await a.aclose()
    assert all("HTTP 500" in str(r) for r in results), "every lead of a failed bulk call sees the failure"


async def test_undeliverable_email_rejects_lead_without_phone(db_url, conn):
    lead = only_demo_lead(conn, "Kaya Otel")
    happ, _ = hunter.make_app({"selimkaya@gmail.com"})
    with serve(happ) as hbase:
        enable(conn, "leads.validate.hunter", {"base_url": hbase, "api_key": "hunter-key", "retries": 0})
        await run_until(db_url, settled(db_url))
    row = conn.execute("select * from leads where id = %s", (lead,)).fetchone()
    assert row["processing_status"] == "REJECTED" and row["luna_ai_decision"] == "REJECT"
    assert "email_undeliverable -25" in row["luna_ai_reason"]


@pytest.mark.parametrize("mode", ["500", "malformed", "wrong_schema", "timeout"])
async def test_failing_provider_retries_then_review(db_url, conn, mode):
    lead = only_demo_lead(conn)
    conn.execute("update private.lead_routes set max_attempts = 2 where status = 'NORMALIZED'")
    conn.execute("select private.breaker_configure('apollo', 100, 30)")
    app, modes = apollo.make_app()
    modes.default, modes.delay = mode, 1.0
    with serve(app) as base:
        enable(conn, "leads.enrich.apollo", {"base_url": base, "api_key": "apollo-key", "retries": 0, "timeout": 0.3})
        await run_until(db_url, settled(db_url), timeout=20)
    row = conn.execute("select * from leads where id = %s", (lead,)).fetchone()
    assert row["processing_status"] == "HUMAN_REVIEW_NEEDED" and row["next_orchestrator_module"] is None
    assert row["last_error"] and "apollo" in row["last_error"]
    logs = conn.execute("select result, error from processing_logs where lead_id = %s and module = 'enrich' order by id",
                        (lead,)).fetchall()
    assert [l["result"] for l in logs] == ["retry", "error"] and all(l["error"] for l in logs)
    assert len(modes.calls) == 2


async def test_breaker_opens_leads_wait_then_recover(db_url, conn):
    lead = only_demo_lead(conn)
    conn.execute("select private.breaker_configure('apollo', 1, 30)")  # opens at the first failure
    app, modes = apollo.make_app()
    modes.default = "500"
    with serve(app) as base:
        enable(conn, "leads.enrich.apollo", {"base_url": base, "api_key": "apollo-key", "retries": 0})

        async def breaker_open_and_waiting():
            async with await psycopg.AsyncConnection.connect(db_url) as c:
                state = (await (await c.execute("select health_status from module_health where module_name = 'apollo'")).fetchone())
                waits = (await (await c.execute("select count(*) from processing_logs where result = 'wait'")).fetchone())[0]
                return state is not None and state[0] in ("OPEN", "HALF_OPEN") and waits > 0
        await run_until(db_url, breaker_open_and_waiting, timeout=20)
        row = conn.execute("select * from leads where id = %s", (lead,)).fetchone()
        assert row["processing_status"] == "NORMALIZED" and row["next_orchestrator_module"] == "enrich", "waiting, not failed"
        assert conn.execute("select attempts from leads where id = %s", (lead,)).fetchone()["attempts"] <= 1
        modes.default = "ok"  # the provider recovers; the cooldown ends: the half-open probe closes the breaker
        conn.execute("select private.breaker_configure('apollo', 1, 1)")
        time.sleep(1.1)
        conn.execute("update leads set next_attempt_at = now() where id = %s", (lead,))
        await run_until(db_url, settled(db_url), timeout=20)
    row = conn.execute("select * from leads where id = %s", (lead,)).fetchone()
    assert row["qualified_at"] is not None and row["enrichment"]["employees"] == 320
    assert conn.execute("select health_status from module_health where module_name = 'apollo'").fetchone()["health_status"] == "CLOSED"


async def test_mx_and_website_checks(db_url, conn, monkeypatch):
    import dns.asyncresolver
    import dns.resolver
    from fastapi import FastAPI

    looked_up = []

    async def fake_resolve(domain, rdtype, lifetime=None):
        looked_up.append((domain, rdtype))
        if domain == "gulusdis.com.tr":
            return ["10 mx.gulusdis.com.tr."]
        raise dns.resolver.NXDOMAIN()

    monkeypatch.setattr(dns.asyncresolver, "resolve", fake_resolve)
    site = FastAPI()

    @site.head("/")
    async def home():
        return {}

    gulus = only_demo_lead(conn)
    other = conn.execute("select lead_id from private.ingest_lead(%s, 'form', %s)",
                         (DEMO, Jsonb({"company_name": "Yok Alan", "email": "ali@yokalan-xyz.com.tr", "phone": "05321112299"}))
                         ).fetchone()["lead_id"]
    # A site that refuses connections (an address ingestion would not take as a company website).
    conn.execute("update leads set website = 'http://127.0.0.1:9/' where id = %s", (other,))
    with serve(site) as base:
        conn.execute("update leads set website = %s where id = %s", (base + "/", gulus))
        enable(conn, "leads.validate.mx", {"timeout": 1})
        enable(conn, "leads.validate.website", {"timeout": 1})
        await run_until(db_url, settled(db_url))
    g = conn.execute("select * from leads where id = %s", (gulus,)).fetchone()
    o = conn.execute("select * from leads where id = %s", (other,)).fetchone()
    assert g["validation"]["mx"] is True and g["validation"]["website_reachable"] is True
    assert o["validation"]["mx"] is False and o["validation"]["website_reachable"] is False
    assert "no_mx_record -15" in o["luna_ai_reason"] and "website_unreachable -5" in o["luna_ai_reason"]
    assert ("gulusdis.com.tr", "MX") in looked_up


async def test_key_batcher_answers_keys_asked_while_a_bulk_call_is_in_flight():
    """Lookups arriving while the first bulk call runs (handlers that awaited something first) are
    answered by a later round, never left waiting."""
    import asyncio

    from luna.channels.http import KeyBatcher

    calls = []

    async def fetch_many(keys):
        calls.append(list(keys))
        await asyncio.sleep(0.05)
        return {k: k.upper() for k in keys}

    batcher = KeyBatcher(fetch_many, limit=10)

    async def late(key, delay):
        await asyncio.sleep(delay)
        return await batcher.get(key)

    got = await asyncio.wait_for(asyncio.gather(*(late(f"k{i}", 0.02 * (i % 5)) for i in range(25))), timeout=5)
    assert got == [f"K{i}" for i in range(25)]
    assert len(calls) >= 2
