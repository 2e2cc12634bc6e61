-- Lead pipeline demo data for both demo tenants (idempotent): the leads.* feature switches, lead
-- sources (a landing-page form key, a Meta page) and sample leads that the worker takes from RAW to
-- QUALIFIED with the offline AI.
insert into public.features (key, description, default_enabled) values
  ('leads.enrichment', 'Lead enrichment step (Apollo, Clearbit-style lookup, web search when enabled)', true),
  ('leads.enrich.apollo', 'Enrich leads with Apollo.io organization enrich', false),
  ('leads.enrich.clearbit', 'Enrich leads with a Clearbit-style company lookup', false),
  ('leads.enrich.web_search', 'Enrich leads with a web search result', false),
  ('leads.validate.hunter', 'Verify e-mail addresses with Hunter', false),
  ('leads.validate.mx', 'Check e-mail domains have MX records (DNS)', false),
  ('leads.validate.website', 'Check the website answers (short timeout)', false),
  ('leads.alerts.slack', 'Send critical lead pipeline alerts to a Slack webhook', false)
on conflict (key) do nothing;

insert into public.lead_sources (id, tenant_id, kind, name, form_key, config) values
  ('00000000-0000-4000-8004-000000000001', '00000000-0000-4000-8000-000000000001', 'form', 'Web sitesi formu',
   'demo-form-key-0001', '{}'),
  ('00000000-0000-4000-8004-000000000002', '00000000-0000-4000-8000-000000000001', 'meta', 'Meta Lead Ads',
   null, '{"page_id": "100000000000001"}'),
  ('00000000-0000-4000-8004-000000000003', '00000000-0000-4000-8000-000000000002', 'form', 'Kampanya formu',
   'demo2-form-key-0002', '{}'),
  ('00000000-0000-4000-8004-000000000004', '00000000-0000-4000-8000-000000000002', 'meta', 'Meta Lead Ads',
   null, '{"page_id": "100000000000002"}')
on conflict (id) do nothing;

-- Sample leads (only once per tenant).
select private.ingest_lead(s.tenant::uuid, s.source, s.payload::jsonb)
from (values
  ('00000000-0000-4000-8000-000000000001', 'form', '{"company_name": "Gülüş Ağız ve Diş Sağlığı Polikliniği", "contact_name": "Dr. Ayşe Kılıç", "email": "ayse@gulusdis.com.tr", "phone": "0532 111 22 33", "website": "https://www.gulusdis.com.tr", "city": "İstanbul", "country": "TR", "utm_source": "google", "utm_medium": "cpc", "utm_campaign": "implant-kasim"}'),
  ('00000000-0000-4000-8000-000000000001', 'meta', '{"company_name": "Ege Estetik Klinik", "contact_name": "Murat Öz", "email": "murat@egeestetik.com", "phone": "+90 533 222 33 44", "city": "İzmir", "country": "TR", "utm_source": "facebook", "utm_medium": "paid_social"}'),
  ('00000000-0000-4000-8000-000000000001', 'csv', '{"company_name": "Kaya Otel", "contact_name": "Selim Kaya", "email": "selimkaya@gmail.com", "city": "Antalya", "country": "TR"}'),
  ('00000000-0000-4000-8000-000000000001', 'form', '{"company_name": "Ilgaz Yazılım A.Ş.", "contact_name": "Işıl Ilgaz", "email": "isil@ilgazyazilim.com", "phone": "0212 444 55 66", "website": "ilgazyazilim.com", "city": "Ankara", "country": "TR", "utm_source": "linkedin", "utm_medium": "cpc"}'),
  ('00000000-0000-4000-8000-000000000002', 'form', '{"company_name": "Anadolu Mobilya", "contact_name": "Hakan Yurt", "email": "hakan@anadolumobilya.com.tr", "phone": "0544 333 44 55", "website": "anadolumobilya.com.tr", "city": "Bursa", "country": "TR", "utm_source": "instagram", "utm_medium": "paid_social"}'),
  ('00000000-0000-4000-8000-000000000002', 'csv', '{"company_name": "Deniz Butik", "contact_name": "Deniz Ak", "phone": "0555 666 77 88", "city": "Mersin", "country": "TR"}'),
  ('00000000-0000-4000-8000-000000000002', 'meta', '{"company_name": "Çınar E-Ticaret Ltd.", "contact_name": "Cem Çınar", "email": "cem@cinareticaret.com", "phone": "0216 555 66 77", "website": "https://cinareticaret.com/magaza", "city": "İstanbul", "country": "TR"}')
) as s(tenant, source, payload)
where not exists (select 1 from public.leads l where l.tenant_id = s.tenant::uuid);

-- A metrics row per tenant, so dashboards have a shape before the worker first runs.
insert into public.system_metrics (tenant_id, module, bucket, processed, errors, total_ms, max_ms)
select t.id, 'ingest', date_trunc('minute', now()), (select count(*) from public.leads l where l.tenant_id = t.id), 0, 0, 0
from public.tenants t where t.slug in ('demo', 'demo-2')
on conflict (tenant_id, module, bucket) do nothing;

-- A second person of one sample company per tenant (public.lead_contacts), merged by the company domain.
select private.ingest_lead(s.tenant::uuid, 'form', s.payload::jsonb)
from (values
  ('00000000-0000-4000-8000-000000000001', '{"company_name": "Ilgaz Yazılım A.Ş.", "contact_name": "Kerem Ilgaz", "email": "kerem@ilgazyazilim.com"}'),
  ('00000000-0000-4000-8000-000000000002', '{"company_name": "Anadolu Mobilya", "contact_name": "Sevgi Yurt", "email": "sevgi@anadolumobilya.com.tr"}')
) as s(tenant, payload)
where not exists (select 1 from public.lead_contacts c where c.tenant_id = s.tenant::uuid);
