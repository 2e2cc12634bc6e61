-- functions/inbox/conversions.sql -- Conversions API: record a conversion and queue its delivery to Meta.

-- ===========================================================================================
-- Conversions API: record a conversion for a contact and queue its delivery to Meta. The event id
-- (given, or derived from the contact and event) makes both our queue and Meta deduplicate:
-- recording the same event twice, or a retried delivery, is counted once.
-- ===========================================================================================
create or replace function public.track_conversion(contact uuid, event_name text, custom_data jsonb default '{}',
                                                   event_id text default null, pixel_id text default null)
returns public.conversion_events
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  ct public.contacts;
  conv public.conversations;
  acc public.channel_accounts;
  pixel text;
  ev public.conversion_events;
  -- The calling role (security definer changes current_user, not the session's role setting): the
  -- worker / service code (service_role, or a superuser session) acts for any tenant; users only for theirs.
  is_service boolean := coalesce(current_setting('role', true), 'none') in ('service_role', 'none');
begin
  select * into ct from public.contacts c where c.id = contact;
  if ct.id is null or (not is_service and ct.tenant_id is distinct from (select private.tenant_id())) then
    raise exception 'contact not found' using errcode = 'P0002';
  end if;
  if not is_service and not (select private.can('marketing', 'write')) then
    raise exception 'no permission to record conversions' using errcode = '42501';
  end if;
  select * into conv from public.conversations v where v.contact_id = ct.id order by v.created_at desc limit 1;
  select * into acc from public.channel_accounts a where a.id = conv.channel_account_id;
  pixel := coalesce(pixel_id, acc.settings ->> 'pixel_id',
                    (select t.settings #>> '{inbox,pixel_id}' from public.tenants t where t.id = ct.tenant_id));
  if pixel is null then
    raise exception 'no Meta pixel / dataset id configured for this contact''s inbox' using errcode = 'PT422',
      detail = 'code=no_pixel', hint = 'set channel_accounts.settings.pixel_id or tenants.settings.inbox.pixel_id';
  end if;
  insert into public.conversion_events (tenant_id, pixel_id, event_name, event_id, contact_id, channel_account_id,
                                        user_data, custom_data)
  values (ct.tenant_id, pixel, event_name, coalesce(event_id, event_name || ':' || ct.id), ct.id, acc.id,
          jsonb_strip_nulls(jsonb_build_object(
            'ph', case when ct.phone is not null
                       then jsonb_build_array(encode(sha256(convert_to(regexp_replace(ct.phone, '\D', '', 'g'), 'UTF8')), 'hex')) end,
            'em', case when ct.email is not null
                       then jsonb_build_array(encode(sha256(convert_to(lower(trim(ct.email)), 'UTF8')), 'hex')) end,
            'ctwa_clid', ct.attribution ->> 'ctwa_clid',
            'page_id', case when acc.kind in ('messenger') then acc.external_id end,
            'whatsapp_business_account_id', case when acc.kind = 'whatsapp' then acc.settings ->> 'waba_id' end)),
          coalesce(custom_data, '{}'))
  on conflict (tenant_id, pixel_id, event_id) do nothing
  returning * into ev;
  if ev.id is null then  -- already recorded: the same event, not a new one
    select * into ev from public.conversion_events e
    where e.tenant_id = ct.tenant_id and e.pixel_id = pixel and e.event_id = coalesce(track_conversion.event_id, event_name || ':' || ct.id);
    return ev;
  end if;
  perform private.enqueue_job('inbox.conversion_event',
    jsonb_build_object('conversion_event_id', ev.id, 'channel_account_id', acc.id), ct.tenant_id, now(),
    'capi:' || ev.id);
  return ev;
end;
$$;
revoke execute on function public.track_conversion(uuid, text, jsonb, text, text) from public, anon;
grant execute on function public.track_conversion(uuid, text, jsonb, text, text)
  to authenticated, service_role;
