/*
 * Unified inbox: channel accounts (WhatsApp Cloud API numbers, Instagram, Messenger pages, mailboxes,
 * SMS, Telegram, web chat), raw inbound events, contacts, conversations, messages, the outbound send
 * queue, templates, routing, and Meta attribution (ad insights, conversion events).
 *
 * RPCs and the worker's SQL live in functions/inbox.sql; dashboards in sql/inbox.sql.
 */

-- ===========================================================================================
-- Channel accounts: one inbox per account (a WhatsApp number, a page, a mailbox ...)
-- ===========================================================================================
create table public.channel_accounts (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  kind text not null check (kind in ('whatsapp', 'instagram', 'messenger', 'email', 'sms_twilio', 'sms_netgsm',
                                     'telegram', 'webchat')),
  name text not null check (length(trim(name)) > 0),
  -- The provider's id of the account: WhatsApp phone_number_id, page id, Instagram account id,
  -- mailbox address, Twilio/Netgsm sender, Telegram bot id, web-chat widget key.
  external_id text not null,
  display_handle text,                       -- the human form (+90 …, @handle, address)
  -- Non-secret configuration: base_url, api_version, imap/smtp host and port, folders,
  -- rate_per_s (per number), routing defaults. Credentials never live here (private.channel_credentials).
  settings jsonb not null default '{}'::jsonb,
  active boolean not null default true,
  -- IMAP: the last seen UID per folder and the folder's UIDVALIDITY ({"INBOX": {"uidvalidity": 1, "uid": 42}}).
  sync_state jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (kind, external_id)
);
create trigger set_updated_at before update on public.channel_accounts
  for each row execute function private.set_updated_at();
select private.enable_rls('channel_accounts', 'inbox');

-- Secrets per channel (access tokens, app secrets, IMAP/SMTP passwords): encrypted by the application
-- (luna/secrets.py: Supabase Vault when present, else Fernet). Private: no API role reads this table.
create table private.channel_credentials (
  channel_account_id uuid primary key references public.channel_accounts (id) on delete cascade,
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  -- 'fernet:<token>' or 'vault:<secret uuid>'
  secret text not null,
  updated_at timestamptz not null default now()
);

-- Meta apps whose webhooks we receive: the app secret signs every POST (X-Hub-Signature-256) and the
-- verify token answers the GET handshake. Both stored encrypted like channel credentials.
create table private.meta_apps (
  app_id text primary key,
  app_secret text not null,
  verify_token text not null,
  created_at timestamptz not null default now()
);

-- ===========================================================================================
-- Raw inbound events (webhooks, IMAP fetches, web chat): stored first, processed by the worker.
-- Not tenant-owned at receipt (the tenant is found from the payload), so they live in private.
-- ===========================================================================================
create table private.inbound_events (
  id bigint generated always as identity primary key,
  provider text not null,                    -- whatsapp | instagram | messenger | email | webchat | ...
  -- The provider's id of the delivery; for Meta (no delivery id) the SHA-256 of the raw body, so a
  -- redelivery of the same body is a no-op.
  provider_event_id text not null,
  app_id text,
  tenant_id uuid references public.tenants (id) on delete cascade,
  channel_account_id uuid references public.channel_accounts (id) on delete cascade,
  headers jsonb not null default '{}'::jsonb,
  payload jsonb,                             -- null when the body was not JSON
  raw bytea,                                 -- kept for malformed bodies (inspection)
  status text not null default 'received' check (status in ('received', 'processing', 'processed', 'failed', 'malformed')),
  kind text not null default 'inbound',      -- dispatch key for the worker
  attempts int not null default 0,
  max_attempts int not null default 5,
  run_at timestamptz not null default now(),
  locked_by text,
  locked_until timestamptz,
  last_error text,
  result jsonb,
  received_at timestamptz not null default now(),
  processed_at timestamptz,
  unique (provider, provider_event_id)
);
create index inbound_events_claim_idx on private.inbound_events (run_at, id) where status = 'received';
create index inbound_events_lease_idx on private.inbound_events (locked_until) where status = 'processing';

