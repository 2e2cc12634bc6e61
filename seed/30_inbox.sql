-- Inbox demo data for both demo tenants (idempotent). Channel credentials are not seeded: the demo
-- channels point at nothing real; `luna up` users add their own (encrypted, see docs/inbox.md).
insert into public.channel_accounts (id, tenant_id, kind, name, external_id, display_handle, settings) values
  ('00000000-0000-4000-8006-000000000101', '00000000-0000-4000-8000-000000000001', 'whatsapp', 'Klinik WhatsApp',
   'demo-phone-number-1', '+90 212 555 01 01', '{"rate_per_s": 80, "waba_id": "demo-waba-1"}'),
  ('00000000-0000-4000-8006-000000000102', '00000000-0000-4000-8000-000000000001', 'email', 'Klinik e-posta',
   'info@demo-klinik.example', 'info@demo-klinik.example', '{"imap_host": "127.0.0.1", "imap_port": 993, "smtp_host": "127.0.0.1", "smtp_port": 587, "folders": ["INBOX"]}'),
  ('00000000-0000-4000-8006-000000000103', '00000000-0000-4000-8000-000000000001', 'webchat', 'Web sitesi sohbeti',
   'demo-widget-1', null, '{}'),
  ('00000000-0000-4000-8006-000000000201', '00000000-0000-4000-8000-000000000002', 'whatsapp', 'Mağaza WhatsApp',
   'demo-phone-number-2', '+90 216 555 02 02', '{"rate_per_s": 80}'),
  ('00000000-0000-4000-8006-000000000202', '00000000-0000-4000-8000-000000000002', 'instagram', 'Mağaza Instagram',
   'demo-ig-2', '@demo_magaza', '{}')
on conflict (id) do nothing;

insert into public.agent_availability (tenant_id, user_id, status, teams, skills) values
  ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8001-000000000014', 'online', '{satis}', '{tr,en}'),
  ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8001-000000000016', 'online', '{satis}', '{tr}'),
  ('00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8001-000000000024', 'online', '{destek}', '{tr}')
on conflict (tenant_id, user_id) do nothing;

insert into public.routing_rules (id, tenant_id, channel_account_id, strategy, team, position) values
  ('00000000-0000-4000-8006-000000000111', '00000000-0000-4000-8000-000000000001', null, 'round_robin', 'satis', 100),
  ('00000000-0000-4000-8006-000000000211', '00000000-0000-4000-8000-000000000002', null, 'least_busy', null, 100)
on conflict (id) do nothing;

insert into public.contacts (id, tenant_id, channel, handle, display_name, phone, attribution) values
  ('00000000-0000-4000-8006-000000000121', '00000000-0000-4000-8000-000000000001', 'whatsapp', '905321112233',
   'Deniz Aksoy', '+905321112233', '{"source": "ctwa", "source_id": "120200000000001", "headline": "İmplant kampanyası"}'),
  ('00000000-0000-4000-8006-000000000221', '00000000-0000-4000-8000-000000000002', 'whatsapp', '905334445566',
   'Merve Yıldız', '+905334445566', null)
on conflict (id) do nothing;

insert into public.conversations (id, tenant_id, channel_account_id, contact_id, status, assignee_id, team,
                                  last_inbound_at, last_message_at, attribution) values
  ('00000000-0000-4000-8006-000000000131', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8006-000000000101',
   '00000000-0000-4000-8006-000000000121', 'open', '00000000-0000-4000-8001-000000000014', 'satis', now(), now(),
   '{"source": "ctwa", "source_id": "120200000000001"}'),
  ('00000000-0000-4000-8006-000000000231', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8006-000000000201',
   '00000000-0000-4000-8006-000000000221', 'open', '00000000-0000-4000-8001-000000000024', null, now(), now(), null)
on conflict (id) do nothing;

insert into public.messages (id, tenant_id, conversation_id, direction, type, body, provider_message_id, status) values
  ('00000000-0000-4000-8006-000000000141', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8006-000000000131',
   'inbound', 'text', 'Merhaba, implant fiyatları hakkında bilgi alabilir miyim?', 'wamid.DEMO1', 'received'),
  ('00000000-0000-4000-8006-000000000142', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8006-000000000131',
   'outbound', 'text', 'Merhaba Deniz Hanım, hemen yardımcı olalım.', 'wamid.DEMO2', 'read'),
  ('00000000-0000-4000-8006-000000000143', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8006-000000000131',
   'internal', 'note', 'Fiyat listesini pazartesi gönder.', null, 'note'),
  ('00000000-0000-4000-8006-000000000241', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8006-000000000231',
   'inbound', 'text', 'Siparişim ne zaman kargoya verilir?', 'wamid.DEMO3', 'received'),
  ('00000000-0000-4000-8006-000000000242', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8006-000000000231',
   'outbound', 'text', 'Bugün kargoya veriliyor.', 'wamid.DEMO4', 'delivered')
