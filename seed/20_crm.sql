-- CRM demo data for both demo tenants (idempotent: fixed ids, on conflict do nothing). Pipelines,
-- stages, stage rules, activity types and CRM settings come from private.crm_setup_tenant (tenant trigger).
select private.crm_setup_tenant(t.id) from public.tenants t where t.slug in ('demo', 'demo-2');

-- Customers. demo: agent has Ahmet, agent2 has Fatma, nobody has Hakan. demo-2: agent has Deniz.
insert into public.customers (id, tenant_id, full_name, phone, email, region, source, campaign, utm_source, utm_medium,
                              utm_campaign, responsibles, quality_score, last_contact_at, tags) values
  ('00000000-0000-4000-8005-000000000101', '00000000-0000-4000-8000-000000000001', 'Ahmet Yıldız', '+905321112233',
   'ahmet@example.com', 'İstanbul', 'instagram', 'kasim-kampanya', 'instagram', 'paid', 'kasim-kampanya',
   '{00000000-0000-4000-8001-000000000014}', 80, now() - interval '1 day', '{vip}'),
  ('00000000-0000-4000-8005-000000000102', '00000000-0000-4000-8000-000000000001', 'Fatma Koç', '+905334445566',
   'fatma@example.com', 'Ankara', 'web', 'google-arama', 'google', 'cpc', 'google-arama',
   '{00000000-0000-4000-8001-000000000016}', 60, now() - interval '10 days', '{}'),
  ('00000000-0000-4000-8005-000000000103', '00000000-0000-4000-8000-000000000001', 'Hakan Çınar', '+905357778899',
   null, 'İzmir', 'whatsapp', null, null, null, null, '{}', 40, null, '{geri-arama}'),
  ('00000000-0000-4000-8005-000000000201', '00000000-0000-4000-8000-000000000002', 'Deniz Ak', '+905301234567',
   'deniz@example.com', 'İstanbul', 'meta_form', 'yaz-indirimi', 'facebook', 'paid', 'yaz-indirimi',
   '{00000000-0000-4000-8001-000000000024}', 70, now() - interval '2 days', '{vip}'),
  ('00000000-0000-4000-8005-000000000202', '00000000-0000-4000-8000-000000000002', 'Merve Tan', '+905309876543',
   null, 'Bursa', 'web', null, null, null, null, '{}', 30, null, '{}')
on conflict (id) do nothing;

