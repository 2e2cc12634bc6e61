"""The AI provider interface: offline rules (deterministic, reasons name the rules), the openai
provider against an OpenAI-compatible fake (JSON-schema structured output, wrong answers refused),
hashed embeddings; scheduled pulls and Slack alerts through their fakes."""

import json

import pytest
from fastapi import FastAPI, Request
from psycopg.types.json import Jsonb

from luna import ai
from worker.errors import JobError

from .conftest import DEMO
from .fakes import apify, google_places, serve, slack


def test_offline_rules_are_deterministic_and_named():
    p = ai.OfflineProvider()
    lead = {"company_name": "Ege Estetik Klinik", "email": "murat@egeestetik.com", "domain_cleaned": "egeestetik.com",
            "phone": "+905332223344", "source": "meta", "utm_medium": "paid_social", "contact_name": "Murat"}
    a, b = p.qualify_sync(lead), p.qualify_sync(dict(lead))
    assert a == b and a.decision == "OK" and a.score == 90 and a.sector == "Sağlık"
    assert a.reason.startswith("Score 90") and "warm_source +10" in a.reason and len(a.reason.split()) <= 50
    assert ai.category(a.score) == "HOT" and ai.category(45) == "WARM" and ai.category(39) == "COLD"
    assert ai.category(60, hot=60, warm=30) == "HOT"
    assert p.qualify_sync({"company_name": "Deneme", "email": "x@deneme.com"}).decision == "REJECT"
    assert p.qualify_sync({"company_name": "Kurum", "website": "kurum.com"}).decision == "HUMAN"
    big = p.qualify_sync({**lead, "enrichment": {"employees": 1200}})
    assert big.size == "Kurumsal" and "large_company" in big.rules


def openai_fake(answer):
    app = FastAPI()
    seen = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        seen.append(body)
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1764000000, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await request.json()
        seen.append(body)
        return {"object": "list", "model": body["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1},
                "data": [{"object": "embedding", "index": i, "embedding": [0.0] * body["dimensions"]}
                         for i, _ in enumerate(body["input"])]}

    return app, seen


async def test_openai_provider_structured_output():
    answer = json.dumps({"score": 72, "decision": "OK", "reason": "Kurumsal alan adı ve telefon var.",
                         "sector_category": "Sağlık", "company_size_category": "Orta"})
    app, seen = openai_fake(answer)
    with serve(app) as base:
        p = ai.OpenAIProvider("sk-test", base_url=f"{base}/v1", model="test-model")
        q = await p.qualify({"company_name": "Gülüş Diş", "email": "a@gulus.com"}, {"hot": 70})
        assert (q.score, q.decision, q.provider, q.model, q.prompt_version) == (72, "OK", "openai", "test-model", ai.PROMPT_VERSION)
        fmt = seen[0]["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
        assert fmt["json_schema"]["schema"]["properties"]["decision"]["enum"] == ["OK", "HUMAN", "REJECT"]


@pytest.mark.parametrize("answer,code", [("{not json", "malformed_json"),
                                         (json.dumps({"score": 500, "decision": "MAYBE"}), "wrong_schema")])
async def test_openai_provider_refuses_bad_answers(answer, code):
    app, _ = openai_fake(answer)
    with serve(app) as base:
        p = ai.OpenAIProvider("sk-test", base_url=f"{base}/v1", model="m")
        with pytest.raises(JobError) as err:
            await p.qualify({"company_name": "X"})
        assert err.value.code == code and err.value.retryable


async def test_embeddings_offline_and_openai():
    from luna.settings import Settings

    offline = Settings(OPENAI_API_KEY=None)
    vecs, prov = await ai.embed(["İstanbul diş kliniği", "istanbul diş klinikleri", "lojistik firması"], settings=offline)
    assert prov == {"provider": "offline", "model": "hashed-384"} and all(len(v) == 384 for v in vecs)
    cos = lambda a, b: sum(x * y for x, y in zip(a, b))
    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2])
    app, seen = openai_fake("")
    with serve(app) as base:
        online = Settings(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=f"{base}/v1")
        vecs, prov = await ai.embed(["a", "b"], settings=online)
    assert prov["provider"] == "openai" and len(vecs[0]) == 384 and seen[-1]["dimensions"] == 384
    assert seen[-1]["model"] == "text-embedding-3-small"


class Ctx:
    def __init__(self, pool):
        from worker.breaker import Breaker

        self.pool, self.breaker, self.adapters = pool, Breaker(pool), {}

    def adapter(self, name, factory):
        return self.adapters.setdefault(name, factory())


