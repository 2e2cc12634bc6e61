/*
 * Merging without loss (issue 9, items 2 and 5): every contact person of a lead is kept, a lead that
 * only shares a phone with another but contradicts it (another e-mail, domain or company) is kept as
 * a possible duplicate for review, and a lead whose qualifying fields a merge filled in is scored again.
 * The rules themselves are private.ingest_staged (functions/leads.sql).
 */

-- The people of a lead besides its main contact (leads.contact_name / email / phone): a second
-- person of the same company, another address of the same person. Matched like the lead's own
-- e-mail and phone when later rows arrive.
create table public.lead_contacts (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  lead_id uuid not null,
  name text,
  email text,
  phone text,
  source text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  foreign key (tenant_id, lead_id) references public.leads (tenant_id, id) on delete cascade,
  check (coalesce(name, email, phone) is not null)
);
create index lead_contacts_lead_idx on public.lead_contacts (tenant_id, lead_id);
create index lead_contacts_email_idx on public.lead_contacts (tenant_id, email) where email is not null;
create index lead_contacts_phone_idx on public.lead_contacts (tenant_id, phone) where phone is not null;
-- One row per person and lead: the same (name, e-mail, phone) is never stored twice.
create unique index lead_contacts_person_idx on public.lead_contacts
  (tenant_id, lead_id, coalesce(private.name_key(name), ''), coalesce(email, ''), coalesce(phone, ''));
create trigger set_updated_at before update on public.lead_contacts
  for each row execute function private.set_updated_at();

select private.enable_rls('lead_contacts', 'leads');
-- A contact is seen by whoever sees its lead (the leads policy, agent assignment included).
drop policy tenant_select on public.lead_contacts;
create policy tenant_select on public.lead_contacts for select to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('leads', 'read'))
         and exists (select 1 from public.leads l where l.tenant_id = lead_contacts.tenant_id and l.id = lead_contacts.lead_id));
grant select, insert, update, delete on public.lead_contacts to authenticated;
grant all on public.lead_contacts to service_role;

-- A possible duplicate points at the lead it may repeat (the reviewer merges or keeps it).
alter table public.leads add column duplicate_of uuid;
alter table public.leads add constraint leads_duplicate_of_fkey
  foreign key (tenant_id, duplicate_of) references public.leads (tenant_id, id) on delete set null (duplicate_of);
create index leads_duplicate_of_idx on public.leads (tenant_id, duplicate_of) where duplicate_of is not null;

-- Re-scoring: a scored lead whose e-mail, phone, website or company a merge filled in goes back to
-- RAW and through normalise, enrich and qualify again.
insert into private.lead_transitions (from_status, to_status) values
  ('NORMALIZED', 'RAW'), ('ENRICHED', 'RAW'), ('QUALIFIED', 'RAW'), ('CRM_SYNCED', 'RAW'), ('NURTURING', 'RAW'),
  ('CRM_ERROR', 'RAW')
on conflict do nothing;
