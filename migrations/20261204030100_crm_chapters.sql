/*
 * The CRM's tables, one chapter each (issue 11, item 5): its row level security, final policies,
 * triggers and grants side by side, so a reader finds a table's final rules in one place.
 *
 * migrations/20261124020000_crm.sql created them ~750 lines apart from their tables, generated the
 * policies with private.enable_rls and then altered them in loops; later migrations added triggers
 * (strip_secrets). Released migrations are immutable, so this one restates the outcome: each policy
 * and trigger is dropped and created again with exactly the definition a migrated database had
 * (pg_policies, pg_get_triggerdef), and each grant given again (grants only add: a database with
 * more, as Supabase's defaults give, keeps them). Nothing changes in behaviour: a database migrated
 * with and without this file has the same policies, triggers and grants (checked on the catalog).
 *
 * Change a CRM table's policy, trigger or grant in a new migration, and restate its whole chapter
 * there. The trigger functions (the rules) are repeatable: functions/crm/<topic>.sql, named beside
 * each trigger below.
 */

-- ---------------------------------------------------------------------------------------------
-- public.crm_settings: configuration: everyone in the tenant reads; those who manage CRM settings write
-- ---------------------------------------------------------------------------------------------
alter table public.crm_settings enable row level security;
drop policy if exists tenant_select on public.crm_settings;
create policy tenant_select on public.crm_settings for select to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'read')));
drop policy if exists tenant_insert on public.crm_settings;
create policy tenant_insert on public.crm_settings for insert to authenticated
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop policy if exists tenant_update on public.crm_settings;
create policy tenant_update on public.crm_settings for update to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')))
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop policy if exists tenant_delete on public.crm_settings;
create policy tenant_delete on public.crm_settings for delete to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop trigger if exists audit_change on public.crm_settings;
create trigger audit_change after insert or delete or update on public.crm_settings
  for each row execute function audit.log_change();
drop trigger if exists set_updated_at on public.crm_settings;
create trigger set_updated_at before update on public.crm_settings
  for each row execute function private.set_updated_at();
drop trigger if exists strip_secrets on public.crm_settings;
create trigger strip_secrets before insert or update on public.crm_settings
  for each row execute function private.strip_config_secrets('settings', 'table:crm_settings');
grant all on public.crm_settings to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.assignment_rules: configuration: everyone in the tenant reads; those who manage CRM settings write
-- ---------------------------------------------------------------------------------------------
alter table public.assignment_rules enable row level security;
drop policy if exists tenant_select on public.assignment_rules;
create policy tenant_select on public.assignment_rules for select to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'read')));
drop policy if exists tenant_insert on public.assignment_rules;
create policy tenant_insert on public.assignment_rules for insert to authenticated
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop policy if exists tenant_update on public.assignment_rules;
create policy tenant_update on public.assignment_rules for update to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')))
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop policy if exists tenant_delete on public.assignment_rules;
create policy tenant_delete on public.assignment_rules for delete to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop trigger if exists audit_change on public.assignment_rules;
create trigger audit_change after insert or delete or update on public.assignment_rules
  for each row execute function audit.log_change();
drop trigger if exists set_updated_at on public.assignment_rules;
create trigger set_updated_at before update on public.assignment_rules
  for each row execute function private.set_updated_at();
grant all on public.assignment_rules to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.customers: an agent limited to assigned records sees the customers they are responsible for
-- ---------------------------------------------------------------------------------------------
alter table public.customers enable row level security;
drop policy if exists tenant_select on public.customers;
create policy tenant_select on public.customers for select to authenticated
  using (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'read'))
    and ((select private.sees_all()) or ((select auth.uid()) = any (responsibles))));
drop policy if exists tenant_insert on public.customers;
create policy tenant_insert on public.customers for insert to authenticated
  with check (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'write'))
    and ((select private.sees_all()) or ((select auth.uid()) = any (responsibles))));
