-- Inbox views for the SPA, Glide/Notion dashboards and analysts. Security invoker: RLS of the
-- underlying tables decides what each caller sees.

-- The conversation list with the caller's unread count and whether WhatsApp's 24-hour window is open.
create or replace view public.inbox_conversation_list with (security_invoker = true) as
select c.id, c.tenant_id, c.channel_account_id, a.kind as channel, a.name as inbox, c.status, c.priority, c.labels,
       c.assignee_id, c.team, c.subject, c.contact_id, ct.display_name, ct.handle, ct.customer_id, ct.lead_id,
       c.attribution, c.last_message_at, c.last_inbound_at,
       coalesce(c.last_inbound_at > now() - interval '24 hours', false) as window_open,
       (select count(*) from public.messages m
         where m.tenant_id = c.tenant_id and m.conversation_id = c.id and m.direction = 'inbound'
           and m.created_at > coalesce((select r.last_read_at from public.conversation_reads r
                                        where r.conversation_id = c.id and r.user_id = (select auth.uid())),
                                       '-infinity'::timestamptz)) as unread
from public.conversations c
join public.contacts ct on ct.tenant_id = c.tenant_id and ct.id = c.contact_id
join public.channel_accounts a on a.tenant_id = c.tenant_id and a.id = c.channel_account_id;
grant select on public.inbox_conversation_list to authenticated, service_role;

-- Unread badge per inbox for the caller.
create or replace view public.inbox_unread_badges with (security_invoker = true) as
select tenant_id, channel_account_id, channel, count(*) filter (where unread > 0) as conversations, sum(unread) as messages
from public.inbox_conversation_list
where status <> 'resolved'
group by tenant_id, channel_account_id, channel;
grant select on public.inbox_unread_badges to authenticated, service_role;

-- Spend (Meta insights) against the leads and customers that came from each ad (Click-to-WhatsApp
-- referral source_id or utm_content), with cost per lead and per customer.
create or replace view public.ad_cost_per_lead with (security_invoker = true) as
with spend as (
  select i.tenant_id, i.ad_account_id, i.external_id as ad_id, sum(i.spend) as spend, sum(i.impressions) as impressions,
         sum(i.clicks) as clicks, min(i.day) as first_day, max(i.day) as last_day
  from public.ad_insights_daily i where i.level = 'ad'
  group by 1, 2, 3
), people as (
  select ct.tenant_id, coalesce(ct.attribution ->> 'source_id', ct.attribution ->> 'utm_content') as ad_id,
         count(*) as contacts, count(ct.lead_id) as leads, count(ct.customer_id) as customers
  from public.contacts ct
  where ct.attribution is not null
  group by 1, 2
)
select s.tenant_id, s.ad_account_id, s.ad_id, o.name as ad_name, s.spend, s.impressions, s.clicks, s.first_day, s.last_day,
       coalesce(p.contacts, 0) as contacts, coalesce(p.leads, 0) as leads, coalesce(p.customers, 0) as customers,
       round(s.spend / nullif(p.contacts, 0), 2) as cost_per_contact,
       round(s.spend / nullif(p.leads, 0), 2) as cost_per_lead,
       round(s.spend / nullif(p.customers, 0), 2) as cost_per_customer
from spend s
left join people p on p.tenant_id = s.tenant_id and p.ad_id = s.ad_id
left join public.ad_objects o on o.tenant_id = s.tenant_id and o.level = 'ad' and o.external_id = s.ad_id;
grant select on public.ad_cost_per_lead to authenticated, service_role;

-- Delivery health per inbox and day (sent, delivered, read, failed; failure codes).
create or replace view public.inbox_delivery_daily with (security_invoker = true) as
with outbound as (
  select m.tenant_id, c.channel_account_id, m.created_at::date as day, m.status, m.error_code
  from public.messages m
  join public.conversations c on c.tenant_id = m.tenant_id and c.id = m.conversation_id
  where m.direction = 'outbound'
)
select o.tenant_id, o.channel_account_id, o.day, count(*) as outbound,
       count(*) filter (where o.status in ('sent', 'delivered', 'read')) as sent,
       count(*) filter (where o.status in ('delivered', 'read')) as delivered,
       count(*) filter (where o.status = 'read') as read,
       count(*) filter (where o.status = 'failed') as failed,
       (select jsonb_object_agg(f.code, f.n) from (
          select x.error_code as code, count(*) as n from outbound x
          where x.tenant_id = o.tenant_id and x.channel_account_id = o.channel_account_id and x.day = o.day
            and x.status = 'failed' and x.error_code is not null group by 1) f) as failure_codes
from outbound o
group by o.tenant_id, o.channel_account_id, o.day;
grant select on public.inbox_delivery_daily to authenticated, service_role;
