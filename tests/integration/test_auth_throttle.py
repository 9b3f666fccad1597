"""Failed logins are throttled and then locked out, per client address and account."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

import pytest

from tests.integration.mailpod_harness import PASSWORDS, MailpodProcess

pytestmark = pytest.mark.integration


def _attempt(pod: MailpodProcess, password: str) -> tuple[int, float]:
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", pod.ports["submission"], timeout=30) as client:
        client.starttls(context=pod.client_context())
        client.ehlo()
        # One mechanism per attempt: smtplib's login() would try PLAIN and then LOGIN.
        client.user, client.password = "alice@example.com", password
        try:
            code, _ = client.auth("PLAIN", client.auth_plain)
        except smtplib.SMTPResponseException as error:
            code = error.smtp_code
        return code, time.monotonic() - started


def test_failed_logins_slow_down_then_lock_out(tmp_path: Path) -> None:
    pod = MailpodProcess(tmp_path, workers=1)  # throttle state lives in each worker
    config = pod.config()
    config["limits"].update({"auth_failures_before_lockout": 3, "auth_lockout_seconds": 60})
    pod.write_config(config)
    pod.start()
    try:
        results = [_attempt(pod, "wrong") for _ in range(3)]
        assert [code for code, _ in results] == [535, 535, 535]
        assert results[2][1] > results[0][1] + 0.5  # later failures wait longer
        code, elapsed = _attempt(pod, "wrong")
        assert code == 454  # locked out: answered at once, no password check
        assert elapsed < 1.0
        # Even the right password is refused during the lockout.
        assert _attempt(pod, PASSWORDS["alice@example.com"])[0] == 454
        assert PASSWORDS["alice@example.com"] not in pod.log()
    finally:
        pod.stop()