drop policy if exists tenant_update on public.customers;
create policy tenant_update on public.customers for update to authenticated
  using (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'write'))
    and ((select private.sees_all()) or ((select auth.uid()) = any (responsibles))))
  with check (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'write'))
    and ((select private.sees_all()) or ((select auth.uid()) = any (responsibles))));
drop policy if exists tenant_delete on public.customers;
create policy tenant_delete on public.customers for delete to authenticated
  using (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'delete'))
    and ((select private.sees_all()) or ((select auth.uid()) = any (responsibles))));
-- private.crm_customer_after: functions/crm/customers.sql
drop trigger if exists crm_customer_after on public.customers;
create trigger crm_customer_after after insert or update on public.customers
  for each row execute function private.crm_customer_after();
-- private.crm_customer_before: functions/crm/customers.sql
drop trigger if exists crm_customer_before on public.customers;
create trigger crm_customer_before before insert or update on public.customers
  for each row execute function private.crm_customer_before();
drop trigger if exists set_updated_at on public.customers;
create trigger set_updated_at before update on public.customers
  for each row execute function private.set_updated_at();
grant all on public.customers to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.customer_merges: read by the tenant; written by public.merge_customers only
-- ---------------------------------------------------------------------------------------------
alter table public.customer_merges enable row level security;
drop policy if exists tenant_select on public.customer_merges;
create policy tenant_select on public.customer_merges for select to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'read')));
drop trigger if exists audit_change on public.customer_merges;
create trigger audit_change after insert or delete or update on public.customer_merges
  for each row execute function audit.log_change();
drop trigger if exists set_updated_at on public.customer_merges;
create trigger set_updated_at before update on public.customer_merges
  for each row execute function private.set_updated_at();
grant all on public.customer_merges to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.tags: tenant policies: the crm module's permissions
-- ---------------------------------------------------------------------------------------------
alter table public.tags enable row level security;
drop policy if exists tenant_select on public.tags;
create policy tenant_select on public.tags for select to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'read')));
drop policy if exists tenant_insert on public.tags;
create policy tenant_insert on public.tags for insert to authenticated
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'write')));
drop policy if exists tenant_update on public.tags;
create policy tenant_update on public.tags for update to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'write')))
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'write')));
drop policy if exists tenant_delete on public.tags;
create policy tenant_delete on public.tags for delete to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'delete')));
drop trigger if exists set_updated_at on public.tags;
create trigger set_updated_at before update on public.tags
  for each row execute function private.set_updated_at();
grant all on public.tags to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.pipelines: configuration: everyone in the tenant reads; those who manage CRM settings write
-- ---------------------------------------------------------------------------------------------
alter table public.pipelines enable row level security;
drop policy if exists tenant_select on public.pipelines;
create policy tenant_select on public.pipelines for select to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'read')));
drop policy if exists tenant_insert on public.pipelines;
create policy tenant_insert on public.pipelines for insert to authenticated
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop policy if exists tenant_update on public.pipelines;
create policy tenant_update on public.pipelines for update to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')))
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop policy if exists tenant_delete on public.pipelines;
create policy tenant_delete on public.pipelines for delete to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop trigger if exists audit_change on public.pipelines;
create trigger audit_change after insert or delete or update on public.pipelines
  for each row execute function audit.log_change();
drop trigger if exists set_updated_at on public.pipelines;
create trigger set_updated_at before update on public.pipelines
  for each row execute function private.set_updated_at();
grant all on public.pipelines to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.pipeline_stages: configuration: everyone in the tenant reads; those who manage CRM settings write
-- ---------------------------------------------------------------------------------------------
alter table public.pipeline_stages enable row level security;
drop policy if exists tenant_select on public.pipeline_stages;
create policy tenant_select on public.pipeline_stages for select to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'read')));
drop policy if exists tenant_insert on public.pipeline_stages;
create policy tenant_insert on public.pipeline_stages for insert to authenticated
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop policy if exists tenant_update on public.pipeline_stages;
create policy tenant_update on public.pipeline_stages for update to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')))
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop policy if exists tenant_delete on public.pipeline_stages;
create policy tenant_delete on public.pipeline_stages for delete to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop trigger if exists audit_change on public.pipeline_stages;
create trigger audit_change after insert or delete or update on public.pipeline_stages
  for each row execute function audit.log_change();
