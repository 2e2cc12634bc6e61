"""Credentials never reach a log line.

A logging filter rewrites each record before any handler formats it: the values of credential-bearing
query-string parameters (``access_token=``, ``token=``, ``apikey=``, ``key=``, ``signature=``,
``password=`` …), of credential headers (``Authorization``, ``apikey``, ``Cookie``, webhook signature
headers) however they are written (``name: value``, ``name=value``, a dict's repr), bearer tokens and
anything shaped like a JWT become ``[REDACTED]``. The parameter names stay, so a line still says *that*
a token was sent.

`install()` puts the filter on uvicorn's access and error loggers, on LUNA's loggers (``luna``, ``edge``,
``worker`` and every child that exists) and on the handlers of the root logger, which every child logger
propagates to. It is idempotent; edge calls it when the app is created.
"""

from __future__ import annotations

import logging
import re

MARK = "[REDACTED]"
# Query-string (or form) parameter names whose value is a credential; also any name containing one of these.
_SECRET_WORDS = r"(?:access_?token|refresh_?token|id_?token|token|api_?key|apikey|key|secret|signature|sig|password|passwd|pwd|auth|code|session)"
_PARAM = re.compile(r"(?i)((?:^|[?&;\s\"'(,])[\w.\-\[\]%]*?" + _SECRET_WORDS + r"[\w.\-\[\]%]*=)([^&;\s\"'<>#)]+)")
_HEADERS = (r"authorization|proxy-authorization|apikey|api-key|x-api-key|cookie|set-cookie|x-form-key|"
            r"x-hub-signature(?:-256)?|x-twilio-signature|x-telegram-bot-api-secret-token|x-supabase-api-key")
_HEADER = re.compile(r"(?i)(\b(?:" + _HEADERS + r")\b[\"']?\s*[:=]\s*[\"']?)([^\"'\r\n,}]+)")
_BEARER = re.compile(r"(?i)(\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=\-]+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*")
_HINT = re.compile(r"(?i)token|key|secret|sig|pass|pwd|auth|cookie|bearer|basic|code|session|eyJ")


def redact(text: str) -> str:
    """The text with credential values replaced by [REDACTED]."""
    if not _HINT.search(text):
        return text
    text = _JWT.sub(MARK, text)
    text = _BEARER.sub(lambda m: m.group(1) + MARK, text)
    text = _HEADER.sub(lambda m: m.group(1) + MARK, text)
    return _PARAM.sub(lambda m: m.group(1) + (m.group(2) if m.group(2) == MARK else MARK), text)


def _clean(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = str(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


class RedactFilter(logging.Filter):
    """Rewrites a record in place before it is formatted (never drops a record). uvicorn's access
    formatter reads the arguments one by one, so there each argument is cleaned; elsewhere the
    formatted message is cleaned (a secret may sit in the format string or in an argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if record.name == "uvicorn.access" and isinstance(record.args, tuple):
                record.args = tuple(_clean(a) for a in record.args)
            else:
                message = record.getMessage()
                cleaned = redact(message)
                if cleaned != message:
                    record.msg, record.args = cleaned, ()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
            if record.stack_info:
                record.stack_info = redact(record.stack_info)
        except Exception:  # a filter must never lose a log line
            pass
        return True


_FILTER = RedactFilter()
OWN_PREFIXES = ("luna", "edge", "worker", "uvicorn")


def _add(target) -> None:
    if not any(isinstance(f, RedactFilter) for f in target.filters):
        target.addFilter(_FILTER)


def install() -> None:
    """Put the filter on uvicorn's and LUNA's loggers and on the root logger's handlers (idempotent)."""
    names = {"uvicorn", "uvicorn.access", "uvicorn.error", "uvicorn.asgi", "luna", "edge", "worker"}
    names.update(n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in OWN_PREFIXES)
    for name in names:
        logger = logging.getLogger(name)
        _add(logger)
        for handler in logger.handlers:
            _add(handler)
    _add(logging.root)
    for handler in logging.root.handlers:
        _add(handler)
