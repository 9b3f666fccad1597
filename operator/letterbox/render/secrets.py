"""Secrets the operator creates: generated mailbox credentials and DKIM private keys."""

from __future__ import annotations

from typing import Any

from letterbox.api.dkimkey import DKIMKey
from letterbox.api.mailbox import Mailbox
from letterbox.api.meta import GROUP
from letterbox.render.dkim import DkimKeyMaterial
from letterbox.render.labels import owned_metadata


def credentials_secret_name(mailbox: Mailbox) -> str:
    return f"{mailbox.metadata.name}-credentials"


def credentials_secret(mailbox: Mailbox, password: str) -> dict[str, Any]:
    """The generated password of a Mailbox without `spec.password`, with the login beside it so
    the Secret alone is enough to configure a client."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": owned_metadata(mailbox, credentials_secret_name(mailbox)),
        "stringData": {"username": mailbox.spec.address, "password": password},
    }


def dkim_secret_name(dkimkey: DKIMKey, selector: str) -> str:
    return f"{dkimkey.metadata.name}-{selector}"


def dkim_secret(dkimkey: DKIMKey, key: DkimKeyMaterial) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": owned_metadata(
            dkimkey,
            dkim_secret_name(dkimkey, key.selector),
            labels={f"{GROUP}/dkim-selector": key.selector, f"{GROUP}/domain": key.domain},
        ),
        "stringData": {
            "private.pem": key.private_key_pem,
            "selector": key.selector,
            "algorithm": key.algorithm.value,
            "domain": key.domain,
        },
    }