drop trigger if exists set_updated_at on public.pipeline_stages;
create trigger set_updated_at before update on public.pipeline_stages
  for each row execute function private.set_updated_at();
grant all on public.pipeline_stages to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.stage_transitions: configuration: everyone in the tenant reads; those who manage CRM settings write
-- ---------------------------------------------------------------------------------------------
alter table public.stage_transitions enable row level security;
drop policy if exists tenant_select on public.stage_transitions;
create policy tenant_select on public.stage_transitions for select to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'read')));
drop policy if exists tenant_insert on public.stage_transitions;
create policy tenant_insert on public.stage_transitions for insert to authenticated
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop policy if exists tenant_update on public.stage_transitions;
create policy tenant_update on public.stage_transitions for update to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')))
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop policy if exists tenant_delete on public.stage_transitions;
create policy tenant_delete on public.stage_transitions for delete to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop trigger if exists audit_change on public.stage_transitions;
create trigger audit_change after insert or delete or update on public.stage_transitions
  for each row execute function audit.log_change();
drop trigger if exists set_updated_at on public.stage_transitions;
create trigger set_updated_at before update on public.stage_transitions
  for each row execute function private.set_updated_at();
grant all on public.stage_transitions to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.inventory_items: tenant policies: the crm module's permissions
-- ---------------------------------------------------------------------------------------------
alter table public.inventory_items enable row level security;
drop policy if exists tenant_select on public.inventory_items;
create policy tenant_select on public.inventory_items for select to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('inventory', 'read')));
drop policy if exists tenant_insert on public.inventory_items;
create policy tenant_insert on public.inventory_items for insert to authenticated
  with check (tenant_id = (select private.tenant_id()) and (select private.can('inventory', 'write')));
drop policy if exists tenant_update on public.inventory_items;
create policy tenant_update on public.inventory_items for update to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('inventory', 'write')))
  with check (tenant_id = (select private.tenant_id()) and (select private.can('inventory', 'write')));
drop policy if exists tenant_delete on public.inventory_items;
create policy tenant_delete on public.inventory_items for delete to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('inventory', 'delete')));
-- private.crm_inventory_before: functions/crm/board.sql
drop trigger if exists crm_inventory_before on public.inventory_items;
create trigger crm_inventory_before before update on public.inventory_items
  for each row execute function private.crm_inventory_before();
drop trigger if exists set_updated_at on public.inventory_items;
create trigger set_updated_at before update on public.inventory_items
  for each row execute function private.set_updated_at();
grant all on public.inventory_items to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.cards: a card follows its customer's responsibles (crm_card_before copies them)
-- ---------------------------------------------------------------------------------------------
alter table public.cards enable row level security;
drop policy if exists tenant_select on public.cards;
create policy tenant_select on public.cards for select to authenticated
  using (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'read'))
    and ((select private.sees_all()) or ((select auth.uid()) = any (responsibles))));
drop policy if exists tenant_insert on public.cards;
create policy tenant_insert on public.cards for insert to authenticated
  with check (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'write'))
    and ((select private.sees_all()) or ((select auth.uid()) = any (responsibles))));
drop policy if exists tenant_update on public.cards;
create policy tenant_update on public.cards for update to authenticated
  using (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'write'))
    and ((select private.sees_all()) or ((select auth.uid()) = any (responsibles))))
  with check (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'write'))
    and ((select private.sees_all()) or ((select auth.uid()) = any (responsibles))));
drop policy if exists tenant_delete on public.cards;
create policy tenant_delete on public.cards for delete to authenticated
  using (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'delete'))
    and ((select private.sees_all()) or ((select auth.uid()) = any (responsibles))));
-- private.crm_card_after: functions/crm/board.sql
drop trigger if exists crm_card_after on public.cards;
create trigger crm_card_after after insert or update on public.cards
  for each row execute function private.crm_card_after();
