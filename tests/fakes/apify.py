"""Fake Apify: GET /v2/datasets/{id}/items?format=json (Bearer) -> a JSON array of items."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .failures import Modes


def make_app():
    app, modes = FastAPI(), Modes()

    @app.get("/v2/datasets/{dataset_id}/items")
    async def items(dataset_id: str, request: Request):
        modes.calls.append({"dataset": dataset_id})
        if request.headers.get("authorization") != "Bearer apify-token":
            return JSONResponse({"error": {"type": "token-not-valid", "message": "Authentication token is not valid."}},
                                status_code=401)
        if (failed := await modes.failure()) is not None:
            return failed
        return [{"title": "Deniz Otel", "phone": "+90 242 111 22 33", "website": "https://denizotel.com.tr", "city": "Antalya"},
                {"title": "Kuzey Lojistik", "phone": "0212 333 44 55", "website": "kuzeylojistik.com"}]

    return app, modes
