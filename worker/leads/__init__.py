"""The lead pipeline's worker side: the "leads" queue (public.leads, dispatched by
next_orchestrator_module) and its module handlers. Other areas add handlers for their routes:

    from worker.leads import LEADS

    @LEADS.handler("crm_sync")
    async def crm_sync(ctx, row): ...
"""

from worker.registry import Queue, queue

LEADS = queue(Queue(
    name="leads",
    claim="private.claim_leads", complete="private.complete_leads", fail="private.fail_lead",
    release="private.release_leads", defer="private.defer_lead", rescue="private.rescue_leads",
    dispatch_column="next_orchestrator_module", id_type="uuid",
))

from . import handlers, jobs  # noqa: E402,F401  (registers the module handlers, jobs and schedules)

__all__ = ["LEADS"]