-- ===========================================================================================
-- Contacts: one per channel identity; linked to a CRM customer (automatic or manual) and a lead.
-- ===========================================================================================
create table public.contacts (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  channel text not null,                      -- channel kind
  handle text not null,                       -- wa_id, PSID, IGSID, e-mail address, phone, chat id
  display_name text,
  phone text,
  email text,
  customer_id uuid,                           -- public.customers (issue 5); linked by functions
  lead_id uuid,                               -- the lead created for a new contact (lead pipeline)
  -- First-touch attribution: UTM parameters or Click-to-WhatsApp referral (source_id, source_url,
  -- source_type, headline, ctwa_clid).
  attribution jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, channel, handle)
);
create index contacts_phone_idx on public.contacts (tenant_id, phone) where phone is not null;
create index contacts_email_idx on public.contacts (tenant_id, lower(email)) where email is not null;
create trigger set_updated_at before update on public.contacts
  for each row execute function private.set_updated_at();
select private.enable_rls('contacts', 'inbox');

-- ===========================================================================================
-- Routing: agent availability and rules per tenant / inbox
-- ===========================================================================================
create table public.agent_availability (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  user_id uuid not null references public.profiles (id) on delete cascade,
  status text not null default 'online' check (status in ('online', 'away', 'offline')),
  max_open int not null default 20 check (max_open > 0),
  teams text[] not null default '{}',
  skills text[] not null default '{}',
  last_assigned_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, user_id)
);
create trigger set_updated_at before update on public.agent_availability
  for each row execute function private.set_updated_at();
select private.enable_rls('agent_availability', 'inbox');

create table public.routing_rules (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  channel_account_id uuid,                    -- null: every inbox of the tenant
  strategy text not null default 'round_robin' check (strategy in ('round_robin', 'least_busy', 'sticky', 'manual')),
  team text,                                  -- only agents of this team
  skills text[] not null default '{}',        -- agents having all of these
  -- Match on the conversation: {"language": "en"} or {"label": "vip"}; empty matches all.
  match jsonb not null default '{}'::jsonb,
  position int not null default 100,          -- lower first
  active boolean not null default true,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  foreign key (tenant_id, channel_account_id) references public.channel_accounts (tenant_id, id) on delete cascade
);
create trigger set_updated_at before update on public.routing_rules
  for each row execute function private.set_updated_at();
select private.enable_rls('routing_rules', 'inbox');

-- ===========================================================================================
-- Conversations, messages, timeline, read markers
-- ===========================================================================================
create table public.conversations (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  channel_account_id uuid not null,
  contact_id uuid not null,
  status text not null default 'open' check (status in ('open', 'pending', 'snoozed', 'resolved')),
  priority text not null default 'normal' check (priority in ('low', 'normal', 'high', 'urgent')),
  labels text[] not null default '{}',
  assignee_id uuid references public.profiles (id) on delete set null,
  team text,
  subject text,
  -- E-mail threading: the root Message-ID of the thread.
  thread_key text,
  snoozed_until timestamptz,
  attribution jsonb,
  -- The customer's last message: WhatsApp's 24-hour customer-service window starts here.
  last_inbound_at timestamptz,
  last_message_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  foreign key (tenant_id, channel_account_id) references public.channel_accounts (tenant_id, id) on delete cascade,
  foreign key (tenant_id, contact_id) references public.contacts (tenant_id, id) on delete cascade
);
create index conversations_list_idx on public.conversations (tenant_id, status, last_message_at desc);
create index conversations_assignee_idx on public.conversations (tenant_id, assignee_id) where status in ('open', 'pending');
create index conversations_contact_idx on public.conversations (tenant_id, contact_id, channel_account_id);
create unique index conversations_thread_idx on public.conversations (tenant_id, channel_account_id, thread_key)
  where thread_key is not null;
