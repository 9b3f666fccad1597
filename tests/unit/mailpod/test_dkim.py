"""DKIM signing and verification: RFC 8463 vectors, dkimpy as the reference verifier and signer,
canonicalisation, key records and every verification outcome."""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from letterbox.api.dkimkey import DkimAlgorithm as OperatorAlgorithm
from letterbox.material import generate_dkim_key
from letterbox.render.dkim import DkimKeyMaterial, dkim_record_value
from mailpod import dkim
from mailpod.config import DkimAlgorithm, DkimKey
from mailpod.pipeline import Envelope, Message

# --- RFC 8463 Appendix A: keys and the Ed25519 relaxed/relaxed signature of A.3 ----------------

RFC_ED25519_SEED = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
RFC_ED25519_RECORD = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
RFC_RSA_RECORD = (
    "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08"
    "a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4h"
    "stT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB"
)
RFC_KEYS = {
    ("brisbane", "football.example.com"): RFC_ED25519_RECORD,
    ("test", "football.example.com"): RFC_RSA_RECORD,
}
RFC_MESSAGE = (
    b"From: Joe SixPack <joe@football.example.com>\r\n"
    b"To: Suzie Q <suzie@shopping.example.net>\r\n"
    b"Subject: Is dinner ready?\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    b"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
    b"\r\n"
    b"Hi.\r\n"
    b"\r\n"
    b"We lost the game.  Are you hungry yet?\r\n"
    b"\r\n"
    b"Joe.\r\n"
)
RFC_8463_A3_ED25519 = (
    b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
    b" d=football.example.com; i=@football.example.com;\r\n"
    b" q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
    b" subject : date : message-id : from : subject : date;\r\n"
    b" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
    b" b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n"
    b" Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\n"
)
# The same message dual-signed simple/simple with the same keys (an earlier draft of RFC 8463;
# dkimpy's dkim/tests/data/rfc6376.signed.msg), with its bare LF line endings and trailing spaces.
DRAFT_SIGNED = (
    "\n".join(
        [
            "DKIM-Signature: v=1; a=ed25519-sha256; c=simple/simple; ",
            " d=football.example.com; i=@football.example.com; ",
            " q=dns/txt; s=brisbane; t=1518460054; h=from : to : ",
            " subject : date : message-id : from : subject : date; ",
            " bh=4bLNXImK9drULnmePzZNEBleUanJCX5PIsDIFoH4KTQ=; ",
            " b=9/dsDChY0YMTtD5Eyw3wx7x22BlSJP7M5ECbJ7GWrR45nXlTCGb8l0YB",
            " o0wBLR++X5LqmsxXaOYLLJe46l10AQ==",
            "DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; ",
            " d=football.example.com; i=@football.example.com; ",
            " q=dns/txt; s=test; t=1527915362; h=from : to : subject : ",
            " date : message-id : from : subject : date; ",
            " bh=4bLNXImK9drULnmePzZNEBleUanJCX5PIsDIFoH4KTQ=; ",
            " b=icKcLSEZYXJ95flvWE8FT6hl5iqd8MC/LEKYH0QjsqYy6MO/4pgVNCZH",
            " l/RAXAuADxE/40Fg7uTlxwwD1hjN2Ple6J//cJfslBdDOq6zTVbne1dqtl",
            " NOat7iamJ1AfRqyG+ja7a2AZsrpUuJ7VA6O+0zRYPqpwMEkEFIzI9i/Xk=",
            "",
        ]
    ).encode()
    + RFC_MESSAGE.replace(b"\r\n", b"\n")
    + b"\n"
)

NOW = 1_700_000_000.0


def fetcher(records: dict[tuple[str, str], str]) -> Callable[[str, str], Awaitable[str | None]]:
    async def fetch(selector: str, domain: str) -> str | None:
        return records.get((selector, domain))

    return fetch