-- private.crm_card_before: functions/crm/board.sql
drop trigger if exists crm_card_before on public.cards;
create trigger crm_card_before before insert or update on public.cards
  for each row execute function private.crm_card_before();
drop trigger if exists set_updated_at on public.cards;
create trigger set_updated_at before update on public.cards
  for each row execute function private.set_updated_at();
grant all on public.cards to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.inventory_sales: written by stage moves (security definer) or sold-status updates only: no update / delete policy
-- ---------------------------------------------------------------------------------------------
alter table public.inventory_sales enable row level security;
drop policy if exists tenant_select on public.inventory_sales;
create policy tenant_select on public.inventory_sales for select to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('inventory', 'read')));
drop policy if exists tenant_insert on public.inventory_sales;
create policy tenant_insert on public.inventory_sales for insert to authenticated
  with check (tenant_id = (select private.tenant_id()) and (select private.can('inventory', 'write')));
drop trigger if exists audit_change on public.inventory_sales;
create trigger audit_change after insert or delete or update on public.inventory_sales
  for each row execute function audit.log_change();
drop trigger if exists set_updated_at on public.inventory_sales;
create trigger set_updated_at before update on public.inventory_sales
  for each row execute function private.set_updated_at();
grant all on public.inventory_sales to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.activity_types: configuration: everyone in the tenant reads; those who manage CRM settings write
-- ---------------------------------------------------------------------------------------------
alter table public.activity_types enable row level security;
drop policy if exists tenant_select on public.activity_types;
create policy tenant_select on public.activity_types for select to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'read')));
drop policy if exists tenant_insert on public.activity_types;
create policy tenant_insert on public.activity_types for insert to authenticated
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop policy if exists tenant_update on public.activity_types;
create policy tenant_update on public.activity_types for update to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')))
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop policy if exists tenant_delete on public.activity_types;
create policy tenant_delete on public.activity_types for delete to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'manage')));
drop trigger if exists set_updated_at on public.activity_types;
create trigger set_updated_at before update on public.activity_types
  for each row execute function private.set_updated_at();
grant all on public.activity_types to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.activities: customer-linked: the customer's visibility decides (private.crm_can_see_customer)
-- ---------------------------------------------------------------------------------------------
alter table public.activities enable row level security;
drop policy if exists tenant_select on public.activities;
create policy tenant_select on public.activities for select to authenticated
  using (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'read'))
    and ((select private.sees_all()) or private.crm_can_see_customer(customer_id)));
drop policy if exists tenant_insert on public.activities;
create policy tenant_insert on public.activities for insert to authenticated
  with check (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'write'))
    and ((select private.sees_all()) or private.crm_can_see_customer(customer_id)));
drop policy if exists tenant_update on public.activities;
create policy tenant_update on public.activities for update to authenticated
  using (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'write'))
    and ((select private.sees_all()) or private.crm_can_see_customer(customer_id)))
  with check (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'write'))
    and ((select private.sees_all()) or private.crm_can_see_customer(customer_id)));
drop policy if exists tenant_delete on public.activities;
create policy tenant_delete on public.activities for delete to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'delete')));
-- private.crm_activity_after: functions/crm/activities.sql
drop trigger if exists crm_activity_after on public.activities;
create trigger crm_activity_after after insert or update on public.activities
  for each row execute function private.crm_activity_after();
-- private.crm_activity_before: functions/crm/activities.sql
drop trigger if exists crm_activity_before on public.activities;
create trigger crm_activity_before before insert or update on public.activities
  for each row execute function private.crm_activity_before();
drop trigger if exists set_updated_at on public.activities;
create trigger set_updated_at before update on public.activities
  for each row execute function private.set_updated_at();
grant all on public.activities to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.timeline_events: read like its customer; written only by triggers and functions (no insert / update / delete policy)
-- ---------------------------------------------------------------------------------------------
alter table public.timeline_events enable row level security;
drop policy if exists tenant_select on public.timeline_events;
create policy tenant_select on public.timeline_events for select to authenticated
  using (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'read'))
    and ((select private.sees_all()) or private.crm_can_see_customer(customer_id)));
