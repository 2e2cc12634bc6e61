-- functions/leads/review.sql -- Human review: approve, reject, requeue.

-- ---------------------------------------------------------------------------------------------
-- Review RPCs: a person requeues, approves or rejects a lead. The verdict is stored next to the
-- AI's (human_decision), logged in processing_logs and recorded in the audit chain.
-- ---------------------------------------------------------------------------------------------
create or replace function private.review_lead(lead uuid, verdict text, reason text) returns public.leads
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_variable
declare
  old public.leads;
  l public.leads;
  target text;
  patch jsonb;
begin
  select * into old from public.leads x where x.id = lead and x.tenant_id = (select private.tenant_id());
  if not found then
    raise exception 'no lead %', lead using errcode = 'PT404', detail = 'code=lead_not_found';
  end if;
  if not (select private.can('leads', 'write'))
     or not ((select private.sees_all()) or old.assigned_to = (select auth.uid())) then
    raise exception 'you may not review this lead' using errcode = '42501';
  end if;
  if old.locked_until is not null then
    raise exception 'the lead is being processed; try again in a moment' using errcode = 'PT409', detail = 'code=lead_busy';
  end if;
  case verdict
    when 'approve' then
      target := 'QUALIFIED';
      patch := jsonb_build_object('human_decision', 'OK', 'human_reason', reason, 'reviewed_by', (select auth.uid()));
      if old.lead_category is null then
        patch := patch || '{"lead_category": "WARM"}';
      end if;
    when 'reject' then
      target := 'REJECTED';
      patch := jsonb_build_object('human_decision', 'REJECT', 'human_reason', reason, 'reviewed_by', (select auth.uid()));
    when 'requeue' then
      target := 'RAW';
      patch := jsonb_build_object('attempts', 0, 'last_error', null);
    else
      raise exception 'unknown verdict %', verdict using errcode = 'PT400', detail = 'code=invalid_verdict';
  end case;
  l := private.advance_lead(lead, case when old.processing_status = target and verdict <> 'requeue' then null else target end,
                            'review', verdict, 'ok', null,
                            jsonb_build_object('reason', reason, 'by', (select auth.uid()),
                                               'ai_decision', old.luna_ai_decision), patch);
  perform audit.record(l.tenant_id, 'lead.' || verdict, 'public.leads', l.id::text,
    jsonb_build_object('processing_status', old.processing_status, 'luna_ai_decision', old.luna_ai_decision,
                       'human_decision', old.human_decision),
    jsonb_build_object('processing_status', l.processing_status, 'human_decision', l.human_decision, 'reason', reason));
  return l;
end;
$$;
revoke execute on function private.review_lead(uuid, text, text) from public, anon;
grant execute on function private.review_lead(uuid, text, text) to authenticated, service_role;

create or replace function public.approve_lead(lead uuid, reason text default null) returns public.leads
language sql
set search_path = ''
as $$ select private.review_lead(lead, 'approve', reason) $$;
revoke execute on function public.approve_lead(uuid, text) from public, anon;
grant execute on function public.approve_lead(uuid, text) to authenticated, service_role;

create or replace function public.reject_lead(lead uuid, reason text default null) returns public.leads
language sql
set search_path = ''
as $$ select private.review_lead(lead, 'reject', reason) $$;
revoke execute on function public.reject_lead(uuid, text) from public, anon;
grant execute on function public.reject_lead(uuid, text) to authenticated, service_role;

create or replace function public.requeue_lead(lead uuid, reason text default null) returns public.leads
language sql
set search_path = ''
as $$ select private.review_lead(lead, 'requeue', reason) $$;
revoke execute on function public.requeue_lead(uuid, text) from public, anon;
grant execute on function public.requeue_lead(uuid, text) to authenticated, service_role;
