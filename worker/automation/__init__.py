"""The automation engine's worker side (issue 12). Everything runs on the generic job queue:

- 'automation.event' (enqueued by the dispatch trigger with the event, keyed by its id): start the
  runs the event calls for (private.automation_start_runs: one run per workflow and event);
- 'automation.step' (one per run step, keyed by the step): execute it (private.automation_run_step:
  the effect, the step's record and the next step's row and job commit together). The step jobs a
  worker holds at the same moment are coalesced into one call (private.automation_run_steps, up to
  32 steps, one commit): a commit that notifies (the next step's job wakes the workers) takes
  Postgres's notify lock through its WAL flush, so one commit per step would cap the engine at one
  disk flush per step across all workers. A webhook step
  is the one effect outside the database: its call is made under a step mark (worker/steps.py), so a
  worker killed after the call and before the mark is the only way it is repeated, and the receiver
  gets the same Idempotency-Key;
- 'automation.opt_out_confirm': the one confirmation of an opt-out.

No queue, lease or scheduler of its own; a step due in 24 hours is a job whose run_at is then.
"""

from __future__ import annotations

import json
import logging

from luna import secrets
from worker import steps
from luna.channels.http import AdapterError, KeyBatcher
from worker.adapters.webhook import WebhookAdapter
from worker.errors import JobError
from worker.registry import job

log = logging.getLogger("luna.worker.automation")

STEP_BATCH = 32       # steps per transaction (private.automation_run_steps' limit)
STEP_WAIT = 0.002     # seconds a step waits for others to share its transaction


async def _call(ctx, sql: str, *args):
    async with ctx.pool.connection() as conn:
        return (await (await conn.execute(sql, args)).fetchone())["r"]


@job("automation.event")
async def start_runs(ctx, row: dict) -> dict:
    started = await _call(ctx, "select private.automation_start_runs(%s) as r", row["payload"]["event_id"])
    return {"runs_started": started}


@job("automation.step")
async def run_step(ctx, row: dict) -> dict:
    step_id = row["payload"]["step_id"]
    batcher = ctx.adapter("automation.steps", lambda: KeyBatcher(lambda ids: _run_steps(ctx, ids), STEP_BATCH, STEP_WAIT))
    try:
        outcome = dict(await batcher.get(str(step_id)))
    except Exception as exc:  # the shared transaction failed (a deadlock, the database restarting): retry
        raise JobError(f"running the step failed: {exc}", retryable=True) from exc
    if outcome.get("external") == "webhook":
        # The last attempt records the step's failure instead of leaving it due behind a failed job.
        outcome["attempt"], outcome["max_attempts"] = row["attempts"], row["max_attempts"]
        return await _webhook(ctx, outcome)
    return outcome


async def _run_steps(ctx, ids: list[str]) -> dict:
    return await _call(ctx, "select private.automation_run_steps(%s::uuid[]) as r", ids)


async def _webhook(ctx, out: dict) -> dict:
    """POST the step's payload, once per step (step mark), then record the outcome in the run."""
    spec, step_id, tenant = out["spec"], out["step_id"], out["tenant_id"]
    secret = None
    if spec.get("secret"):
        async with ctx.pool.connection() as conn:
            found = await secrets.atenant_secrets(conn, tenant, "automation.webhook")
        secret = found.get(spec["secret"])
        if secret is None:
            return await _done(ctx, step_id, False, None, "webhook_secret_missing",
                               f"no tenant secret automation.webhook:{spec['secret']}")
    body = json.dumps({"run_id": out["run_id"], "step_id": step_id, "step": spec.get("id"),
                       "record": out.get("record")}, ensure_ascii=False, sort_keys=True, default=str).encode()
    adapter = ctx.adapter("automation_webhook", WebhookAdapter)

    async def call():
        return await adapter.post(spec["url"], body, secret=secret, idempotency_key=f"automation:{step_id}")

    try:
        result, _replayed = await steps.once(ctx, f"automation.webhook:{step_id}", tenant, call)
    except AdapterError as exc:
        if exc.retryable and row_attempts(out) < row_max(out):
            raise JobError(str(exc), retryable=True) from exc
        return await _done(ctx, step_id, False, {"status": exc.status}, exc.code or "webhook_refused", str(exc))
    return await _done(ctx, step_id, True, result, None, None)


def row_attempts(out: dict) -> int:
    return int(out.get("attempt") or 1)


def row_max(out: dict) -> int:
    return int(out.get("max_attempts") or 1)


async def _done(ctx, step_id, ok: bool, result, code, message) -> dict:
    from psycopg.types.json import Jsonb

    return await _call(ctx, "select private.automation_step_done(%s, %s, %s, %s, %s) as r",
                       step_id, ok, Jsonb(result) if result is not None else None, code, message)


@job("automation.opt_out_confirm")
async def opt_out_confirm(ctx, row: dict) -> dict:
    return await _call(ctx, "select private.automation_opt_out_confirm(%s) as r", row["payload"]["opt_out_id"])
