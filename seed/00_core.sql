-- Demo tenants and one user of every role in each (idempotent). Ids are fixed so docs and tests can
-- name them. Local users have no password: `luna token --user <email>` mints their JWT.
insert into public.tenants (id, slug, name, default_region) values
  ('00000000-0000-4000-8000-000000000001', 'demo', 'Demo Klinik', 'TR'),
  ('00000000-0000-4000-8000-000000000002', 'demo-2', 'Demo Mağaza', 'TR')
on conflict (id) do nothing;

insert into auth.users (id, aud, role, email, raw_user_meta_data, raw_app_meta_data, email_confirmed_at)
select u.id::uuid, 'authenticated', 'authenticated', u.email,
       jsonb_build_object('full_name', u.full_name), jsonb_build_object('tenant_id', u.tenant_id), now()
from (values
  ('00000000-0000-4000-8001-000000000011', 'owner@demo.luna.local',      'Ayşe Yılmaz',   '00000000-0000-4000-8000-000000000001'),
  ('00000000-0000-4000-8001-000000000012', 'admin@demo.luna.local',      'Mehmet Kaya',   '00000000-0000-4000-8000-000000000001'),
  ('00000000-0000-4000-8001-000000000013', 'supervisor@demo.luna.local', 'Zeynep Demir',  '00000000-0000-4000-8000-000000000001'),
  ('00000000-0000-4000-8001-000000000014', 'agent@demo.luna.local',      'Emre Şahin',    '00000000-0000-4000-8000-000000000001'),
  ('00000000-0000-4000-8001-000000000015', 'viewer@demo.luna.local',     'Elif Çelik',    '00000000-0000-4000-8000-000000000001'),
  ('00000000-0000-4000-8001-000000000016', 'agent2@demo.luna.local',     'Can Öztürk',    '00000000-0000-4000-8000-000000000001'),
  ('00000000-0000-4000-8001-000000000021', 'owner@demo-2.luna.local',      'İlker Aydın', '00000000-0000-4000-8000-000000000002'),
  ('00000000-0000-4000-8001-000000000022', 'admin@demo-2.luna.local',      'Gül Arslan',  '00000000-0000-4000-8000-000000000002'),
  ('00000000-0000-4000-8001-000000000023', 'supervisor@demo-2.luna.local', 'Burak Koç',   '00000000-0000-4000-8000-000000000002'),
  ('00000000-0000-4000-8001-000000000024', 'agent@demo-2.luna.local',      'Selin Kurt',  '00000000-0000-4000-8000-000000000002'),
  ('00000000-0000-4000-8001-000000000025', 'viewer@demo-2.luna.local',     'Onur Polat',  '00000000-0000-4000-8000-000000000002')
) as u(id, email, full_name, tenant_id)
on conflict (id) do nothing;

-- Profiles normally come from the auth.users trigger; this covers users that existed before it.
insert into public.profiles (id, email, full_name)
select u.id, u.email, u.raw_user_meta_data ->> 'full_name' from auth.users u
where u.email like '%@demo.luna.local' or u.email like '%@demo-2.luna.local'
on conflict (id) do nothing;

insert into public.tenant_members (tenant_id, user_id, role)
select (u.raw_app_meta_data ->> 'tenant_id')::uuid, u.id,
       (case split_part(u.email, '@', 1) when 'agent2' then 'agent' else split_part(u.email, '@', 1) end)::public.member_role
from auth.users u
where u.email like '%@demo.luna.local' or u.email like '%@demo-2.luna.local'
on conflict (tenant_id, user_id) do nothing;

-- Feature catalogue (areas add their own in their seeds) and a few tenant switches and overrides.
insert into public.features (key, description, default_enabled) values
  ('ai.autoreply', 'AI answers customers automatically when it can cite a source', false),
  ('ai.qualification', 'AI scores and categorises new leads', true),
  ('crm.round_robin', 'New leads are assigned to sales reps in turn', true)
on conflict (key) do nothing;

insert into public.tenant_features (tenant_id, feature, enabled) values
  ('00000000-0000-4000-8000-000000000001', 'ai.autoreply', true),
  ('00000000-0000-4000-8000-000000000002', 'ai.autoreply', false)
on conflict (tenant_id, feature) do nothing;

insert into public.role_permissions (tenant_id, role, module, action, allowed) values
  ('00000000-0000-4000-8000-000000000001', 'supervisor', 'settings', 'manage', false),
  ('00000000-0000-4000-8000-000000000002', 'agent', 'reports', 'export', true)
on conflict (tenant_id, role, module, action) do nothing;
