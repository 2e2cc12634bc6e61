"""Telegram Bot API.

Send: POST /bot<token>/sendMessage {"chat_id", "text"} answers {"ok": true, "result": {"message_id", ...}};
errors {"ok": false, "error_code", "description", "parameters": {"retry_after"}}. Webhook updates are
parsed in the core (luna/channels/telegram.py).
"""

from __future__ import annotations

from typing import Any

import httpx

from luna.channels.http import AdapterError, HttpAdapter


class TelegramAdapter(HttpAdapter):
    module = "telegram"
    default_base_url = "https://api.telegram.org"
    default_retries = 0  # the outbound queue retries, visibly

    def classify(self, response: httpx.Response, body: Any) -> AdapterError | None:
        if isinstance(body, dict) and body.get("ok") is False:
            code = body.get("error_code") or response.status_code
            retry_after = (body.get("parameters") or {}).get("retry_after")
            return AdapterError(f"code=telegram_{code}: {body.get('description')}", status=response.status_code,
                                retryable=code == 429 or int(code) >= 500, code=f"telegram_{code}",
                                retry_after=float(retry_after) if retry_after is not None else None, body=body)
        return super().classify(response, body)

    async def send(self, token: str, chat_id: str, text: str) -> str:
        answer = await self.request("POST", f"/bot{token}/sendMessage", json={"chat_id": chat_id, "text": text})
        try:
            return f"tg:{chat_id}:{answer['result']['message_id']}"
        except (KeyError, TypeError) as exc:
            raise AdapterError("telegram answer has no message id", code="wrong_schema", body=answer) from exc
