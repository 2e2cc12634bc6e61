-- functions/leads/ingest.sql -- Ingestion: every source ends in private.ingest_staged (acceptance,
-- identity, merge).

-- ---------------------------------------------------------------------------------------------
-- Ingestion. Every source ends in private.ingest_staged: the web form, Meta, the inbox and the API
-- through private.ingest_lead (one row), CSV imports through COPY into private.lead_staging.
--
-- Acceptance (issue 9, item 6): a row needs something that names or reaches the lead -- a company
-- name, or a valid e-mail, phone or website. Invalid values beside it are dropped from the columns,
-- kept in raw and reported as warnings; a row is rejected only when nothing valid remains.
--
-- Identity (items 2 and 5), the same inside a batch as against stored leads:
--   strong: the same explicit key, company domain, e-mail (a lead's own or one of its contacts'),
--           external id, or -- for rows with nothing else -- company name key  => the same lead;
--   phone:  the same phone is the same lead only when nothing contradicts it (another e-mail,
--           company domain or company name); otherwise the row is kept as a possible duplicate
--           (HUMAN_REVIEW_NEEDED, duplicate_of) for a person to decide.
-- A merge fills empty columns only; a different non-empty value is a conflict kept in the merge
-- record (processing_logs), another person goes to lead_contacts, and a scored lead whose qualifying
-- fields were filled goes back to RAW to be scored again.
-- ---------------------------------------------------------------------------------------------
create or replace function private.ingest_lead(tenant uuid, source text, payload jsonb)
returns table (lead_id uuid, action text, warnings jsonb)
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_variable
declare
  t public.tenants;
  batch uuid := gen_random_uuid();
  warn jsonb := '[]';
  v_email text := private.clean_email(nullif(btrim(payload ->> 'email'), ''));
  v_phone text;
  v_domain text := private.website_domain(coalesce(nullif(btrim(payload ->> 'domain_cleaned'), ''), payload ->> 'website'));
  counts record;
begin
  select * into t from public.tenants where id = tenant;
  if not found then
    raise exception 'no tenant %', tenant using errcode = 'PT404', detail = 'code=tenant_not_found';
  end if;
  source := coalesce(nullif(btrim(source), ''), 'manual');
  v_phone := private.clean_phone(nullif(btrim(payload ->> 'phone'), ''), t.default_region);
  if nullif(btrim(payload ->> 'email'), '') is not null and v_email is null then
    warn := warn || jsonb_build_object('field', 'email', 'code', 'invalid_email', 'value', payload ->> 'email');
  end if;
  if nullif(btrim(payload ->> 'phone'), '') is not null and v_phone is null then
    warn := warn || jsonb_build_object('field', 'phone', 'code', 'invalid_phone', 'value', payload ->> 'phone');
  end if;
  if nullif(btrim(payload ->> 'website'), '') is not null and private.website_domain(payload ->> 'website') is null then
    warn := warn || jsonb_build_object('field', 'website', 'code', 'invalid_website', 'value', payload ->> 'website');
  end if;
  insert into private.lead_staging (batch, line, unique_lead_id, external_id, company_name, contact_name, email, phone,
                                    website, domain_cleaned, city, country, utm_source, utm_medium, utm_campaign,
                                    utm_content, utm_term, raw)
  values (batch, 1, nullif(btrim(payload ->> 'unique_lead_id'), ''), nullif(btrim(payload ->> 'external_id'), ''),
          nullif(btrim(payload ->> 'company_name'), ''), nullif(btrim(payload ->> 'contact_name'), ''), v_email, v_phone,
          case when private.website_domain(payload ->> 'website') is not null then btrim(payload ->> 'website') end,
          v_domain, nullif(btrim(payload ->> 'city'), ''), nullif(btrim(payload ->> 'country'), ''),
          nullif(btrim(payload ->> 'utm_source'), ''), nullif(btrim(payload ->> 'utm_medium'), ''),
          nullif(btrim(payload ->> 'utm_campaign'), ''), nullif(btrim(payload ->> 'utm_content'), ''),
          nullif(btrim(payload ->> 'utm_term'), ''), payload);
  select * into counts from private.ingest_staged(batch, tenant, source);
  if counts.rejected > 0 then
    raise exception 'a lead needs a company name, or a valid e-mail, phone or website%',
      coalesce(' (' || (select string_agg(w ->> 'code' || ' ' || (w ->> 'value'), ', ') from jsonb_array_elements(warn) w) || ')', '')
      using errcode = 'PT422', detail = 'code=lead_unidentifiable';
  end if;
  select g.lead_id, coalesce(g.action, 'merged') into lead_id, action from pg_temp.lead_groups g limit 1;
  warnings := warn;
  return next;
