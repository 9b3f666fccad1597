"""DKIM public key records (RFC 6376 §3.6.1; ed25519 per RFC 8463)."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from letterbox.api.dkimkey import DkimAlgorithm


@dataclass(frozen=True)
class DkimKeyMaterial:
    """A key as the operator holds it: selector, algorithm and the private key PEM."""

    domain: str
    selector: str
    algorithm: DkimAlgorithm
    private_key_pem: str

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


def dkim_record_value(key: DkimKeyMaterial) -> str:
    """The TXT value: `v=DKIM1; k=rsa; p=<SubjectPublicKeyInfo>`, or for ed25519
    `v=DKIM1; k=ed25519; p=<raw 32 bytes>`."""
    private = serialization.load_pem_private_key(key.private_key_pem.encode(), password=None)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    if isinstance(private, rsa.RSAPrivateKey):
        der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    raise ValueError(f"unsupported DKIM key type {type(private).__name__}")