def verify(
    message: bytes, records: dict[tuple[str, str], str], now: float = NOW
) -> list[dkim.DkimResult]:
    return asyncio.run(dkim.verify(message, fetcher(records), now=now))


def dkimpy_verify(message: bytes, records: dict[tuple[str, str], str]) -> list[bool]:
    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        selector, _, domain = name.decode().rstrip(".").partition("._domainkey.")
        record = records.get((selector, domain))
        return record.encode() if record else None

    checker = dkimpy.DKIM(message)
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    results = []
    for index in range(count):
        try:
            results.append(bool(checker.verify(idx=index, dnsfunc=dns)))
        except dkimpy.DKIMException:  # dkimpy raises rather than returns False for some failures
            results.append(False)
    return results


# --- keys and signers ---------------------------------------------------------------------------

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()
RSA_SIGNER = dkim.DkimSigner("example.com", "r2024", DkimAlgorithm.RSA_SHA256, RSA_KEY)
ED_SIGNER = dkim.DkimSigner("example.com", "e2024", DkimAlgorithm.ED25519_SHA256, ED_KEY)
RECORDS = {
    ("r2024", "example.com"): dkim.key_record(RSA_KEY),
    ("e2024", "example.com"): dkim.key_record(ED_KEY),
}
MESSAGE = (
    b"Received: from client (client [192.0.2.1])\r\n\tby mail.example.com; today\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org,\r\n  carol@example.net\r\n"
    b"Cc: dave@example.net\r\n"
    b"Subject:   Lunch \t plans  \r\n"
    b"Date: Mon, 1 Jan 2024 12:00:00 +0000\r\n"
    b"Message-ID: <lunch@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"List-Unsubscribe: <mailto:unsub@example.com>\r\n"
    b"X-Mailer: test\r\n"
    b"\r\n"
    b"Noon  at the \t usual place?  \r\n"
    b"\r\n"
    b"-- \r\n"
    b"Alice\r\n"
    b"\r\n\r\n"
)


def dual_signed(message: bytes = MESSAGE) -> bytes:
    return b"".join(dkim.sign(message, [RSA_SIGNER, ED_SIGNER], timestamp=int(NOW))) + message


# --- RFC 8463 vectors ---------------------------------------------------------------------------


def test_rfc8463_relaxed_ed25519_signature_verifies() -> None:
    [result] = verify(RFC_8463_A3_ED25519 + RFC_MESSAGE, RFC_KEYS)
    assert result.status is dkim.DkimStatus.PASS, result
    assert (result.domain, result.selector, result.algorithm) == (
        "football.example.com",
        "brisbane",
        "ed25519-sha256",
    )
    assert result.identity == "@football.example.com"
    assert result.key_bits == 256


def test_rfc8463_draft_dual_simple_signatures_verify() -> None:
    results = verify(DRAFT_SIGNED, RFC_KEYS)
    assert [r.status for r in results] == [dkim.DkimStatus.PASS, dkim.DkimStatus.PASS]
    assert [r.algorithm for r in results] == ["ed25519-sha256", "rsa-sha256"]
    assert results[1].key_bits == 1024


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"We lost the game.", b"We won the game."),  # body
        (b"Subject: Is dinner ready?", b"Subject: Is dinner burnt?"),  # signed header
        (b"From: Joe SixPack", b"From: Joe SixPick"),
    ],
)
def test_rfc8463_vectors_altered_fail(old: bytes, new: bytes) -> None:
    for message in (RFC_8463_A3_ED25519 + RFC_MESSAGE, DRAFT_SIGNED):
        results = verify(message.replace(old, new), RFC_KEYS)
        assert results, message
        assert all(r.status is dkim.DkimStatus.FAIL for r in results), results


