from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from mailpod.logs import REDACTED, JsonFormatter, RedactionFilter, setup_logging

PASSWORD = "hunter2-Sup3rSecret"
PLAIN = base64.b64encode(f"\0alice@example.com\0{PASSWORD}".encode()).decode()
LOGIN = base64.b64encode(PASSWORD.encode()).decode()

log = logging.getLogger("mailpod.test")


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    err = capsys.readouterr().err
    return [json.loads(line) for line in err.splitlines()]


def assert_no_secret(text: str) -> None:
    for secret in (PASSWORD, PLAIN, LOGIN):
        assert secret not in text


def test_json_line_has_fixed_fields_and_extras(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(json_output=True)
    log.info(
        "message %s",
        "accepted",
        extra={
            "session": "ab12",
            "peer": "192.0.2.1",
            "sender": "bob@example.org",
            "recipients": ["alice@example.com", "carol@example.com"],
            "result": "accepted",
        },
    )
    [entry] = json_lines(capsys)
    assert entry == {
        "ts": entry["ts"],
        "level": "INFO",
        "logger": "mailpod.test",
        "msg": "message accepted",
        "session": "ab12",
        "peer": "192.0.2.1",
        "sender": "bob@example.org",
        "recipients": ["alice@example.com", "carol@example.com"],
        "result": "accepted",
    }
    # RFC 3339, UTC, with a Z.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
    assert datetime.fromisoformat(entry["ts"]).utcoffset() is not None


def test_one_line_per_record_even_with_newlines_and_tracebacks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging(json_output=True)
    log.warning("two\nlines")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed", extra={"session": "s1"})
    first, second = json_lines(capsys)
    assert first["msg"] == "two\nlines"
    assert second["level"] == "ERROR"
    assert "RuntimeError: boom" in second["exc"]
    assert second["session"] == "s1"


def test_level_filters_and_repeated_setup_does_not_duplicate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging(json_output=True, level="warning")
    setup_logging(json_output=True, level="WARNING")
    log.info("hidden")
    log.warning("shown")
    assert [entry["msg"] for entry in json_lines(capsys)] == ["shown"]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging(json_output=True, level="LOUD")


def test_unencodable_extras_still_log(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(json_output=True)
    log.info("path", extra={"file": Path("/var/mail"), "when": datetime(2024, 1, 1)})
    [entry] = json_lines(capsys)
    assert entry["file"] == "/var/mail"
    assert entry["when"] == "2024-01-01 00:00:00"


def test_bad_arguments_still_log() -> None:
    # Directly on the filter and formatter: pytest's own capture handler, which runs first,
    # would raise on the bad arguments.
    record = log.makeRecord(log.name, logging.INFO, __file__, 1, "broken %d", ("x",), None)
    assert RedactionFilter().filter(record)
    assert json.loads(JsonFormatter().format(record))["msg"].startswith("broken %d")


@pytest.mark.parametrize(
    "field",
    [
        "password",
        "secret",
        "auth",
        "authorization",
        "token",
        "credentials",
        "Password",
        "api_token",
        "password_hash",
        "client_secret",
    ],
)
@pytest.mark.parametrize("json_output", [True, False])
def test_secret_fields_are_masked(
    capsys: pytest.CaptureFixture[str], field: str, json_output: bool
) -> None:
    setup_logging(json_output=json_output)
    log.info("login failed", extra={"user": "alice@example.com", field: PASSWORD})
    err = capsys.readouterr().err
    assert_no_secret(err)
    assert "alice@example.com" in err  # the useful context stays
    if json_output:
        entry = json.loads(err)
        assert entry[field] == REDACTED
    else:
        assert f"{field}={REDACTED}" in err


def test_secrets_nested_in_fields_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(json_output=True)
    log.info(
        "request",
        extra={"details": {"user": "alice", "password": PASSWORD, "inner": [{"token": LOGIN}]}},
    )
    err = capsys.readouterr().err
    assert_no_secret(err)
    assert json.loads(err)["details"] == {
        "user": "alice",
        "password": REDACTED,
        "inner": [{"token": REDACTED}],
    }


@pytest.mark.parametrize(
    "line",
    [
        f"AUTH PLAIN {PLAIN}",
        f"auth plain {PLAIN}",
        f"AUTH LOGIN {LOGIN}",
        f"a1 AUTHENTICATE PLAIN {PLAIN}",
    ],
)
@pytest.mark.parametrize("json_output", [True, False])
def test_sasl_payloads_are_masked_everywhere(
    capsys: pytest.CaptureFixture[str], line: str, json_output: bool
) -> None:
    setup_logging(json_output=json_output)
    log.info("client sent %s", line)  # in the formatted message
    log.info(f"client sent {line}")  # in the message itself
    log.info("command", extra={"command": line})  # in a string field
    try:
        raise ValueError(f"cannot parse {line!r}")
    except ValueError:
        log.exception("parse error")  # in a traceback
    err = capsys.readouterr().err
    assert_no_secret(err)
    assert err.count(REDACTED) >= 4
    assert re.search(r"(?i)AUTH(ENTICATE)? (PLAIN|LOGIN)", err)  # the mechanism is still seen


def test_text_format_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(json_output=False, level="DEBUG")
    log.debug(
        "message accepted",
        extra={"session": "ab12", "recipients": ["a@example.com"], "note": "two words"},
    )
    err = capsys.readouterr().err.rstrip("\n")
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d DEBUG   mailpod\.test: message accepted session=ab12 "
        r'recipients=\["a@example\.com"\] note="two words"',
        err,
    )
