/*
 * One normaliser per identifier (issue 9, item 4), defined here, in the database, where PostgREST,
 * Glide, supabase-js and SQL writers all reach it:
 *
 *   private.clean_phone(raw, region)  -> E.164 or null     libphonenumber's numbering plans
 *   private.clean_email(raw)          -> address or null   one syntax rule (below)
 *   private.clean_host(value)         -> A-label host      scheme/user/port/path stripped, IDNA
 *   private.registrable_domain(host)  -> domain or null    Public Suffix List (ICANN section)
 *   private.website_domain(website)   -> registrable domain of a URL
 *   private.company_domain(website, email) -> the company's domain: website first, else the e-mail's
 *                                        domain; free-mail providers never (private.free_mail_domains)
 *   private.lead_key(...)             -> the identity key (functions/leads.sql, unchanged rule)
 *
 * The reference data is generated from the same packages the Python fast path uses
 * (migrations/20261202020000_reference_data.sql, luna/refdata.py). luna/normalize.py may precompute
 * these for COPY only because tests/test_identifiers.py proves, over tests/cases/identifiers.json, that
 * it gives exactly these answers. The CRM's crm_phone / crm_email become names for the same rules.
 */

-- Digits of an international number (country code first) -> E.164, or null. Country codes are
-- prefix-free, so at most one of the 1-3 digit heads names plans; the rest must match one of them,
-- with a national prefix written after the code ("+90 (0)532 ...") tried stripped first.
create or replace function private.phone_from_digits(d text) returns text
language plpgsql stable parallel safe
set search_path = ''
as $$
declare
  i int;
  cc int;
  rest text;
  p record;
begin
  if d is null or d !~ '^[1-9][0-9]{3,16}$' then
    return null;
  end if;
  for i in 1..3 loop
    cc := substr(d, 1, i)::int;
    rest := substr(d, i + 1);
    for p in select pl.national_prefix, pl.pattern from private.phone_plans pl where pl.country_code = cc
             order by pl.main desc, pl.region loop
      if p.national_prefix is not null and rest ~ ('^(?:' || p.national_prefix || ')')
         and regexp_replace(rest, '^(?:' || p.national_prefix || ')', '') ~ p.pattern then
        return '+' || cc || regexp_replace(rest, '^(?:' || p.national_prefix || ')', '');
      end if;
      if rest ~ p.pattern then
        return '+' || cc || rest;
      end if;
    end loop;
    if found then
      return null;  -- the code exists, the number is not valid in any of its plans
    end if;
  end loop;
  return null;
end;
$$;

