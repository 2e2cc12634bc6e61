/*
 * Function versions the repeatable files no longer define (issue 11, item 5). Their `drop function`
 * lines stood in the repeatable files of functions/ and ran on every re-apply; a drop for a signature change is history,
 * so it is here, once. A database created after these versions never had them (`if exists`).
 */

-- Older argument lists (create or replace added parameters; the old overloads would make calls ambiguous).
drop function if exists private.upsert_contact(uuid, text, text, text, text, text, jsonb);
drop function if exists private.ingest_message(uuid, text, text, text, text, text, jsonb, jsonb, timestamptz, jsonb,
                                               text, text, text, text, text, text);
drop function if exists private.ingest_message(uuid, text, text, text, text, text, jsonb, jsonb, timestamptz, jsonb,
                                               text, text, text, text, text, text, text, text);
drop function if exists private.ingest_message(uuid, text, text, text, text, text, jsonb, jsonb, timestamptz, jsonb,
                                               text, text, text, text, text, text, text, text, jsonb);
drop function if exists private.lead_priority(text, text, jsonb);
drop function if exists private.ingest_staged(uuid, uuid, text);

-- The inbox wrote the CRM's customer lookup as text for `execute` while the CRM was optional; the
-- query is now written in private.inbox_link_contact itself.
drop function if exists private.inbox_customer_lookup_sql();

-- Same arguments, another result type (create or replace cannot change it): dropped only while the
-- old result type is in place, so the current function is never dropped (the repeatable file then
-- creates it again: the runner re-applies every repeatable file after a migration).
do $$
begin
  if pg_get_function_result(to_regprocedure('private.ingest_lead(uuid, text, jsonb)'))
     is distinct from 'TABLE(lead_id uuid, action text, warnings jsonb)' then
    drop function if exists private.ingest_lead(uuid, text, jsonb);
  end if;
  if pg_get_function_result(to_regprocedure('public.crm_board(uuid, jsonb, integer)')) is distinct from 'json' then
    drop function if exists public.crm_board(uuid, jsonb, int);
  end if;
end $$;
