"""Outgoing webhooks of workflow steps: a JSON POST to the tenant's URL, signed with HMAC-SHA256
(luna.automation.sign: X-Luna-Signature over '<X-Luna-Timestamp>.<body>') and carrying an
Idempotency-Key (the run step), so a receiver can drop a repeat of the same step."""

from __future__ import annotations

import time

from luna.automation import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

from luna.channels.http import HttpAdapter


class WebhookAdapter(HttpAdapter):
    module = "automation_webhook"

    def __init__(self, **kwargs):
        # One attempt per job run: the job queue retries with backoff, and each attempt is visible.
        kwargs.setdefault("retries", 0)
        super().__init__(**kwargs)

    async def post(self, url: str, body: bytes, *, secret: str | None, idempotency_key: str) -> dict:
        """POST `body` (JSON bytes) to `url`; returns {"status": <HTTP status>}. Raises AdapterError
        (retryable on 408/425/429/5xx, timeouts and network errors; not on other 4xx)."""
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
        if secret:
            ts = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = ts
            headers[SIGNATURE_HEADER] = sign(secret, ts, body)
        client = await self.client()
        await self._with_retries("POST", url, expect_json=False, content=body, headers=headers)
        return {"status": "delivered"}
