"""Fake Slack incoming webhook: POST /services/... {"text"} -> "ok"."""

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from .failures import Modes


def make_app():
    app, modes = FastAPI(), Modes()

    @app.post("/services/{a}/{b}/{c}")
    async def hook(a: str, b: str, c: str, request: Request):
        modes.calls.append(await request.json())
        if (failed := await modes.failure()) is not None:
            return failed
        return PlainTextResponse("ok")

    return app, modes
