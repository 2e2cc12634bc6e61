"""Automation (issue 12): the published workflow JSON Schema and its validator, and the signature of
outgoing webhooks. Shared by edge (422 on an invalid definition), the CLI (`luna automation validate`)
and the worker (webhook steps). The engine itself is SQL (functions/automation.sql)."""

from __future__ import annotations

import hashlib
import hmac
import json
from functools import lru_cache
from pathlib import Path

SCHEMA_PATH = Path(__file__).with_name("workflow.schema.json")
SIGNATURE_HEADER = "X-Luna-Signature"
TIMESTAMP_HEADER = "X-Luna-Timestamp"


class WorkflowInvalid(ValueError):
    """A definition the schema refuses: `path` is the JSON path of the offending value ("$.steps[1].type")."""

    code = "invalid_workflow"

    def __init__(self, message: str, path: str, schema_path: str | None = None):
        super().__init__(message)
        self.message, self.path, self.schema_path = message, path, schema_path


@lru_cache(maxsize=1)
def schema() -> dict:
    """The published JSON Schema (also served at GET /v1/automation/schema)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator():
    from jsonschema import Draft202012Validator, FormatChecker

    return Draft202012Validator(schema(), format_checker=FormatChecker())


def json_path(parts) -> str:
    """['steps', 1, 'type'] -> '$.steps[1].type'."""
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def validate(definition) -> None:
    """Raise WorkflowInvalid for the most relevant schema error of `definition` (a parsed JSON value)."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(definition))
    if error is not None:
        # Inside a oneOf / allOf the deepest error names the value a person has to fix.
        while error.context:
            deeper = best_match(error.context)
            if deeper is None or len(deeper.absolute_path) < len(error.absolute_path):
                break
            error = deeper
        raise WorkflowInvalid(error.message, json_path(error.absolute_path), "/".join(map(str, error.absolute_schema_path)))


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The webhook signature header's value: 'sha256=' + hex HMAC-SHA256 of '<timestamp>.<body>' under the
    secret (the timestamp is in X-Luna-Timestamp, Unix seconds; receivers refuse old ones against replays)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), header or "")


__all__ = ["WorkflowInvalid", "schema", "validate", "json_path", "sign", "verify", "SIGNATURE_HEADER", "TIMESTAMP_HEADER"]
