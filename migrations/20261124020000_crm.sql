/*
 * CRM core: customers (deduplicated, mergeable), pipelines with ordered stages and stage rules, cards,
 * activities, the timeline, notes, reminders, notifications, work orders, inventory, CRM settings and
 * assignment rules. Every guard is here: constraints, RLS, triggers. RPCs live in functions/crm.sql.
 *
 * Permissions: module 'crm' (read / write / delete / export / manage) via private.can; agents limited
 * to assigned records see only customers (and their cards, notes, ...) whose `responsibles` name them.
 */

-- ===========================================================================================
-- Helpers used by constraints, triggers and policies
-- ===========================================================================================

-- Phone numbers to E.164, the way leads normalise them (luna/normalize.py uses libphonenumber; this is
-- the database's own guard so every writer -- PostgREST, Glide, SQL -- dedupes the same way).
create or replace function private.crm_phone(raw text, region text default 'TR') returns text
language plpgsql immutable
set search_path = ''
as $$
declare
  s text := regexp_replace(coalesce(raw, ''), '[^0-9+]', '', 'g');
  d text := regexp_replace(s, '[^0-9]', '', 'g');
begin
  if d = '' then
    return null;
  end if;
  if left(s, 1) = '+' then
    d := d;
  elsif left(d, 2) = '00' then
    d := substr(d, 3);
  elsif coalesce(region, 'TR') = 'TR' then
    if d ~ '^90[0-9]{10}$' then d := d;
    elsif d ~ '^0[0-9]{10}$' then d := '90' || substr(d, 2);
    elsif d ~ '^[0-9]{10}$' then d := '90' || d;
    else return null;
    end if;
  elsif length(d) < 11 then
    return null;  -- national number of another region: the caller (libphonenumber) must resolve it
  end if;
  if d !~ '^[1-9][0-9]{6,14}$' then
    return null;
  end if;
  return '+' || d;
end;
$$;

create or replace function private.crm_email(raw text) returns text
language sql immutable
set search_path = ''
as $$
  select case when position('@' in coalesce(raw, '')) > 1 then lower(trim(raw)) end
$$;
grant execute on function private.crm_phone(text, text), private.crm_email(text) to authenticated, service_role;

-- Are all these users active-or-not members of the tenant? (responsibles must be colleagues)
create or replace function private.crm_members_ok(tenant uuid, users uuid[]) returns boolean
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(cardinality(users), 0) = 0 or (
    select count(distinct m.user_id) = cardinality(array(select distinct unnest(users)))
    from public.tenant_members m where m.tenant_id = tenant and m.user_id = any(users))
$$;
grant execute on function private.crm_members_ok(uuid, uuid[]) to authenticated, service_role;

-- ===========================================================================================
-- CRM settings (one row per tenant) and assignment rules
-- ===========================================================================================
create table public.crm_settings (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null unique references public.tenants (id) on delete cascade,
  -- 'round_robin' or 'rules' (rules first, round robin as fallback)
  assignment_mode text not null default 'round_robin' check (assignment_mode in ('round_robin', 'rules')),
  round_robin_last uuid,
  -- Who takes part in round robin: members with these roles (and attributes->>'sales_rep' <> 'false').
  rep_roles public.member_role[] not null default '{agent}',
  -- A card's customer is overdue when not contacted for this many days.
  overdue_days int not null default 3 check (overdue_days > 0),
  notify_email boolean not null default false,
  notify_whatsapp boolean not null default false,
  zoho_sync boolean not null default false,
  settings jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id)
);
create trigger set_updated_at before update on public.crm_settings
  for each row execute function private.set_updated_at();

create table public.assignment_rules (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  priority int not null default 100,
  -- Matched against the lead/customer: {"region": "İstanbul"}, {"source": "instagram"}, {"campaign": "x"}
  match jsonb not null check (jsonb_typeof(match) = 'object'),
  assignee uuid not null references public.profiles (id) on delete cascade,
  active boolean not null default true,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id)
);
create trigger set_updated_at before update on public.assignment_rules
  for each row execute function private.set_updated_at();

-- ===========================================================================================
-- Customers
-- ===========================================================================================
create table public.customers (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  full_name text not null check (length(trim(full_name)) > 0),
  phone text check (phone ~ '^\+[1-9][0-9]{6,14}$'),   -- E.164
  email text check (email = lower(email) and position('@' in email) > 1),
  region text,
  -- attribution
  source text,                 -- web, instagram, whatsapp, meta_form, referral, import ...
  campaign text,
  utm_source text, utm_medium text, utm_campaign text, utm_term text, utm_content text,
  attribution jsonb not null default '{}'::jsonb,
  lead_id uuid,                -- the lead it came from (public.leads, when synced)
  -- operations
  responsibles uuid[] not null default '{}',
  quality_score int check (quality_score between 0 and 100),
  last_contact_at timestamptz,
  tags text[] not null default '{}',
  unread_messages int not null default 0 check (unread_messages >= 0),  -- kept by the inbox
  custom_fields jsonb not null default '{}'::jsonb,
  created_by uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  -- dedupe: one customer per phone and per e-mail in a tenant
  constraint customers_phone_key unique (tenant_id, phone),
  constraint customers_email_key unique (tenant_id, email)
);
create index customers_responsibles_idx on public.customers using gin (responsibles);
create index customers_tags_idx on public.customers using gin (tags);
create index customers_name_trgm_idx on public.customers using gin (full_name extensions.gin_trgm_ops);
create index customers_source_idx on public.customers (tenant_id, source, campaign);
create trigger set_updated_at before update on public.customers
  for each row execute function private.set_updated_at();

-- Normalise contact data, keep responsibles to colleagues, make the creating agent responsible.
create or replace function private.crm_customer_before() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  region text;
  normalised text;
begin
  if new.phone is not null and new.phone !~ '^\+[1-9][0-9]{6,14}$' then
    select t.default_region into region from public.tenants t where t.id = new.tenant_id;
    normalised := private.crm_phone(new.phone, coalesce(new.custom_fields ->> 'phone_region', region, 'TR'));
    if normalised is null then
      raise exception 'phone % is not a valid number', new.phone
        using errcode = 'PT422', detail = 'code=invalid_phone';
    end if;
    new.phone := normalised;
  end if;
  if new.email is not null then
    new.email := private.crm_email(new.email);
    if new.email is null then
      raise exception 'e-mail is not valid' using errcode = 'PT422', detail = 'code=invalid_email';
    end if;
  end if;
  new.full_name := trim(new.full_name);
  new.tags := array(select distinct lower(trim(t)) from unnest(new.tags) t where trim(t) <> '' order by 1);
  new.responsibles := array(select distinct r from unnest(new.responsibles) r where r is not null order by 1);
  if tg_op = 'INSERT' then
    new.created_by := coalesce(new.created_by, (select auth.uid()));
    -- an agent's new customer is theirs (else the assignee restriction would hide it from them)
    if cardinality(new.responsibles) = 0 and (select private.tenant_role()) = 'agent' then
      new.responsibles := array[(select auth.uid())];
    end if;
  end if;
  if (tg_op = 'INSERT' or new.responsibles is distinct from old.responsibles)
     and not private.crm_members_ok(new.tenant_id, new.responsibles) then
    raise exception 'responsibles must be members of the tenant' using errcode = 'PT422', detail = 'code=invalid_responsible';
  end if;
  return new;