-- private.crm_timeline_guard: functions/crm/activities.sql
drop trigger if exists timeline_append_only on public.timeline_events;
create trigger timeline_append_only before update on public.timeline_events
  for each row execute function private.crm_timeline_guard();
grant all on public.timeline_events to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.notes: customer-linked: the customer's visibility decides (private.crm_can_see_customer)
-- ---------------------------------------------------------------------------------------------
alter table public.notes enable row level security;
drop policy if exists tenant_select on public.notes;
create policy tenant_select on public.notes for select to authenticated
  using (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'read'))
    and ((select private.sees_all()) or private.crm_can_see_customer(customer_id)));
drop policy if exists tenant_insert on public.notes;
create policy tenant_insert on public.notes for insert to authenticated
  with check (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'write'))
    and ((select private.sees_all()) or private.crm_can_see_customer(customer_id)));
drop policy if exists tenant_update on public.notes;
create policy tenant_update on public.notes for update to authenticated
  using (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'write'))
    and ((select private.sees_all()) or private.crm_can_see_customer(customer_id)))
  with check (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'write'))
    and ((select private.sees_all()) or private.crm_can_see_customer(customer_id)));
drop policy if exists tenant_delete on public.notes;
create policy tenant_delete on public.notes for delete to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'delete')));
-- private.crm_note_after: functions/crm/activities.sql
drop trigger if exists crm_note_after on public.notes;
create trigger crm_note_after after insert on public.notes
  for each row execute function private.crm_note_after();
-- private.crm_note_before: functions/crm/activities.sql
drop trigger if exists crm_note_before on public.notes;
create trigger crm_note_before before insert on public.notes
  for each row execute function private.crm_note_before();
drop trigger if exists set_updated_at on public.notes;
create trigger set_updated_at before update on public.notes
  for each row execute function private.set_updated_at();
grant all on public.notes to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.reminders: customer-linked, and its owner always sees it; a reminder without a customer is the owner's
-- ---------------------------------------------------------------------------------------------
alter table public.reminders enable row level security;
drop policy if exists tenant_select on public.reminders;
create policy tenant_select on public.reminders for select to authenticated
  using (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'read'))
    and ((select private.sees_all()) or (owner_id = (select auth.uid())) or private.crm_can_see_customer(customer_id)));
drop policy if exists tenant_insert on public.reminders;
create policy tenant_insert on public.reminders for insert to authenticated
  with check (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'write'))
    and ((select private.sees_all()) or (customer_id is null) or private.crm_can_see_customer(customer_id)));
drop policy if exists tenant_update on public.reminders;
create policy tenant_update on public.reminders for update to authenticated
  using (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'write'))
    and ((select private.sees_all()) or (owner_id = (select auth.uid())) or private.crm_can_see_customer(customer_id)))
  with check (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'write'))
    and ((select private.sees_all()) or (owner_id = (select auth.uid())) or private.crm_can_see_customer(customer_id)));
drop policy if exists tenant_delete on public.reminders;
create policy tenant_delete on public.reminders for delete to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'delete')));
-- private.crm_reminder_after: functions/crm/notifications.sql
drop trigger if exists crm_reminder_after on public.reminders;
create trigger crm_reminder_after after insert or update on public.reminders
  for each row execute function private.crm_reminder_after();
-- private.crm_reminder_before: functions/crm/notifications.sql
drop trigger if exists crm_reminder_before on public.reminders;
create trigger crm_reminder_before before insert or update on public.reminders
  for each row execute function private.crm_reminder_before();
drop trigger if exists set_updated_at on public.reminders;
create trigger set_updated_at before update on public.reminders
  for each row execute function private.set_updated_at();
grant all on public.reminders to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.notifications: your own; you mark them read; anyone who writes CRM data may notify a colleague
-- ---------------------------------------------------------------------------------------------
alter table public.notifications enable row level security;
drop policy if exists tenant_select on public.notifications;
create policy tenant_select on public.notifications for select to authenticated
  using (tenant_id = (select private.tenant_id()) and user_id = (select auth.uid()));
