"""Generated secret material: passwords and DKIM private keys.

Randomness lives here, not in render/ (which stays pure and deterministic). `StateDir` keeps what
was generated on disk so that offline commands (`letterbox render`, `letterbox dns-plan`) and local
mode show and use the same keys run after run.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from argon2 import PasswordHasher
from argon2 import exceptions as argon2_exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from letterbox.api.dkimkey import DkimAlgorithm

# 24 characters from a 56-symbol alphabet without look-alikes: about 139 bits.
_PASSWORD_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"  # noqa: S105 (an alphabet, not a password)
PASSWORD_LENGTH = 24


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


def generate_dkim_key(algorithm: DkimAlgorithm) -> str:
    """A new private key as unencrypted PKCS#8 PEM."""
    key: PrivateKeyTypes
    if algorithm is DkimAlgorithm.ED25519:
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        bits = 3072 if algorithm is DkimAlgorithm.RSA_3072 else 2048
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "letterbox"


class StateDir:
    """Generated material under `root/<namespace>/…`, created on first use, mode 0600."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def password(self, namespace: str, mailbox: str) -> str:
        return self._get_or_create(
            self.root / namespace / "mailboxes" / f"{mailbox}.password", generate_password
        )

    def dkim_key_file(
        self, namespace: str, dkimkey: str, selector: str, algorithm: DkimAlgorithm
    ) -> Path:
        return self.root / namespace / "dkim" / dkimkey / f"{selector}.{algorithm.value}.pem"

    def dkim_key(
        self, namespace: str, dkimkey: str, selector: str, algorithm: DkimAlgorithm
    ) -> str:
        return self._get_or_create(
            self.dkim_key_file(namespace, dkimkey, selector, algorithm),
            lambda: generate_dkim_key(algorithm),
        )

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def file(self, relative: str, generate: Callable[[], str]) -> str:
        """A generated file under the state dir, created once."""
        return self._get_or_create(self.root / relative, generate)

    @staticmethod
    def _get_or_create(path: Path, generate: Callable[[], str]) -> str:
        if path.exists():
            return path.read_text()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        value = generate()
        # Written to a private temp file and renamed: a crash never leaves a half key behind.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(value)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return value


_HASHER = PasswordHasher()  # argon2id, RFC 9106 second recommendation (argon2-cffi's default)


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def password_matches(password: str, password_hash: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (argon2_exceptions.VerificationError, argon2_exceptions.InvalidHashError):
        return False


def password_fingerprint(password: str, password_hash: str) -> str:
    """A cheap check that `password_hash` was made from `password`: SHA-256 over both.

    Verifying an argon2id hash costs tens of milliseconds by design, which is fine once per login
    but not once per mailbox per reconcile (10,000 mailboxes: minutes of CPU after every operator
    restart). The fingerprint is only ever stored next to the plain password itself (a generated
    credentials Secret), so it reveals nothing the Secret does not already hold; the argon2 salt
    inside the hash makes it unique per hash."""
    return hashlib.sha256(f"{password_hash}\0{password}".encode()).hexdigest()


def reuse_or_hash(password: str, previous_hash: str | None) -> str:
    """The hash to configure for `password`: the value itself if it already is a hash, the
    previous hash while it still matches (so the pod config changes only when the password
    does), else a new argon2id hash."""
    if is_password_hash(password):
        return password
    if previous_hash and password_matches(password, previous_hash):
        return previous_hash
    return hash_password(password)


def is_password_hash(value: str) -> bool:
    """A hash the mail pod accepts as is (argon2id PHC string or bcrypt)."""
    return value.startswith("$argon2id$") or value[:4] in ("$2a$", "$2b$", "$2y$")


def self_signed_certificate(names: list[str], days: int = 365) -> tuple[str, str]:
    """(certificate PEM, key PEM) for local mode: ECDSA P-256, the names as SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.now(UTC)
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )
