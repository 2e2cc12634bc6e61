-- functions/inbox/contacts.sql -- Contacts: link to a CRM customer or a lead, upsert by channel identity,
-- merge, WhatsApp business-scoped ids.

-- ===========================================================================================
-- Contacts, conversations, messages
-- ===========================================================================================

-- Link a contact to a CRM customer by phone / e-mail (issue 5's customers), or create a lead for a
-- new contact through the lead pipeline (source = channel). Called when a contact is created and again when it
-- gains a phone or e-mail it did not have (a WhatsApp user first seen by business-scoped id only):
-- a contact with neither never matches anything by them (null never equals null), and its lead is
-- keyed by the channel identity (external_id = channel:scoped id or handle).
create or replace function private.inbox_link_contact(contact uuid) returns void
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.contacts;
  found_customer uuid;
  lead record;
  lead_key text;
  lead_payload jsonb;
begin
  select * into c from public.contacts where id = contact;
  if c.id is null or c.customer_id is not null then
    return;
  end if;
  if c.phone is not null or c.email is not null then
    -- Another contact of the same person (same phone / e-mail) already linked: reuse its links.
    select o.customer_id into found_customer from public.contacts o
    where o.tenant_id = c.tenant_id and o.id <> c.id and o.customer_id is not null
      and ((c.phone is not null and o.phone = c.phone) or (c.email is not null and lower(o.email) = lower(c.email)))
    limit 1;
    if found_customer is null then
      select cu.id into found_customer from public.customers cu
      where cu.tenant_id = c.tenant_id
        and ((c.phone is not null and cu.phone = c.phone) or (c.email is not null and lower(cu.email::text) = lower(c.email)))
      order by (cu.phone = c.phone) desc nulls last
      limit 1;
    end if;
  end if;
  if found_customer is not null then
    update public.contacts set customer_id = found_customer where id = c.id;
    if c.attribution is not null then
      update public.customers cu set attribution = c.attribution
      where cu.id = found_customer and cu.attribution = '{}'::jsonb;
    end if;
    return;
  end if;
  lead_payload := jsonb_strip_nulls(jsonb_build_object(
    'contact_name', coalesce(c.display_name, c.username), 'phone', c.phone, 'email', c.email,
    'external_id', c.channel || ':' || coalesce(c.scoped_id, c.handle), 'channel', c.channel, 'contact_id', c.id,
    'attribution', c.attribution,
    'utm_source', coalesce(c.attribution ->> 'utm_source', case when c.attribution ->> 'source' = 'ctwa' then 'meta' end),
    'utm_medium', coalesce(c.attribution ->> 'utm_medium', case when c.attribution ->> 'source' = 'ctwa' then 'click_to_whatsapp' end),
    'utm_campaign', coalesce(c.attribution ->> 'utm_campaign', c.attribution ->> 'headline'),
    'utm_content', coalesce(c.attribution ->> 'utm_content', c.attribution ->> 'source_id'),
    'utm_term', coalesce(c.attribution ->> 'utm_term', c.attribution ->> 'ctwa_clid')));
  if c.lead_id is not null then
    -- The contact's lead exists already (made when nothing else identified the contact): give it
    -- what is known now, under its own key, so no second lead appears for the new phone / e-mail.
    if c.phone is null and c.email is null then
      return;
    end if;
    select x.unique_lead_id into lead_key from public.leads x where x.id = c.lead_id;
    if lead_key is null then
      return;
    end if;
    lead_payload := lead_payload || jsonb_build_object('unique_lead_id', lead_key);
  end if;
  -- A failing lead (say, nothing to identify it by) must never lose the message: a savepoint.
  begin
    select il.lead_id into lead from private.ingest_lead(c.tenant_id, c.channel, lead_payload) il;
    if lead.lead_id is not null and c.lead_id is null then
      update public.contacts set lead_id = lead.lead_id where id = c.id;
    end if;
  exception when others then
    raise warning 'inbox: no lead for contact % (%): %', c.id, c.channel, sqlerrm;
  end;
end;
$$;
grant execute on function private.inbox_link_contact(uuid) to service_role;

-- Is this WhatsApp identifier a business-scoped user id (BSUID: ISO country code, a period, up to 128
-- alphanumerics, "US.13491208655302741918"; parent BSUIDs "US.ENT.…") rather than a wa_id (digits)?
create or replace function private.wa_is_bsuid(v text) returns boolean
language sql immutable
set search_path = ''
as $$
  select coalesce(v ~ '^[A-Z]{2}\.[A-Za-z0-9.]{1,140}$', false)
$$;
grant execute on function private.wa_is_bsuid(text) to service_role;

-- Move everything of contact `lose` to contact `keep` (the same person, known twice: by phone before
-- the channel shared a business-scoped id, and by that id alone) and delete `lose`. The caller holds
-- the identity locks of both.
create or replace function private.merge_contacts(keep uuid, lose uuid) returns uuid
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  k public.contacts;
  l public.contacts;
  conv uuid;
begin
  select * into k from public.contacts c where c.id = keep for update;
  select * into l from public.contacts c where c.id = lose for update;
  if k.id is null or l.id is null or k.id = l.id or k.tenant_id <> l.tenant_id or k.channel <> l.channel then
    return coalesce(k.id, l.id);
  end if;
  for conv in update public.conversations v set contact_id = k.id
              where v.tenant_id = k.tenant_id and v.contact_id = l.id returning v.id loop
    perform private.inbox_timeline(k.tenant_id, conv, 'contact_merged',
                                   jsonb_build_object('from', l.id, 'into', k.id));
  end loop;
  update public.conversion_events e set contact_id = k.id where e.tenant_id = k.tenant_id and e.contact_id = l.id;
  update public.messages m set sender_contact_id = k.id where m.tenant_id = k.tenant_id and m.sender_contact_id = l.id;
  delete from public.contacts c where c.id = l.id;   -- frees its handle and scoped id
  update public.contacts c
  set scoped_id = coalesce(c.scoped_id, l.scoped_id),
      -- the phone's wa_id is the better address; a handle that is only the business-scoped id gives way
      handle = case when c.handle = c.scoped_id or c.handle = l.scoped_id then l.handle else c.handle end,
      username = coalesce(l.username, c.username),
      display_name = coalesce(c.display_name, l.display_name),
      phone = coalesce(c.phone, l.phone),
      email = coalesce(c.email, l.email),
      customer_id = coalesce(c.customer_id, l.customer_id),
      lead_id = coalesce(c.lead_id, l.lead_id),
      attribution = coalesce(c.attribution, l.attribution)
  where c.id = k.id;
  return k.id;
end;
$$;
grant execute on function private.merge_contacts(uuid, uuid) to service_role;

/*
 * Find or create the contact of a channel identity and record what the event tells about it.
 * `scoped_id` is the channel's business-scoped id (WhatsApp BSUID) when it sends one, `handle` the
 * address (WhatsApp wa_id, which may be withheld: null). Rules, per tenant and channel:
 *   - the contact with this scoped id, else the one with this handle, else a new one (handle =
 *     the address, or the scoped id when there is no address);
 *   - a later event that adds the handle / phone updates the same contact, one that withholds them
 *     keeps what is known;
 *   - the handle's contact with no scoped id of its own is the same person: it takes the scoped id
 *     (merged into one contact if that id had a contact of its own already);
 *   - the handle's contact with another scoped id: the number now belongs to someone else (Meta gives
 *     a new BSUID with a new number); that contact keeps its scoped id as its address and loses the
 *     number.
 * Every event touching one of these keys is serialised (advisory locks, in key order).
 */
create or replace function private.upsert_contact(tenant uuid, channel text, handle text, display_name text,
                                                  phone text default null, email text default null,
                                                  attribution jsonb default null, scoped_id text default null,
                                                  username text default null)
returns uuid
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  k text;
  by_id public.contacts;
  by_handle public.contacts;
  cur public.contacts;
  contact_id uuid;
begin
  handle := nullif(btrim(handle), '');
  scoped_id := nullif(btrim(scoped_id), '');
  email := lower(nullif(btrim(email), ''));
  if handle is null and scoped_id is null then
    raise exception 'a % contact needs a channel identity (an address or a business-scoped id)', channel
      using errcode = '22023';
  end if;
  for k in select distinct x from unnest(array['id:' || scoped_id, 'h:' || handle]) x where x is not null order by 1 loop
    perform pg_advisory_xact_lock(hashtextextended('inbox-identity:' || tenant || ':' || upsert_contact.channel || ':' || k, 0));
  end loop;
  if scoped_id is not null then
    select * into by_id from public.contacts c
    where c.tenant_id = tenant and c.channel = upsert_contact.channel and c.scoped_id = upsert_contact.scoped_id;
  end if;
  if handle is not null then
    select * into by_handle from public.contacts c
    where c.tenant_id = tenant and c.channel = upsert_contact.channel and c.handle = upsert_contact.handle;
  end if;
  if by_handle.id is not null and by_id.id is distinct from by_handle.id and scoped_id is not null then
    if by_handle.scoped_id is not null then
      -- The number moved to another user: the old contact keeps its own id as address.
      update public.contacts c set handle = c.scoped_id, phone = null where c.id = by_handle.id;
      by_handle := null;
    elsif by_id.id is not null then
      -- One person, two contacts: keep the older (its history and links), fold the other in.
      if by_handle.created_at <= by_id.created_at then
        contact_id := private.merge_contacts(by_handle.id, by_id.id);
      else
        contact_id := private.merge_contacts(by_id.id, by_handle.id);
      end if;
      select * into by_id from public.contacts c where c.id = contact_id;
      by_handle := null;
    end if;
  end if;
  if by_id.id is not null then
    cur := by_id;
  elsif by_handle.id is not null then
    cur := by_handle;
  end if;

  if cur.id is null then
    insert into public.contacts (tenant_id, channel, handle, scoped_id, username, display_name, phone, email, attribution)
    values (tenant, upsert_contact.channel, coalesce(handle, scoped_id), scoped_id, username,
            coalesce(display_name, username), phone, email, attribution)
    returning id into contact_id;
    perform private.inbox_link_contact(contact_id);
    return contact_id;
  end if;
  update public.contacts c
  set handle = coalesce(upsert_contact.handle, c.handle),
      scoped_id = coalesce(upsert_contact.scoped_id, c.scoped_id),
      username = coalesce(upsert_contact.username, c.username),
      display_name = coalesce(upsert_contact.display_name, c.display_name, upsert_contact.username),
      phone = coalesce(upsert_contact.phone, c.phone),
      email = coalesce(upsert_contact.email, c.email),
      attribution = coalesce(c.attribution, upsert_contact.attribution)
  where c.id = cur.id
  returning c.id into contact_id;
  -- New ways to recognise the person (a phone shared at last): try the customer / lead link again.
  if cur.customer_id is null and ((phone is not null and phone is distinct from cur.phone)
                                  or (email is not null and email is distinct from cur.email)) then
    perform private.inbox_link_contact(contact_id);
  end if;
  return contact_id;
end;
$$;
grant execute on function private.upsert_contact(uuid, text, text, text, text, text, jsonb, text, text)
  to service_role;

-- A WhatsApp status names the recipient of one of our messages by business-scoped id
-- (recipient_user_id; recipient_id = wa_id when the phone may be shared): a contact known by its
-- number only learns its BSUID, so its later messages without a phone still find it.
create or replace function private.inbox_learn_wa_identity(tenant uuid, provider_message_id text, user_id text,
                                                           wa_id text default null)
returns void
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  ct public.contacts;
begin
  if user_id is null or not private.wa_is_bsuid(user_id) then
    return;
  end if;
  select c.* into ct from public.messages m
  join public.conversations v on v.tenant_id = m.tenant_id and v.id = m.conversation_id
  join public.contacts c on c.tenant_id = v.tenant_id and c.id = v.contact_id
  where m.tenant_id = tenant and m.provider_message_id = inbox_learn_wa_identity.provider_message_id
    and m.direction = 'outbound' and c.channel = 'whatsapp';
  if ct.id is null or ct.scoped_id is not null or (wa_id is not null and wa_id <> ct.handle) then
    return;
  end if;
  -- The message went to this contact's number: that number is the recipient's.
  perform private.upsert_contact(tenant, 'whatsapp', ct.handle, null, null, null, null, user_id, null);
end;
$$;
grant execute on function private.inbox_learn_wa_identity(uuid, text, text, text) to service_role;

-- Link a contact to a customer by hand (the automatic match missed, or was wrong).
create or replace function public.link_contact_customer(contact uuid, customer uuid) returns public.contacts
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  c public.contacts;
  same_tenant boolean;
begin
  -- The customer must be one the caller can see, in the contact's tenant (RLS applies: invoker).
  if link_contact_customer.customer is not null then
    select exists (select 1 from public.customers x join public.contacts y on y.tenant_id = x.tenant_id
                   where x.id = link_contact_customer.customer and y.id = link_contact_customer.contact) into same_tenant;
    if not same_tenant then
      raise exception 'customer not found' using errcode = 'P0002';
    end if;
  end if;
  update public.contacts set customer_id = customer where id = contact returning * into c;
  if c.id is null then
    raise exception 'contact not found' using errcode = 'P0002';
  end if;
  return c;
end;
$$;
revoke execute on function public.link_contact_customer(uuid, uuid) from public, anon;
grant execute on function public.link_contact_customer(uuid, uuid) to authenticated, service_role;