end;
$$;
create trigger crm_customer_before before insert or update on public.customers
  for each row execute function private.crm_customer_before();

-- Merges: the duplicate's snapshot and what moved, so a merge is always explainable.
create table public.customer_merges (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  survivor_id uuid not null,
  merged_id uuid not null,
  merged_snapshot jsonb not null,
  moved jsonb not null default '{}'::jsonb,
  merged_by uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  foreign key (tenant_id, survivor_id) references public.customers (tenant_id, id) on delete cascade
);
create trigger set_updated_at before update on public.customer_merges
  for each row execute function private.set_updated_at();

create table public.tags (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  name text not null check (name = lower(trim(name)) and name <> ''),
  color text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, name)
);
create trigger set_updated_at before update on public.tags
  for each row execute function private.set_updated_at();

-- ===========================================================================================
-- Pipelines, stages, stage rules, cards
-- ===========================================================================================
create table public.pipelines (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  name text not null check (length(trim(name)) > 0),
  is_default boolean not null default false,
  archived boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, name)
);
create unique index pipelines_one_default on public.pipelines (tenant_id) where is_default;
create trigger set_updated_at before update on public.pipelines
  for each row execute function private.set_updated_at();

create table public.pipeline_stages (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  pipeline_id uuid not null,
  name text not null check (length(trim(name)) > 0),
  position int not null,
  -- open: in the flow; won / lost: closes the card; side: a side exit (follow-up later)
  kind text not null default 'open' check (kind in ('open', 'won', 'lost', 'side')),
  -- card columns that must be set to enter the stage (e.g. {deposit_amount} for Kapora)
  required_fields text[] not null default '{}'
    check (required_fields <@ array['deposit_amount', 'value', 'lost_reason', 'inventory_item_id', 'appointment_at']),
  -- what entering the stage does to the card's inventory item
  inventory_action text check (inventory_action in ('reserve', 'deposit', 'sell', 'release')),
  color text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (pipeline_id, id),
  unique (pipeline_id, name),
  unique (pipeline_id, position) deferrable initially deferred,
  foreign key (tenant_id, pipeline_id) references public.pipelines (tenant_id, id) on delete cascade
);
create trigger set_updated_at before update on public.pipeline_stages
  for each row execute function private.set_updated_at();

-- Allowed moves. A move is allowed when a row names it (same pipeline).
create table public.stage_transitions (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  pipeline_id uuid not null,
  from_stage_id uuid not null,
  to_stage_id uuid not null check (to_stage_id <> from_stage_id),
  -- only these roles may make the move (null: anyone who may write)
  roles public.member_role[],
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (from_stage_id, to_stage_id),
  foreign key (pipeline_id, from_stage_id) references public.pipeline_stages (pipeline_id, id) on delete cascade,
  foreign key (pipeline_id, to_stage_id) references public.pipeline_stages (pipeline_id, id) on delete cascade,
  foreign key (tenant_id, pipeline_id) references public.pipelines (tenant_id, id) on delete cascade
);
create trigger set_updated_at before update on public.stage_transitions
  for each row execute function private.set_updated_at();

-- Inventory comes before cards (a card may carry an item).
do $$ begin
  create type public.inventory_status as enum ('available', 'reserved', 'deposit', 'sold');
exception when duplicate_object then null; end $$;

create table public.inventory_items (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  kind text not null default 'unit' check (kind in ('project', 'product', 'plot', 'unit')),
  project text,
  code text not null,
  name text not null,
  price numeric(14, 2) check (price >= 0),
  currency text not null default 'TRY',
  status public.inventory_status not null default 'available',
  customer_id uuid,
  card_id uuid,
  status_changed_at timestamptz not null default now(),
  attributes jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, code),
  -- held items name their customer; available ones name none
  check ((status = 'available') = (customer_id is null))
);
create trigger set_updated_at before update on public.inventory_items
  for each row execute function private.set_updated_at();

create table public.cards (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  pipeline_id uuid not null,
  stage_id uuid not null,
  customer_id uuid not null,
  title text,
  status text not null default 'open' check (status in ('open', 'won', 'lost')),
  position double precision not null default 0,
  value numeric(14, 2) check (value >= 0),
  deposit_amount numeric(14, 2) check (deposit_amount > 0),
  currency text not null default 'TRY',
  lost_reason text,
  appointment_at timestamptz,
  inventory_item_id uuid,
  -- the customer's responsibles, kept in step by trigger (RLS of the board without a join)
  responsibles uuid[] not null default '{}',
  stage_entered_at timestamptz not null default now(),
  closed_at timestamptz,
  created_by uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  foreign key (pipeline_id, stage_id) references public.pipeline_stages (pipeline_id, id),
  foreign key (tenant_id, pipeline_id) references public.pipelines (tenant_id, id) on delete cascade,
  foreign key (tenant_id, customer_id) references public.customers (tenant_id, id) on delete cascade,
  foreign key (tenant_id, inventory_item_id) references public.inventory_items (tenant_id, id)
);
create index cards_board_idx on public.cards (pipeline_id, stage_id, position);
create index cards_customer_idx on public.cards (customer_id);
create index cards_responsibles_idx on public.cards using gin (responsibles);
-- one open card per item: an item is never in two deals at once
create unique index cards_item_open_idx on public.cards (inventory_item_id) where inventory_item_id is not null and status = 'open';
create trigger set_updated_at before update on public.cards
  for each row execute function private.set_updated_at();

alter table public.inventory_items
  add foreign key (tenant_id, customer_id) references public.customers (tenant_id, id) on delete set null (customer_id),
  add foreign key (tenant_id, card_id) references public.cards (tenant_id, id) on delete set null (card_id);

-- Sales of inventory: one row per sold item, ever. This unique key is the "never sold twice" constraint.
create table public.inventory_sales (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  item_id uuid not null,
  customer_id uuid,
  card_id uuid,
  price numeric(14, 2),
  sold_by uuid,
  sold_at timestamptz not null default now(),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  constraint inventory_sold_once unique (item_id),
  foreign key (tenant_id, item_id) references public.inventory_items (tenant_id, id) on delete cascade,
  foreign key (tenant_id, customer_id) references public.customers (tenant_id, id) on delete set null (customer_id),
  foreign key (tenant_id, card_id) references public.cards (tenant_id, id) on delete set null (card_id)
);
create trigger set_updated_at before update on public.inventory_sales
  for each row execute function private.set_updated_at();

