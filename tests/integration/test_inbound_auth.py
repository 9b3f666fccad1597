"""Inbound SPF, DKIM, DMARC, ARC and abuse defences, end to end: a real mailpod process whose
resolver asks a real PowerDNS, messages sent by swaks (and raw sockets where timing matters).

Zones (unique to this module): inb-good.test publishes SPF for 127.0.0.1, a DKIM key and
DMARC p=reject; inb-forged.test authorises only 192.0.2.1 with p=reject; inb-quar.test has
p=quarantine; inb-other.test passes SPF and DKIM but aligns with nobody else; inb-list.test
and inb-list2.test are mailing lists that seal with ARC (only the first is trusted).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailpod.config import DkimAlgorithm
from mailpod.dkim import DkimSigner, key_record, sign
from tests.harness.powerdns import PowerDns
from tests.integration.mailpod_harness import MailpodProcess, SmtpLines, proxy_v2_header

pytestmark = pytest.mark.integration

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()
LIST_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
LIST_PEM = LIST_KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.TraditionalOpenSSL,
    serialization.NoEncryption(),
)


def _txt(value: str) -> str:
    """A TXT record's zone-file form, split into strings of at most 255 octets."""
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


def _zone(pdns: PowerDns, zone: str, spf: str, dmarc: str | None, keys: dict[str, str]) -> None:
    rrsets: list[tuple[str, str, int, list[str]]] = [(zone, "TXT", 300, [_txt(spf)])]
    if dmarc is not None:
        rrsets.append((f"_dmarc.{zone}", "TXT", 300, [_txt(dmarc)]))
    for selector, record in keys.items():
        rrsets.append((f"{selector}._domainkey.{zone}", "TXT", 300, [_txt(record)]))
    pdns.create_zone(zone, rrsets)


@pytest.fixture(scope="module")
def zones(powerdns: PowerDns) -> PowerDns:
    rsa_record, ed_record = key_record(RSA_KEY), key_record(ED_KEY)
    list_record = key_record(LIST_KEY)
    _zone(
        powerdns,
        "inb-good.test",
        "v=spf1 ip4:127.0.0.1 -all",
        "v=DMARC1; p=reject",
        {"r1": rsa_record, "e1": ed_record},
    )
    _zone(powerdns, "inb-forged.test", "v=spf1 ip4:192.0.2.1 -all", "v=DMARC1; p=reject", {})
    _zone(
        powerdns,
        "inb-quar.test",
        "v=spf1 -all",
        "v=DMARC1; p=quarantine; rua=mailto:r@inb-quar.test",
        {},
    )
    _zone(powerdns, "inb-other.test", "v=spf1 ip4:127.0.0.0/8 -all", None, {"r1": rsa_record})
    _zone(powerdns, "inb-list.test", "v=spf1 ip4:127.0.0.1 -all", None, {"arc": list_record})
    _zone(powerdns, "inb-list2.test", "v=spf1 ip4:127.0.0.1 -all", None, {"arc": list_record})
    # DNSBL: 192.0.2.99 listed; DNSWL: 198.51.100.7 allowed (outweighs its listing).
    powerdns.create_zone(
        "inb-bl.test",
        [
            ("99.2.0.192.inb-bl.test", "A", 60, ["127.0.0.2"]),
            ("7.100.51.198.inb-bl.test", "A", 60, ["127.0.0.2"]),
            ("7.100.51.198.inb-wl.inb-bl.test", "A", 60, ["127.0.0.5"]),
        ],
    )
    return powerdns


def _checks(pdns_server: str, **checks: Any) -> dict[str, Any]:
    return {
        "resolver": {"nameservers": [pdns_server], "timeout_seconds": 2.0},
        "checks": {"trusted_arc_sealers": ["inb-list.test"], "exempt_networks": [], **checks},
    }


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory, zones: PowerDns) -> Iterator[MailpodProcess]:
    root = Path(tmp_path_factory.mktemp("inbound"))
    server = MailpodProcess(root, overrides=_checks(zones.nameserver)).start()
    try:
        yield server
    finally:
        server.stop()


