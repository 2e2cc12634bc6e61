"""Fake Google Places (New): POST /v1/places:searchText (X-Goog-Api-Key, X-Goog-FieldMask) -> {"places": [...]}."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .failures import Modes


def make_app():
    app, modes = FastAPI(), Modes()

    @app.post("/v1/places:searchText")
    async def search(request: Request):
        body = await request.json()
        modes.calls.append({"body": body, "mask": request.headers.get("x-goog-fieldmask")})
        if request.headers.get("x-goog-api-key") != "places-key":
            return JSONResponse({"error": {"code": 403, "status": "PERMISSION_DENIED"}}, status_code=403)
        if (failed := await modes.failure()) is not None:
            return failed
        return {"places": [{"id": "ChIJ1", "displayName": {"text": "Ege Diş Kliniği", "languageCode": "tr"},
                            "formattedAddress": "Alsancak, Kıbrıs Şehitleri Cd. No:1, 35220 Konak/İzmir, Türkiye",
                            "internationalPhoneNumber": "+90 232 444 55 66", "websiteUri": "https://egedis.com.tr/"}]}

    return app, modes
