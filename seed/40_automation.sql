-- Automation demo data for both demo tenants (idempotent: fixed ids, on conflict do nothing). The
-- workflows are drafts: a tenant switches one on (status 'active'); events before that start nothing.
insert into public.automation_settings (tenant_id) values
  ('00000000-0000-4000-8000-000000000001'), ('00000000-0000-4000-8000-000000000002')
on conflict (tenant_id) do nothing;

insert into public.automation_templates (id, tenant_id, name, language, body, whatsapp_template, whatsapp_variables) values
  ('00000000-0000-4000-8012-000000000101', '00000000-0000-4000-8000-000000000001', 'takip_24s', 'tr',
   '{{isim|Merhaba}} Bey/Hanım, dünkü talebiniz için {{firma|kliniğimiz}} olarak dönüş yapmak istedik. Uygun bir zaman var mı?',
   null, '{}'),
  ('00000000-0000-4000-8012-000000000102', '00000000-0000-4000-8000-000000000001', 'takip_24s', 'en',
   'Hello {{isim|there}}, following up on your request yesterday. Is there a good time to talk?', null, '{}'),
  ('00000000-0000-4000-8012-000000000103', '00000000-0000-4000-8000-000000000001', 'takip_24s', 'ar',
   'مرحبا {{isim|}}، نتابع طلبك من الأمس. هل هناك وقت مناسب للحديث؟', null, '{}'),
  ('00000000-0000-4000-8012-000000000104', '00000000-0000-4000-8000-000000000001', 'randevu_hatirlat', 'tr',
   'Merhaba {{isim}}, {{randevu_tarihi}} tarihli randevunuzu hatırlatırız.', 'randevu_hatirlatma', '{isim,randevu_tarihi}'),
  ('00000000-0000-4000-8012-000000000201', '00000000-0000-4000-8000-000000000002', 'takip_24s', 'tr',
   'Merhaba {{isim|}}, siparişinizle ilgili yardımcı olabileceğimiz bir konu var mı?', 'siparis_durumu', '{isim}')
on conflict (tenant_id, name, language) do nothing;

insert into public.workflows (id, tenant_id, name, description, status, created_by) values
  ('00000000-0000-4000-8012-000000000111', '00000000-0000-4000-8000-000000000001', 'Lead takibi (T+24 saat)',
   'Yeni lead: 24 saat içinde yanıt yoksa WhatsApp ile takip mesajı; yanıt gelirse sıra biter.', 'draft',
   '00000000-0000-4000-8001-000000000011'),
  ('00000000-0000-4000-8012-000000000211', '00000000-0000-4000-8000-000000000002', 'Yeni müşteri: etiket ve görev',
   'Yeni müşteriye "yeni" etiketi ve sorumlusuna bir arama görevi.', 'draft',
   '00000000-0000-4000-8001-000000000021')
on conflict (id) do nothing;

insert into public.workflow_versions (id, tenant_id, workflow_id, version, definition) values
  ('00000000-0000-4000-8012-000000000112', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8012-000000000111', 1,
   '{"trigger": {"event": "lead.created"}, "exit_on_reply": true,
     "steps": [{"id": "bekle", "type": "delay", "hours": 24},
               {"id": "takip", "type": "send_message", "channel": "whatsapp", "template": "takip_24s"}]}'),
  ('00000000-0000-4000-8012-000000000212', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8012-000000000211', 1,
   '{"trigger": {"event": "customer.created"},
     "steps": [{"id": "etiket", "type": "add_tag", "tag": "yeni"},
               {"id": "gorev", "type": "create_task", "title": "{{ad_soyad|Yeni müşteri}} ile tanışma araması", "due_in": {"hours": 4}}]}')
on conflict (id) do nothing;

-- A finished run with its history on each tenant (what the debugging screen shows).
insert into public.workflow_runs (id, tenant_id, workflow_id, version, status, customer_id, context, end_reason,
                                  started_at, finished_at) values
  ('00000000-0000-4000-8012-000000000121', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8012-000000000111', 1,
   'exited', '00000000-0000-4000-8005-000000000101', '{"event": {"type": "lead.created"}}', 'replied',
   now() - interval '3 days', now() - interval '2 days'),
  ('00000000-0000-4000-8012-000000000221', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8012-000000000211', 1,
   'completed', '00000000-0000-4000-8005-000000000201', '{"event": {"type": "customer.created"}}', 'completed',
   now() - interval '1 day', now() - interval '1 day')
on conflict (id) do nothing;

insert into public.workflow_steps (id, tenant_id, run_id, seq, step_key, type, status, due_at, result, started_at, finished_at, error) values
  ('00000000-0000-4000-8012-000000000131', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8012-000000000121', 1,
   'bekle', 'delay', 'done', now() - interval '3 days', '{"until": "demo"}', now() - interval '3 days', now() - interval '3 days', null),
  ('00000000-0000-4000-8012-000000000132', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8012-000000000121', 2,
   'takip', 'send_message', 'cancelled', now() - interval '2 days', null, null, now() - interval '2 days', 'replied'),
  ('00000000-0000-4000-8012-000000000231', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8012-000000000221', 1,
   'etiket', 'add_tag', 'done', now() - interval '1 day', '{"tag": "yeni"}', now() - interval '1 day', now() - interval '1 day', null),
  ('00000000-0000-4000-8012-000000000232', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8012-000000000221', 2,
   'gorev', 'create_task', 'done', now() - interval '1 day', '{}', now() - interval '1 day', now() - interval '1 day', null)
on conflict (id) do nothing;

-- A contact on each tenant who wrote "DUR" once (opted out of automated and commercial messages).
insert into public.contacts (id, tenant_id, channel, handle, display_name, phone) values
  ('00000000-0000-4000-8012-000000000141', '00000000-0000-4000-8000-000000000001', 'whatsapp', '905559990011',
   'Kemal Durmaz', '+905559990011'),
  ('00000000-0000-4000-8012-000000000241', '00000000-0000-4000-8000-000000000002', 'whatsapp', '905559990022',
   'Sevgi Ateş', '+905559990022')
on conflict (id) do nothing;
insert into public.opt_outs (id, tenant_id, contact_id, channel, handle, keyword, source, confirmed_at) values
  ('00000000-0000-4000-8012-000000000151', '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8012-000000000141',
   'whatsapp', '905559990011', 'DUR', 'keyword', now() - interval '5 days'),
  ('00000000-0000-4000-8012-000000000251', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8012-000000000241',
   'whatsapp', '905559990022', 'STOP', 'keyword', now() - interval '5 days')
on conflict (tenant_id, contact_id) do nothing;
