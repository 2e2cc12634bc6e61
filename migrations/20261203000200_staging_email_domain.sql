-- The bulk path precomputes the registrable domain of each e-mail's host (luna.normalize.clean_domain,
-- proven equal to private.website_domain by tests/test_identifiers.py), so ingest_staged need not run
-- the public-suffix lookup once per distinct domain of a large file. Null: computed in SQL.
alter table private.lead_staging add column if not exists email_domain text;
