"""One JSON error shape for every failure:

    {"error": {"code": "<machine-readable>", "message": "...", "details": ..., "hint": ...,
               "sqlstate": "<when the database refused>", "correlation_id": "..."}}

Database errors keep their SQLSTATE, mapped to an HTTP status. The message, detail and hint are passed on
only when our own SQL raised them (`raise exception ... using errcode = 'PT422', detail = 'code=...'`);
errors of Postgres itself (a bad uuid, a NUL byte, a unique violation naming the values) answer a fixed
sentence per code, and the database's own text goes to the log with the correlation id, never to the client.
"""

from __future__ import annotations

import logging

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("luna.edge")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, details=None, hint: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.hint, self.headers = details, hint, headers


def error_body(request: Request, code: str, message: str, **extra) -> dict:
    body = {"code": code, "message": message}
    body.update({k: v for k, v in extra.items() if v is not None})
    body["correlation_id"] = getattr(request.state, "correlation_id", None)
    return {"error": body}


# SQLSTATE -> (HTTP status, code). Our functions raise rule violations PostgREST's way, with
# errcode 'PT<status>', and name a machine-readable code in the detail:
#   raise exception 'Kapora needs a deposit amount' using errcode = 'PT422', detail = 'code=deposit_required';
SQLSTATE_MAP = {
    "42501": (403, "forbidden"),
    "23505": (409, "conflict"),
    "23503": (409, "foreign_key_violation"),
    "23502": (422, "not_null_violation"),
    "23514": (422, "check_violation"),
    "23P01": (409, "exclusion_violation"),
    "22023": (400, "invalid_parameter"),
    "P0002": (404, "not_found"),
    "40001": (503, "serialization_failure"),
    "40P01": (503, "deadlock_detected"),
    "57014": (504, "query_canceled"),
}


# What a client is told when Postgres itself (not one of our functions) refused.
PUBLIC_MESSAGES = {
    "forbidden": "you may not do this",
    "conflict": "this conflicts with a record that already exists",
    "foreign_key_violation": "this refers to a record that does not exist, or is still referred to",
    "not_null_violation": "a required value is missing",
    "check_violation": "a value breaks a rule of the data",
    "exclusion_violation": "this overlaps an existing record",
    "invalid_parameter": "a parameter is not valid",
    "invalid_input": "a value in the request is not valid input (an id that is not a UUID, a malformed number or "
                     "date, or a character such as NUL that cannot be stored)",
    "not_found": "no such record",
    "serialization_failure": "the database was busy with a conflicting change; retry",
    "deadlock_detected": "the database was busy with a conflicting change; retry",
    "query_canceled": "the request took too long and was cancelled",
    "database_error": "database error; quote the correlation id",
}


def _raised_by_us(exc: psycopg.Error) -> bool:
    """True when a RAISE in our SQL made the error (its message, detail and hint are meant for clients)."""
    state = exc.sqlstate or ""
    if state.startswith("PT") or state == "P0001":
        return True
    diag = exc.diag
    return bool((diag.message_detail or "").startswith("code=") or "at RAISE" in (diag.context or ""))


def from_db_error(exc: psycopg.Error) -> tuple[int, str]:
    state = exc.sqlstate or ""
    if not state and isinstance(exc, psycopg.DataError):
        return 400, "invalid_input"  # refused by the driver before sending (e.g. NUL in a text value)
    if state in SQLSTATE_MAP:
        return SQLSTATE_MAP[state]
    if state.startswith("PT") and state[2:].isdigit():  # PostgREST's convention: PT<http status>
        return int(state[2:]), "rule_violation"
    if state == "P0001":
        return 400, "raise_exception"
    if state.startswith("22") or state.startswith("23"):
        return 400, "invalid_input"
    return 500, "database_error"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body(request, exc.code, exc.message, details=exc.details, hint=exc.hint),
                            status_code=exc.status, headers=exc.headers)

    @app.exception_handler(psycopg.Error)
    async def db_error(request: Request, exc: psycopg.Error):
        status, code = from_db_error(exc)
        diag = exc.diag
        cid = getattr(request.state, "correlation_id", None)
        if not _raised_by_us(exc):
            # Postgres' own text can name tables, constraints and the values sent: it stays in the log.
            (log.error if status >= 500 else log.info)(
                "database refused %s %s (%s, correlation id %s): %s", request.method, request.url.path,
                exc.sqlstate or type(exc).__name__, cid, str(exc).strip())
            return JSONResponse(error_body(request, code, PUBLIC_MESSAGES.get(code, PUBLIC_MESSAGES["database_error"]),
                                           sqlstate=exc.sqlstate), status_code=status)
        # A rule function may name its own code in the detail: "code=<name>".
        detail = diag.message_detail
        if detail and detail.startswith("code="):
            code, _, detail = detail[5:].partition(";")
            detail = detail.strip() or None
        if status >= 500:
            log.error("database error on %s: %s", request.url.path, exc)
        return JSONResponse(error_body(request, code, diag.message_primary or str(exc), sqlstate=exc.sqlstate,
                                       details=detail, hint=diag.message_hint), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        details = [{"loc": list(e.get("loc", [])), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        return JSONResponse(error_body(request, "invalid_request", "the request does not match the schema",
                                       details=details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 401: "unauthorized",
                403: "forbidden"}.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else code
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return JSONResponse(error_body(request, code, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(request, "internal_error", "unexpected server error; quote the correlation id"),
                            status_code=500)