-- A past merge on each tenant (the duplicate's snapshot).
insert into public.customer_merges (id, tenant_id, survivor_id, merged_id, merged_snapshot, moved) values
  ('00000000-0000-4000-8005-000000000901', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8005-000000000101',
   '00000000-0000-4000-8005-000000000199', '{"full_name": "Ahmet Yildiz", "email": "a.yildiz@example.com"}', '{"public.notes": 1}'),
  ('00000000-0000-4000-8005-000000000902', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8005-000000000201',
   '00000000-0000-4000-8005-000000000299', '{"full_name": "Deniz A.", "phone": "+905301234568"}', '{}')
on conflict (id) do nothing;

-- Inventory: units of a project on demo, products on demo-2; one sold on each.
insert into public.inventory_items (id, tenant_id, kind, project, code, name, price, status, customer_id) values
  ('00000000-0000-4000-8005-000000000301', '00000000-0000-4000-8000-000000000001', 'unit', 'Deniz Evleri', 'DE-A1', 'A Blok 1 No', 4500000, 'available', null),
  ('00000000-0000-4000-8005-000000000302', '00000000-0000-4000-8000-000000000001', 'unit', 'Deniz Evleri', 'DE-A2', 'A Blok 2 No', 4700000, 'available', null),
  ('00000000-0000-4000-8005-000000000303', '00000000-0000-4000-8000-000000000001', 'plot', 'Bağ Arsaları', 'BA-07', 'Parsel 7', 900000, 'sold', '00000000-0000-4000-8005-000000000103'),
  ('00000000-0000-4000-8005-000000000401', '00000000-0000-4000-8000-000000000002', 'product', null, 'SKU-100', 'Koltuk Takımı', 35000, 'available', null),
  ('00000000-0000-4000-8005-000000000402', '00000000-0000-4000-8000-000000000002', 'product', null, 'SKU-200', 'Yemek Masası', 18000, 'sold', '00000000-0000-4000-8005-000000000202')
on conflict (id) do nothing;
insert into public.inventory_sales (id, tenant_id, item_id, customer_id, price) values
  ('00000000-0000-4000-8005-000000000351', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8005-000000000303', '00000000-0000-4000-8005-000000000103', 900000),
  ('00000000-0000-4000-8005-000000000451', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8005-000000000402', '00000000-0000-4000-8005-000000000202', 18000)
on conflict (id) do nothing;

-- Cards in the default pipeline.
insert into public.cards (id, tenant_id, pipeline_id, stage_id, customer_id, title, value)
select v.id::uuid, v.tenant::uuid, p.id, s.id, v.customer::uuid, v.title, v.value
from (values
  ('00000000-0000-4000-8005-000000000501', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8005-000000000101', 'Potansiyel', 'A Blok daire', 4500000),
  ('00000000-0000-4000-8005-000000000502', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8005-000000000102', 'Görüşülüyor', 'Bahçeli daire', 3900000),
  ('00000000-0000-4000-8005-000000000503', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8005-000000000103', 'Potansiyel', 'Arsa', 900000),
  ('00000000-0000-4000-8005-000000000601', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8005-000000000201', 'Potansiyel', 'Salon takımı', 35000),
  ('00000000-0000-4000-8005-000000000602', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8005-000000000202', 'Randevu', 'Mutfak', 18000)
) as v(id, tenant, customer, stage, title, value)
join public.pipelines p on p.tenant_id = v.tenant::uuid and p.is_default
join public.pipeline_stages s on s.pipeline_id = p.id and s.name = v.stage
on conflict (id) do nothing;

-- Activities, notes, reminders.
insert into public.activities (id, tenant_id, customer_id, card_id, type_id, title, scheduled_at, assigned_to)
select v.id::uuid, v.tenant::uuid, v.customer::uuid, v.card::uuid, t.id, v.title, now() + v.delay::interval, v.assignee::uuid
from (values
  ('00000000-0000-4000-8005-000000000701', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8005-000000000101',
   '00000000-0000-4000-8005-000000000501', 'appointment', 'Şantiye gezisi', '2 days', '00000000-0000-4000-8001-000000000014'),
  ('00000000-0000-4000-8005-000000000702', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8005-000000000102',
   '00000000-0000-4000-8005-000000000502', 'call', 'Fiyat bilgisi', '0 days', '00000000-0000-4000-8001-000000000016'),
  ('00000000-0000-4000-8005-000000000801', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8005-000000000201',
   '00000000-0000-4000-8005-000000000601', 'appointment', 'Mağaza ziyareti', '1 day', '00000000-0000-4000-8001-000000000024')
) as v(id, tenant, customer, card, type, title, delay, assignee)
join public.activity_types t on t.tenant_id = v.tenant::uuid and t.key = v.type
on conflict (id) do nothing;

insert into public.notes (id, tenant_id, customer_id, card_id, body, author_id) values
  ('00000000-0000-4000-8005-000000000711', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8005-000000000101',
   '00000000-0000-4000-8005-000000000501', 'Deniz manzaralı daire istiyor, bütçe 5M.', '00000000-0000-4000-8001-000000000014'),
  ('00000000-0000-4000-8005-000000000811', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8005-000000000201',
   '00000000-0000-4000-8005-000000000601', 'Renk seçeneklerini sordu.', '00000000-0000-4000-8001-000000000024')
on conflict (id) do nothing;

insert into public.reminders (id, tenant_id, customer_id, card_id, owner_id, title, due_at) values
  ('00000000-0000-4000-8005-000000000721', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8005-000000000102',
   '00000000-0000-4000-8005-000000000502', '00000000-0000-4000-8001-000000000016', 'Fatma Hanım''ı geri ara', now() + interval '1 day'),
  ('00000000-0000-4000-8005-000000000821', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8005-000000000201',
   '00000000-0000-4000-8005-000000000601', '00000000-0000-4000-8001-000000000024', 'Teklif gönder', now() + interval '1 day')
on conflict (id) do nothing;

insert into public.notifications (id, tenant_id, user_id, kind, title, customer_id) values
  ('00000000-0000-4000-8005-000000000731', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8001-000000000014',
   'customer_assigned', 'Ahmet Yıldız size atandı', '00000000-0000-4000-8005-000000000101'),
  ('00000000-0000-4000-8005-000000000831', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8001-000000000024',
   'customer_assigned', 'Deniz Ak size atandı', '00000000-0000-4000-8005-000000000201')
on conflict (id) do nothing;

-- Work orders with ordered steps (progress derives from the steps).
insert into public.work_orders (id, tenant_id, customer_id, title, description, responsibles) values
  ('00000000-0000-4000-8005-000000000741', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8005-000000000101',
   'Sözleşme hazırlığı', 'Tapu ve sözleşme evrakları', '{00000000-0000-4000-8001-000000000014}'),
  ('00000000-0000-4000-8005-000000000841', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8005-000000000202',
   'Teslimat', 'Masa teslimatı ve kurulum', '{00000000-0000-4000-8001-000000000024}')
on conflict (id) do nothing;
insert into public.work_order_steps (id, tenant_id, work_order_id, position, title, done_at, done_by) values
  ('00000000-0000-4000-8005-000000000751', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8005-000000000741', 1, 'Kimlik fotokopisi', now(), '00000000-0000-4000-8001-000000000014'),
  ('00000000-0000-4000-8005-000000000752', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8005-000000000741', 2, 'Sözleşme taslağı', null, null),
  ('00000000-0000-4000-8005-000000000851', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8005-000000000841', 1, 'Depodan çıkış', null, null)
on conflict (id) do nothing;

insert into public.assignment_rules (id, tenant_id, priority, match, assignee) values
  ('00000000-0000-4000-8005-000000000761', '00000000-0000-4000-8000-000000000001', 10, '{"region": "Ankara"}', '00000000-0000-4000-8001-000000000016'),
  ('00000000-0000-4000-8005-000000000861', '00000000-0000-4000-8000-000000000002', 10, '{"source": "instagram"}', '00000000-0000-4000-8001-000000000024')
on conflict (id) do nothing;

insert into public.features (key, description, default_enabled) values
  ('crm.zoho_sync', 'Customers and deals are sent to Zoho CRM', false)
on conflict (key) do nothing;
