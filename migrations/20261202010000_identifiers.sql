/*
 * Identifiers are not text (issue 9, item 1). E-mail addresses, domains, URLs, user names and codes
 * are case-folded locale-independently: ASCII letters by an explicit table (so a database created
 * with a Turkish locale never turns GMAIL.COM into the dotless "gmaıl.com"), U+0130 (İ) to a plain
 * i, the remaining letters by lower(). Turkish letter rules stay for names and natural-language text.
 * The Python twin is luna.normalize.fold_identifier; tests/test_identifiers.py checks both agree.
 *
 * Then rows an earlier import folded by Turkish rules are repaired from their raw payload.
 */

create or replace function private.fold_identifier(raw text) returns text
language sql immutable parallel safe
set search_path = ''
as $$
  select pg_catalog.lower(pg_catalog.translate(raw, 'ABCDEFGHIJKLMNOPQRSTUVWXYZİ', 'abcdefghijklmnopqrstuvwxyzi'))
$$;
grant execute on function private.fold_identifier(text) to authenticated, service_role;

-- The CRM's e-mail rule folds with the same function (customers' trigger calls it).
create or replace function private.crm_email(raw text) returns text
language sql immutable
set search_path = ''
as $$
  select case when position('@' in coalesce(raw, '')) > 1
              then private.fold_identifier(pg_catalog.btrim(regexp_replace(raw, '^\s*mailto:', '', 'i'))) end
$$;

-- Leads, customers and contacts whose address was folded by Turkish rules (I -> ı): recompute the
-- address from a value kept in the lead's raw payload (or, where no raw is kept, by undoing the
-- fold), then the company domain and the identity key that derived from it. A repaired key that
-- collides with another lead is left as it was and reported. Returns the number of rows changed.
create or replace function private.repair_folded_identifiers() returns int
language plpgsql
set search_path = ''
as $$
declare
  r record;
  fixed text;
  new_domain text;
  new_key text;
  n int := 0;
  m int;
begin
  for r in select l.id, l.tenant_id, l.email, l.domain_cleaned, l.unique_lead_id, l.website, l.phone,
                  l.company_name, l.raw
           from public.leads l where l.email like '%ı%'
  loop
    fixed := lower(pg_catalog.translate(r.email, 'ı', 'i'));
    -- Only when the raw payload holds the address this repair arrives at (recomputed from raw).
    continue when not exists (
      select 1 from jsonb_each(r.raw) s,
             jsonb_each_text(case when jsonb_typeof(s.value) = 'object' then s.value else '{}' end) f
      where private.fold_identifier(btrim(f.value)) = fixed);
    new_domain := case when r.domain_cleaned like 'xn--%' or r.domain_cleaned like '%ı%'
                            or r.domain_cleaned = split_part(r.email, '@', 2)
                       then private.clean_domain(r.website, fixed) else r.domain_cleaned end;
    new_key := case when r.unique_lead_id in ('e:' || r.email, 'd:' || coalesce(r.domain_cleaned, ''))
                    then private.lead_key(new_domain, fixed, r.phone, null, r.company_name)
                    else r.unique_lead_id end;
    begin
      update public.leads set email = fixed, domain_cleaned = new_domain, unique_lead_id = new_key where id = r.id;
    exception when unique_violation then
      update public.leads set email = fixed, domain_cleaned = new_domain where id = r.id;
      raise notice 'lead % repaired but its key % is taken by another lead (a duplicate to merge)', r.id, new_key;
    end;
    n := n + 1;
  end loop;

  for r in select c.id, c.email from public.customers c where c.email like '%ı%' loop
    begin
      update public.customers set email = pg_catalog.translate(r.email, 'ı', 'i') where id = r.id;
      n := n + 1;
    exception when unique_violation then
      raise notice 'customer % has the address of another customer once repaired (%): left for a merge',
        r.id, pg_catalog.translate(r.email, 'ı', 'i');
    end;
  end loop;

  update public.contacts set email = pg_catalog.translate(email, 'ı', 'i') where email like '%ı%';
  get diagnostics m = row_count;
  return n + m;
end;
$$;
revoke execute on function private.repair_folded_identifiers() from public, anon, authenticated;

do $$
declare
  n int;
begin
  -- clean_domain comes from the repeatable functions/leads.sql; on a fresh database there is
  -- nothing to repair and it may not exist yet.
  if exists (select 1 from pg_proc p join pg_namespace s on s.oid = p.pronamespace
             where s.nspname = 'private' and p.proname = 'clean_domain') then
    n := private.repair_folded_identifiers();
    raise notice 'repaired % identifier(s) folded by Turkish letter rules', n;
  end if;
end;
$$;

/*
 * Name keys (issue 9, item 3): the form of a company or person name used to match it, so
 * "Ayşe'nin Butiği" and "Ayşe’nin Butiği" are one company. NFKC (full-width letters, ligatures,
 * most space variants), one form for quote, double quote, dash and space variants, invisible
 * characters removed, whitespace collapsed, then lower-cased by Turkish rules (names are text).
 * The Python twin is luna.normalize.name_key; the character table is tests/cases/name_keys.json.
 */
create or replace function private.name_key(raw text) returns text
language sql immutable parallel safe
set search_path = ''
as $$
  select nullif(pg_catalog.lower(pg_catalog.translate(
           pg_catalog.btrim(pg_catalog.regexp_replace(
             pg_catalog.translate(normalize(raw, nfkc),
               E'’‘‚‛`´ʼʹ′“”„‟″«»‐‑‒–—―−﹘﹣\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000\t\n\r\u000b\u000c\u200b\u200c\u200d\u2060\ufeff\u00ad',
               repeat('''', 9) || repeat('"', 7) || repeat('-', 9) || repeat(' ', 21)),
             ' {2,}', ' ', 'g')),
           'Iİ', 'ıi')), '')
$$;
grant execute on function private.name_key(text) to authenticated, service_role;
