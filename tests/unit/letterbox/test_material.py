from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from letterbox.api.dkimkey import DkimAlgorithm
from letterbox.material import generate_dkim_key, generate_password


def test_passwords_are_long_and_distinct() -> None:
    passwords = {generate_password() for _ in range(100)}
    assert len(passwords) == 100
    assert all(len(p) == 24 and p.isalnum() for p in passwords)
    assert not any(c in p for p in passwords for c in "0O1lI")


@pytest.mark.parametrize(
    ("algorithm", "check"),
    [
        (DkimAlgorithm.RSA_2048, lambda k: isinstance(k, rsa.RSAPrivateKey) and k.key_size == 2048),
        (DkimAlgorithm.RSA_3072, lambda k: isinstance(k, rsa.RSAPrivateKey) and k.key_size == 3072),
        (DkimAlgorithm.ED25519, lambda k: isinstance(k, ed25519.Ed25519PrivateKey)),
    ],
)
def test_dkim_keys_match_their_algorithm(algorithm: DkimAlgorithm, check: object) -> None:
    key = serialization.load_pem_private_key(generate_dkim_key(algorithm).encode(), password=None)
    assert callable(check) and check(key)