create trigger set_updated_at before update on public.conversations
  for each row execute function private.set_updated_at();
select private.enable_rls('conversations', 'inbox', 'assignee_id');

create table public.messages (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  conversation_id uuid not null,
  direction text not null check (direction in ('inbound', 'outbound', 'internal')),
  type text not null default 'text' check (type in ('text', 'media', 'template', 'interactive', 'note', 'email',
                                                   'reaction', 'location', 'contacts', 'unsupported')),
  body text,
  payload jsonb not null default '{}'::jsonb,
  attachments jsonb not null default '[]'::jsonb, -- [{filename, mime_type, size, provider_media_id}]
  provider_message_id text,                   -- wamid / mid / Message-ID
  in_reply_to text,
  status text not null default 'received' check (status in ('received', 'note', 'queued', 'sent', 'delivered',
                                                             'read', 'failed')),
  error_code text,
  error_message text,
  sender_id uuid references public.profiles (id) on delete set null,
  sent_at timestamptz,
  delivered_at timestamptz,
  read_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  foreign key (tenant_id, conversation_id) references public.conversations (tenant_id, id) on delete cascade
);
create unique index messages_provider_idx on public.messages (tenant_id, provider_message_id)
  where provider_message_id is not null;
create index messages_conversation_idx on public.messages (tenant_id, conversation_id, created_at);
create trigger set_updated_at before update on public.messages
  for each row execute function private.set_updated_at();
-- Messages follow their conversation's visibility.
select private.enable_rls('messages', 'inbox');
drop policy tenant_select on public.messages;
create policy tenant_select on public.messages for select to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('inbox', 'read'))
         and exists (select 1 from public.conversations c where c.tenant_id = messages.tenant_id and c.id = messages.conversation_id));
-- Writes go through RPCs (send_message, add_note), never straight to the table: no write policies.
drop policy tenant_insert on public.messages;
drop policy tenant_update on public.messages;
drop policy tenant_delete on public.messages;

-- The conversation's timeline: assignment, transfer, status changes.
create table public.conversation_events (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  conversation_id uuid not null,
  event text not null,                        -- assigned | transferred | status | label | created
  actor_id uuid references public.profiles (id) on delete set null,
  data jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  foreign key (tenant_id, conversation_id) references public.conversations (tenant_id, id) on delete cascade
);
create index conversation_events_idx on public.conversation_events (tenant_id, conversation_id, created_at);
create trigger set_updated_at before update on public.conversation_events
  for each row execute function private.set_updated_at();
select private.enable_rls('conversation_events', 'inbox');
drop policy tenant_select on public.conversation_events;
create policy tenant_select on public.conversation_events for select to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('inbox', 'read'))
         and exists (select 1 from public.conversations c where c.tenant_id = conversation_events.tenant_id
                     and c.id = conversation_events.conversation_id));
drop policy tenant_insert on public.conversation_events;
drop policy tenant_update on public.conversation_events;
drop policy tenant_delete on public.conversation_events;

-- Per user: the last time they read a conversation (unread counts = inbound messages after it).
create table public.conversation_reads (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  conversation_id uuid not null,
  user_id uuid not null references public.profiles (id) on delete cascade,
  last_read_at timestamptz not null default now(),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (conversation_id, user_id),
  foreign key (tenant_id, conversation_id) references public.conversations (tenant_id, id) on delete cascade
);
create trigger set_updated_at before update on public.conversation_reads
  for each row execute function private.set_updated_at();
select private.enable_rls('conversation_reads', 'inbox', 'user_id');