-- ===========================================================================================
-- Activities, timeline, notes, reminders, notifications
-- ===========================================================================================
create table public.activity_types (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  key text not null check (key ~ '^[a-z_]+$'),
  name text not null,
  -- the timeline event an opened activity writes (appointment_set, call_made, ...)
  opened_event text not null default 'activity_opened',
  closable boolean not null default true,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (tenant_id, key)
);
create trigger set_updated_at before update on public.activity_types
  for each row execute function private.set_updated_at();

create table public.activities (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  customer_id uuid not null,
  card_id uuid,
  type_id uuid not null,
  title text,
  status text not null default 'open' check (status in ('open', 'done', 'cancelled')),
  scheduled_at timestamptz,            -- appointments: when
  assigned_to uuid references public.profiles (id),
  result text,
  closed_at timestamptz,
  closed_by uuid,
  created_by uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  check ((status = 'open') = (closed_at is null)),
  foreign key (tenant_id, customer_id) references public.customers (tenant_id, id) on delete cascade,
  foreign key (tenant_id, card_id) references public.cards (tenant_id, id) on delete set null (card_id),
  foreign key (tenant_id, type_id) references public.activity_types (tenant_id, id)
);
create index activities_customer_idx on public.activities (customer_id, scheduled_at) where status = 'open';
create index activities_day_idx on public.activities (tenant_id, scheduled_at);
create trigger set_updated_at before update on public.activities
  for each row execute function private.set_updated_at();

-- Who did what, when. Append-only: written by triggers and functions, never by clients.
create table public.timeline_events (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  customer_id uuid not null,
  card_id uuid,
  activity_id uuid,
  event_type text not null check (event_type ~ '^[a-z_]+$'),
  actor_id uuid,
  occurred_at timestamptz not null default clock_timestamp(),
  data jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  foreign key (tenant_id, customer_id) references public.customers (tenant_id, id) on delete cascade
);
create index timeline_customer_idx on public.timeline_events (customer_id, occurred_at desc);
create index timeline_stage_idx on public.timeline_events (tenant_id, occurred_at) where event_type = 'stage_changed';

-- Only a merge may re-point an event (to the surviving customer); nothing else changes history.
create or replace function private.crm_timeline_guard() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if current_setting('luna.crm_merge', true) = 'on'
     and (to_jsonb(new) - 'customer_id' - 'card_id' - 'updated_at') = (to_jsonb(old) - 'customer_id' - 'card_id' - 'updated_at') then
    new.updated_at := now();
    return new;
  end if;
  raise exception 'timeline events are append-only' using errcode = 'PT409', detail = 'code=timeline_append_only';
end;
$$;
create trigger timeline_append_only before update on public.timeline_events
  for each row execute function private.crm_timeline_guard();

create table public.notes (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  customer_id uuid not null,
  card_id uuid,
  body text not null check (length(trim(body)) > 0),
  pinned boolean not null default false,
  author_id uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  foreign key (tenant_id, customer_id) references public.customers (tenant_id, id) on delete cascade,
  foreign key (tenant_id, card_id) references public.cards (tenant_id, id) on delete set null (card_id)
);
create index notes_customer_idx on public.notes (customer_id, created_at desc);
create trigger set_updated_at before update on public.notes
  for each row execute function private.set_updated_at();

create table public.reminders (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  customer_id uuid,
  card_id uuid,
  owner_id uuid not null references public.profiles (id),
  title text not null,
  due_at timestamptz not null,
  done_at timestamptz,
  notified_at timestamptz,
  created_by uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  foreign key (tenant_id, customer_id) references public.customers (tenant_id, id) on delete cascade,
  foreign key (tenant_id, card_id) references public.cards (tenant_id, id) on delete set null (card_id)
);
create index reminders_due_idx on public.reminders (due_at) where done_at is null and notified_at is null;
create index reminders_customer_idx on public.reminders (customer_id, due_at) where done_at is null;
create trigger set_updated_at before update on public.reminders
  for each row execute function private.set_updated_at();

create table public.notifications (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  user_id uuid not null references public.profiles (id) on delete cascade,
  kind text not null,
  title text not null,
  body text,
  data jsonb not null default '{}'::jsonb,
  customer_id uuid,
  read_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  foreign key (tenant_id, customer_id) references public.customers (tenant_id, id) on delete cascade
);
create index notifications_user_idx on public.notifications (user_id, created_at desc);
create index notifications_unread_idx on public.notifications (user_id) where read_at is null;
create trigger set_updated_at before update on public.notifications
  for each row execute function private.set_updated_at();

-- ===========================================================================================
-- Work orders
-- ===========================================================================================
create table public.work_orders (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  customer_id uuid,
  title text not null,
  description text,
  responsibles uuid[] not null default '{}',
  -- derived from the steps (trigger): never written by clients
  status text not null default 'open' check (status in ('open', 'in_progress', 'done', 'cancelled')),
  progress numeric(5, 2) not null default 0 check (progress between 0 and 100),
  due_at timestamptz,
  created_by uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  foreign key (tenant_id, customer_id) references public.customers (tenant_id, id) on delete cascade
);
create trigger set_updated_at before update on public.work_orders
  for each row execute function private.set_updated_at();

create table public.work_order_steps (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  work_order_id uuid not null,
  position int not null,
  title text not null,
  done_at timestamptz,
  done_by uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, id),
  unique (work_order_id, position),
  check ((done_at is null) = (done_by is null)),
  foreign key (tenant_id, work_order_id) references public.work_orders (tenant_id, id) on delete cascade
);
create trigger set_updated_at before update on public.work_order_steps
  for each row execute function private.set_updated_at();

-- ===========================================================================================
-- Triggers: responsibles follow the customer; timeline; notifications; inventory; work orders
-- ===========================================================================================

-- A timeline row, as the acting user.
create or replace function private.crm_timeline(tenant uuid, customer uuid, event text, data jsonb,
                                                card uuid default null, activity uuid default null)
returns void
language sql
security definer
set search_path = ''
as $$
  insert into public.timeline_events (tenant_id, customer_id, card_id, activity_id, event_type, actor_id, data)
  values (tenant, customer, card, activity, event, (select auth.uid()), coalesce(data, '{}'))
$$;
grant execute on function private.crm_timeline(uuid, uuid, text, jsonb, uuid, uuid) to service_role;