def test_signing_with_the_rfc8463_ed25519_key_verifies_like_the_rfc_record() -> None:
    seed = base64.b64decode(RFC_ED25519_SEED)
    key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    assert dkim.key_record(key) == RFC_ED25519_RECORD
    signer = dkim.DkimSigner("football.example.com", "brisbane", DkimAlgorithm.ED25519_SHA256, key)
    signed = b"".join(dkim.sign(RFC_MESSAGE, [signer])) + RFC_MESSAGE
    assert dkimpy_verify(signed, RFC_KEYS) == [True]
    assert verify(signed, RFC_KEYS, now=NOW * 2)[0].status is dkim.DkimStatus.PASS


# --- our signatures -----------------------------------------------------------------------------


def test_dual_signature_verifies_with_dkimpy_and_ours() -> None:
    signed = dual_signed()
    assert dkimpy_verify(signed, RECORDS) == [True, True]
    results = verify(signed, RECORDS)
    assert [(r.status, r.algorithm) for r in results] == [
        (dkim.DkimStatus.PASS, "rsa-sha256"),
        (dkim.DkimStatus.PASS, "ed25519-sha256"),
    ]
    assert not any(r.suspicious for r in results)
    assert results[0].key_bits == 2048


def test_signature_fields_are_folded_relaxed_and_oversign_from_to_subject() -> None:
    fields = dkim.sign(MESSAGE, [RSA_SIGNER], timestamp=1234)
    [field] = fields
    assert field.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\r\n")
    assert field.endswith(b"\r\n")
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))
    tags = dkim.parse_tags(field.partition(b":")[2].decode())
    assert (tags["d"], tags["s"], tags["t"]) == ("example.com", "r2024", "1234")
    names = [n.strip() for n in tags["h"].split(":")]
    assert names.count("from") == 2 and names.count("to") == 2 and names.count("subject") == 2
    # Present once: signed once, not oversigned.
    for name in ("cc", "date", "message-id", "mime-version", "content-type", "list-unsubscribe"):
        assert names.count(name) == 1, name
    # Absent and not oversigned, or not worth signing: not listed.
    for name in ("reply-to", "x-mailer", "received", "sender"):
        assert name not in names, name


def test_oversigning_breaks_on_an_added_from_to_or_subject() -> None:
    signed = dual_signed()
    for extra in (b"From: mallory@evil.test\r\n", b"To: x@evil.test\r\n", b"Subject: Hi\r\n"):
        tampered = extra + signed  # added on top, where a verifier looks first
        assert dkimpy_verify(tampered, RECORDS) == [False, False], extra
        assert {r.status for r in verify(tampered, RECORDS)} == {dkim.DkimStatus.FAIL}
    # A header that was absent but oversigned (no Reply-To is signed; To is present): adding an
    # unsigned header does no harm.
    harmless = b"X-Spam-Score: 0\r\n" + signed
    assert {r.status for r in verify(harmless, RECORDS)} == {dkim.DkimStatus.PASS}


def test_relaxed_survives_refolding_and_whitespace_changes() -> None:
    signed = dual_signed()
    refolded = (
        signed.replace(b"To: bob@example.org,\r\n  carol", b"To: bob@example.org, carol")
        .replace(b"Subject:   Lunch \t plans  ", b"SUBJECT: Lunch plans")
        .replace(b"Noon  at the \t usual place?  ", b"Noon at the usual place?")
        .removesuffix(b"\r\n\r\n")
    )
    assert refolded != signed
    assert dkimpy_verify(refolded, RECORDS) == [True, True]
    assert {r.status for r in verify(refolded, RECORDS)} == {dkim.DkimStatus.PASS}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Noon", b"Midnight"),
        (b"Alice\r\n", b"Alice\r\nP.S. send money\r\n"),
        (b"Lunch", b"Dinner"),
        (b"Cc: dave@", b"Cc: eve@"),
        (b"List-Unsubscribe: <mailto:unsub", b"List-Unsubscribe: <mailto:evil"),
    ],
)
def test_altered_messages_fail(old: bytes, new: bytes) -> None:
    signed = dual_signed()
    tampered = signed.replace(old, new, 1)
    assert tampered != signed
    assert dkimpy_verify(tampered, RECORDS) == [False, False]
    results = verify(tampered, RECORDS)
    assert [r.status for r in results] == [dkim.DkimStatus.FAIL, dkim.DkimStatus.FAIL]


