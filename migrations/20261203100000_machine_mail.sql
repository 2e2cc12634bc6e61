/*
 * Machine-generated mail (issue 10, item 10): bounces mark the address as bouncing; later sends to
 * it are skipped (public.send_message stores them as failed with code recipient_bouncing).
 * Detection lives in worker/adapters/imap_mail.py (payload.auto), the rules in functions/inbox.sql
 * (private.ingest_machine_mail, private.inbox_find_thread).
 */
alter table public.contacts
  add column bounced_at timestamptz,
  add column bounce_reason text;

comment on column public.contacts.bounced_at is
  'When mail to this address last bounced permanently (RFC 3464 Action: failed, MAILER-DAEMON); sends are skipped while set. A human reply from the address clears it.';
comment on column public.contacts.bounce_reason is 'The bounce''s status and diagnostic (5.1.1 user unknown …)';

create index contacts_bounced_idx on public.contacts (tenant_id, lower(email)) where bounced_at is not null;