-- ===========================================================================================
-- Templates (WhatsApp message templates; e-mail templates)
-- ===========================================================================================
create table public.message_templates (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  channel_account_id uuid not null,
  name text not null check (name ~ '^[a-z0-9_]+$' and length(name) <= 512),
  language text not null default 'tr',
  category text not null default 'UTILITY' check (category in ('MARKETING', 'UTILITY', 'AUTHENTICATION', 'EMAIL')),
  status text not null default 'PENDING' check (status in ('DRAFT', 'PENDING', 'APPROVED', 'REJECTED', 'PAUSED', 'DISABLED')),
  -- WhatsApp components ([{type: BODY, text: "Merhaba {{1}}"}]); e-mail: [{type: SUBJECT}, {type: BODY}]
  components jsonb not null default '[]'::jsonb,
  variables int not null default 0 check (variables >= 0),
  provider_template_id text,
  rejected_reason text,
  synced_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, channel_account_id, name, language),
  foreign key (tenant_id, channel_account_id) references public.channel_accounts (tenant_id, id) on delete cascade
);
create trigger set_updated_at before update on public.message_templates
  for each row execute function private.set_updated_at();
select private.enable_rls('message_templates', 'inbox');

-- ===========================================================================================
-- Outbound queue: one row per message to send; the worker claims them (lease columns on the row).
-- ===========================================================================================
create table public.outbound_messages (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  message_id uuid not null,
  channel_account_id uuid not null,
  kind text not null,                         -- channel kind: dispatch key for the worker
  recipient text not null,
  request jsonb not null,                     -- what the adapter sends (provider-neutral)
  idempotency_key text not null,
  status text not null default 'queued' check (status in ('queued', 'sending', 'sent', 'failed', 'cancelled')),
  attempts int not null default 0,
  max_attempts int not null default 6 check (max_attempts > 0),
  run_at timestamptz not null default now(),
  send_after timestamptz,                     -- the rate-limit slot given at claim time
  locked_by text,
  locked_until timestamptz,
  last_error text,
  error_code text,
  provider_message_id text,
  sent_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, idempotency_key),
  foreign key (tenant_id, message_id) references public.messages (tenant_id, id) on delete cascade,
  foreign key (tenant_id, channel_account_id) references public.channel_accounts (tenant_id, id) on delete cascade
);
create index outbound_claim_idx on public.outbound_messages (run_at, created_at) where status = 'queued';
create index outbound_lease_idx on public.outbound_messages (locked_until) where status = 'sending';
create trigger set_updated_at before update on public.outbound_messages
  for each row execute function private.set_updated_at();
select private.enable_rls('outbound_messages', 'inbox');
-- Queued only by send_message; written only by the worker (service_role).
drop policy tenant_insert on public.outbound_messages;
drop policy tenant_update on public.outbound_messages;
drop policy tenant_delete on public.outbound_messages;

-- Delivery statuses that arrived before our own send call returned the provider's message id (the
-- webhook raced the API answer): applied when the send completes.
create table private.early_statuses (
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  provider_message_id text not null,
  status text not null,
  at timestamptz not null,
  error_code text,
  error_message text,
  created_at timestamptz not null default now(),
  primary key (tenant_id, provider_message_id, status)
);

-- Rate-limit buckets shared by every worker: the next free send slot per key
-- ('channel:<id>' per number, 'kind:<tenant>:<kind>' per channel kind).
create table private.send_slots (
  key text primary key,
  next_slot timestamptz not null default now()
);

-- ===========================================================================================
-- Attribution: Meta ad accounts, campaigns/adsets/ads, daily insights; conversion events
-- ===========================================================================================
create table public.ad_accounts (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  provider text not null default 'meta',
  external_id text not null,                  -- act_<id>
  name text,
  currency text not null default 'TRY',
  channel_account_id uuid,                    -- whose credentials (access token) to use
  last_synced_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, provider, external_id)
);
create trigger set_updated_at before update on public.ad_accounts
  for each row execute function private.set_updated_at();
select private.enable_rls('ad_accounts', 'marketing');

