"""DANE-EE matching of a real certificate (trustme) by full certificate and by public key, with
SHA-256, SHA-512 and exact data; DANE-TA and unknown parameters are unusable."""

from __future__ import annotations

import hashlib

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mailpod.outbound.dane import DanePolicy, Tlsa, parse_tlsa


def _der_and_spki() -> tuple[bytes, bytes]:
    cert = trustme.CA().issue_cert("mx.example.com")
    der = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).public_bytes(Encoding.DER)
    spki = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    return der, spki


def test_parse() -> None:
    record = parse_tlsa("3 1 1 AB cd")
    assert record == Tlsa(3, 1, 1, bytes.fromhex("abcd"))
    assert record is not None and record.usable
    assert parse_tlsa("3 1 1 zz") is None
    assert parse_tlsa("3 1") is None
    assert not Tlsa(2, 0, 1, b"").usable  # DANE-TA: needs the chain
    assert not Tlsa(3, 1, 9, b"").usable


def test_dane_ee_matches_by_certificate_or_key() -> None:
    der, spki = _der_and_spki()
    for record in (
        Tlsa(3, 1, 1, hashlib.sha256(spki).digest()),
        Tlsa(3, 0, 1, hashlib.sha256(der).digest()),
        Tlsa(3, 1, 2, hashlib.sha512(spki).digest()),
        Tlsa(3, 0, 0, der),
    ):
        assert DanePolicy("mx.example.com", (record,)).matches(der)
    other, _ = _der_and_spki()
    assert not DanePolicy(
        "mx.example.com", (Tlsa(3, 1, 1, hashlib.sha256(spki).digest()),)
    ).matches(other)
