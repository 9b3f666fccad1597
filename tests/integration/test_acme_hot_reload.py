"""A renewed certificate reaches a running mail pod without a restart: the built-in ACME client
renews through Pebble + PowerDNS into the files the pod serves from, new handshakes
(`openssl s_client`) see the new serial within seconds, and sessions opened before keep working.
"""

from __future__ import annotations

import asyncio
import re
import select
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from letterbox.certs.acme import AcmeCertificates, AcmeRequest
from letterbox.certs.store import DirectorySecretStore
from tests.harness.pebble import Pebble
from tests.harness.powerdns import PowerDns
from tests.integration.mailpod_harness import MailpodProcess
from tests.integration.test_acme import VALIDITY_SECONDS, Clock, _zone

pytestmark = pytest.mark.integration

HOST = "mail.acme-reload.letterbox.test"
RELOAD_DEADLINE_SECONDS = 5.0


@pytest.fixture(scope="module")
def pebble(powerdns: PowerDns) -> Iterator[Pebble]:
    with Pebble(powerdns.nameserver, validity_seconds=VALIDITY_SECONDS) as ca:
        yield ca


def served_serial(port: int, starttls: str | None = "smtp") -> int:
    """The serial of the certificate a fresh `openssl s_client` handshake gets."""
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", HOST]
    if starttls:
        command += ["-starttls", starttls]
    done = subprocess.run(command, input=b"", capture_output=True, timeout=20, check=False)
    match = re.search(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", done.stdout, re.DOTALL
    )
    assert match, done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    return x509.load_pem_x509_certificate(match.group(0)).serial_number


class LiveSession:
    """An `openssl s_client -starttls smtp` session kept open across the renewal."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [
                "openssl",
                "s_client",
                "-quiet",
                "-crlf",
                "-starttls",
                "smtp",
                "-connect",
                f"127.0.0.1:{port}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def command(self, line: str, expect: bytes) -> bytes:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        received = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                chunk = bytes(self.proc.stdout.read1(4096))  # type: ignore[attr-defined]
                if not chunk:
                    break
                received += chunk
                if re.search(rb"(^|\n)" + expect + rb" ", received):
                    return received
        raise AssertionError(f"no {expect!r} after {line!r}: {received!r}")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


async def test_renewal_is_served_to_new_handshakes_while_sessions_continue(
    powerdns: PowerDns, pebble: Pebble, tmp_path: Path
) -> None:
    publisher = _zone(powerdns, "acme-reload.letterbox.test")
    store = DirectorySecretStore(tmp_path / "secrets")
    clock = Clock()
    certificates = AcmeCertificates(store, ca_bundle=str(pebble.ca_bundle), clock=clock)
    request = AcmeRequest("mail-tls", (HOST,), pebble.directory_url, "account")
    first = await certificates.ensure(request, publisher)
    assert first.ready, first.message

    (tmp_path / "pod").mkdir()
    pod = MailpodProcess(tmp_path / "pod")
    tls_dir = tmp_path / "secrets" / "mail-tls"
    pod.overrides["tls"] = {
        "cert_file": str(tls_dir / "tls.crt"),
        "key_file": str(tls_dir / "tls.key"),
    }
    pod.write_config()
    pod.start()
    live = LiveSession(pod.ports["smtp"])
    try:
        assert served_serial(pod.ports["smtp"]) == first.serial
        assert served_serial(pod.ports["imaps"], starttls=None) == first.serial
        live.command("EHLO live.test", b"250")

        assert first.renew_at is not None
        clock.at = first.renew_at + timedelta(seconds=1)
        renewed = await certificates.ensure(request, publisher)
        assert renewed.ready and renewed.serial != first.serial
        written = time.monotonic()
        # Both workers: several fresh handshakes in a row must all see the new serial.
        while any(served_serial(pod.ports["smtp"]) != renewed.serial for _ in range(4)):
            assert time.monotonic() - written < RELOAD_DEADLINE_SECONDS, pod.log()[-2000:]
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - written
        assert served_serial(pod.ports["submissions"], starttls=None) == renewed.serial
        assert served_serial(pod.ports["imap"], starttls="imap") == renewed.serial
        # The session that began under the old certificate goes on.
        live.command("NOOP", b"250")
        live.command("MAIL FROM:<someone@remote.test>", b"250")
        live.command("RCPT TO:<alice@example.com>", b"250")
        live.command("RSET", b"250")
        assert pod.proc is not None and pod.proc.poll() is None  # never restarted
        print(f"\nrenewed certificate served to new handshakes after {elapsed:.2f}s")
    finally:
        live.close()
        pod.stop()


def test_a_half_written_pair_is_never_served(tmp_path: Path) -> None:
    """The certificate replaced before its key: the pod keeps the old pair (handshakes keep
    working) and switches once the key matches."""
    pod = MailpodProcess(tmp_path).start()
    try:
        before = served_serial(pod.ports["smtp"])
        renewed = pod.ca.issue_cert("mail.example.com", "localhost", "127.0.0.1")
        staged = pod.root / "tls.crt.new"
        renewed.cert_chain_pems[0].write_to_path(str(staged))
        staged.replace(pod.cert_file)
        time.sleep(2.5)  # more than two polls with the mismatched pair in place
        for _ in range(4):
            assert served_serial(pod.ports["smtp"]) == before
        assert "tls certificate reload failed" in pod.log()
        staged = pod.root / "tls.key.new"
        renewed.private_key_pem.write_to_path(str(staged))
        staged.replace(pod.key_file)
        started = time.monotonic()
        while any(served_serial(pod.ports["smtp"]) == before for _ in range(4)):
            assert time.monotonic() - started < RELOAD_DEADLINE_SECONDS
            time.sleep(0.1)
    finally:
        pod.stop()