def swaks(pod: MailpodProcess, *args: str, port: str = "smtp") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "swaks",
            "--server",
            "127.0.0.1",
            "--port",
            str(pod.ports[port]),
            "--timeout",
            "20",
            "--helo",
            "client.inb-good.test",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _message(sender: str, subject: str, extra: str = "", body: str = "Hello.\r\n") -> bytes:
    return (
        f"{extra}From: <{sender}>\r\nTo: <alice@example.com>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@test>\r\n\r\n{body}"
    ).encode()


def _send_file(pod: MailpodProcess, tmp_path: Path, mail_from: str, data: bytes) -> str:
    path = tmp_path / "message.eml"
    path.write_bytes(data)
    done = swaks(pod, "--from", mail_from, "--to", "alice@example.com", "--data", f"@{path}")
    return done.stdout + done.stderr


def _stored(pod: MailpodProcess, subject: str, folder: str = "") -> bytes:
    maildir = pod.maildir("alice@example.com", folder)
    for sub in ("new", "cur"):
        directory = maildir / sub
        for file in directory.iterdir() if directory.exists() else []:
            data = file.read_bytes()
            if f"Subject: {subject}\r\n".encode() in data:
                return data
    raise AssertionError(f"{subject!r} not stored in {folder or 'INBOX'}")


def _auth_results(stored: bytes) -> str:
    header = stored.split(b"\r\n\r\n")[0].decode()
    start = header.index("Authentication-Results: mail.example.com;")
    end = header.find("\r\n", header.find("dmarc=", start))
    return " ".join(header[start:end].split())


def test_aligned_and_signed_message_passes_everything(pod: MailpodProcess, tmp_path: Path) -> None:
    data = _message("ceo@inb-good.test", "aligned one")
    signers = [
        DkimSigner("inb-good.test", "r1", DkimAlgorithm.RSA_SHA256, RSA_KEY),
        DkimSigner("inb-good.test", "e1", DkimAlgorithm.ED25519_SHA256, ED_KEY),
    ]
    signed = b"".join(sign(data, signers)) + data
    out = _send_file(pod, tmp_path, "bounce@inb-good.test", signed)
    assert "250 2.0.0" in out, out
    results = _auth_results(_stored(pod, "aligned one"))
    assert "spf=pass smtp.mailfrom=bounce@inb-good.test" in results
    assert "dkim=pass header.d=inb-good.test header.s=r1 header.a=rsa-sha256" in results
    assert "dkim=pass header.d=inb-good.test header.s=e1 header.a=ed25519-sha256" in results
    assert "dmarc=pass (p=reject dis=none) header.from=inb-good.test" in results


def test_forged_sender_is_rejected_at_end_of_data(pod: MailpodProcess, tmp_path: Path) -> None:
    out = _send_file(
        pod, tmp_path, "ceo@inb-forged.test", _message("ceo@inb-forged.test", "forged")
    )
    assert "550 5.7.1 Rejected by the DMARC policy of inb-forged.test" in out, out
    with pytest.raises(AssertionError):
        _stored(pod, "forged")
    entries = [
        json.loads(line)
        for line in (pod.mail_root / ".inbound" / "dmarc-reports.jsonl").read_text().splitlines()
    ]
    forged = [e for e in entries if e["header_from"] == "inb-forged.test"]
    assert forged and forged[-1]["disposition"] == "reject"
    assert forged[-1]["spf"] == {"domain": "inb-forged.test", "result": "fail"}


