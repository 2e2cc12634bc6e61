/*
 * Contacts keyed on the channel's own identity (issue 9).
 *
 * Since 2026 WhatsApp identifies a user by a business-scoped user id (BSUID, "US.13491208655302741918",
 * webhook `user_id`) and may withhold the phone number of users who adopted a username (Meta's
 * "Business-scoped user IDs" documentation). A contact is therefore found by
 *   scoped_id  the channel's stable, business-scoped id of the person when the channel has one beside
 *              the address (WhatsApp: the BSUID), unique per tenant and channel;
 *   handle     the channel address we reach the person at, unique per tenant and channel as before:
 *              WhatsApp wa_id (the phone's digits) when known, else the BSUID; Instagram-scoped id,
 *              page-scoped id, e-mail address, phone (SMS), chat id, web-chat session elsewhere.
 * The phone is only an attribute (contacts.phone), present when the channel shares it.
 * Lookup and merge rules live in private.upsert_contact (functions/inbox.sql).
 */

alter table public.contacts
  add column scoped_id text check (scoped_id is null or length(btrim(scoped_id)) > 0),
  add column username text;

comment on column public.contacts.handle is
  'Where the channel reaches the person: WhatsApp wa_id when known, else the BSUID; IGSID, PSID, e-mail address, phone, chat id, session id';
comment on column public.contacts.scoped_id is
  'The channel''s business-scoped id of the person (WhatsApp BSUID, webhook user_id); the stable key when present';
comment on column public.contacts.username is 'The user''s channel username (WhatsApp profile.username), for display';
comment on column public.contacts.phone is 'The phone (E.164) when the channel shares it; never assumed';

create unique index contacts_scoped_id_idx on public.contacts (tenant_id, channel, scoped_id) where scoped_id is not null;
