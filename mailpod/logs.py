"""Logging set-up for the mail pod: JSON lines in pods, a readable format locally.

Callers log one line per event and pass context as `extra=` fields:

    log.info("message accepted", extra={"session": sid, "peer": ip, "sender": mail_from,
                                        "recipients": rcpts, "result": "accepted"})

A redaction filter sits on the handler, so nothing reaches the output without passing it:
fields whose names look like credentials are masked, and SASL payloads (`AUTH PLAIN <b64>`,
`AUTHENTICATE LOGIN <b64>`…) are masked in messages and string fields. It is a safeguard against
mistakes, not permission to log secrets: continuation lines of `AUTH LOGIN` (bare base64) and
IMAP `LOGIN user password` cannot be recognised reliably, so protocol code never logs raw lines.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from datetime import datetime
from typing import Any, TextIO

__all__ = ["REDACTED", "JsonFormatter", "RedactionFilter", "TextFormatter", "setup_logging"]

REDACTED = "[REDACTED]"

# Exact names, and substrings (so `api_token`, `password_hash` or `client_secret` are caught too;
# "auth" only exactly, as `auth_mechanism` is useful and harmless).
_SECRET_NAMES = frozenset({"auth", "authorization", "pass", "pwd", "cookie"})
_SECRET_PARTS = ("password", "passwd", "secret", "token", "credential")

# `AUTH <mechanism> <initial response>` (SMTP) and `<tag> AUTHENTICATE <mechanism> <response>`
# (IMAP SASL-IR). Over-masking a word in an unrelated message is an acceptable price.
_SASL = re.compile(r"(?i)\b(AUTH(?:ENTICATE)?\s+[A-Z0-9_-]+\s+)(\S+)")

# Everything a LogRecord carries by itself; the rest of its __dict__ came from `extra=`.
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",  # added in 3.12; listed so 3.11 and 3.12 agree
}


@functools.lru_cache(maxsize=1024)
def _is_secret(name: str) -> bool:
    # Cached: field names are few (those in the code, and the keys of logged dicts).
    lowered = name.lower()
    return lowered in _SECRET_NAMES or any(part in lowered for part in _SECRET_PARTS)


def _mask_text(text: str) -> str:
    # search() first: most strings hold no SASL payload, and sub() costs more even then.
    if _SASL.search(text) is None:
        return text
    return _SASL.sub(rf"\g<1>{REDACTED}", text)


_SEQUENCES = (list, tuple, set, frozenset)
_PLAIN = (int, float, bool, type(None))


def _redact(value: Any, depth: int = 0) -> Any:
    """Mask secret-named keys and SASL payloads inside an extra field's value."""
    if isinstance(value, str):
        return _mask_text(value)
    if isinstance(value, _PLAIN):
        return value
    if depth > 8:  # a self-referencing structure must not hang logging
        return REDACTED
    if isinstance(value, dict):
        return {
            key: REDACTED if _is_secret(str(key)) else _redact(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, _SEQUENCES):
        return [_redact(item, depth + 1) for item in value]
    return value


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller passed with `extra=`."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _RECORD_FIELDS and key[:1] != "_"
    }


class RedactionFilter(logging.Filter):
    """Masks credentials in a record in place; never drops the record itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad %-args: still log something, without the broken formatting
            message = f"{record.msg!s} (unformattable log arguments)"
        # The formatted text replaces msg/args so no handler formats the raw arguments again.
        record.msg = _mask_text(message)
        record.args = None
        for key, value in extra_fields(record).items():
            redacted = REDACTED if _is_secret(key) else _redact(value)
            if redacted is not value:
                setattr(record, key, redacted)
        return True


_second: tuple[int, str] = (-1, "")  # the last second formatted, and its text


def _timestamp(record: logging.LogRecord) -> str:
    global _second
    seconds = int(record.created)
    cached, text = _second
    if seconds != cached:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second = (seconds, text)
    return f"{text}.{int(record.msecs):03d}Z"


# default=str: an extra that JSON cannot encode (Path, datetime, an object) still logs.
_to_json = json.JSONEncoder(ensure_ascii=False, default=str).encode


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the caller's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)  # an extra can never overwrite the fixed fields
        if record.exc_info:
            entry["exc"] = _mask_text(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = _mask_text(self.formatStack(record.stack_info))
        return _to_json(entry)


class TextFormatter(logging.Formatter):
    """Local mode: `12:00:00 INFO mailpod.smtp: message accepted session=ab12 peer=…`."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{moment} {record.levelname:<7} {record.name}: {record.getMessage()}"
        for key, value in extra_fields(record).items():
            if not isinstance(value, str):
                text = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
            elif not value or any(char.isspace() or char in '"=' for char in value):
                text = json.dumps(value, ensure_ascii=False)  # quoted, so key=value stays parseable
            else:
                text = value
            line += f" {key}={text}"
        if record.exc_info:
            line += "\n" + _mask_text(self.formatException(record.exc_info))
        if record.stack_info:
            line += "\n" + _mask_text(self.formatStack(record.stack_info))
        return line


class _MailpodHandler(logging.StreamHandler[TextIO]):
    """Marks the handler we installed, so a second set-up replaces it instead of adding one."""


def setup_logging(json_output: bool, level: str = "INFO") -> None:
    """Send all logs to stderr, as JSON lines (pods) or human text (local mode)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _MailpodHandler):
            root.removeHandler(handler)
            handler.close()
    handler = _MailpodHandler(sys.stderr)
    # On the handler, not a logger: logger filters are skipped for records propagated from
    # child loggers, handler filters see every record this handler writes.
    handler.addFilter(RedactionFilter())
    handler.setFormatter(JsonFormatter() if json_output else TextFormatter())
    root.addHandler(handler)
    root.setLevel(numeric)