-- Notifications reach the user's private topic at once (insert) and their other screens on read.
create or replace function private.crm_notification_broadcast() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' then
    perform private.broadcast('user:' || new.user_id, 'notification',
      jsonb_build_object('id', new.id, 'kind', new.kind, 'title', new.title, 'body', new.body, 'data', new.data,
                         'customer_id', new.customer_id, 'created_at', new.created_at, 'read_at', new.read_at));
  elsif new.read_at is distinct from old.read_at then
    perform private.broadcast('user:' || new.user_id, 'notification_read',
      jsonb_build_object('id', new.id, 'read_at', new.read_at));
  end if;
  return null;
end;
$$;
create trigger crm_notification_broadcast after insert or update on public.notifications
  for each row execute function private.crm_notification_broadcast();

-- Cards: take the customer's responsibles; check every stage move (whoever writes it).
create or replace function private.crm_card_before() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  stage public.pipeline_stages;
  t record;
  field text;
  role public.member_role := (select private.tenant_role());
begin
  -- responsibles are the customer's (change them there): always copied from it
  if tg_op = 'INSERT' or new.customer_id is distinct from old.customer_id or new.responsibles is distinct from old.responsibles then
    select c.responsibles into new.responsibles from public.customers c
    where c.tenant_id = new.tenant_id and c.id = new.customer_id;
  end if;
  if tg_op = 'INSERT' then
    new.created_by := coalesce(new.created_by, (select auth.uid()));
  end if;
  if tg_op = 'UPDATE' and new.stage_id is not distinct from old.stage_id then
    return new;
  end if;
  select * into stage from public.pipeline_stages s where s.id = new.stage_id and s.pipeline_id = new.pipeline_id;
  if not found then
    raise exception 'the stage is not in this pipeline' using errcode = 'PT422', detail = 'code=stage_not_in_pipeline';
  end if;
  if tg_op = 'UPDATE' then
    if new.pipeline_id <> old.pipeline_id then
      raise exception 'a card stays in its pipeline' using errcode = 'PT422', detail = 'code=pipeline_change';
    end if;
    select tr.roles into t from public.stage_transitions tr
    where tr.from_stage_id = old.stage_id and tr.to_stage_id = new.stage_id;
    if not found then
      raise exception 'moving from "%" to "%" is not allowed',
        (select s.name from public.pipeline_stages s where s.id = old.stage_id), stage.name
        using errcode = 'PT422', detail = 'code=move_not_allowed';
    end if;
    if t.roles is not null and (role is null or not role = any(t.roles)) then
      raise exception 'your role may not move cards to "%"', stage.name
        using errcode = 'PT403', detail = 'code=move_role_forbidden';
    end if;
  end if;
  foreach field in array stage.required_fields loop
    if to_jsonb(new) ->> field is null then
      raise exception '% needs %', stage.name, replace(field, '_', ' ')
        using errcode = 'PT422',
              detail = 'code=' || case field when 'deposit_amount' then 'deposit_required' else field || '_required' end;
    end if;
  end loop;
  new.stage_entered_at := now();
  new.status := case stage.kind when 'won' then 'won' when 'lost' then 'lost' else 'open' end;
  new.closed_at := case when stage.kind in ('won', 'lost') then now() end;
  return new;
end;
$$;
create trigger crm_card_before before insert or update on public.cards
  for each row execute function private.crm_card_before();

-- Inventory follows the card's stage (same transaction: a refused item change refuses the move).
create or replace function private.crm_inventory_apply(item_id uuid, action text, card public.cards) returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  item public.inventory_items;
begin
  select * into item from public.inventory_items i where i.id = item_id and i.tenant_id = card.tenant_id for update;
  if not found then
    return;
  end if;
  if item.status = 'sold' then
    raise exception 'inventory item % is already sold', item.code using errcode = 'PT409', detail = 'code=already_sold';
  end if;
  if item.customer_id is not null and item.customer_id <> card.customer_id and action <> 'release' then
    raise exception 'inventory item % is held for another customer', item.code
      using errcode = 'PT409', detail = 'code=item_held';
  end if;
  if action = 'release' then
    if item.card_id is distinct from card.id then return; end if;
    update public.inventory_items set status = 'available', customer_id = null, card_id = null, status_changed_at = now()
    where id = item.id;
  elsif action = 'sell' then
    insert into public.inventory_sales (tenant_id, item_id, customer_id, card_id, price, sold_by)
    values (card.tenant_id, item.id, card.customer_id, card.id, coalesce(card.value, item.price), (select auth.uid()));
    update public.inventory_items set status = 'sold', customer_id = card.customer_id, card_id = card.id,
      status_changed_at = now() where id = item.id;
  else
    update public.inventory_items
    set status = (case action when 'reserve' then 'reserved' else 'deposit' end)::public.inventory_status,
        customer_id = card.customer_id, card_id = card.id, status_changed_at = now()
    where id = item.id;
  end if;
end;
$$;

-- Status rules of an item, whoever writes it: sold is final.
create or replace function private.crm_inventory_before() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if old.status = 'sold' and (new.status <> 'sold' or (new.customer_id is distinct from old.customer_id
                                                        and current_setting('luna.crm_merge', true) is distinct from 'on')) then
    raise exception 'inventory item % is already sold', old.code using errcode = 'PT409', detail = 'code=already_sold';
  end if;
  if new.status = 'sold' and old.status <> 'sold'
     and not exists (select 1 from public.inventory_sales s where s.item_id = new.id) then
    -- a direct status change still records the sale (and so can happen only once)
    insert into public.inventory_sales (tenant_id, item_id, customer_id, card_id, price, sold_by)
    values (new.tenant_id, new.id, new.customer_id, new.card_id, new.price, (select auth.uid()));
  end if;
  if new.status is distinct from old.status then
    new.status_changed_at := now();
  end if;
  return new;
end;
$$;
create trigger crm_inventory_before before update on public.inventory_items
  for each row execute function private.crm_inventory_before();

-- After a card is created or moved: inventory, timeline, notifications, realtime, integration hook.
create or replace function private.crm_card_after() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  stage public.pipeline_stages;
  from_stage public.pipeline_stages;
  cust public.customers;
  actor uuid := (select auth.uid());
  recipients uuid[];
  payload jsonb;
