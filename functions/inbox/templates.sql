-- functions/inbox/templates.sql -- WhatsApp templates: submit one for Meta's review.

-- ===========================================================================================
-- Templates: submit a new WhatsApp template for Meta's review (the worker posts it; the status comes
-- back from the answer and the hourly sync). Variables are counted from the BODY's {{n}} markers.
-- ===========================================================================================
create or replace function public.submit_template(channel uuid, name text, language text, category text, components jsonb)
returns public.message_templates
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  acc public.channel_accounts;
  tpl public.message_templates;
begin
  select * into acc from public.channel_accounts a where a.id = channel and a.tenant_id = (select private.tenant_id());
  if acc.id is null then
    raise exception 'channel not found' using errcode = 'P0002';
  end if;
  if not (select private.can('inbox', 'manage')) and (select private.tenant_role()) not in ('owner', 'admin', 'supervisor') then
    raise exception 'only supervisors and admins submit templates' using errcode = '42501';
  end if;
  insert into public.message_templates (tenant_id, channel_account_id, name, language, category, status, components, variables)
  values (acc.tenant_id, acc.id, submit_template.name, submit_template.language, upper(submit_template.category),
          case when acc.kind = 'whatsapp' then 'PENDING' else 'APPROVED' end, components,
          (select count(*) from regexp_matches(coalesce((select c ->> 'text' from jsonb_array_elements(components) c
                                                          where upper(c ->> 'type') = 'BODY' limit 1), ''), '\{\{\d+\}\}', 'g'))::int)
  on conflict (tenant_id, channel_account_id, name, language) do update
    set components = excluded.components, category = excluded.category, variables = excluded.variables,
        status = excluded.status, rejected_reason = null
  returning * into tpl;
  if acc.kind = 'whatsapp' then
    perform private.enqueue_job('inbox.template_submit', jsonb_build_object('template_id', tpl.id), acc.tenant_id, now(),
                                'template_submit:' || tpl.id || ':' || md5(components::text));
  end if;
  return tpl;
end;
$$;
revoke execute on function public.submit_template(uuid, text, text, text, jsonb) from public, anon;
grant execute on function public.submit_template(uuid, text, text, text, jsonb)
  to authenticated, service_role;
