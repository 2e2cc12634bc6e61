-- functions/leads/identity.sql -- The identity key, priority and source time of a lead.

/*
 * Lead pipeline functions: the identity key, the one ingestion function, the set-based bulk
 * upsert, the status machine's advance function, the worker's lead queue and the review RPCs.
 */

-- The identifier rules (clean_phone, clean_email, clean_host, registrable_domain, company_domain)
-- are defined once, in migrations/20261203000000_one_normaliser.sql.

-- The deterministic identity key of a lead: its company domain, else e-mail, phone, external id, or
-- company name key. The only definition (the Python import stages values, never keys).
-- No SET clause, so the planner inlines it into the bulk upsert's statements (every name in it is
-- schema-qualified, so the caller's search_path cannot change what it calls).
create or replace function private.lead_key(domain text, email text, phone text, external_id text, company text)
returns text
language sql immutable parallel safe
as $$
  select coalesce('d:' || nullif(domain, ''), 'e:' || nullif(email, ''), 'p:' || nullif(phone, ''),
                  'x:' || nullif(external_id, ''), 'c:' || private.name_key(company))
$$;

-- Priority engine (0-100, higher first): the source, the category, freshness (how old the lead was
-- when it reached us, from the source's own timestamp) and the tenant's rules
-- (settings.leads.priority: {"<source>": bonus}).
create or replace function private.lead_priority(source text, category text default null, rules jsonb default '{}',
                                                 age interval default null)
returns int
language sql immutable
set search_path = ''
as $$
  select greatest(0, least(100,
    case source when 'inbox' then 75 when 'meta' then 70 when 'form' then 70 when 'manual' then 50
                when 'apollo' then 40 when 'google_places' then 40 when 'apify' then 40 when 'csv' then 30 else 45 end
    + case category when 'HOT' then 20 when 'WARM' then 10 else 0 end
    + case when age is null or age < interval '1 hour' then 0 when age < interval '1 day' then -5
           when age < interval '7 days' then -10 else -20 end
    + coalesce((rules ->> source)::int, 0)))
$$;

-- The source's own timestamp of a lead (Meta's created_time as ISO text or epoch seconds,
-- created_at); null when absent or unreadable.
create or replace function private.lead_source_time(payload jsonb) returns timestamptz
language plpgsql immutable
set search_path = ''
as $$
declare
  v text := coalesce(payload ->> 'created_time', payload ->> 'created_at');
begin
  if v is null or v = '' then
    return null;
  end if;
  if v ~ '^\d{9,11}(\.\d+)?$' then
    return to_timestamp(v::double precision);
  end if;
  return v::timestamptz;
exception when others then
  return null;
end;
$$;