async def test_scheduled_pulls_and_slack_alerts(db_url, conn):
    from worker.leads import jobs
    from worker.runner import open_pool

    from .fakes import apollo

    aapp, _ = apify.make_app()
    papp, pmodes = apollo.make_app()
    gapp, gmodes = google_places.make_app()
    sapp, smodes = slack.make_app()
    pool = await open_pool(db_url)
    try:
        with serve(aapp) as abase, serve(gapp) as gbase, serve(sapp) as sbase, serve(papp) as pbase:
            conn.execute("""insert into lead_sources (tenant_id, kind, name, config, pull_every_seconds) values
                (%s, 'apify', 'Apify oteller', %s, 3600), (%s, 'google_places', 'Places', %s, 3600),
                (%s, 'apollo', 'Apollo arama', %s, 3600)""",
                (DEMO, Jsonb({"base_url": abase, "api_key": "apify-token", "dataset_id": "ds1"}),
                 DEMO, Jsonb({"base_url": gbase, "api_key": "places-key", "text_query": "diş kliniği izmir"}),
                 DEMO, Jsonb({"base_url": pbase, "api_key": "apollo-key", "query": {"q_keywords": "diş"}})))
            ctx = Ctx(pool)
            await jobs.pull_due_sources(ctx)
            leads = {r["company_name"]: r for r in conn.execute("select * from leads where source in ('apify', 'google_places', 'apollo')")}
            assert set(leads) == {"Deniz Otel", "Kuzey Lojistik", "Ege Diş Kliniği", "Ak Yapı"}
            # Apollo's Gülüş Diş person merged into the seeded clinic (same domain), no duplicate
            gulus = conn.execute("select raw from leads where domain_cleaned = 'gulusdis.com.tr'").fetchall()
            assert len(gulus) == 1 and "apollo" in gulus[0]["raw"]
            assert pmodes.calls[0]["body"]["q_keywords"] == "diş"
            assert leads["Ege Diş Kliniği"]["phone"] == "+902324445566" and leads["Deniz Otel"]["domain_cleaned"] == "denizotel.com.tr"
            assert gmodes.calls[0]["body"]["textQuery"] == "diş kliniği izmir"
            pulled = conn.execute("select last_pulled_at, last_error from lead_sources where kind = 'apify'").fetchone()
            assert pulled["last_pulled_at"] is not None and pulled["last_error"] is None
            await jobs.pull_due_sources(ctx)  # not due again: nothing fetched twice
            assert len(gmodes.calls) == 1

            conn.execute("insert into tenant_features (tenant_id, feature, enabled, config) values (%s, 'leads.alerts.slack', true, %s)",
                         (DEMO, Jsonb({"webhook_url": f"{sbase}/services/T0/B0/x"})))
            assert await jobs.send_alerts(ctx) == 0  # the first run sets the mark (private.cursors)
            lead = leads["Deniz Otel"]["id"]
            conn.execute("""insert into processing_logs (tenant_id, lead_id, module, action, result, to_status, error)
                            values (%s, %s, 'enrich', 'attempt', 'error', 'HUMAN_REVIEW_NEEDED', 'apollo answered HTTP 500')""",
                         (DEMO, lead))
            assert await jobs.send_alerts(ctx) == 1
            assert "HUMAN_REVIEW_NEEDED" in smodes.calls[0]["text"] and "apollo answered HTTP 500" in smodes.calls[0]["text"]
            notes = conn.execute("select n.kind, n.data, m.role from notifications n join tenant_members m "
                                 "on m.user_id = n.user_id and m.tenant_id = n.tenant_id where n.kind = 'lead_alert'").fetchall()
            assert {n["role"] for n in notes} == {"owner", "admin", "supervisor"}  # the CRM area's notifications
            assert all(n["data"]["lead_id"] == str(lead) for n in notes)
            # The position is in the database: another run (a restart, another worker) repeats nothing.
            assert await jobs.send_alerts(ctx) == 0 and len(smodes.calls) == 1
            for a in ctx.adapters.values():
                await a.aclose()
    finally:
        await pool.close()


async def test_pipeline_with_openai_provider_and_enrichment_switched_off(db_url, conn, monkeypatch):
    from worker.leads import handlers

    from .test_leads_adapters import only_demo_lead
    from .test_leads_pipeline import run_until, settled

    answer = json.dumps({"score": 41, "decision": "OK", "reason": "Klinik, kurumsal e-posta.",
                         "sector_category": "Sağlık", "company_size_category": "Orta"})
    app, seen = openai_fake(answer)
    lead = only_demo_lead(conn)
    conn.execute("insert into tenant_features (tenant_id, feature, enabled) values (%s, 'leads.enrichment', false)", (DEMO,))
    with serve(app) as base:
        monkeypatch.setattr(handlers, "_provider", ai.OpenAIProvider("sk-test", base_url=f"{base}/v1", model="gpt-test"))
        await run_until(db_url, settled(db_url))
    row = conn.execute("select * from leads where id = %s", (lead,)).fetchone()
    assert (row["ai_provider"], row["ai_model"], row["ai_prompt_version"]) == ("openai", "gpt-test", ai.PROMPT_VERSION)
    assert row["luna_ai_score"] == 41 and row["lead_category"] == "WARM" and row["company_size_category"] == "Orta"
    assert row["qualified_at"] is not None and len(seen) == 1
    enrich = conn.execute("select detail from processing_logs where lead_id = %s and module = 'enrich'", (lead,)).fetchone()
    assert enrich["detail"] == {"skipped": "leads.enrichment is off"}
    qualify = conn.execute("select detail from processing_logs where lead_id = %s and module = 'qualify'", (lead,)).fetchone()
    assert qualify["detail"]["provider"] == "openai" and qualify["detail"]["model"] == "gpt-test"
