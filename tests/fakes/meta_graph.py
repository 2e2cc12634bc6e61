"""Fake Meta Graph API: GET /{version}/{leadgen_id}?access_token= -> {id, created_time, field_data: [{name, values}]}."""

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from .failures import Modes

LEADS = {
    "4444000000001": [("full_name", ["Dr. Ayşe Kılıç"]), ("email", ["AYSE@gulusdis.com.tr"]),
                      ("phone_number", ["+905321112233"]), ("company_name", ["Gülüş Diş Polikliniği"]),
                      ("city", ["İstanbul"]), ("hangi_tedavi", ["implant"])],
}


def make_app(leads: dict | None = None):
    app, modes = FastAPI(), Modes()
    data = LEADS if leads is None else leads

    @app.get("/{version}/{leadgen_id}")
    async def lead(version: str, leadgen_id: str, access_token: str = ""):
        modes.calls.append({"leadgen_id": leadgen_id})
        if access_token != "page-token":
            return JSONResponse({"error": {"message": "Invalid OAuth access token.", "type": "OAuthException",
                                           "code": 190}}, status_code=400)
        if (failed := await modes.failure()) is not None:
            return failed
        if leadgen_id not in data:
            # What the Graph API answers for a lead deleted (or never visible) before it was fetched.
            return JSONResponse({"error": {
                "message": f"Unsupported get request. Object with ID '{leadgen_id}' does not exist, cannot be loaded "
                           "due to missing permissions, or does not support this operation. Please read the Graph "
                           "API documentation at https://developers.facebook.com/docs/graph-api",
                "type": "GraphMethodException", "code": 100, "error_subcode": 33,
                "fbtrace_id": "AbCdEfGhIjKlMnOp"}}, status_code=400)
        return {"id": leadgen_id, "created_time": "2026-11-24T10:00:00+0000", "form_id": "9000", "ad_id": "7000",
                "campaign_id": "6000", "field_data": [{"name": n, "values": v} for n, v in data[leadgen_id]]}

    return app, modes