create table public.ad_objects (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  ad_account_id uuid not null,
  level text not null check (level in ('campaign', 'adset', 'ad')),
  external_id text not null,
  parent_external_id text,
  name text,
  status text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, level, external_id),
  foreign key (tenant_id, ad_account_id) references public.ad_accounts (tenant_id, id) on delete cascade
);
create trigger set_updated_at before update on public.ad_objects
  for each row execute function private.set_updated_at();
select private.enable_rls('ad_objects', 'marketing');

create table public.ad_insights_daily (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  ad_account_id uuid not null,
  level text not null check (level in ('campaign', 'adset', 'ad')),
  external_id text not null,
  day date not null,
  impressions bigint not null default 0,
  clicks bigint not null default 0,
  spend numeric(14, 2) not null default 0,
  actions jsonb not null default '[]'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, level, external_id, day),
  foreign key (tenant_id, ad_account_id) references public.ad_accounts (tenant_id, id) on delete cascade
);
create trigger set_updated_at before update on public.ad_insights_daily
  for each row execute function private.set_updated_at();
select private.enable_rls('ad_insights_daily', 'marketing');

-- Events for Meta's Conversions API; event_id lets Meta deduplicate, so a retry is never counted twice.
create table public.conversion_events (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  pixel_id text not null,
  event_name text not null,                   -- Lead, Purchase, Contact, ...
  event_id text not null,
  event_time timestamptz not null default now(),
  action_source text not null default 'business_messaging',
  user_data jsonb not null default '{}'::jsonb, -- already hashed (SHA-256) identifiers
  custom_data jsonb not null default '{}'::jsonb,
  contact_id uuid,
  channel_account_id uuid,                    -- whose credentials (Conversions API token) to use
  status text not null default 'queued' check (status in ('queued', 'sent', 'failed')),
  attempts int not null default 0,
  last_error text,
  sent_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, pixel_id, event_id)
);
create trigger set_updated_at before update on public.conversion_events
  for each row execute function private.set_updated_at();
select private.enable_rls('conversion_events', 'marketing');

-- Every foreign key leads an index (deletes and joins on the referenced side stay cheap).
create index agent_availability_user_idx on public.agent_availability (user_id);
create index routing_rules_channel_idx on public.routing_rules (tenant_id, channel_account_id);
create index conversations_assignee_fk_idx on public.conversations (assignee_id);
create index messages_sender_idx on public.messages (sender_id) where sender_id is not null;
create index conversation_events_actor_idx on public.conversation_events (actor_id) where actor_id is not null;
create index conversation_reads_user_idx on public.conversation_reads (user_id);
create index conversation_reads_conversation_idx on public.conversation_reads (tenant_id, conversation_id);
create index outbound_message_idx on public.outbound_messages (tenant_id, message_id);
create index outbound_channel_idx on public.outbound_messages (tenant_id, channel_account_id);
create index ad_objects_account_idx on public.ad_objects (tenant_id, ad_account_id);
create index ad_insights_account_idx on public.ad_insights_daily (tenant_id, ad_account_id);

-- Grants: the API roles read and write through RLS; the worker is service_role.
grant select, insert, update, delete on public.channel_accounts, public.contacts, public.agent_availability,
  public.routing_rules, public.conversations, public.conversation_reads, public.message_templates,
  public.ad_accounts, public.ad_objects, public.ad_insights_daily, public.conversion_events to authenticated;
grant select, insert, update, delete on public.messages, public.conversation_events, public.outbound_messages to authenticated;
grant all on public.channel_accounts, public.contacts, public.agent_availability, public.routing_rules,
  public.conversations, public.messages, public.conversation_events, public.conversation_reads,
  public.message_templates, public.outbound_messages, public.ad_accounts, public.ad_objects,
  public.ad_insights_daily, public.conversion_events to service_role;
grant all on private.inbound_events, private.channel_credentials, private.meta_apps, private.send_slots,
  private.early_statuses to service_role;