on conflict (id) do nothing;

insert into public.conversation_events (id, tenant_id, conversation_id, event, data) values
  ('00000000-0000-4000-8006-000000000151', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8006-000000000131',
   'assigned', '{"to": "00000000-0000-4000-8001-000000000014", "note": "rule round_robin"}'),
  ('00000000-0000-4000-8006-000000000251', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8006-000000000231',
   'assigned', '{"to": "00000000-0000-4000-8001-000000000024", "note": "rule least_busy"}')
on conflict (id) do nothing;

insert into public.conversation_reads (tenant_id, conversation_id, user_id, last_read_at) values
  ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8006-000000000131', '00000000-0000-4000-8001-000000000014', now() - interval '1 hour'),
  ('00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8006-000000000231', '00000000-0000-4000-8001-000000000024', now() - interval '1 hour')
on conflict (conversation_id, user_id) do nothing;

insert into public.message_templates (tenant_id, channel_account_id, name, language, category, status, components, variables) values
  ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8006-000000000101', 'randevu_hatirlatma', 'tr', 'UTILITY', 'APPROVED',
   '[{"type": "BODY", "text": "Merhaba {{1}}, {{2}} tarihli randevunuzu hatırlatırız."}]', 2),
  ('00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8006-000000000201', 'siparis_durumu', 'tr', 'UTILITY', 'APPROVED',
   '[{"type": "BODY", "text": "Merhaba {{1}}, siparişiniz yola çıktı."}]', 1)
on conflict (tenant_id, channel_account_id, name, language) do nothing;

insert into public.outbound_messages (tenant_id, message_id, channel_account_id, kind, recipient, request, idempotency_key,
                                      status, attempts, provider_message_id, sent_at) values
  ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8006-000000000142', '00000000-0000-4000-8006-000000000101',
   'whatsapp', '905321112233', '{"type": "text", "body": "Merhaba Deniz Hanım, hemen yardımcı olalım."}', 'seed-1', 'sent', 1, 'wamid.DEMO2', now()),
  ('00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8006-000000000242', '00000000-0000-4000-8006-000000000201',
   'whatsapp', '905334445566', '{"type": "text", "body": "Bugün kargoya veriliyor."}', 'seed-2', 'sent', 1, 'wamid.DEMO4', now())
on conflict (tenant_id, idempotency_key) do nothing;

insert into public.ad_accounts (id, tenant_id, external_id, name, currency) values
  ('00000000-0000-4000-8006-000000000161', '00000000-0000-4000-8000-000000000001', 'act_1000001', 'Klinik reklam hesabı', 'TRY'),
  ('00000000-0000-4000-8006-000000000261', '00000000-0000-4000-8000-000000000002', 'act_2000002', 'Mağaza reklam hesabı', 'TRY')
on conflict (id) do nothing;

insert into public.ad_objects (tenant_id, ad_account_id, level, external_id, parent_external_id, name, status) values
  ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8006-000000000161', 'ad', '120200000000001', '120210000000001', 'İmplant CTWA', 'ACTIVE'),
  ('00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8006-000000000261', 'ad', '220200000000001', '220210000000001', 'Kış indirimi', 'ACTIVE')
on conflict (tenant_id, level, external_id) do nothing;

insert into public.ad_insights_daily (tenant_id, ad_account_id, level, external_id, day, impressions, clicks, spend, actions) values
  ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8006-000000000161', 'ad', '120200000000001', current_date - 1, 12000, 340, 850.00,
   '[{"action_type": "onsite_conversion.messaging_conversation_started_7d", "value": "41"}]'),
  ('00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8006-000000000261', 'ad', '220200000000001', current_date - 1, 8000, 120, 400.00, '[]')
on conflict (tenant_id, level, external_id, day) do nothing;

insert into public.conversion_events (tenant_id, pixel_id, event_name, event_id, contact_id, status) values
  ('00000000-0000-4000-8000-000000000001', '990000000001', 'Lead', 'lead-seed-1', '00000000-0000-4000-8006-000000000121', 'sent'),
  ('00000000-0000-4000-8000-000000000002', '990000000002', 'Lead', 'lead-seed-2', '00000000-0000-4000-8006-000000000221', 'sent')
on conflict (tenant_id, pixel_id, event_id) do nothing;