def test_dkimpy_signatures_verify_with_ours() -> None:
    pem = RSA_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    for canon in ((b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple")):
        signature = dkimpy.sign(
            MESSAGE, b"r2024", b"example.com", pem, canonicalize=canon, include_headers=None
        )
        results = verify(signature + MESSAGE, RECORDS, now=NOW * 2)
        assert [r.status for r in results] == [dkim.DkimStatus.PASS], (canon, results)


def test_body_length_tag_is_pass_but_suspicious() -> None:
    pem = RSA_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    signature = dkimpy.sign(MESSAGE, b"r2024", b"example.com", pem, length=True)
    [result] = verify(signature + MESSAGE, RECORDS, now=NOW * 2)
    assert result.status is dkim.DkimStatus.PASS and result.suspicious
    assert result.body_length is not None and result.unsigned_body_octets == 0
    appended = signature + MESSAGE.removesuffix(b"\r\n\r\n") + b"Click http://evil.test\r\n"
    [result] = verify(appended, RECORDS, now=NOW * 2)
    assert result.status is dkim.DkimStatus.PASS and result.suspicious
    assert result.unsigned_body_octets == len(b"Click http://evil.test\r\n")
    assert "unsigned" in result.reason


# --- verification outcomes -------------------------------------------------------------------


def _resign_tags(signed: bytes, old: bytes, new: bytes) -> bytes:
    assert old in signed
    return signed.replace(old, new, 1)


def test_no_signature_gives_no_results() -> None:
    assert verify(MESSAGE, RECORDS) == []


def test_missing_key_is_permerror_and_lookup_failure_is_temperror() -> None:
    [rsa_result, _] = verify(dual_signed(), {})
    assert rsa_result.status is dkim.DkimStatus.PERMERROR and rsa_result.reason == "no key record"

    async def broken(selector: str, domain: str) -> str | None:
        raise TimeoutError("resolver timed out")

    results = asyncio.run(dkim.verify(dual_signed(), broken, now=NOW))
    assert {r.status for r in results} == {dkim.DkimStatus.TEMPERROR}
    assert "timed out" in results[0].reason


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ("v=DKIM1; k=rsa; p=", "revoked"),
        ("v=DKIM1; k=ed25519; p=" + "A" * 43 + "=", "does not match"),
        ("v=DKIM1; h=sha1; p={p}", "sha256"),
        ("v=DKIM1; s=other; p={p}", "not for email"),
        ("v=DKIM2; p={p}", "DKIM1"),
        ("k=rsa; v=DKIM1; p={p}", "DKIM1"),
        ("v=DKIM1; k=dsa; p={p}", "unknown key type"),
        ("v=DKIM1; p=!!!notbase64", "base64"),
        ("v=DKIM1; p=AAAA", "not an RSA public key"),
        ("v=DKIM1; k=rsa", "no p="),
        ("v=DKIM1; p={p}; p={p}", "duplicate"),
    ],
)
def test_unusable_key_records_are_permerror(record: str, reason: str) -> None:
    p = RECORDS[("r2024", "example.com")].partition("p=")[2]
    records = {("r2024", "example.com"): record.format(p=p)}
    [result, _] = verify(dual_signed(), records)
    assert result.status is dkim.DkimStatus.PERMERROR, result
    assert reason in result.reason, result.reason


