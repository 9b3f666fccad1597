"""Hot reload: config changes reach a running mail pod without a restart or dropped sessions."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.mailpod_harness import MailpodProcess, fast_hash

pytestmark = pytest.mark.integration


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[MailpodProcess]:
    server = MailpodProcess(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def _rcpt_code(pod: MailpodProcess, client: smtplib.SMTP, address: str) -> int:
    client.rset()
    client.mail("c@remote.test")
    return client.rcpt(address)[0]


def _within(seconds: float, check: object) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if callable(check) and check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds}s")


def test_new_mailbox_is_live_within_two_seconds_on_an_open_session(pod: MailpodProcess) -> None:
    client = smtplib.SMTP("127.0.0.1", pod.ports["smtp"], timeout=10)
    client.ehlo("c.test")
    assert _rcpt_code(pod, client, "carol@example.com") == 550
    config = pod.config()
    config["mailboxes"].append({"address": "carol@example.com", "password_hash": fast_hash("c")})
    pod.write_config(config)
    # Both workers must see it: probe over fresh connections as well as the open one.
    elapsed = _within(2.0, lambda: _rcpt_code(pod, client, "carol@example.com") == 250)
    for _ in range(6):
        with smtplib.SMTP("127.0.0.1", pod.ports["smtp"], timeout=10) as fresh:
            fresh.ehlo("c.test")
            fresh.mail("c@remote.test")
            assert fresh.rcpt("carol@example.com")[0] == 250
    assert client.noop()[0] == 250  # the session that was open before the reload still works
    client.quit()
    print(f"\nnew mailbox live after {elapsed:.2f}s")


def test_broken_config_is_refused_and_the_old_one_kept(pod: MailpodProcess) -> None:
    config = pod.config()
    config["mailboxes"][0]["address"] = "not-an-address"
    pod.write_config(config)
    _within(3.0, lambda: "config reload refused" in pod.log())
    with smtplib.SMTP("127.0.0.1", pod.ports["smtp"], timeout=10) as client:
        client.ehlo("c.test")
        client.mail("c@remote.test")
        assert client.rcpt("alice@example.com")[0] == 250
    assert "mailboxes.0.address" in pod.log()


def test_renewed_certificate_is_served_to_new_connections(pod: MailpodProcess) -> None:
    import ssl

    def serial() -> int:
        with smtplib.SMTP("127.0.0.1", pod.ports["smtp"], timeout=10) as client:
            client.starttls(context=ssl.create_default_context(cafile=str(pod.ca_file)))
            der = client.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        from cryptography import x509

        return x509.load_der_x509_certificate(der).serial_number

    before = serial()
    renewed = pod.ca.issue_cert("mail.example.com", "localhost", "127.0.0.1")
    key_tmp, cert_tmp = pod.root / "key.new", pod.root / "cert.new"
    renewed.private_key_pem.write_to_path(str(key_tmp))
    renewed.cert_chain_pems[0].write_to_path(str(cert_tmp))
    key_tmp.replace(pod.key_file)
    cert_tmp.replace(pod.cert_file)
    elapsed = _within(5.0, lambda: all(serial() != before for _ in range(4)))
    print(f"\nnew certificate served after {elapsed:.2f}s")
