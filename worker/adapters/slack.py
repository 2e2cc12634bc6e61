"""Slack incoming webhook: post a critical alert (POST <webhook url> {"text": ...}; answers "ok")."""

from __future__ import annotations

from luna.channels.http import HttpAdapter


class SlackAdapter(HttpAdapter):
    module = "slack"

    def __init__(self, webhook_url: str, **kw):
        super().__init__(webhook_url, **kw)

    async def post(self, text: str) -> None:
        await self.request("POST", self.base_url, json={"text": text}, expect_json=False)