def test_key_record_flags_and_formats() -> None:
    p = RECORDS[("r2024", "example.com")].partition("p=")[2]
    record = dkim.parse_key_record(
        f" v=DKIM1 ; k = rsa ; t=y:s ; h=sha1:sha256; p={p[:40]}\r\n {p[40:]};"
    )
    assert record.flags == {"y", "s"} and record.bits == 2048
    assert record.hash_algorithms == ("sha1", "sha256")
    # A bare PKCS#1 RSAPublicKey, as some DNS hosts publish it.
    pkcs1 = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )
    assert dkim.parse_key_record("p=" + base64.b64encode(pkcs1).decode()).bits == 2048
    # t=y (testing) still verifies and is reported.
    [result, _] = verify(dual_signed(), {("r2024", "example.com"): f"v=DKIM1; t=y; p={p}"})
    assert result.status is dkim.DkimStatus.PASS and result.testing


def test_strict_key_flag_refuses_a_subdomain_identity() -> None:
    p = RECORDS[("r2024", "example.com")].partition("p=")[2]
    pem = RSA_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    signature = dkimpy.sign(
        MESSAGE, b"r2024", b"example.com", pem, identity=b"alice@sub.example.com"
    )
    records = {("r2024", "example.com"): f"v=DKIM1; t=s; p={p}"}
    [result] = verify(signature + MESSAGE, records, now=NOW * 2)
    assert result.status is dkim.DkimStatus.PERMERROR and "t=s" in result.reason
    records = {("r2024", "example.com"): f"v=DKIM1; p={p}"}
    assert verify(signature + MESSAGE, records, now=NOW * 2)[0].status is dkim.DkimStatus.PASS


@pytest.mark.parametrize(
    ("old", "new", "status", "reason"),
    [
        (b"v=1;", b"v=2;", dkim.DkimStatus.PERMERROR, "version"),
        (b"a=rsa-sha256", b"a=rsa-sha1", dkim.DkimStatus.PERMERROR, "RFC 8301"),
        (b"a=rsa-sha256", b"a=rsa-md5", dkim.DkimStatus.PERMERROR, "unknown algorithm"),
        (b"c=relaxed/relaxed", b"c=fancy/relaxed", dkim.DkimStatus.PERMERROR, "canonical"),
        (b"d=example.com;", b"d=exa$mple.com;", dkim.DkimStatus.PERMERROR, "domain name"),
        (b"h=from:from:", b"h=", dkim.DkimStatus.PERMERROR, "From"),
        (b"bh=", b"bx=", dkim.DkimStatus.PERMERROR, "lacks bh="),
        (b"t=1700000000;", b"t=1700000000; x=1600000000;", dkim.DkimStatus.PERMERROR, "x="),
        (b"t=1700000000;", b"t=1700000000; x=1700000100;", dkim.DkimStatus.NEUTRAL, "expired"),
        (b"t=1700000000;", b"t=1800000000;", dkim.DkimStatus.NEUTRAL, "future"),
        (b"t=1700000000;", b"t=1700000000; i=@evil.test;", dkim.DkimStatus.PERMERROR, "i="),
        (b"t=1700000000;", b"t=1700000000; q=http;", dkim.DkimStatus.PERMERROR, "query"),
        (b"t=1700000000;", b"t=1700000000; l=x;", dkim.DkimStatus.PERMERROR, "l="),
        (b"t=1700000000;", b"t=1700000000; ;", dkim.DkimStatus.PERMERROR, "empty tag"),
    ],
)
def test_bad_signatures(old: bytes, new: bytes, status: dkim.DkimStatus, reason: str) -> None:
    signed = _resign_tags(dual_signed(), old, new)
    result = verify(signed, RECORDS, now=NOW + 1000)[0]
    assert result.status is status, result
    assert reason in result.reason, result.reason


def test_a_valid_signature_with_a_changed_tag_fails() -> None:
    # The signature covers its own field: changing the first one's t= breaks only that one.
    signed = _resign_tags(dual_signed(), b"t=1700000000;", b"t=1700000001;")
    statuses = [r.status for r in verify(signed, RECORDS)]
    assert statuses == [dkim.DkimStatus.FAIL, dkim.DkimStatus.PASS]


