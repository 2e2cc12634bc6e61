"""The lead pipeline's worker side: the "leads" queue (public.leads, dispatched by
next_orchestrator_module) and its module handlers. Other areas add handlers for their routes:

    from worker.leads import LEADS

    @LEADS.handler("crm_sync")
    async def crm_sync(ctx, row): ...
"""

from worker.registry import installed, queue

# private.leads_claim ... private.leads_rescue (install_queue in functions/leads/pipeline.sql)
LEADS = queue(installed("leads", "leads", dispatch_column="next_orchestrator_module", id_type="uuid"))

from . import handlers, jobs  # noqa: E402,F401  (registers the module handlers, jobs and schedules)

__all__ = ["LEADS"]
