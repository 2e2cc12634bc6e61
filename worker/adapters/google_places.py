"""Google Maps Places (New): text search (POST /v1/places:searchText, X-Goog-Api-Key,
X-Goog-FieldMask) -> businesses as leads."""

from __future__ import annotations

from luna.channels.http import AdapterError, HttpAdapter

FIELD_MASK = ("places.id,places.displayName,places.formattedAddress,places.internationalPhoneNumber,"
              "places.nationalPhoneNumber,places.websiteUri,places.primaryType")


class GooglePlacesAdapter(HttpAdapter):
    module = "google_places"
    default_base_url = "https://places.googleapis.com"

    def __init__(self, api_key: str, base_url: str | None = None, **kw):
        super().__init__(base_url, headers={"X-Goog-Api-Key": api_key, "X-Goog-FieldMask": FIELD_MASK}, **kw)

    async def search_text(self, text_query: str, region: str = "TR", language: str = "tr") -> list[dict]:
        body = await self.request("POST", "/v1/places:searchText",
                                  json={"textQuery": text_query, "regionCode": region, "languageCode": language})
        if not isinstance(body, dict):
            raise AdapterError("places answer is not an object", code="wrong_schema", body=body)
        places = body.get("places", [])
        if not isinstance(places, list):
            raise AdapterError("places is not a list", code="wrong_schema", body=body)
        leads = []
        for p in places:
            name = (p.get("displayName") or {}).get("text") if isinstance(p.get("displayName"), dict) else None
            leads.append({"company_name": name, "phone": p.get("internationalPhoneNumber") or p.get("nationalPhoneNumber"),
                          "website": p.get("websiteUri"), "external_id": p.get("id"),
                          "city": (p.get("formattedAddress") or "").split(",")[-2].strip()
                          if (p.get("formattedAddress") or "").count(",") >= 2 else None})
        return leads