end;
$$;
revoke execute on function private.ingest_lead(uuid, text, jsonb) from public, anon;
grant execute on function private.ingest_lead(uuid, text, jsonb) to service_role;

-- The bulk upsert: rows COPYed into private.lead_staging under one batch id (e-mail and phone
-- cleaned, invalid ones left out; domain_cleaned = the website's registrable domain) are merged into
-- leads in one set-based pass by the rules above. Returns the counts (merged = rows that joined an
-- existing lead or an earlier row of the batch; duplicates = rows kept for review); leaves one row
-- per lead of the batch in pg_temp.lead_groups (lead_id, action) and removes the staging rows.
create or replace function private.ingest_staged(batch uuid, tenant uuid, source text, announce boolean default true)
returns table (inserted int, merged int, duplicates int, rescored int, rejected int)
language plpgsql
security definer
set search_path = ''
-- One large batch joins and groups its rows a few times: let those hash in memory.
set work_mem = '128MB'
set jit = off
-- The temp tables' statistics only steer the matching joins: a small sample is enough.
set default_statistics_target = 10
as $$
#variable_conflict use_variable
declare
  t public.tenants;
  rules jsonb;
  priority int;
  n_rows int;
  n_ins int := 0;
  n_dup int := 0;
  n_res int := 0;
  n_rej int := 0;
  changed int;
  c int;
  raw_module text := (select r.module from private.lead_routes r where r.status = 'RAW');
  -- the free-mail list, once (a few dozen names: an array test per row beats a lookup per row)
  free text[] := array(select f.domain from private.free_mail_domains f);
begin
  select * into t from public.tenants where id = tenant;
  if not found then
    raise exception 'no tenant %', tenant using errcode = 'PT404', detail = 'code=tenant_not_found';
  end if;
  rules := coalesce(t.settings #> '{leads,priority}', '{}');
  -- the same for every row without a source time of its own: computed once, not per row (a
  -- function with SET is never inlined, and each call pays for it)
  priority := private.lead_priority(source, null, rules);
  perform pg_advisory_xact_lock(hashtextextended('leads:' || tenant::text, 0));

  create temporary table if not exists lead_rows (
    line int, grp int, ek text, external_id text, company_name text, contact_name text, email text, phone text,
    website text, wdom text, edom text, dom text, nk text, ck text, city text, country text, utm_source text, utm_medium text,
    utm_campaign text, utm_content text, utm_term text, raw jsonb
  ) on commit drop;
  create temporary table if not exists lead_groups (
    g int primary key, first_line int, n int, k text, ek text, external_id text, company_name text,
    contact_name text, email text, phone text, website text, dom text, ck text, city text, country text,
    utm_source text, utm_medium text, utm_campaign text, utm_content text, utm_term text,
    conflicts jsonb, dup_g int, lead_id uuid, dup_of uuid, contradicts jsonb, action text, changes jsonb
  ) on commit drop;
  truncate pg_temp.lead_rows, pg_temp.lead_groups;

  -- dom: the company domain -- the website's, else the e-mail's (precomputed by the bulk path, else
  -- below); never a free-mail provider's. Acceptance in the same pass: a row needs something that
  -- names or reaches the lead. Only rows known by their company name alone are linked by it (ck).
  with staged as (
    select s.line, nullif(s.unique_lead_id, '') as ek, nullif(s.external_id, '') as external_id,
           nullif(s.company_name, '') as company_name, nullif(s.contact_name, '') as contact_name,
           nullif(s.email, '') as email, nullif(s.phone, '') as phone, nullif(s.website, '') as website,
           nullif(s.domain_cleaned, '') as wdom, nullif(s.email_domain, '') as edom,
           coalesce(case when s.domain_cleaned <> all (free) then nullif(s.domain_cleaned, '') end,
                    case when s.email_domain <> all (free) then nullif(s.email_domain, '') end) as dom,
           nullif(s.city, '') as city, nullif(s.country, '') as country, nullif(s.utm_source, '') as utm_source,
           nullif(s.utm_medium, '') as utm_medium, nullif(s.utm_campaign, '') as utm_campaign,
           nullif(s.utm_content, '') as utm_content, nullif(s.utm_term, '') as utm_term, s.raw
    from private.lead_staging s
    where s.batch = ingest_staged.batch
  ), ins as (
    insert into pg_temp.lead_rows (line, grp, ek, external_id, company_name, contact_name, email, phone, website, wdom,
                                   edom, dom, ck, city, country, utm_source, utm_medium, utm_campaign, utm_content,
                                   utm_term, raw)
    select x.line, x.line, x.ek, x.external_id, x.company_name, x.contact_name, x.email, x.phone, x.website, x.wdom,
           x.edom, x.dom,
           case when x.email is null and x.phone is null and x.dom is null and x.external_id is null and x.ek is null
                then private.name_key(x.company_name) end,
           x.city, x.country, x.utm_source, x.utm_medium, x.utm_campaign, x.utm_content, x.utm_term, x.raw
    from staged x
    where x.email is not null or x.phone is not null or x.wdom is not null or x.ek is not null
       or x.external_id is not null or private.name_key(x.company_name) is not null
    returning (email is not null and edom is null and dom is null) as needs_edom
  )
  select count(*), count(*) filter (where ins.needs_edom) into n_rows, c from ins;
  delete from private.lead_staging s where s.batch = ingest_staged.batch;
  get diagnostics n_rej = row_count;
  n_rej := n_rej - n_rows;

  -- The company domain from the e-mail where the caller did not give it (once per distinct e-mail
  -- domain); never a free-mail provider's.
  if c > 0 then
    update pg_temp.lead_rows r set edom = d.dom,
           dom = coalesce(r.dom, case when not exists (select 1 from private.free_mail_domains f where f.domain = d.dom)
                                      then d.dom end)
    from (select x.host, private.website_domain(x.host) as dom
          from (select distinct split_part(y.email, '@', 2) as host from pg_temp.lead_rows y
                where y.email is not null and y.edom is null and y.dom is null) x) d
    where r.dom is null and r.edom is null and r.email is not null and split_part(r.email, '@', 2) = d.host;
  end if;

  -- Strong links inside the batch: the smallest line of every connected set (label propagation),
  -- run over the few rows that share a value with another row.
  create temporary table if not exists lead_links (
    line int primary key, grp int, ek text, dom text, email text, external_id text, ck text
  ) on commit drop;
  truncate pg_temp.lead_links;
  with shared as materialized (
    -- one pass over the rows: each strong identifier as (kind, value)
    select u.kind, u.v
    from pg_temp.lead_rows x,
         lateral (values (1, x.ek), (2, x.dom), (3, x.email), (4, x.external_id), (5, x.ck)) u(kind, v)
    where u.v is not null
    group by u.kind, u.v having count(*) > 1
  )
  insert into pg_temp.lead_links (line, grp, ek, dom, email, external_id, ck)
  select r.line, r.grp, r.ek, r.dom, r.email, r.external_id, r.ck from pg_temp.lead_rows r
  where r.ek in (select s.v from shared s where s.kind = 1) or r.dom in (select s.v from shared s where s.kind = 2)
     or r.email in (select s.v from shared s where s.kind = 3) or r.external_id in (select s.v from shared s where s.kind = 4)
     or r.ck in (select s.v from shared s where s.kind = 5);
  loop
    changed := 0;
    update pg_temp.lead_links r set grp = m.g
    from (select x.ek, min(x.grp) g from pg_temp.lead_links x where x.ek is not null group by x.ek) m
    where r.ek = m.ek and r.grp > m.g;
    get diagnostics c = row_count; changed := changed + c;
    update pg_temp.lead_links r set grp = m.g
    from (select x.dom, min(x.grp) g from pg_temp.lead_links x where x.dom is not null group by x.dom) m
    where r.dom = m.dom and r.grp > m.g;
    get diagnostics c = row_count; changed := changed + c;
    update pg_temp.lead_links r set grp = m.g
    from (select x.email, min(x.grp) g from pg_temp.lead_links x where x.email is not null group by x.email) m
    where r.email = m.email and r.grp > m.g;
    get diagnostics c = row_count; changed := changed + c;
    update pg_temp.lead_links r set grp = m.g
    from (select x.external_id, min(x.grp) g from pg_temp.lead_links x where x.external_id is not null
          group by x.external_id) m
    where r.external_id = m.external_id and r.grp > m.g;
    get diagnostics c = row_count; changed := changed + c;
    update pg_temp.lead_links r set grp = m.g
    from (select x.ck, min(x.grp) g from pg_temp.lead_links x where x.ck is not null group by x.ck) m
    where r.ck = m.ck and r.grp > m.g;
    get diagnostics c = row_count; changed := changed + c;
    exit when changed = 0;
  end loop;
  update pg_temp.lead_rows r set grp = l.grp from pg_temp.lead_links l where l.line = r.line and l.grp <> r.grp;

  -- One row per group: its first row as it is, or (groups of several rows) each column's first
  -- non-empty value, the other values kept as conflicts.
  insert into pg_temp.lead_groups (g, first_line, n, k, ek, external_id, company_name, contact_name, email, phone, website,
                                   dom, ck, city, country, utm_source, utm_medium, utm_campaign, utm_content, utm_term)
  select r.grp, r.line, 1, coalesce(r.ek, private.lead_key(r.dom, r.email, r.phone, r.external_id, r.company_name)),
         r.ek, r.external_id, r.company_name, r.contact_name, r.email, r.phone, r.website, r.dom, r.ck,
         r.city, r.country, r.utm_source, r.utm_medium, r.utm_campaign, r.utm_content, r.utm_term
  from pg_temp.lead_rows r
  -- (a row is alone in its group when no other row was relabelled to it; those are few)
  where r.line = r.grp and r.grp not in (select x.grp from pg_temp.lead_rows x where x.line <> x.grp);

  insert into pg_temp.lead_groups (g, first_line, n, ek, external_id, company_name, contact_name, email, phone, website,
                                   dom, city, country, utm_source, utm_medium, utm_campaign, utm_content, utm_term)
  select r.grp, min(r.line), count(*),
    (array_agg(r.ek order by r.line) filter (where r.ek is not null))[1],
    (array_agg(r.external_id order by r.line) filter (where r.external_id is not null))[1],
    (array_agg(r.company_name order by r.line) filter (where r.company_name is not null))[1],
    (array_agg(r.contact_name order by r.line) filter (where r.contact_name is not null))[1],
    (array_agg(r.email order by r.line) filter (where r.email is not null))[1],
    (array_agg(r.phone order by r.line) filter (where r.phone is not null))[1],
    (array_agg(r.website order by r.line) filter (where r.website is not null))[1],
    (array_agg(r.dom order by r.line) filter (where r.dom is not null))[1],
    (array_agg(r.city order by r.line) filter (where r.city is not null))[1],
    (array_agg(r.country order by r.line) filter (where r.country is not null))[1],
    (array_agg(r.utm_source order by r.line) filter (where r.utm_source is not null))[1],
    (array_agg(r.utm_medium order by r.line) filter (where r.utm_medium is not null))[1],
    (array_agg(r.utm_campaign order by r.line) filter (where r.utm_campaign is not null))[1],
    (array_agg(r.utm_content order by r.line) filter (where r.utm_content is not null))[1],
    (array_agg(r.utm_term order by r.line) filter (where r.utm_term is not null))[1]
  from pg_temp.lead_rows r
  where r.grp in (select x.grp from pg_temp.lead_rows x where x.line <> x.grp)
  group by r.grp;
  update pg_temp.lead_groups g set ck = private.name_key(g.company_name) where g.n > 1;
  -- The values a group's later rows offered beside the kept one, per column (in line order).
  with vals as (
    select r.grp, e.key, e.value, min(r.line) as first
    from pg_temp.lead_rows r
    join pg_temp.lead_groups g on g.g = r.grp and g.n > 1,
    jsonb_each_text(jsonb_strip_nulls(jsonb_build_object('company_name', r.company_name, 'contact_name', r.contact_name,
      'email', r.email, 'phone', r.phone, 'website', r.website, 'city', r.city, 'country', r.country))) e
    group by 1, 2, 3
  ), conflicting as (
    select v.grp, v.key, array_agg(v.value order by v.first) as vals
    from vals v group by v.grp, v.key having count(*) > 1
  )
  update pg_temp.lead_groups g set conflicts = c.conflicts
  from (select x.grp, jsonb_object_agg(x.key, jsonb_build_object('kept', x.vals[1], 'offered', to_jsonb(x.vals[2:]))) as conflicts
        from conflicting x group by x.grp) c
  where g.g = c.grp;

  -- Phone links inside the batch: a later group with the phone of an earlier one joins it unless
  -- they contradict; then it is a possible duplicate of it.
  with anchors as (
    select g.phone, min(g.g) as anchor from pg_temp.lead_groups g where g.phone is not null
    group by g.phone having count(*) > 1
  ), shared as (
    select g.g, a.anchor from pg_temp.lead_groups g join anchors a on a.phone = g.phone
  ), verdict as (
    select s.g, s.anchor,
           (a.email is null or h.email is null or a.email = h.email) and (a.dom is null or h.dom is null or a.dom = h.dom)
           and (a.company_name is null or h.company_name is null
                or private.name_key(a.company_name) = private.name_key(h.company_name)) as compatible
    from shared s join pg_temp.lead_groups a on a.g = s.anchor join pg_temp.lead_groups h on h.g = s.g
    where s.g <> s.anchor
  )
  update pg_temp.lead_groups g set dup_g = v.anchor,
         contradicts = case when not v.compatible then '["phone"]'::jsonb end
  from verdict v where g.g = v.g;
  -- Compatible groups fold into their anchor: fill its empty columns, count their rows.
  update pg_temp.lead_groups a set
    n = a.n + m.n, email = coalesce(a.email, m.email), dom = coalesce(a.dom, m.dom), website = coalesce(a.website, m.website),
    company_name = coalesce(a.company_name, m.company_name), contact_name = coalesce(a.contact_name, m.contact_name),
    city = coalesce(a.city, m.city), country = coalesce(a.country, m.country)
  from (select h.dup_g, sum(h.n)::int n, (array_agg(h.email order by h.g) filter (where h.email is not null))[1] email,
               (array_agg(h.dom order by h.g) filter (where h.dom is not null))[1] dom,
               (array_agg(h.website order by h.g) filter (where h.website is not null))[1] website,
               (array_agg(h.company_name order by h.g) filter (where h.company_name is not null))[1] company_name,
               (array_agg(h.contact_name order by h.g) filter (where h.contact_name is not null))[1] contact_name,
               (array_agg(h.city order by h.g) filter (where h.city is not null))[1] city,
               (array_agg(h.country order by h.g) filter (where h.country is not null))[1] country
        from pg_temp.lead_groups h where h.dup_g is not null and h.contradicts is null group by h.dup_g) m
  where a.g = m.dup_g;
  update pg_temp.lead_rows r set grp = g.dup_g
  from pg_temp.lead_groups g where g.dup_g is not null and g.contradicts is null and r.grp = g.g;
  delete from pg_temp.lead_groups g where g.dup_g is not null and g.contradicts is null;

  -- The key (private.lead_key's rule; single rows got it when their group was made).
  update pg_temp.lead_groups g set k = coalesce(g.ek, private.lead_key(g.dom, g.email, g.phone, g.external_id, g.company_name))
  where g.k is null or g.n > 1;
  -- Statistics for the matching joins below (only the columns they use: cheaper than all).
  analyze pg_temp.lead_groups (g, k, dom, email, phone, dup_g);

  -- Match stored leads (oldest first): the key, then the company domain, the e-mail (a lead's or a
  -- contact's), the phone (a lead's or a contact's) when nothing contradicts it.
  update pg_temp.lead_groups g set lead_id = l.id
  from public.leads l
  where l.tenant_id = tenant and l.unique_lead_id = g.k and g.dup_g is null;

  update pg_temp.lead_groups g set lead_id = m.id
  from (select distinct on (l.domain_cleaned) l.domain_cleaned, l.id from public.leads l
        where l.tenant_id = tenant and l.domain_cleaned in (select x.dom from pg_temp.lead_groups x
                                                            where x.lead_id is null and x.dom is not null)
        order by l.domain_cleaned, l.created_at) m
  where g.lead_id is null and g.dup_g is null and g.dom = m.domain_cleaned;

  update pg_temp.lead_groups g set lead_id = m.id
  from (select distinct on (e.email) e.email, e.id from (
          select l.email, l.id, l.created_at from public.leads l
          where l.tenant_id = tenant and l.email in (select x.email from pg_temp.lead_groups x where x.lead_id is null and x.email is not null)
          union all
          select c.email, l.id, l.created_at from public.lead_contacts c join public.leads l on l.tenant_id = c.tenant_id and l.id = c.lead_id
          where c.tenant_id = tenant and c.email in (select x.email from pg_temp.lead_groups x where x.lead_id is null and x.email is not null)
        ) e order by e.email, e.created_at) m
  where g.lead_id is null and g.dup_g is null and g.email = m.email;

  with by_phone as (
    select distinct on (p.phone) p.phone, p.id, p.email, p.domain_cleaned, p.ck from (
      select l.phone, l.id, l.created_at, l.email, l.domain_cleaned, private.name_key(l.company_name) ck from public.leads l
      where l.tenant_id = tenant and l.phone in (select x.phone from pg_temp.lead_groups x where x.lead_id is null and x.phone is not null)
      union all
      select c.phone, l.id, l.created_at, l.email, l.domain_cleaned, private.name_key(l.company_name) from public.lead_contacts c
      join public.leads l on l.tenant_id = c.tenant_id and l.id = c.lead_id
      where c.tenant_id = tenant and c.phone in (select x.phone from pg_temp.lead_groups x where x.lead_id is null and x.phone is not null)
    ) p order by p.phone, p.created_at
  )
  update pg_temp.lead_groups g set
    lead_id = case when ok then m.id end,
    dup_of = case when not ok then m.id end,
    contradicts = case when not ok then to_jsonb(array_remove(array[
                    case when m.email is not null and g.email is not null and m.email <> g.email then 'email' end,
                    case when m.domain_cleaned is not null and g.dom is not null and m.domain_cleaned <> g.dom then 'domain' end,
                    case when m.ck is not null and g.company_name is not null and m.ck <> private.name_key(g.company_name)
                         then 'company_name' end], null)) end
  from (select b.*, g2.g,
               (b.email is null or g2.email is null or b.email = g2.email
                or exists (select 1 from public.lead_contacts c where c.tenant_id = tenant and c.lead_id = b.id and c.email = g2.email))
               and (b.domain_cleaned is null or g2.dom is null or b.domain_cleaned = g2.dom)
               and (b.ck is null or g2.company_name is null or b.ck = private.name_key(g2.company_name)) as ok
        from by_phone b join pg_temp.lead_groups g2 on g2.phone = b.phone
        where g2.lead_id is null and g2.dup_g is null) m
  where g.g = m.g;

  -- lead_id is set now: the merge joins below need to know how many (none on a first import; a
  -- guess of "most" made them sort every row).
  analyze pg_temp.lead_groups (g, lead_id);

  -- What a merge fills (empty columns) and what it would have replaced (conflicts), per lead.
  with x as materialized (
    select g2.g,
           jsonb_build_object('company_name', l.company_name, 'contact_name', l.contact_name, 'email', l.email,
             'phone', l.phone, 'website', l.website, 'domain_cleaned', l.domain_cleaned, 'city', l.city,
             'country', l.country, 'utm_source', l.utm_source, 'utm_medium', l.utm_medium,
             'utm_campaign', l.utm_campaign, 'utm_content', l.utm_content, 'utm_term', l.utm_term) as stored,
           jsonb_strip_nulls(jsonb_build_object('company_name', g2.company_name, 'contact_name', g2.contact_name,
             'email', g2.email, 'phone', g2.phone, 'website', g2.website, 'domain_cleaned', g2.dom, 'city', g2.city,
             'country', g2.country, 'utm_source', g2.utm_source, 'utm_medium', g2.utm_medium,
             'utm_campaign', g2.utm_campaign, 'utm_content', g2.utm_content, 'utm_term', g2.utm_term)) as offered
    from pg_temp.lead_groups g2 join public.leads l on l.id = g2.lead_id
    where g2.lead_id is not null
  ), news as materialized (
    -- only leads the rows tell something new (a re-upload of the same file tells nothing)
    select x.* from x where not (jsonb_strip_nulls(x.stored) @> x.offered)
  )
  update pg_temp.lead_groups g set
    changes = (select coalesce(jsonb_object_agg(n.key, n.value), '{}') from jsonb_each(x.offered) n
               where x.stored -> n.key = 'null'),
    conflicts = coalesce(g.conflicts, '{}') || (
               select coalesce(jsonb_object_agg(n.key, jsonb_build_object('kept', x.stored -> n.key, 'offered', n.value)), '{}')
               from jsonb_each(x.offered) n
               where x.stored -> n.key <> 'null' and x.stored -> n.key <> n.value
                 and not (n.key in ('company_name', 'contact_name')
                          and private.name_key(x.stored ->> n.key) = private.name_key(n.value #>> '{}')))
  from news x
  where g.g = x.g;

  -- A scored lead whose qualifying fields were filled is scored again (unless a worker holds it).
  update pg_temp.lead_groups g set action = 'rescored'
  from public.leads l
  where l.id = g.lead_id and g.changes ?| array['company_name', 'email', 'phone', 'website', 'domain_cleaned']
    and l.locked_until is null
    and l.processing_status in ('NORMALIZED', 'ENRICHED', 'QUALIFIED', 'CRM_SYNCED', 'NURTURING', 'CRM_ERROR');

  update public.leads l set
    company_name = coalesce(l.company_name, g.company_name),
    contact_name = coalesce(l.contact_name, g.contact_name),
    email = coalesce(l.email, g.email),
    phone = coalesce(l.phone, g.phone),
    website = coalesce(l.website, g.website),
    domain_cleaned = coalesce(l.domain_cleaned, g.dom),
    city = coalesce(l.city, g.city),
    country = coalesce(l.country, g.country),
    utm_source = coalesce(l.utm_source, g.utm_source),
    utm_medium = coalesce(l.utm_medium, g.utm_medium),
    utm_campaign = coalesce(l.utm_campaign, g.utm_campaign),
    utm_content = coalesce(l.utm_content, g.utm_content),
    utm_term = coalesce(l.utm_term, g.utm_term),
    raw = l.raw || jsonb_build_object(source, r.raw),
    processing_status = case when g.action = 'rescored' then 'RAW' else l.processing_status end
  from pg_temp.lead_groups g join pg_temp.lead_rows r on r.line = g.first_line
  where g.lead_id = l.id and (g.changes is not null or not (l.raw ? source));
  select count(*) into n_res from pg_temp.lead_groups g where g.action = 'rescored';

  insert into public.processing_logs (tenant_id, lead_id, module, action, result, detail)
  select tenant, g.lead_id, 'ingest', 'merge', 'merged',
         jsonb_build_object('source', source, 'line', g.first_line, 'rows', g.n, 'filled', g.changes,
                            'conflicts', nullif(g.conflicts, '{}'), 'offered', r.raw, 'rescored', g.action = 'rescored')
  from pg_temp.lead_groups g join pg_temp.lead_rows r on r.line = g.first_line
  where g.lead_id is not null;

  -- New leads, then the possible duplicates (which may point at a lead created just now). Only
  -- groups that need their new id later (several rows: contact persons; a duplicate's anchor; the
  -- one row of ingest_lead) are told it; the rest find it by key.
  with ins as (
    insert into public.leads (tenant_id, unique_lead_id, company_name, contact_name, email, phone, website,
                              domain_cleaned, city, country, source, utm_source, utm_medium, utm_campaign,
                              utm_content, utm_term, raw, validation, current_orchestrator_priority,
                              next_orchestrator_module)
    select tenant, g.k, g.company_name, g.contact_name, g.email, g.phone, g.website, g.dom, g.city,
           g.country, source, g.utm_source, g.utm_medium, g.utm_campaign, g.utm_content, g.utm_term,
           jsonb_build_object(source, r.raw), '{"identifiers": "ingest"}',
           case when r.raw ?| array['created_time', 'created_at']
                then private.lead_priority(source, null, rules, now() - private.lead_source_time(r.raw))
                else priority end,
           raw_module
    from pg_temp.lead_groups g join pg_temp.lead_rows r on r.line = g.first_line
    where g.lead_id is null and g.dup_of is null and g.dup_g is null
    -- No ON CONFLICT: every writer of leads takes the tenant's ingest lock, so a key taken since the
    -- match above means a writer that skipped it; failing the batch (it can be retried) beats
    -- dropping its rows silently.
    returning id, unique_lead_id
  ), logged as (
    insert into public.processing_logs (tenant_id, lead_id, module, action, result, to_status, detail)
    select tenant, ins.id, 'ingest', 'insert', 'ok', 'RAW', jsonb_build_object('source', source)
    from ins
  ), told as (
    update pg_temp.lead_groups g set lead_id = ins.id, action = 'inserted'
    from ins
    where g.k = ins.unique_lead_id and g.lead_id is null and g.dup_of is null and g.dup_g is null
      and (g.n > 1 or n_rows = 1 or g.g in (select d.dup_g from pg_temp.lead_groups d where d.dup_g is not null))
  )
  select count(*) into n_ins from ins;

  update pg_temp.lead_groups g set dup_of = a.lead_id
  from pg_temp.lead_groups a where g.dup_g = a.g and g.dup_of is null;
  with ins as (
    insert into public.leads (tenant_id, unique_lead_id, company_name, contact_name, email, phone, website,
                              domain_cleaned, city, country, source, utm_source, utm_medium, utm_campaign,
                              utm_content, utm_term, raw, current_orchestrator_priority, processing_status, duplicate_of)
    select tenant, g.k || '~' || substr(md5(batch::text || g.first_line), 1, 10), g.company_name, g.contact_name, g.email,
           g.phone, g.website, g.dom, g.city, g.country, source, g.utm_source, g.utm_medium, g.utm_campaign, g.utm_content,
           g.utm_term, jsonb_build_object(source, r.raw), priority, 'HUMAN_REVIEW_NEEDED', g.dup_of
    from pg_temp.lead_groups g join pg_temp.lead_rows r on r.line = g.first_line
    where g.lead_id is null and g.dup_of is not null
    on conflict (tenant_id, unique_lead_id) do nothing
    returning id, duplicate_of, unique_lead_id
  )
  update pg_temp.lead_groups g set lead_id = ins.id, action = 'duplicate'
  from ins where g.lead_id is null and g.dup_of is not null
    and ins.unique_lead_id = g.k || '~' || substr(md5(batch::text || g.first_line), 1, 10);
  get diagnostics n_dup = row_count;
  insert into public.processing_logs (tenant_id, lead_id, module, action, result, to_status, detail)
  select tenant, g.lead_id, 'ingest', 'possible_duplicate', 'wait', 'HUMAN_REVIEW_NEEDED',
         jsonb_build_object('source', source, 'line', g.first_line, 'duplicate_of', g.dup_of, 'matched_on', 'phone',
                            'contradicts', g.contradicts)
  from pg_temp.lead_groups g where g.action = 'duplicate';

  -- Every person of every row, beside the lead's main contact, is kept.
  insert into public.lead_contacts (tenant_id, lead_id, name, email, phone, source)
  select distinct on (g.lead_id, coalesce(r.email, ''), coalesce(private.name_key(r.contact_name), ''), coalesce(r.phone, ''))
         tenant, g.lead_id, r.contact_name, r.email, r.phone, source
  from pg_temp.lead_rows r
  join pg_temp.lead_groups g on g.g = r.grp and g.lead_id is not null and g.action is distinct from 'duplicate'
  join public.leads l on l.id = g.lead_id
  where (r.contact_name is not null or r.email is not null or r.phone is not null)
    and not (coalesce(r.email = l.email, r.email is null)
             and coalesce(private.name_key(r.contact_name) = private.name_key(l.contact_name), r.contact_name is null)
             and coalesce(r.phone = l.phone, r.phone is null))
    and not exists (select 1 from public.lead_contacts c
                    where c.tenant_id = tenant and c.lead_id = g.lead_id
                      and coalesce(r.email = c.email, r.email is null)
                      and coalesce(private.name_key(r.contact_name) = private.name_key(c.name), r.contact_name is null)
                      and coalesce(r.phone = c.phone, r.phone is null))
    -- a row that only adds a phone or a name to the main contact's e-mail is the same person
    and not (r.email is not null and r.email = l.email)
  on conflict do nothing;

  if announce then
    perform private.broadcast('tenant:' || tenant || ':leads', 'leads_imported',
                              jsonb_build_object('inserted', n_ins, 'merged', n_rows - n_ins - n_dup,
                                                 'duplicates', n_dup, 'source', source));
  end if;
  inserted := n_ins;
  merged := n_rows - n_ins - n_dup;
  duplicates := n_dup;
  rescored := n_res;
  rejected := n_rej;
  return next;
end;
$$;
revoke execute on function private.ingest_staged(uuid, uuid, text, boolean) from public, anon;
grant execute on function private.ingest_staged(uuid, uuid, text, boolean) to service_role;
