"""Twilio Programmable Messaging (SMS).

Send: POST /2010-04-01/Accounts/{AccountSid}/Messages.json (form: To, From | MessagingServiceSid, Body;
HTTP Basic with the account SID and auth token) answers the Message resource {sid, status, ...}.
Errors answer {code, message, more_info, status}. Inbound and status webhooks (signature and form) are
read in the core: luna/channels/twilio.py.
"""

from __future__ import annotations

from typing import Any

import httpx

from luna.channels.http import AdapterError, HttpAdapter, require

# 20429: too many requests; 30001: queue overflow (both transient).
RETRYABLE_CODES = {20429, 30001}


class TwilioAdapter(HttpAdapter):
    module = "twilio"
    default_base_url = "https://api.twilio.com"
    default_retries = 0  # the outbound queue retries, visibly

    def classify(self, response: httpx.Response, body: Any) -> AdapterError | None:
        if response.is_success:
            return None
        if not isinstance(body, dict) or "code" not in body:
            return super().classify(response, body)
        return self.coded_error(response, body.get("code"), body.get("message"), body, RETRYABLE_CODES)

    async def send(self, account_sid: str, auth_token: str, sender: str, to: str, body: str,
                   status_callback: str | None = None) -> str:
        form = {"To": to, "Body": body}
        form["MessagingServiceSid" if sender.startswith("MG") else "From"] = sender
        if status_callback:
            form["StatusCallback"] = status_callback
        answer = await self.request("POST", f"/2010-04-01/Accounts/{account_sid}/Messages.json", data=form,
                                    auth=(account_sid, auth_token))
        return require(answer, "sid", module=self.module)["sid"]