def test_misaligned_message_goes_to_junk(pod: MailpodProcess, tmp_path: Path) -> None:
    # SPF and DKIM both pass, but for inb-other.test, not the From: domain inb-quar.test.
    data = _message("news@inb-quar.test", "misaligned")
    signer = DkimSigner("inb-other.test", "r1", DkimAlgorithm.RSA_SHA256, RSA_KEY)
    out = _send_file(pod, tmp_path, "bounce@inb-other.test", b"".join(sign(data, [signer])) + data)
    assert "250 2.0.0" in out, out
    stored = _stored(pod, "misaligned", folder="Junk")
    results = _auth_results(stored)
    assert "spf=pass" in results and "dkim=pass header.d=inb-other.test" in results
    assert "dmarc=fail (p=quarantine dis=quarantine) header.from=inb-quar.test" in results
    report = (pod.mail_root / ".inbound" / "dmarc-reports.jsonl").read_text()
    assert '"rua":["mailto:r@inb-quar.test"]' in report


def test_broken_dkim_signature_fails_and_dmarc_rejects(pod: MailpodProcess, tmp_path: Path) -> None:
    data = _message("ceo@inb-good.test", "broken", body="Pay invoice 1.\r\n")
    signer = DkimSigner("inb-good.test", "r1", DkimAlgorithm.RSA_SHA256, RSA_KEY)
    tampered = b"".join(sign(data, [signer])) + data.replace(b"invoice 1", b"invoice 9")
    out = _send_file(pod, tmp_path, "bounce@inb-other.test", tampered)
    assert "550 5.7.1" in out, out
    # The same tampering with an aligned, SPF-authorised envelope: DMARC passes on SPF.
    tampered = tampered.replace(b"Subject: broken", b"Subject: broken but spf")
    out = _send_file(pod, tmp_path, "bounce@inb-good.test", tampered)
    assert "250 2.0.0" in out, out
    results = _auth_results(_stored(pod, "broken but spf"))
    assert "dkim=fail" in results and "dmarc=pass" in results


def test_forged_authentication_results_are_removed(pod: MailpodProcess, tmp_path: Path) -> None:
    forged = (
        "Authentication-Results: mail.example.com;\r\n\tdkim=pass header.d=inb-forged.test\r\n"
        "Authentication-Results: other.example.net; spf=pass smtp.mailfrom=x@y.test\r\n"
    )
    data = _message("bounce@inb-other.test", "ar forged", extra=forged)
    out = _send_file(pod, tmp_path, "bounce@inb-other.test", data)
    assert "250 2.0.0" in out, out
    stored = _stored(pod, "ar forged")
    assert stored.count(b"Authentication-Results: mail.example.com;") == 1  # ours only
    assert b"header.d=inb-forged.test" not in stored
    assert b"Authentication-Results: other.example.net; spf=pass" in stored
    # Everything after the removed field arrives byte for byte (swaks adds a final CRLF).
    rest = data.split(b"Authentication-Results: other", 1)[1].split(b"\r\n", 1)[1]
    assert stored.endswith(rest + b"\r\n")


def _arc_sealed(sealer: str, subject: str) -> bytes:
    """A message from inb-good.test whose DKIM a list broke, then sealed by the list."""
    original = _message("ceo@inb-good.test", subject)
    signer = DkimSigner("inb-good.test", "r1", DkimAlgorithm.RSA_SHA256, RSA_KEY)
    signed = b"".join(sign(original, [signer])) + original
    received = (
        f"Authentication-Results: {sealer}; dkim=pass header.d=inb-good.test;"
        " spf=pass smtp.mailfrom=ceo@inb-good.test; dmarc=pass header.from=inb-good.test\r\n"
    ).encode()
    modified = received + signed.replace(
        f"Subject: {subject}".encode(), f"Subject: [list] {subject}".encode()
    ).replace(b"Hello.", b"Hello.\r\n-- \r\nlist footer")
    seal = dkimpy.arc_sign(modified, b"arc", sealer.encode(), LIST_PEM, sealer.encode())
    return b"".join(seal) + modified


def test_trusted_arc_sealer_overrides_a_broken_dkim(pod: MailpodProcess, tmp_path: Path) -> None:
    out = _send_file(pod, tmp_path, "list@inb-list.test", _arc_sealed("inb-list.test", "arc ok"))
    assert "250 2.0.0" in out, out
    results = _auth_results(_stored(pod, "[list] arc ok"))
    assert "arc=pass (sealer inb-list.test)" in results
    assert "dmarc=fail (p=reject dis=none)" in results
    out = _send_file(pod, tmp_path, "list@inb-list2.test", _arc_sealed("inb-list2.test", "arc 2"))
    assert "550 5.7.1" in out, out  # a valid chain, but not from a sealer we trust


