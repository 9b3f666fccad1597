"""Resolver settings follow a config reload: a real `mailpod run` (two workers) first asks a DNS
server that never answers, then, after only its config file changed, the real PowerDNS. No
restart in between."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

import pytest

from tests.harness.powerdns import PowerDns
from tests.integration.mailpod_harness import MailpodProcess

pytestmark = pytest.mark.integration

ZONE = "rl-reload.test"


def _send(pod: MailpodProcess, subject: str) -> None:
    message = (
        f"From: <a@{ZONE}>\r\nTo: <alice@example.com>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@{ZONE}>\r\n\r\nHello.\r\n"
    )
    with smtplib.SMTP("127.0.0.1", pod.ports["smtp"], local_hostname=f"mx.{ZONE}") as client:
        client.sendmail(f"a@{ZONE}", ["alice@example.com"], message.encode())


def _spf_result(pod: MailpodProcess, subject: str) -> str:
    for data in pod.messages("alice@example.com"):
        head = data.split(b"\r\n\r\n")[0].decode()
        if f"Subject: {subject}\r\n" in head:
            field = head.split("Authentication-Results:", 1)[1]
            return field.split("spf=", 1)[1].split()[0]
    raise AssertionError(f"{subject!r} not stored")


def test_new_nameservers_apply_on_reload(
    tmp_path: Path, powerdns: PowerDns, blackhole: str
) -> None:
    powerdns.create_zone(ZONE, [(ZONE, "TXT", 300, ['"v=spf1 ip4:127.0.0.1 -all"'])])
    resolver = {"nameservers": [blackhole], "timeout_seconds": 0.5}
    overrides = {"resolver": resolver, "checks": {"exempt_networks": [], "dmarc": False}}
    pod = MailpodProcess(tmp_path, workers=2, overrides=overrides).start()
    try:
        _send(pod, "before reload")
        assert _spf_result(pod, "before reload") == "temperror"
        config = pod.config()
        config["resolver"] = {"nameservers": [powerdns.nameserver], "timeout_seconds": 2.0}
        pod.write_config(config)
        # Each worker polls its config file every second and logs the swap.
        deadline = time.monotonic() + 20
        while pod.log().count('"config reloaded"') < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pod.log().count('"config reloaded"') == 2, pod.log()
        # Several messages, so both workers are very likely to serve one.
        for n in range(4):
            _send(pod, f"after reload {n}")
        assert [_spf_result(pod, f"after reload {n}") for n in range(4)] == ["pass"] * 4
        assert "resolver settings applied" in pod.log()
    finally:
        pod.stop()
