"""Netgsm (Turkish SMS operator), REST v2.

Send: POST /sms/rest/v2/send (HTTP Basic with the API user and password) with
{"msgheader": <approved sender title>, "encoding": "TR", "messages": [{"msg": ..., "no": ...}]}; answers
{"code": "00", "jobid": ..., "description": ...}. A non-"00" code is an error: 80 (sending limit) is
retried; the others (20 text, 30 credentials, 40 sender title, 50/51 İYS, 70 parameters, 85 duplicate)
are the request's fault.
"""

from __future__ import annotations

from typing import Any

import httpx

from luna.channels.http import AdapterError, HttpAdapter, require

RETRYABLE_CODES = {"80"}


class NetgsmAdapter(HttpAdapter):
    module = "netgsm"
    default_base_url = "https://api.netgsm.com.tr"
    default_retries = 0  # the outbound queue retries, visibly

    def classify(self, response: httpx.Response, body: Any) -> AdapterError | None:
        if response.is_success and isinstance(body, dict) and body.get("code") not in (None, "00"):
            code = str(body.get("code"))
            return AdapterError(f"code=netgsm_{code}: {body.get('description') or 'netgsm error'}",
                                status=response.status_code, retryable=code in RETRYABLE_CODES,
                                code=f"netgsm_{code}", body=body)
        return super().classify(response, body)

    async def send(self, username: str, password: str, header: str, to: str, text: str) -> str:
        answer = await self.request("POST", "/sms/rest/v2/send", auth=(username, password),
                                    json={"msgheader": header, "encoding": "TR",
                                          "messages": [{"msg": text, "no": to.lstrip("+")}]})
        return str(require(answer, "jobid", module=self.module)["jobid"])
