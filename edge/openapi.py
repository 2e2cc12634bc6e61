"""OpenAPI declarations for operations that read their input by hand (raw webhook bodies, CSV uploads,
signature headers, form keys), so the document says what each one really accepts and clients (and the
schema-driven fuzzer in tests/test_fuzz.py) generated from it send valid requests.

    @router.post("/v1/x", openapi_extra=op(body=raw_body("text/csv", CSV), headers=[header("X-Sig")]))
"""

from __future__ import annotations

from fastapi.security import APIKeyHeader

# The public form key of a landing-page lead source (lead_sources.form_key). OpenAPI only: never refuses.
form_key_scheme = APIKeyHeader(name="X-Form-Key", auto_error=False, scheme_name="formKey",
                               description="The form key of a lead source (landing-page forms)")

CSV = {"type": "string", "description": "the CSV file: UTF-8 (BOM allowed), UTF-16 or Windows-1254; "
                                        "`,` `;` tab or `|` separated; the first line names the columns",
       "example": "company_name,email,phone\nAcme Dental,info@acme.example,+905321112233\n"}
JSON_OBJECT = {"type": "object", "additionalProperties": True}


def raw_body(media_type: str, schema: dict, *, required: bool = True, description: str | None = None,
             also: dict[str, dict] | None = None) -> dict:
    """A request body the handler reads itself (request.body() / request.stream())."""
    content = {media_type: {"schema": schema}}
    content.update({k: {"schema": v} for k, v in (also or {}).items()})
    body = {"required": required, "content": content}
    if description:
        body["description"] = description
    return body


def header(name: str, description: str, *, required: bool = False, schema: dict | None = None) -> dict:
    return {"name": name, "in": "header", "required": required, "description": description,
            "schema": schema or {"type": "string"}}


def query(name: str, description: str, *, required: bool = False, schema: dict | None = None) -> dict:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema or {"type": "string"}}


def op(*, body: dict | None = None, params: list[dict] | None = None, security: list[dict] | None = None,
       responses: dict | None = None) -> dict:
    """openapi_extra for a route: its raw body, extra parameters, security alternatives, responses."""
    extra: dict = {}
    if body is not None:
        extra["requestBody"] = body
    if params:
        extra["parameters"] = params
    if security is not None:
        extra["security"] = security
    if responses:
        extra["responses"] = responses
    return extra


def csv_response(description: str) -> dict:
    return {"200": {"description": description, "content": {"text/csv": {"schema": {"type": "string"}}}}}


HUB_SIGNATURE = header("X-Hub-Signature-256", "`sha256=` and the hex HMAC-SHA256 of the raw body with the app "
                       "secret; anything else is 401 bad_signature", required=True,
                       schema={"type": "string", "pattern": "^sha256=[0-9a-fA-F]{64}$"})
HUB_QUERY = [query("hub.mode", "`subscribe`", required=True, schema={"type": "string", "enum": ["subscribe"]}),
             query("hub.verify_token", "the verify token configured for the app", required=True),
             query("hub.challenge", "echoed back when the token matches", required=True)]
NO_SECURITY: list[dict] = []  # public: the caller is verified by a signature or a shared secret instead
