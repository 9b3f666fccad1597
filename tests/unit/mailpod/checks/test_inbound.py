"""The end-of-DATA combination (mailpod.checks.inbound) over zone data: the RFC 8463 message's
Ed25519 signature through the resolver, l= signatures not trusted for DMARC, and the DMARC
disposition under policy switches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailpod.checks.inbound import InboundChecker
from mailpod.config import MailpodConfig
from mailpod.dkim import key_record, parse_key_record
from mailpod.errors import SmtpError
from tests.unit.mailpod.checks.zonedata import ZoneResolver
from tests.unit.mailpod.test_dkim import RFC_8463_A3_ED25519, RFC_ED25519_RECORD, RFC_MESSAGE

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
ZONE: dict[str, Any] = {
    "brisbane._domainkey.football.example.com": [{"TXT": RFC_ED25519_RECORD}],
    "football.example.com": [{"TXT": "v=spf1 -all"}],
    "s1._domainkey.bank.test": [{"TXT": key_record(KEY)}],
    "_dmarc.bank.test": [{"TXT": "v=DMARC1; p=reject"}],
    "_dmarc.shop.test": [{"TXT": "v=DMARC1; p=quarantine"}],
}
MESSAGE = b"From: <pay@bank.test>\r\nTo: <alice@example.com>\r\nSubject: pay\r\n\r\nPay 10.\r\n"


def checker(tmp_path: Path, **checks: Any) -> InboundChecker:
    config = MailpodConfig.model_validate(
        {
            "hostname": "mail.example.com",
            "listeners": [{"kind": "smtp", "port": 25}],
            "domains": ["example.com"],
            "storage": {"mail_root": str(tmp_path / "mail"), "queue_dir": str(tmp_path / "q")},
            "checks": {"exempt_networks": [], **checks},
        }
    )
    return InboundChecker(lambda: config, ZoneResolver(ZONE))


async def test_rfc8463_ed25519_message_passes_dkim(tmp_path: Path) -> None:
    inbound = checker(tmp_path)
    tx = await inbound.mail("192.0.2.1", "mx.football.example.com", "joe@football.example.com")
    outcome = await inbound.data(tx, RFC_8463_A3_ED25519 + RFC_MESSAGE)
    assert outcome.header is not None
    assert (
        "dkim=pass header.d=football.example.com header.s=brisbane header.a=ed25519-sha256"
        in outcome.header
    )
    assert "spf=fail smtp.mailfrom=joe@football.example.com" in outcome.header
    assert "dmarc=none header.from=football.example.com" in outcome.header
    assert outcome.folder == "" and outcome.data == RFC_8463_A3_ED25519 + RFC_MESSAGE


async def test_body_length_signature_does_not_count_for_dmarc(tmp_path: Path) -> None:
    signature = dkimpy.sign(MESSAGE, b"s1", b"bank.test", PEM, length=True)
    inbound = checker(tmp_path)
    tx = await inbound.mail("192.0.2.1", "mx.bank.test", "pay@bank.test")
    outcome = await inbound.data(tx, signature + MESSAGE)  # nothing appended: a full pass
    assert outcome.header is not None and "dkim=pass header.d=bank.test" in outcome.header
    assert "dmarc=pass" in outcome.header
    appended = signature + MESSAGE + b"Click http://evil.test/\r\n"
    tx = await inbound.mail("192.0.2.1", "mx.bank.test", "pay@bank.test")
    with pytest.raises(SmtpError) as refused:
        await inbound.data(tx, appended)
    assert refused.value.reply() == "550 5.7.1 Rejected by the DMARC policy of bank.test"


async def test_quarantine_and_not_enforced(tmp_path: Path) -> None:
    forged = MESSAGE.replace(b"bank.test", b"shop.test")
    inbound = checker(tmp_path)
    tx = await inbound.mail("192.0.2.1", "mx.elsewhere.test", "x@elsewhere.test")
    outcome = await inbound.data(tx, forged)
    assert outcome.folder == "Junk" and outcome.summary["disposition"] == "quarantine"
    relaxed = checker(tmp_path, dmarc_enforce=False)
    tx = await relaxed.mail("192.0.2.1", "mx.elsewhere.test", "x@elsewhere.test")
    outcome = await relaxed.data(tx, MESSAGE)
    assert outcome.folder == "" and outcome.header is not None
    assert "dmarc=fail (p=reject dis=none)" in outcome.header
    lines = (tmp_path / "mail" / ".inbound" / "dmarc-reports.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"override":"local_policy (not enforced)"' in lines[1]


async def test_checks_off_change_nothing(tmp_path: Path) -> None:
    inbound = checker(tmp_path, enabled=False)
    assert inbound.connection_refusal("192.0.2.1") is None
    tx = await inbound.mail("192.0.2.1", "[1.2.3.4]", "x@elsewhere.test")  # HELO not checked
    outcome = await inbound.data(tx, MESSAGE)
    assert (outcome.header, outcome.data, outcome.folder) == (None, MESSAGE, "")


async def test_spf_fail_reject_refuses_at_mail_from(tmp_path: Path) -> None:
    inbound = checker(tmp_path, spf_fail_reject=True)
    with pytest.raises(SmtpError) as refused:
        await inbound.mail("192.0.2.1", "mx.football.example.com", "joe@football.example.com")
    assert refused.value.reply().startswith("550 5.7.23 SPF check failed")


async def test_a_warm_key_is_not_parsed_again(tmp_path: Path) -> None:
    """The key record's parse (and the public key object OpenSSL keeps its precomputation in) is
    cached by record text, so a second message from a signer costs no key parse."""
    inbound = checker(tmp_path)
    signed = dkimpy.sign(MESSAGE, b"s1", b"bank.test", PEM) + MESSAGE
    tx = await inbound.mail("192.0.2.1", "mx.bank.test", "pay@bank.test")
    await inbound.data(tx, signed)
    before = parse_key_record.cache_info()
    for _ in range(3):
        tx = await inbound.mail("192.0.2.1", "mx.bank.test", "pay@bank.test")
        outcome = await inbound.data(tx, signed)
        assert outcome.summary["dkim"] == "pass"
    after = parse_key_record.cache_info()
    assert (after.misses, after.hits) == (before.misses, before.hits + 3)