-- A phone number as typed (any common notation: spaces, dots, dashes, slashes, brackets, "tel:",
-- full-width digits) -> E.164, or null when it is not a valid number. With "+" or "00" it is
-- international; otherwise it is read in `region` (the tenant's default): the national prefix
-- stripped ("0532 ..."), or the region's country code written without "+" ("90532 ...").
create or replace function private.clean_phone(raw text, region text default 'TR') returns text
language plpgsql stable parallel safe
set search_path = ''
as $$
declare
  s text := pg_catalog.btrim(regexp_replace(pg_catalog.normalize(coalesce(raw, ''), 'NFKC'), '\s+', ' ', 'g'));
  d text;
  p record;
  nat text;
begin
  s := pg_catalog.btrim(regexp_replace(s, '^tel:', '', 'i'));
  if s = '' or s !~ '^\+?[0-9 ().\-/]+$' then
    return null;
  end if;
  d := regexp_replace(s, '[^0-9]', '', 'g');
  if left(s, 1) = '+' then
    return private.phone_from_digits(d);
  end if;
  if left(d, 2) = '00' then
    return private.phone_from_digits(substr(d, 3));
  end if;
  select pl.country_code, pl.national_prefix, pl.pattern into p
  from private.phone_plans pl where pl.region = upper(coalesce(nullif(pg_catalog.btrim(clean_phone.region), ''), 'TR'));
  if not found then
    return null;
  end if;
  if p.national_prefix is not null and d ~ ('^(?:' || p.national_prefix || ')') then
    nat := regexp_replace(d, '^(?:' || p.national_prefix || ')', '');
    if nat ~ p.pattern then
      return '+' || p.country_code || nat;
    end if;
  end if;
  if d ~ p.pattern then
    return '+' || p.country_code || d;
  end if;
  if d like p.country_code::text || '%' then
    return private.phone_from_digits(d);
  end if;
  return null;
end;
$$;

-- E-mail syntax (RFC 5321/5322 dot-atoms; international addresses per RFC 6531 allowed): after
-- NFKC, trimming, "mailto:" removal and locale-independent case folding, a local part of atext
-- characters or non-ASCII letters in dot-separated atoms (at most 64 characters), "@", then
-- host labels (letters, digits, hyphens inside, non-ASCII allowed) ending in a top-level label of
-- at least two letters (or an xn-- A-label); at most 254 characters in all. No DNS. The same
-- pattern is luna.normalize._EMAIL.
create or replace function private.clean_email(raw text) returns text
language sql immutable parallel safe
set search_path = ''
as $$
  select case when e ~ ('^[a-z0-9!#$%&''*+/=?^_`{|}~\u0080-\uffff-]+(\.[a-z0-9!#$%&''*+/=?^_`{|}~\u0080-\uffff-]+)*'
                        || '@([a-z0-9\u0080-\uffff]([a-z0-9\u0080-\uffff-]*[a-z0-9\u0080-\uffff])?\.)+'
                        || '([a-z\u0080-\uffff]{2,63}|xn--[a-z0-9-]{1,59})$')
                   and length(e) <= 254 and length(split_part(e, '@', 1)) <= 64
              then e end
  from (select private.fold_identifier(pg_catalog.btrim(regexp_replace(
                 pg_catalog.normalize(pg_catalog.btrim(coalesce(raw, '')), 'NFKC'), '^mailto:', '', 'i'))) as e) x
$$;

-- RFC 3492 Punycode of one label (code points above U+007F encoded after the basic ones).
create or replace function private.punycode(label text) returns text
language plpgsql immutable parallel safe
set search_path = ''
as $$
declare
  cps int[] := array(select ascii(c) from regexp_split_to_table(label, '') c);
  total int := coalesce(array_length(cps, 1), 0);
  out text := (select coalesce(string_agg(c, '' order by o), '') from regexp_split_to_table(label, '') with ordinality t(c, o)
               where ascii(c) < 128);
  b int := length(out);
  h int := b;
  n int := 128;
  delta bigint := 0;
  bias int := 72;
  m int;
  q bigint;
  k int;
  t int;
  c int;
  d bigint;
begin
  if b > 0 and b < total then
    out := out || '-';
  end if;
  while h < total loop
    select min(x) into m from unnest(cps) x where x >= n;
    delta := delta + (m - n)::bigint * (h + 1);
    n := m;
    foreach c in array cps loop
      if c < n then
        delta := delta + 1;
      elsif c = n then
        q := delta;
        k := 36;
        loop
          t := case when k <= bias then 1 when k >= bias + 26 then 26 else k - bias end;
          exit when q < t;
          d := t + (q - t) % (36 - t);
          out := out || case when d < 26 then chr(97 + d::int) else chr(22 + d::int) end;
          q := (q - t) / (36 - t);
          k := k + 36;
        end loop;
        out := out || case when q < 26 then chr(97 + q::int) else chr(22 + q::int) end;
        -- adapt the bias (RFC 3492 section 6.1)
        d := case when h = b then delta / 700 else delta / 2 end;
        d := d + d / (h + 1);
        k := 0;
        while d > 455 loop
          d := d / 35;
          k := k + 36;
        end loop;
        bias := k + (36 * d) / (d + 38);
        delta := 0;
        h := h + 1;
      end if;
    end loop;
    delta := delta + 1;
    n := n + 1;
  end loop;
  return out;
end;
$$;

-- The host of a URL, e-mail domain or bare host name, as lower-case A-labels: scheme, user,
-- port, path, query and fragment stripped; NFKC and locale-independent folding before IDNA
-- (Punycode of each non-ASCII label). Null unless it has a dot and only letters, digits, '-', '_'.
create or replace function private.clean_host(value text) returns text
language sql immutable parallel safe
set search_path = ''
as $$
  with h as (
    select pg_catalog.btrim(split_part(reverse(split_part(reverse(
             split_part(split_part(split_part(split_part(
               regexp_replace(private.fold_identifier(pg_catalog.normalize(pg_catalog.btrim(coalesce(value, '')), 'NFKC')),
                              '^[a-z][a-z0-9+.-]*://', ''),
               '/', 1), '?', 1), '#', 1), '\', 1)), '@', 1)), ':', 1), '.') as host
  ), a as (
    select string_agg(case when l ~ '^[\x01-\x7f]*$' then l else 'xn--' || private.punycode(l) end, '.' order by o) as host
    from h, regexp_split_to_table(h.host, '\.') with ordinality s(l, o)
    where h.host <> '' and h.host !~ '\s'
  )
  select a.host from a where a.host ~ '^[a-z0-9_-]+(\.[a-z0-9_-]+)+$'
$$;

-- The registrable domain of a host (one label below its public suffix): the longest matching rule
-- of the Public Suffix List, an exception rule ("!www.ck") winning, wildcards ("*.ck") matching one
-- label. Null when the host is itself a public suffix or no rule matches (an IP address, "localhost").
create or replace function private.registrable_domain(host text) returns text
language sql stable parallel safe
set search_path = ''
as $$
  with labels as (
    select string_to_array(host, '.') as l, array_length(string_to_array(host, '.'), 1) as n
  ), candidates as (
    -- i: the first label of the candidate suffix
    select i, array_to_string(l[i:n], '.') as suffix, array_to_string(l[i + 1:n], '.') as parent, n, l
    from labels, generate_series(1, n) i
  ), matched as (
    select c.i,
           case when exists (select 1 from private.public_suffixes p where p.suffix = '!' || c.suffix) then c.i + 1
                when exists (select 1 from private.public_suffixes p where p.suffix = c.suffix)
                  or (c.parent <> '' and exists (select 1 from private.public_suffixes p where p.suffix = '*.' || c.parent))
                then c.i end as suffix_start,
           c.n, c.l
    from candidates c
  ), best as (
    -- an exception rule anywhere beats the others; else the longest rule (smallest i)
    select m.suffix_start, m.n, m.l from matched m
    where m.suffix_start is not null
    order by (m.suffix_start = m.i + 1) desc, m.i
    limit 1
  )
  select array_to_string(b.l[b.suffix_start - 1:b.n], '.') from best b where b.suffix_start > 1
$$;

create or replace function private.website_domain(website text) returns text
language sql stable parallel safe
set search_path = ''
as $$
  select private.registrable_domain(private.clean_host(website))
$$;

-- The company's domain: the website's, else the e-mail's; a free-mail provider is never one.
create or replace function private.company_domain(website text, email text default null) returns text
language sql stable parallel safe
set search_path = ''
as $$
  select d from (
    select 1 as ord, private.website_domain(website) as d
    union all
    select 2, private.website_domain(split_part(private.clean_email(email), '@', 2))
  ) x
  where d is not null and not exists (select 1 from private.free_mail_domains f where f.domain = x.d)
  order by ord limit 1
$$;

-- The old name, kept for callers outside this repository: the company domain.
create or replace function private.clean_domain(website text, email text default null) returns text
language sql stable parallel safe
set search_path = ''
as $$
  select private.company_domain(website, email)
$$;

-- The CRM's names for the same rules (its customer trigger and import call these).
create or replace function private.crm_phone(raw text, region text default 'TR') returns text
language sql stable parallel safe
set search_path = ''
as $$
  select private.clean_phone(raw, region)
$$;

create or replace function private.crm_email(raw text) returns text
language sql immutable parallel safe
set search_path = ''
as $$
  select private.clean_email(raw)
$$;

grant execute on function private.phone_from_digits(text), private.clean_phone(text, text), private.clean_email(text),
  private.punycode(text), private.clean_host(text), private.registrable_domain(text), private.website_domain(text),
  private.company_domain(text, text), private.clean_domain(text, text), private.crm_phone(text, text),
  private.crm_email(text) to authenticated, service_role;

-- Staging carries what the rows said; the key and the company domain are the database's answers.
alter table private.lead_staging alter column unique_lead_id drop not null,
  add column if not exists external_id text;