begin
  if tg_op = 'UPDATE' and new.stage_id is not distinct from old.stage_id
     and new.inventory_item_id is not distinct from old.inventory_item_id then
    if new.responsibles is distinct from old.responsibles or new.value is distinct from old.value
       or new.title is distinct from old.title or new.position is distinct from old.position then
      perform private.broadcast('tenant:' || new.tenant_id || ':board:' || new.pipeline_id, 'card_updated',
        jsonb_build_object('card_id', new.id, 'customer_id', new.customer_id, 'stage_id', new.stage_id,
                           'position', new.position, 'value', new.value, 'title', new.title,
                           'responsibles', new.responsibles));
    end if;
    return null;
  end if;
  select * into stage from public.pipeline_stages where id = new.stage_id;
  -- linking an item to an open card reserves it
  if new.inventory_item_id is not null and (tg_op = 'INSERT' or new.inventory_item_id is distinct from old.inventory_item_id) then
    perform private.crm_inventory_apply(new.inventory_item_id, coalesce(stage.inventory_action, 'reserve'), new);
  elsif stage.inventory_action is not null and new.inventory_item_id is not null then
    perform private.crm_inventory_apply(new.inventory_item_id, stage.inventory_action, new);
  end if;
  if tg_op = 'UPDATE' and new.stage_id is not distinct from old.stage_id then
    return null;
  end if;
  select * into cust from public.customers where id = new.customer_id;
  if tg_op = 'INSERT' then
    perform private.crm_timeline(new.tenant_id, new.customer_id, 'card_created',
      jsonb_build_object('pipeline_id', new.pipeline_id, 'stage_id', new.stage_id, 'stage', stage.name), new.id);
    payload := jsonb_build_object('card_id', new.id, 'customer_id', new.customer_id, 'pipeline_id', new.pipeline_id,
      'stage_id', new.stage_id, 'stage', stage.name, 'customer_name', cust.full_name, 'phone', cust.phone,
      'responsibles', new.responsibles, 'source', cust.source, 'by', actor);
    perform private.broadcast('tenant:' || new.tenant_id || ':board:' || new.pipeline_id, 'card_created', payload);
    perform private.broadcast('tenant:' || new.tenant_id || ':customer:' || new.customer_id, 'card_created', payload);
    return null;
  end if;
  select * into from_stage from public.pipeline_stages where id = old.stage_id;
  perform private.crm_timeline(new.tenant_id, new.customer_id, 'stage_changed',
    jsonb_build_object('from_stage_id', old.stage_id, 'from_stage', from_stage.name,
                       'to_stage_id', new.stage_id, 'to_stage', stage.name,
                       'seconds_in_stage', extract(epoch from now() - old.stage_entered_at)::int,
                       'deposit_amount', new.deposit_amount, 'lost_reason', new.lost_reason), new.id);
  payload := jsonb_build_object('card_id', new.id, 'customer_id', new.customer_id, 'pipeline_id', new.pipeline_id,
    'from_stage_id', old.stage_id, 'to_stage_id', new.stage_id, 'stage', stage.name, 'status', new.status,
    'position', new.position, 'customer_name', cust.full_name, 'phone', cust.phone,
    'responsibles', new.responsibles, 'source', cust.source, 'deposit_amount', new.deposit_amount,
    'by', actor, 'at', now());
  perform private.broadcast('tenant:' || new.tenant_id || ':board:' || new.pipeline_id, 'card_moved', payload);
  perform private.broadcast('tenant:' || new.tenant_id || ':customer:' || new.customer_id, 'card_moved', payload);
  recipients := array(select r from unnest(new.responsibles) r where r is distinct from actor);
  if cardinality(recipients) > 0 then
    insert into public.notifications (tenant_id, user_id, kind, title, body, data, customer_id)
    select new.tenant_id, r, 'card_moved', cust.full_name || ': ' || stage.name,
           format('%s → %s', from_stage.name, stage.name), payload, new.customer_id
    from unnest(recipients) r;
  end if;
  -- integration hook: the worker picks it up (Zoho sync, webhooks ...)
  insert into private.jobs (tenant_id, kind, payload)
  values (new.tenant_id, 'crm.card_moved', jsonb_build_object('card_id', new.id, 'customer_id', new.customer_id,
          'from_stage_id', old.stage_id, 'to_stage_id', new.stage_id, 'stage', stage.name, 'stage_kind', stage.kind));
  return null;
end;
$$;
create trigger crm_card_after after insert or update on public.cards
  for each row execute function private.crm_card_after();

-- Customers: responsibles flow to cards; changes reach the customer's topic; timeline of the important ones.
create or replace function private.crm_customer_after() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' then
    perform private.crm_timeline(new.tenant_id, new.id, 'customer_created',
      jsonb_build_object('source', new.source, 'campaign', new.campaign));
    if cardinality(new.tags) > 0 then
      insert into public.tags (tenant_id, name) select new.tenant_id, unnest(new.tags) on conflict do nothing;
    end if;
    return null;
  end if;
  if new.responsibles is distinct from old.responsibles then
    update public.cards set responsibles = new.responsibles where customer_id = new.id;
    update public.work_orders set responsibles = new.responsibles
    where customer_id = new.id and responsibles = old.responsibles;
    perform private.crm_timeline(new.tenant_id, new.id, 'responsibles_changed',
      jsonb_build_object('from', old.responsibles, 'to', new.responsibles));
    insert into public.notifications (tenant_id, user_id, kind, title, customer_id, data)
    select new.tenant_id, r, 'customer_assigned', new.full_name, new.id, jsonb_build_object('customer_id', new.id)
    from unnest(new.responsibles) r
    where not r = any(old.responsibles) and r is distinct from (select auth.uid());
  end if;
  if new.tags is distinct from old.tags then
    insert into public.tags (tenant_id, name) select new.tenant_id, unnest(new.tags) on conflict do nothing;
    perform private.crm_timeline(new.tenant_id, new.id, 'tags_changed', jsonb_build_object('from', old.tags, 'to', new.tags));
  end if;
  if (to_jsonb(new) - 'updated_at') <> (to_jsonb(old) - 'updated_at') then
    perform private.broadcast('tenant:' || new.tenant_id || ':customer:' || new.id, 'customer_updated',
      jsonb_build_object('customer', to_jsonb(new) - 'custom_fields', 'by', (select auth.uid())));
  end if;
  return null;
end;
$$;
create trigger crm_customer_after after insert or update on public.customers
  for each row execute function private.crm_customer_after();

-- Activities: opened and completed write the timeline; an appointment updates the card.
create or replace function private.crm_activity_before() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  closable boolean;
begin
  if tg_op = 'INSERT' then
    new.created_by := coalesce(new.created_by, (select auth.uid()));
    new.assigned_to := coalesce(new.assigned_to, (select auth.uid()));
  end if;
  if new.status <> 'open' and (tg_op = 'INSERT' or old.status = 'open') then
    select t.closable into closable from public.activity_types t where t.id = new.type_id;
    if not coalesce(closable, true) then
      raise exception 'this activity type cannot be closed' using errcode = 'PT422', detail = 'code=not_closable';
    end if;
    new.closed_at := coalesce(new.closed_at, now());
    new.closed_by := coalesce(new.closed_by, (select auth.uid()));
  elsif new.status = 'open' then
    new.closed_at := null;
    new.closed_by := null;
  end if;
  return new;