def test_too_many_signatures_are_not_all_checked() -> None:
    signed = b"".join(dkim.sign(MESSAGE, [ED_SIGNER] * 12, timestamp=int(NOW))) + MESSAGE
    results = verify(signed, RECORDS)
    assert len(results) == dkim.MAX_SIGNATURES
    assert {r.status for r in results} == {dkim.DkimStatus.PASS}


# --- canonicalisation (RFC 6376 §3.4.5 example) ------------------------------------------------


def test_rfc6376_canonicalisation_example() -> None:
    parsed = dkim.ParsedMessage.parse(b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n")
    relaxed = [dkim._relaxed_header(raw) for _, raw in parsed.fields]
    assert relaxed == [b"a:X\r\n", b"b:Y Z\r\n"]
    assert dkim.canonical_body(parsed.body, relaxed=True) == b" C\r\nD E\r\n"
    assert dkim.canonical_body(parsed.body, relaxed=False) == b" C \r\nD \t E\r\n"
    assert dkim.canonical_body(b"", relaxed=True) == b""
    assert dkim.canonical_body(b"", relaxed=False) == b"\r\n"
    assert dkim.canonical_body(b"no newline  ", relaxed=True) == b"no newline\r\n"


def test_from_domains() -> None:
    def domains(value: bytes) -> list[str]:
        return dkim.from_domains(dkim.ParsedMessage.parse(b"From: " + value + b"\r\n\r\n"))

    assert domains(b"Alice <alice@Example.COM>") == ["example.com"]
    assert domains(b"alice@example.com") == ["example.com"]
    assert domains(b'"Doe, Jane" <jane@example.org>') == ["example.org"]
    assert domains(b"a@one.test, b@two.test,\r\n c@one.test") == ["one.test", "two.test"]
    assert domains(b"=?utf-8?q?J=C3=B6rg?= <j@example.net>") == ["example.net"]
    assert domains(b"undisclosed") == []


# --- keys from config files, the keyring and the modifier ----------------------------------------


RSA, ED = DkimAlgorithm.RSA_SHA256, DkimAlgorithm.ED25519_SHA256


def _key(domain: str, selector: str, algorithm: DkimAlgorithm, path: Path) -> DkimKey:
    return DkimKey(domain=domain, selector=selector, algorithm=algorithm, private_key_file=path)


def _write_key(tmp_path: Path, name: str, algorithm: OperatorAlgorithm) -> tuple[Path, str]:
    """A key exactly as the operator generates and publishes it."""
    pem = generate_dkim_key(algorithm)
    path = tmp_path / f"{name}.pem"
    path.write_text(pem)
    material = DkimKeyMaterial("example.com", name, algorithm, pem)
    return path, dkim_record_value(material)


def test_keyring_loads_operator_keys_and_signs_with_every_key_of_the_from_domain(
    tmp_path: Path,
) -> None:
    rsa_file, rsa_record = _write_key(tmp_path, "r1", OperatorAlgorithm.RSA_2048)
    ed_file, ed_record = _write_key(tmp_path, "e1", OperatorAlgorithm.ED25519)
    other_file, _ = _write_key(tmp_path, "o1", OperatorAlgorithm.ED25519)
    keyring = dkim.DkimKeyring.load(
        [
            _key("example.com", "r1", RSA, rsa_file),
            _key("example.com", "e1", ED, ed_file),
            _key("example.org", "o1", ED, other_file),
        ]
    )
    assert [s.selector for s in keyring.signers("EXAMPLE.com")] == ["r1", "e1"]
    fields = keyring.sign(MESSAGE)
    assert len(fields) == 2
    records = {("r1", "example.com"): rsa_record, ("e1", "example.com"): ed_record}
    assert dkimpy_verify(b"".join(fields) + MESSAGE, records) == [True, True]
    # No keys for the From domain: nothing to sign with.
    assert keyring.sign(MESSAGE.replace(b"alice@example.com", b"alice@example.net")) == []


def test_keyring_leaves_out_unreadable_or_mismatched_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ed_file, _ = _write_key(tmp_path, "e1", OperatorAlgorithm.ED25519)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    keyring = dkim.DkimKeyring.load(
        [
            _key("example.com", "gone", RSA, tmp_path / "missing"),
            _key("example.com", "bad", RSA, garbage),
            _key("example.com", "wrong", RSA, ed_file),
            _key("example.com", "e1", ED, ed_file),
        ]
    )
    assert [s.selector for s in keyring.signers("example.com")] == ["e1"]
    assert caplog.text.count("dkim key not loaded") == 3
    assert "not a key" not in caplog.text  # key material never logged


def test_modifier_signs_only_authenticated_submissions() -> None:
    keyring = dkim.DkimKeyring([RSA_SIGNER, ED_SIGNER])
    anonymous = Envelope("s1", "192.0.2.1", "client", "alice@example.com")
    message = Message(header_prefix=[b"Received: by us\r\n"], data=MESSAGE)
    assert dkim.sign_submission(keyring, anonymous, message) == 0
    assert message.header_prefix == [b"Received: by us\r\n"]
    user = Envelope("s1", "192.0.2.1", "client", "alice@example.com", "alice@example.com")
    assert dkim.sign_submission(keyring, user, message) == 2
    assert message.header_prefix[0].startswith(b"DKIM-Signature: v=1; a=rsa-sha256")
    assert message.header_prefix[1].startswith(b"DKIM-Signature: v=1; a=ed25519-sha256")
    stored = b"".join(message.header_prefix) + message.data
    assert dkimpy_verify(stored, RECORDS) == [True, True]
    assert dkim.sign_submission(dkim.DkimKeyring(), user, Message(data=MESSAGE)) == 0


def test_signer_refuses_a_key_of_the_wrong_type() -> None:
    pem = ED_KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="not a rsa-sha256 key"):
        dkim.DkimSigner.from_pem("example.com", "x", DkimAlgorithm.RSA_SHA256, pem)
    with pytest.raises(ValueError, match=r"x\._domainkey\.example\.com"):
        dkim.DkimSigner.from_pem("example.com", "x", DkimAlgorithm.RSA_SHA256, b"junk")


