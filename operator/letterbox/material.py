"""Generated secret material: passwords and DKIM private keys.

Randomness lives here, not in render/ (which stays pure and deterministic). `StateDir` keeps what
was generated on disk so that offline commands (`letterbox render`, `letterbox dns-plan`) and local
mode show and use the same keys run after run.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

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

    def dkim_key(
        self, namespace: str, dkimkey: str, selector: str, algorithm: DkimAlgorithm
    ) -> str:
        return self._get_or_create(
            self.root / namespace / "dkim" / dkimkey / f"{selector}.{algorithm.value}.pem",
            lambda: generate_dkim_key(algorithm),
        )

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