end;
$$;
create trigger crm_activity_before before insert or update on public.activities
  for each row execute function private.crm_activity_before();

create or replace function private.crm_activity_after() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  t public.activity_types;
begin
  select * into t from public.activity_types where id = new.type_id;
  if tg_op = 'INSERT' then
    perform private.crm_timeline(new.tenant_id, new.customer_id, t.opened_event,
      jsonb_build_object('activity_type', t.key, 'title', coalesce(new.title, t.name), 'scheduled_at', new.scheduled_at,
                         'assigned_to', new.assigned_to), new.card_id, new.id);
    if t.key in ('call', 'first_meeting') then
      update public.customers set last_contact_at = now() where id = new.customer_id;
    end if;
  end if;
  if new.status <> 'open' and (tg_op = 'INSERT' or old.status = 'open') then
    perform private.crm_timeline(new.tenant_id, new.customer_id, 'activity_completed',
      jsonb_build_object('activity_type', t.key, 'title', coalesce(new.title, t.name), 'status', new.status,
                         'result', new.result), new.card_id, new.id);
  end if;
  if t.key = 'appointment' and new.card_id is not null and new.status = 'open' then
    update public.cards set appointment_at = new.scheduled_at
    where id = new.card_id and appointment_at is distinct from new.scheduled_at;
  end if;
  return null;
end;
$$;
create trigger crm_activity_after after insert or update on public.activities
  for each row execute function private.crm_activity_after();

create or replace function private.crm_note_after() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform private.crm_timeline(new.tenant_id, new.customer_id, 'note_added',
    jsonb_build_object('note_id', new.id, 'excerpt', left(new.body, 140)), new.card_id);
  return null;
end;
$$;
create or replace function private.crm_note_before() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.author_id := coalesce(new.author_id, (select auth.uid()));
  return new;
end;
$$;
create trigger crm_note_before before insert on public.notes
  for each row execute function private.crm_note_before();
create trigger crm_note_after after insert on public.notes
  for each row execute function private.crm_note_after();

create or replace function private.crm_reminder_after() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if new.customer_id is not null and (tg_op = 'INSERT' or (new.done_at is not null and old.done_at is null)) then
    perform private.crm_timeline(new.tenant_id, new.customer_id,
      case when tg_op = 'INSERT' then 'reminder_set' else 'reminder_done' end,
      jsonb_build_object('reminder_id', new.id, 'title', new.title, 'due_at', new.due_at, 'owner_id', new.owner_id),
      new.card_id);
  end if;
  return null;
end;
$$;
create or replace function private.crm_reminder_before() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' then
    new.created_by := coalesce(new.created_by, (select auth.uid()));
  end if;
  if not private.crm_members_ok(new.tenant_id, array[new.owner_id]) then
    raise exception 'the reminder owner must be a member of the tenant' using errcode = 'PT422', detail = 'code=invalid_owner';
  end if;
  if tg_op = 'UPDATE' and new.due_at is distinct from old.due_at then
    new.notified_at := null;  -- rescheduled: remind again
  end if;
  return new;
end;
$$;
create trigger crm_reminder_before before insert or update on public.reminders
  for each row execute function private.crm_reminder_before();
create trigger crm_reminder_after after insert or update on public.reminders
  for each row execute function private.crm_reminder_after();

-- Work orders: status and progress derive from the steps; completing a step records who and when.
create or replace function private.crm_step_before() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if new.done_at is not null and (tg_op = 'INSERT' or old.done_at is null) then
    new.done_by := coalesce(new.done_by, (select auth.uid()));
    if new.done_by is null then
      raise exception 'a completed step names who completed it' using errcode = 'PT422', detail = 'code=done_by_required';
    end if;
  elsif new.done_at is null then
    new.done_by := null;
  end if;
  return new;
end;
$$;
create trigger crm_step_before before insert or update on public.work_order_steps
  for each row execute function private.crm_step_before();

create or replace function private.crm_step_after() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  wo uuid := coalesce(new.work_order_id, old.work_order_id);
  total int;
  done int;
begin
  select count(*), count(s.done_at) into total, done from public.work_order_steps s where s.work_order_id = wo;
  update public.work_orders w
  set progress = case when total = 0 then 0 else round(100.0 * done / total, 2) end,
      status = case when w.status = 'cancelled' then 'cancelled'
                    when total > 0 and done = total then 'done'
                    when done > 0 then 'in_progress' else 'open' end
  where w.id = wo;
  return null;
end;
$$;
create trigger crm_step_after after insert or update or delete on public.work_order_steps
  for each row execute function private.crm_step_after();

create or replace function private.crm_work_order_before() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' then
    new.created_by := coalesce(new.created_by, (select auth.uid()));
    new.progress := 0;
    new.status := case when new.status = 'cancelled' then 'cancelled' else 'open' end;
  end if;
  if not private.crm_members_ok(new.tenant_id, new.responsibles) then
    raise exception 'responsibles must be members of the tenant' using errcode = 'PT422', detail = 'code=invalid_responsible';
  end if;
  return new;
end;
$$;
create trigger crm_work_order_before before insert or update on public.work_orders
  for each row execute function private.crm_work_order_before();

-- Every foreign key leads an index (deletes and merges touch them; splinter 0001).
create index assignment_rules_assignee_idx on public.assignment_rules (assignee);
create index customer_merges_survivor_idx on public.customer_merges (tenant_id, survivor_id);
create index pipeline_stages_pipeline_idx on public.pipeline_stages (tenant_id, pipeline_id);
create index stage_transitions_from_idx on public.stage_transitions (pipeline_id, from_stage_id);
create index stage_transitions_to_idx on public.stage_transitions (pipeline_id, to_stage_id);
create index stage_transitions_pipeline_idx on public.stage_transitions (tenant_id, pipeline_id);
create index cards_pipeline_idx on public.cards (tenant_id, pipeline_id);
create index cards_tenant_customer_idx on public.cards (tenant_id, customer_id);
create index cards_item_idx on public.cards (tenant_id, inventory_item_id);
create index inventory_items_customer_idx on public.inventory_items (tenant_id, customer_id);
create index inventory_items_card_idx on public.inventory_items (tenant_id, card_id);
create index inventory_sales_item_idx on public.inventory_sales (tenant_id, item_id);
create index inventory_sales_customer_idx on public.inventory_sales (tenant_id, customer_id);
create index inventory_sales_card_idx on public.inventory_sales (tenant_id, card_id);
create index activities_assigned_idx on public.activities (assigned_to);
create index activities_tenant_customer_idx on public.activities (tenant_id, customer_id);
create index activities_card_idx on public.activities (tenant_id, card_id);
create index activities_type_idx on public.activities (tenant_id, type_id);
create index timeline_tenant_customer_idx on public.timeline_events (tenant_id, customer_id);
create index notes_tenant_customer_idx on public.notes (tenant_id, customer_id);
create index notes_card_idx on public.notes (tenant_id, card_id);
create index reminders_owner_idx on public.reminders (owner_id);
create index reminders_tenant_customer_idx on public.reminders (tenant_id, customer_id);
create index reminders_card_idx on public.reminders (tenant_id, card_id);
create index notifications_customer_idx on public.notifications (tenant_id, customer_id);
create index work_orders_customer_idx on public.work_orders (tenant_id, customer_id);
create index work_order_steps_order_idx on public.work_order_steps (tenant_id, work_order_id);