def test_forged_helo_is_refused(pod: MailpodProcess) -> None:
    for helo in ("mail.example.com", "[192.0.2.1]", "bad_name!"):
        done = subprocess.run(
            [
                "swaks",
                "--server",
                "127.0.0.1",
                "--port",
                str(pod.ports["smtp"]),
                "--helo",
                helo,
                "--from",
                "a@inb-other.test",
                "--to",
                "alice@example.com",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "550 5.7.1 HELO/EHLO name rejected" in done.stdout, (helo, done.stdout)


# --- abuse defences behind a PROXY-protocol load balancer ------------------------------------


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory, zones: PowerDns) -> Iterator[MailpodProcess]:
    """One worker, PROXY v2 on port 25 from a trusted 127.0.0.1."""
    root = Path(tmp_path_factory.mktemp("proxied"))
    overrides = _checks(
        zones.nameserver,
        dnsbl=[
            {"zone": "inb-bl.test", "weight": 2},
            {"zone": "inb-wl.inb-bl.test", "weight": -2, "answers": ["127.0.0.5"]},
        ],
        dnsbl_threshold=2,
        rate_limits={
            "connections_per_ip": {"count": 3, "seconds": 1.5},
            "connections_per_network": None,
            "messages_per_ip": {"count": 2, "seconds": 1.5},
            "messages_per_network": None,
        },
        greylisting={"enabled": True, "delay_seconds": 1.0, "retry_window_seconds": 30},
    )
    server = MailpodProcess(root, workers=1, overrides=overrides).expect_proxy(
        "smtp", ["127.0.0.1/32"]
    )
    server.start(probe=lambda: _proxied_banner(server, "203.0.113.250").startswith(b"220"))
    try:
        yield server
    finally:
        server.stop()


def _proxied_banner(pod: MailpodProcess, source: str) -> bytes:
    with socket.create_connection(("127.0.0.1", pod.ports["smtp"]), timeout=5) as sock:
        sock.sendall(proxy_v2_header(source))
        return sock.recv(200)


class Session(SmtpLines):
    """A raw SMTP session through the PROXY header, one command at a time."""

    def __init__(self, pod: MailpodProcess, source: str) -> None:
        sock = socket.create_connection(("127.0.0.1", pod.ports["smtp"]), timeout=20)
        sock.sendall(proxy_v2_header(source))
        super().__init__(sock)


def _transaction(session: Session, sender: str, rcpt: str = "alice@example.com") -> list[str]:
    replies = [
        session.command("EHLO client.inb-other.test"),
        session.command(f"MAIL FROM:<{sender}>"),
    ]
    if replies[-1].startswith("250"):
        replies.append(session.command(f"RCPT TO:<{rcpt}>"))
    session.command("RSET")
    return replies


def test_dnsbl_listed_client_is_refused_by_its_real_ip(proxied: MailpodProcess) -> None:
    listed = Session(proxied, "192.0.2.99")
    assert _transaction(listed, "a@inb-other.test")[1].startswith(
        "554 5.7.1 Service unavailable; client [192.0.2.99] is listed by inb-bl.test"
    )
    listed.close()
    allowed = Session(proxied, "198.51.100.7")  # listed, but the allow list outweighs it
    assert _transaction(allowed, "a@inb-other.test")[1].startswith("250")
    allowed.close()
    clean = Session(proxied, "192.0.2.98")
    assert _transaction(clean, "a@inb-other.test")[1].startswith("250")
    clean.close()


def test_connection_rate_limit_hits_and_recovers(proxied: MailpodProcess) -> None:
    banners = [_proxied_banner(proxied, "203.0.113.5") for _ in range(4)]
    assert all(b.startswith(b"220") for b in banners[:3]), banners
    assert banners[3] == b""  # the 4th PROXY connection is closed at once
    assert _proxied_banner(proxied, "203.0.113.6").startswith(b"220")  # other clients unaffected
    time.sleep(1.0)  # 3 per 1.5 s: one token back after 0.5 s
    assert _proxied_banner(proxied, "203.0.113.5").startswith(b"220")


def test_message_rate_limit_hits_and_recovers(proxied: MailpodProcess) -> None:
    session = Session(proxied, "203.0.113.20")
    mails = [_transaction(session, "a@inb-other.test")[1] for _ in range(3)]
    assert mails[0].startswith("250") and mails[1].startswith("250")
    assert mails[2].startswith("450 4.7.1 Too many messages"), mails
    time.sleep(0.9)
    assert _transaction(session, "a@inb-other.test")[1].startswith("250")
    session.close()


def test_greylisting_refuses_once_then_lets_the_retry_in(proxied: MailpodProcess) -> None:
    # A retry may come from another address of the sender's /24 (the triplet's network); each
    # attempt uses its own address so the message rate limit stays out of the way.
    def attempt(host: int) -> str:
        session = Session(proxied, f"198.18.0.{host}")
        try:
            return _transaction(session, "grey@inb-other.test")[2]
        finally:
            session.close()

    assert attempt(1).startswith("451 4.7.1 Greylisted")
    assert attempt(2).startswith("451")  # too soon
    time.sleep(1.1)
    assert attempt(3).startswith("250")
    assert attempt(4).startswith("250")  # now known
    assert Session(proxied, "198.19.0.1").command("EHLO x.test").startswith("250")


# --- a dead DNS server -----------------------------------------------------------------------


def test_dead_dns_server_never_stalls_other_sessions(tmp_path: Path, blackhole: str) -> None:
    overrides = {
        "resolver": {"nameservers": [blackhole], "timeout_seconds": 1.5},
        "checks": {"exempt_networks": [], "timeout_seconds": 4.0},
    }
    pod = MailpodProcess(tmp_path, workers=1, overrides=overrides).start()
    try:
        stuck = socket.create_connection(("127.0.0.1", pod.ports["smtp"]), timeout=20)
        reader = stuck.makefile("rb")
        reader.readline()
        stuck.sendall(
            b"EHLO client.inb-dead.test\r\nMAIL FROM:<a@inb-dead.test>\r\n"
            b"RCPT TO:<alice@example.com>\r\nDATA\r\n"
        )
        replies = [reader.readline()]
        while replies[-1][:1] == b"2":  # EHLO lines, MAIL and RCPT: up to DATA's 354
            replies.append(reader.readline())
        assert replies[-1].startswith(b"354"), replies
        started = time.monotonic()
        stuck.sendall(b"From: a@inb-dead.test\r\nSubject: dead dns\r\n\r\nx\r\n.\r\n")
        # Meanwhile another session gets every reply at once, on the same single worker.
        other = socket.create_connection(("127.0.0.1", pod.ports["smtp"]), timeout=20)
        other_reader = other.makefile("rb")
        assert other_reader.readline().startswith(b"220")
        other.sendall(b"EHLO client2.inb-dead.test\r\nMAIL FROM:<b@inb-dead.test>\r\n")
        while not other_reader.readline().startswith(b"250 "):
            pass
        assert other_reader.readline().startswith(b"250 2.1.0")
        other_done = time.monotonic() - started
        final = reader.readline()
        stuck_done = time.monotonic() - started
        assert other_done < 0.5, other_done
        # SPF, DKIM-free DMARC lookups time out: delivered, marked temperror, within the bound.
        assert final.startswith(b"250 2.0.0"), final
        assert 1.0 < stuck_done < 6.0, stuck_done
        stored = _stored(pod, "dead dns")
        assert b"spf=temperror" in stored and b"dmarc=temperror" in stored
        other.close()
        stuck.close()
    finally:
        pod.stop()