def test_canonicalisation_agrees_with_dkimpy_on_random_white_space() -> None:
    """Random headers and bodies full of tabs, runs of spaces, trailing white space, folding and
    empty lines: we sign and dkimpy verifies, dkimpy signs and we verify."""
    rng = random.Random(6376)
    pem = RSA_KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )

    def text() -> str:
        words = ["a", "bb", "ccc", "\t", " ", "  ", " \t ", "x"]
        return "".join(rng.choice(words) for _ in range(rng.randint(0, 12)))

    for _ in range(40):
        subject = "S" + text() + ("\r\n " + text() if rng.random() < 0.5 else "")
        body = "\r\n".join(text() for _ in range(rng.randint(0, 6)))
        # Always ending in CRLF, as SMTP delivers it: on a last line without one, dkimpy keeps
        # trailing white space while mailauth and we drop it (RFC 6376 §3.4.4 a).
        body += "\r\n" * rng.randint(1, 3)
        message = (
            f"From: a@example.com\r\nTo: b@example.org{text()}\r\nSubject:{subject}\r\n\r\n{body}"
        ).encode()
        signed = b"".join(dkim.sign(message, [RSA_SIGNER, ED_SIGNER])) + message
        assert dkimpy_verify(signed, RECORDS) == [True, True], message
        theirs = dkimpy.sign(message, b"r2024", b"example.com", pem, canonicalize=(b"relaxed",) * 2)
        assert verify(theirs + message, RECORDS, now=NOW * 2)[0].status is dkim.DkimStatus.PASS
