"""Fake web search (Brave shape): GET /res/v1/web/search?q= -> {"web": {"results": [...]}}."""

from fastapi import FastAPI

from .failures import Modes


def make_app():
    app, modes = FastAPI(), Modes()

    @app.get("/res/v1/web/search")
    async def search(q: str, count: int = 3):
        modes.calls.append({"q": q})
        if (failed := await modes.failure()) is not None:
            return failed
        return {"type": "search", "query": {"original": q},
                "web": {"type": "search", "results": [
                    {"title": f"{q} - resmi site", "url": "https://example.com.tr", "description": f"{q} hakkında"}]}}

    return app, modes
