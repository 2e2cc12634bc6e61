"""CRM customers as CSV.

    POST /v1/crm/customers/import   the CSV as the raw body (text/csv); ?mapping={"CSV column": "field"}
                                    (else headers are matched by name: ad_soyad, telefon, e_posta ...),
                                    ?on_duplicate=skip|update. Answers {inserted, updated, skipped, rows,
                                    errors: [{line, code, message}]}: a bad line never stops the others.
    GET  /v1/crm/customers/export   CSV of the customers the caller may see (RLS), ?mask=true masks the
                                    personal data (forced without the 'pii' export permission); audited.

Both run as the signed-in user in one transaction: the rules are public.crm_import_customers and
public.crm_export_customers.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Literal

import psycopg
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from psycopg.types.json import Jsonb

from luna.normalize import fold_header

from .. import openapi as oa
from ..db import as_user
from ..errors import ApiError

router = APIRouter(prefix="/v1/crm", tags=["crm"])
BODY_LIMITS = {"/v1/crm/customers/import": "upload"}

FIELDS = {"full_name", "phone", "email", "region", "source", "campaign", "utm_source", "utm_medium", "utm_campaign",
          "utm_term", "utm_content", "quality_score", "tags"}
# Header names understood without a mapping (folded: lower-case ASCII, underscores).
SYNONYMS = {
    "ad_soyad": "full_name", "adi_soyadi": "full_name", "isim": "full_name", "ad": "full_name", "name": "full_name",
    "musteri": "full_name", "telefon": "phone", "tel": "phone", "gsm": "phone", "cep": "phone", "mobile": "phone",
    "e_posta": "email", "eposta": "email", "mail": "email", "e_mail": "email", "bolge": "region", "sehir": "region",
    "il": "region", "city": "region", "kaynak": "source", "kampanya": "campaign", "etiketler": "tags", "etiket": "tags",
    "kalite": "quality_score", "skor": "quality_score", "score": "quality_score",
}
EXPORT_COLUMNS = ["id", "full_name", "phone", "email", "region", "source", "campaign", "utm_source", "utm_medium",
                  "utm_campaign", "quality_score", "tags", "responsibles", "last_contact_at", "created_at"]
BATCH = 1000


def _mapping(header: list[str], given: str | None) -> dict[int, str]:
    if given:
        try:
            wanted = json.loads(given)
            assert isinstance(wanted, dict)
        except (ValueError, AssertionError):
            raise ApiError(400, "invalid_mapping", 'mapping is a JSON object {"CSV column": "field"}')
        bad = sorted(v for v in wanted.values() if v not in FIELDS)
        if bad:
            raise ApiError(400, "invalid_mapping", f"unknown fields: {', '.join(bad)}", details=sorted(FIELDS))
        missing = sorted(k for k in wanted if k not in header)
        if missing:
            raise ApiError(400, "invalid_mapping", f"columns not in the file: {', '.join(missing)}", details=header)
        return {header.index(k): v for k, v in wanted.items()}
    out = {}
    for i, name in enumerate(header):
        key = fold_header(name)
        field = key if key in FIELDS else SYNONYMS.get(key)
        if field and field not in out.values():
            out[i] = field
    if "full_name" not in out.values():
        raise ApiError(400, "invalid_mapping", "no column maps to full_name; pass ?mapping=",
                       details={"header": header, "fields": sorted(FIELDS)})
    return out


def parse(text: str, mapping: str | None, region: str) -> tuple[list[dict], int]:
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first.count)  # the header line's most frequent separator
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise ApiError(400, "empty_upload", "the CSV has no header line")
    columns = _mapping([h.strip().lstrip("\ufeff") for h in header], mapping)
    rows = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        row = {"line": reader.line_num}
        for i, field in columns.items():
            value = values[i].strip() if i < len(values) else ""
            if value:
                row[field] = value
        # Phones and e-mails go to the database as given: its rules (private.clean_phone / clean_email)
        # clean them, and refuse what they cannot read with the line's error.
        rows.append(row)
    return rows, reader.line_num


@router.post("/customers/import", openapi_extra=oa.op(body=oa.raw_body("text/csv", oa.CSV)))
async def import_customers(request: Request,
                           mapping: str | None = Query(None, description='JSON object {"CSV column": "field"}',
                                                       json_schema_extra={"example": '{"Ad Soyad": "full_name"}'}),
                           on_duplicate: Literal["skip", "update"] = Query("skip"),
                           conn: psycopg.AsyncConnection = Depends(as_user)):
    if on_duplicate not in ("skip", "update"):
        raise ApiError(400, "invalid_parameter", "on_duplicate is skip or update")
    body = await request.body()
    if not body.strip():
        raise ApiError(400, "empty_upload", "send the CSV file as the request body")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = body.decode("cp1254")  # Turkish Excel exports
    region = (await (await conn.execute(
        "select coalesce((select t.default_region from public.tenants t where t.id = private.tenant_id()), 'TR') as r")).fetchone())["r"]
    rows, _ = parse(text, mapping, region)
    total = {"rows": len(rows), "inserted": 0, "updated": 0, "skipped": 0, "errors": []}
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        result = (await (await conn.execute("select public.crm_import_customers(%s, %s) as r",
                                            (Jsonb(chunk), on_duplicate))).fetchone())["r"]
        for key in ("inserted", "updated", "skipped"):
            total[key] += result[key]
        total["errors"].extend({"line": e["line"], "code": e["code"], "message": e["message"]} for e in result["errors"])
    return total


@router.get("/customers/export", response_class=Response,
            responses=oa.csv_response("the customers as CSV (UTF-8 with BOM, for Excel)"))
async def export_customers(mask: bool = Query(False), source: str | None = None, campaign: str | None = None,
                           tag: str | None = None, conn: psycopg.AsyncConnection = Depends(as_user)):
    filters = {k: v for k, v in {"source": source, "campaign": campaign, "tag": tag}.items() if v}
    cur = await conn.execute("select * from public.crm_export_customers(%s, %s)", (mask, Jsonb(filters)))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    async for row in cur:
        writer.writerow(["" if row[c] is None else row[c] for c in EXPORT_COLUMNS])
    return Response(out.getvalue().encode("utf-8-sig"), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": 'attachment; filename="customers.csv"'})