-- ===========================================================================================
-- Row level security
-- ===========================================================================================

-- Can the caller see this customer? (tenant, crm read, and the assignee restriction)
create or replace function private.crm_can_see_customer(customer uuid) returns boolean
language sql stable
security definer
set search_path = ''
as $$
  select exists (
    select 1 from public.customers c
    where c.id = customer and c.tenant_id = (select private.tenant_id())
      and (select private.can('crm', 'read'))
      and ((select private.sees_all()) or (select auth.uid()) = any(c.responsibles)))
$$;
grant execute on function private.crm_can_see_customer(uuid) to authenticated, service_role;

select private.enable_rls('customers', 'crm', 'responsibles');
select private.enable_rls('cards', 'crm', 'responsibles');
select private.enable_rls('work_orders', 'crm', null);
select private.enable_rls('inventory_items', 'inventory', null);
select private.enable_rls('inventory_sales', 'inventory', null);
select private.enable_rls('tags', 'crm', null);

-- Customer-linked tables: the customer's visibility decides (an agent limited to assigned customers
-- sees their notes, activities, reminders, timeline only).
select private.enable_rls('activities', 'crm', null);
select private.enable_rls('notes', 'crm', null);
select private.enable_rls('reminders', 'crm', null);
do $$
declare t text;
begin
  foreach t in array array['activities', 'notes', 'reminders'] loop
    execute format('alter policy tenant_select on public.%I using (tenant_id = (select private.tenant_id())
      and (select private.can(''crm'', ''read'')) and ((select private.sees_all()) or %s))', t,
      case when t = 'reminders' then 'owner_id = (select auth.uid()) or private.crm_can_see_customer(customer_id)'
           else 'private.crm_can_see_customer(customer_id)' end);
    execute format('alter policy tenant_insert on public.%I with check (tenant_id = (select private.tenant_id())
      and (select private.can(''crm'', ''write'')) and ((select private.sees_all()) or %s))', t,
      case when t = 'reminders' then 'customer_id is null or private.crm_can_see_customer(customer_id)'
           else 'private.crm_can_see_customer(customer_id)' end);
    execute format('alter policy tenant_update on public.%I using (tenant_id = (select private.tenant_id())
      and (select private.can(''crm'', ''write'')) and ((select private.sees_all()) or %2$s))
      with check (tenant_id = (select private.tenant_id()) and (select private.can(''crm'', ''write''))
      and ((select private.sees_all()) or %2$s))', t,
      case when t = 'reminders' then 'owner_id = (select auth.uid()) or private.crm_can_see_customer(customer_id)'
           else 'private.crm_can_see_customer(customer_id)' end);
  end loop;
end $$;
-- a work order step follows its work order
select private.enable_rls('work_order_steps', 'crm', null);

-- Timeline: read like its customer; written only by triggers and functions.
select private.enable_rls('timeline_events', 'crm', null);
alter policy tenant_select on public.timeline_events using (tenant_id = (select private.tenant_id())
  and (select private.can('crm', 'read')) and ((select private.sees_all()) or private.crm_can_see_customer(customer_id)));
drop policy tenant_insert on public.timeline_events;
drop policy tenant_update on public.timeline_events;
drop policy tenant_delete on public.timeline_events;

-- Merges: read by the tenant; written by public.merge_customers only.
select private.enable_rls('customer_merges', 'crm', null);
drop policy tenant_insert on public.customer_merges;
drop policy tenant_update on public.customer_merges;
drop policy tenant_delete on public.customer_merges;

-- Inventory sales: written by the stage moves (security definer) or sold-status updates only.
drop policy tenant_update on public.inventory_sales;
drop policy tenant_delete on public.inventory_sales;

-- Notifications: your own; you mark them read. Anyone who writes CRM data may notify a colleague.
select private.enable_rls('notifications', null, null);
alter policy tenant_select on public.notifications
  using (tenant_id = (select private.tenant_id()) and user_id = (select auth.uid()));
alter policy tenant_update on public.notifications
  using (tenant_id = (select private.tenant_id()) and user_id = (select auth.uid()))
  with check (tenant_id = (select private.tenant_id()) and user_id = (select auth.uid()));
alter policy tenant_delete on public.notifications
  using (tenant_id = (select private.tenant_id()) and user_id = (select auth.uid()));
alter policy tenant_insert on public.notifications
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'write'))
              and (select private.tenant_user_ids()) @> array[user_id]);

-- Configuration: everyone in the tenant reads; those who manage CRM settings write.
select private.enable_rls('pipelines', 'crm', null);
select private.enable_rls('pipeline_stages', 'crm', null);
select private.enable_rls('stage_transitions', 'crm', null);
select private.enable_rls('activity_types', 'crm', null);
select private.enable_rls('crm_settings', 'crm', null);
select private.enable_rls('assignment_rules', 'crm', null);
do $$
declare t text;
begin
  foreach t in array array['pipelines', 'pipeline_stages', 'stage_transitions', 'activity_types',
                           'crm_settings', 'assignment_rules'] loop
    execute format($p$alter policy tenant_insert on public.%I with check (tenant_id = (select private.tenant_id())
      and (select private.can('crm', 'manage')))$p$, t);
    execute format($p$alter policy tenant_update on public.%I using (tenant_id = (select private.tenant_id())
      and (select private.can('crm', 'manage'))) with check (tenant_id = (select private.tenant_id())
      and (select private.can('crm', 'manage')))$p$, t);
    execute format($p$alter policy tenant_delete on public.%I using (tenant_id = (select private.tenant_id())
      and (select private.can('crm', 'manage')))$p$, t);
  end loop;
end $$;

