"""Web search (Brave Search API shape: GET /res/v1/web/search?q=, X-Subscription-Token): the top
results about a company, for the qualifier's context."""

from __future__ import annotations

from luna.channels.http import AdapterError, HttpAdapter


class WebSearchAdapter(HttpAdapter):
    module = "web_search"
    default_base_url = "https://api.search.brave.com"

    def __init__(self, api_key: str, base_url: str | None = None, **kw):
        super().__init__(base_url, headers={"X-Subscription-Token": api_key, "Accept": "application/json"}, **kw)

    async def search(self, query: str, count: int = 3) -> list[dict]:
        body = await self.request("GET", "/res/v1/web/search", params={"q": query, "count": count})
        if not isinstance(body, dict):
            raise AdapterError("web search answered a non-object", code="wrong_schema", body=body)
        results = (body.get("web") or {}).get("results")
        if results is None:
            return []
        if not isinstance(results, list):
            raise AdapterError("web.results is not a list", code="wrong_schema", body=body)
        return [{"title": r.get("title"), "url": r.get("url"), "description": r.get("description")}
                for r in results[:count] if isinstance(r, dict)]
