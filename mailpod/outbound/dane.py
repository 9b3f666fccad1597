"""DANE for SMTP (RFC 7672): TLSA records of an MX host, used only when DNSSEC-validated.

We support what RFC 7672 §3.1 recommends and nearly every deployment publishes: DANE-EE(3)
records, matched against the server's leaf certificate (full certificate or its public key,
exact or SHA-256/SHA-512), ignoring names and dates (§3.1.1). DANE-TA(2) needs the certificate
chain the server sent, which Python's ssl module (before 3.13) does not expose: such records
count as unusable, and a host whose TLSA records are all unusable gets mandatory but
unauthenticated TLS (§2.2).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mailpod.dns import DnsTemporaryError, Resolver, Status


@dataclass(frozen=True)
class Tlsa:
    usage: int
    selector: int
    matching: int
    data: bytes

    @property
    def usable(self) -> bool:
        return self.usage == 3 and self.selector in (0, 1) and self.matching in (0, 1, 2)


def parse_tlsa(text: str) -> Tlsa | None:
    parts = text.split()
    if len(parts) < 4:
        return None
    try:
        usage, selector, matching = (int(p) for p in parts[:3])
        data = bytes.fromhex("".join(parts[3:]))
    except ValueError:
        return None
    return Tlsa(usage, selector, matching, data)


@dataclass(frozen=True)
class DanePolicy:
    """The TLSA records of one MX host. `records` empty with `required` set means "TLS
    required, no authentication" (all records unusable)."""

    host: str
    records: tuple[Tlsa, ...]

    @property
    def authenticates(self) -> bool:
        return bool(self.records)

    def matches(self, der_certificate: bytes) -> bool:
        certificate = x509.load_der_x509_certificate(der_certificate)
        spki = certificate.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        )
        for record in self.records:
            content = der_certificate if record.selector == 0 else spki
            if record.matching == 1:
                content = hashlib.sha256(content).digest()
            elif record.matching == 2:
                content = hashlib.sha512(content).digest()
            if content == record.data:
                return True
        return False


class DaneLookupFailed(Exception):
    """The TLSA lookup failed in a way that must not be read as "no DANE" (§2.2.1): defer."""


async def dane_policy(resolver: Resolver, host: str, port: int = 25) -> DanePolicy | None:
    """The DANE policy of an MX host whose MX record was authenticated, or None when the host
    has no authenticated TLSA records (then opportunistic TLS or MTA-STS applies)."""
    try:
        answer = await resolver.query(f"_{port}._tcp.{host}", "TLSA")
    except DnsTemporaryError as error:
        # Could be an attacker hiding the records; a validating resolver answers SERVFAIL for
        # bogus data. Either way: do not fall back to unauthenticated delivery.
        raise DaneLookupFailed(str(error)) from error
    if answer.status is not Status.FOUND or not answer.authenticated:
        return None
    records = tuple(r for r in map(parse_tlsa, answer.records) if r is not None and r.usable)
    return DanePolicy(host, records)