-- Critical tables are audited row by row.
do $$
declare t text;
begin
  foreach t in array array['pipelines', 'pipeline_stages', 'stage_transitions', 'crm_settings', 'assignment_rules',
                           'inventory_sales', 'customer_merges'] loop
    execute format('create trigger audit_change after insert or update or delete on public.%I
                    for each row execute function audit.log_change()', t);
  end loop;
end $$;

-- ===========================================================================================
-- Realtime guards: tenant:<tid>:customer:<customer id> and tenant:<tid>:board:<pipeline id>
-- ===========================================================================================
create or replace function private.crm_topic_customer(record_id text) returns boolean
language plpgsql stable
security definer
set search_path = ''
as $$
begin
  return private.crm_can_see_customer(record_id::uuid);
exception when invalid_text_representation then
  return false;
end;
$$;

-- The whole board's stream: for those who see every card of the pipeline. Agents limited to their
-- own customers follow their customers' topics instead.
create or replace function private.crm_topic_board(record_id text) returns boolean
language plpgsql stable
security definer
set search_path = ''
as $$
begin
  return (select private.can('crm', 'read')) and (select private.sees_all())
     and exists (select 1 from public.pipelines p where p.id = record_id::uuid and p.tenant_id = (select private.tenant_id()));
exception when invalid_text_representation then
  return false;
end;
$$;
grant execute on function private.crm_topic_customer(text), private.crm_topic_board(text) to authenticated, service_role;
insert into private.topic_guards values
  ('customer', 'private.crm_topic_customer(text)'),
  ('board', 'private.crm_topic_board(text)')
on conflict (area) do update set guard = excluded.guard;

-- ===========================================================================================
-- Every tenant gets the default CRM setup (existing ones now, new ones on creation)
-- ===========================================================================================
create or replace function private.crm_setup_tenant(tenant uuid) returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  pipeline uuid;
  names text[] := array['Potansiyel', 'Görüşülüyor', 'Randevu', 'Kapora', 'Satış Tamamlandı', 'Takip Edilecek', 'Kaybedildi'];
  ids uuid[] := array[]::uuid[];
  sid uuid;
  i int;
  j int;
begin
  insert into public.crm_settings (tenant_id) values (tenant) on conflict (tenant_id) do nothing;
  insert into public.activity_types (tenant_id, key, name, opened_event, closable) values
    (tenant, 'first_meeting', 'İlk Görüşme', 'meeting_planned', true),
    (tenant, 'call', 'Arama', 'call_made', true),
    (tenant, 'appointment', 'Randevu', 'appointment_set', true),
    (tenant, 'deposit', 'Kapora', 'deposit_planned', true),
    (tenant, 'sale', 'Satış', 'sale_started', true),
    (tenant, 'no_show_followup', 'No-show Takip', 'no_show_followup_opened', true),
    (tenant, 'reapplication', 'Tekrar Başvuru', 'reapplication_opened', true)
  on conflict (tenant_id, key) do nothing;
  select p.id into pipeline from public.pipelines p where p.tenant_id = tenant and p.is_default;
  if pipeline is not null then
    return pipeline;
  end if;
  insert into public.pipelines (tenant_id, name, is_default) values (tenant, 'Satış', true) returning id into pipeline;
  for i in 1 .. array_length(names, 1) loop
    insert into public.pipeline_stages (tenant_id, pipeline_id, name, position, kind, required_fields, inventory_action)
    values (tenant, pipeline, names[i], i,
            case names[i] when 'Satış Tamamlandı' then 'won' when 'Kaybedildi' then 'lost'
                          when 'Takip Edilecek' then 'side' else 'open' end,
            case names[i] when 'Kapora' then '{deposit_amount}'::text[] when 'Kaybedildi' then '{lost_reason}'::text[]
                          else '{}'::text[] end,
            case names[i] when 'Kapora' then 'deposit' when 'Satış Tamamlandı' then 'sell'
                          when 'Kaybedildi' then 'release' end)
    returning id into sid;
    ids := ids || sid;
  end loop;
  -- the flow (1..5): forward to any later stage, back one; side exits from every open stage and
  -- back from Takip Edilecek into the flow; Kaybedildi can be reopened to Potansiyel.
  for i in 1 .. 4 loop
    for j in i + 1 .. 5 loop
      insert into public.stage_transitions (tenant_id, pipeline_id, from_stage_id, to_stage_id) values (tenant, pipeline, ids[i], ids[j]);
    end loop;
    if i > 1 then
      insert into public.stage_transitions (tenant_id, pipeline_id, from_stage_id, to_stage_id) values (tenant, pipeline, ids[i], ids[i - 1]);
    end if;
    insert into public.stage_transitions (tenant_id, pipeline_id, from_stage_id, to_stage_id) values
      (tenant, pipeline, ids[i], ids[6]), (tenant, pipeline, ids[i], ids[7]), (tenant, pipeline, ids[6], ids[i]);
  end loop;
  insert into public.stage_transitions (tenant_id, pipeline_id, from_stage_id, to_stage_id) values
    (tenant, pipeline, ids[6], ids[7]), (tenant, pipeline, ids[7], ids[1]);
  return pipeline;
end;
$$;
grant execute on function private.crm_setup_tenant(uuid) to service_role;

create or replace function private.crm_init_tenant() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform private.crm_setup_tenant(new.id);
  return null;
end;
$$;
create trigger crm_init_tenant after insert on public.tenants
  for each row execute function private.crm_init_tenant();

select private.crm_setup_tenant(t.id) from public.tenants t;

-- External CRMs (Zoho): which record of ours is which of theirs, and what was last sent (idempotent sync).
create table private.crm_external_refs (
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  provider text not null,
  entity text not null check (entity in ('customer', 'card')),
  entity_id uuid not null,
  external_id text not null,
  synced_hash text,
  synced_at timestamptz not null default now(),
  primary key (provider, entity, entity_id)
);
grant all on private.crm_external_refs to service_role;

-- The worker (service_role) reads and writes CRM tables (RLS bypassed; its SQL scopes by tenant).
grant all on all tables in schema public to service_role;

-- Service-only helpers (private functions default to authenticated + service_role).
revoke execute on function private.crm_setup_tenant(uuid), private.crm_timeline(uuid, uuid, text, jsonb, uuid, uuid),
  private.crm_inventory_apply(uuid, text, public.cards) from public, authenticated;

-- ===========================================================================================
-- LUNA Module 4.1: qualified leads go to the CRM (route and transitions, as data)
-- ===========================================================================================
insert into private.lead_routes (status, module, working_status, failure_status, max_attempts)
values ('QUALIFIED', 'crm_sync', null, 'CRM_ERROR', 3)
on conflict (status) do nothing;
insert into private.lead_transitions (from_status, to_status) values
  ('QUALIFIED', 'CRM_SYNCED'), ('QUALIFIED', 'NURTURING'), ('QUALIFIED', 'CRM_ERROR'), ('CRM_ERROR', 'QUALIFIED'),
  ('CRM_ERROR', 'CRM_SYNCED'), ('CRM_ERROR', 'NURTURING')
on conflict do nothing;
create index customers_lead_idx on public.customers (lead_id) where lead_id is not null;