drop policy if exists tenant_insert on public.notifications;
create policy tenant_insert on public.notifications for insert to authenticated
  with check (tenant_id = (select private.tenant_id())
    and (select private.can('crm', 'write'))
    and (select private.tenant_user_ids()) @> array[user_id]);
drop policy if exists tenant_update on public.notifications;
create policy tenant_update on public.notifications for update to authenticated
  using (tenant_id = (select private.tenant_id()) and user_id = (select auth.uid()))
  with check (tenant_id = (select private.tenant_id()) and user_id = (select auth.uid()));
drop policy if exists tenant_delete on public.notifications;
create policy tenant_delete on public.notifications for delete to authenticated
  using (tenant_id = (select private.tenant_id()) and user_id = (select auth.uid()));
-- private.crm_notification_broadcast: functions/crm/notifications.sql
drop trigger if exists crm_notification_broadcast on public.notifications;
create trigger crm_notification_broadcast after insert or update on public.notifications
  for each row execute function private.crm_notification_broadcast();
drop trigger if exists set_updated_at on public.notifications;
create trigger set_updated_at before update on public.notifications
  for each row execute function private.set_updated_at();
grant all on public.notifications to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.work_orders: tenant policies: the crm module's permissions
-- ---------------------------------------------------------------------------------------------
alter table public.work_orders enable row level security;
drop policy if exists tenant_select on public.work_orders;
create policy tenant_select on public.work_orders for select to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'read')));
drop policy if exists tenant_insert on public.work_orders;
create policy tenant_insert on public.work_orders for insert to authenticated
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'write')));
drop policy if exists tenant_update on public.work_orders;
create policy tenant_update on public.work_orders for update to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'write')))
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'write')));
drop policy if exists tenant_delete on public.work_orders;
create policy tenant_delete on public.work_orders for delete to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'delete')));
-- private.crm_work_order_before: functions/crm/activities.sql
drop trigger if exists crm_work_order_before on public.work_orders;
create trigger crm_work_order_before before insert or update on public.work_orders
  for each row execute function private.crm_work_order_before();
drop trigger if exists set_updated_at on public.work_orders;
create trigger set_updated_at before update on public.work_orders
  for each row execute function private.set_updated_at();
grant all on public.work_orders to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- public.work_order_steps: tenant policies: the crm module's permissions
-- ---------------------------------------------------------------------------------------------
alter table public.work_order_steps enable row level security;
drop policy if exists tenant_select on public.work_order_steps;
create policy tenant_select on public.work_order_steps for select to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'read')));
drop policy if exists tenant_insert on public.work_order_steps;
create policy tenant_insert on public.work_order_steps for insert to authenticated
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'write')));
drop policy if exists tenant_update on public.work_order_steps;
create policy tenant_update on public.work_order_steps for update to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'write')))
  with check (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'write')));
drop policy if exists tenant_delete on public.work_order_steps;
create policy tenant_delete on public.work_order_steps for delete to authenticated
  using (tenant_id = (select private.tenant_id()) and (select private.can('crm', 'delete')));
-- private.crm_step_after: functions/crm/activities.sql
drop trigger if exists crm_step_after on public.work_order_steps;
create trigger crm_step_after after insert or delete or update on public.work_order_steps
  for each row execute function private.crm_step_after();
-- private.crm_step_before: functions/crm/activities.sql
drop trigger if exists crm_step_before on public.work_order_steps;
create trigger crm_step_before before insert or update on public.work_order_steps
  for each row execute function private.crm_step_before();
drop trigger if exists set_updated_at on public.work_order_steps;
create trigger set_updated_at before update on public.work_order_steps
  for each row execute function private.set_updated_at();
grant all on public.work_order_steps to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- private.crm_external_refs: private: the worker's only (no RLS, service_role)
-- ---------------------------------------------------------------------------------------------
grant all on private.crm_external_refs to service_role;
