"""Hunter: e-mail verification (GET /v2/email-verifier?email=&api_key=)."""

from __future__ import annotations

from luna.channels.http import AdapterError, HttpAdapter, require


class HunterAdapter(HttpAdapter):
    module = "hunter"
    default_base_url = "https://api.hunter.io"

    def __init__(self, api_key: str, base_url: str | None = None, **kw):
        super().__init__(base_url, **kw)
        self.api_key = api_key

    async def verify(self, email: str) -> dict:
        """{"result": deliverable|undeliverable|risky|unknown, "status": ..., "score": int}"""
        body = await self.request("GET", "/v2/email-verifier", params={"email": email, "api_key": self.api_key})
        data = require(body, "data", module=self.module)["data"]
        if not isinstance(data, dict) or "status" not in data:
            raise AdapterError("hunter data lacks status", code="wrong_schema", body=body)
        status = data.get("status")
        result = data.get("result") or {"valid": "deliverable", "invalid": "undeliverable"}.get(status, "risky")
        return {"result": result, "status": status, "score": data.get("score")}

    def classify(self, response, body):
        # 202 / 222: the verification is still running on Hunter's side; ask again later.
        if response.status_code in (202, 222):
            return AdapterError("hunter is still verifying", status=response.status_code, code="pending",
                                retry_after=5.0)
        return super().classify(response, body)
