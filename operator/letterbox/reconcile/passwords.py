"""Password hashes for the pod config, computed as rarely as possible.

argon2id costs tens of milliseconds per hash or verification by design, so a pass over 10,000
mailboxes must not redo them. Where a hash comes from:

- generated credentials (`<mailbox>-credentials`): the Secret keeps `password-hash` and a cheap
  `password-fingerprint` next to the password (see `material.password_fingerprint`); a pass only
  hashes when the Secret is new or someone edited its password.
- a referenced Secret holding a hash: used as is.
- a referenced Secret holding plain text: the hash in the pod config last applied is reused
  while it verifies; a verification is remembered in memory (keyed by a salted digest of the
  password, never the password) so it happens once per operator process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from letterbox.api.mailbox import Mailbox
from letterbox.material import (
    generate_password,
    hash_password,
    is_password_hash,
    password_fingerprint,
    reuse_or_hash,
)
from letterbox.reconcile.snapshot import SecretView

T = TypeVar("T")
U = TypeVar("U")

PASSWORD_KEY = "password"  # noqa: S105 (a key name)
USERNAME_KEY = "username"
HASH_KEY = "password-hash"
FINGERPRINT_KEY = "password-fingerprint"


@dataclass(frozen=True)
class CredentialsWrite:
    """What to store in a generated credentials Secret. `password` is set only when the Secret
    has none yet (a create); otherwise the stored password stays and only the hash follows it."""

    name: str
    mailbox: Mailbox
    data: Mapping[str, str]
    immutable_keys: frozenset[str]


def generated_credentials(secret: SecretView | None, mailbox: Mailbox) -> str | None:
    """The hash of a generated credentials Secret that needs no work (no argon2, no write)."""
    if secret is None:
        return None
    password, stored_hash = secret.text(PASSWORD_KEY), secret.text(HASH_KEY)
    if not (password and stored_hash) or secret.text(USERNAME_KEY) != mailbox.spec.address:
        return None
    if secret.text(FINGERPRINT_KEY) != password_fingerprint(password, stored_hash):
        return None
    return stored_hash


def credentials_write(name: str, secret: SecretView | None, mailbox: Mailbox) -> CredentialsWrite:
    """The (CPU-heavy: it hashes) write that brings a credentials Secret up to date."""
    password = secret.text(PASSWORD_KEY) if secret is not None else None
    if not password:
        password = generate_password()
        password_hash = hash_password(password)
        data = {PASSWORD_KEY: password}
    else:
        previous = secret.text(HASH_KEY) if secret is not None else None
        password_hash = reuse_or_hash(password, previous)
        data = {}
    data |= {
        USERNAME_KEY: mailbox.spec.address,
        HASH_KEY: password_hash,
        FINGERPRINT_KEY: password_fingerprint(password, password_hash),
    }
    # The password is never replaced once stored: a concurrent writer's (or the user's) wins,
    # and the pass after the write re-checks the fingerprint against whatever was kept.
    return CredentialsWrite(name, mailbox, data, frozenset({PASSWORD_KEY}))


def hashes_in_config(shards: Iterable[SecretView]) -> dict[str, str]:
    """address -> password hash from the pod config shards applied last time."""
    hashes: dict[str, str] = {}
    for shard in shards:
        for key in shard.raw.get("data") or {}:
            text = shard.text(key)
            try:
                document = json.loads(text or "{}")
            except ValueError:
                continue
            for mailbox in document.get("mailboxes") or []:
                if isinstance(mailbox, dict) and "address" in mailbox:
                    hashes[str(mailbox["address"])] = str(mailbox.get("password_hash", ""))
    return hashes


class VerifiedHashes:
    """Plain-text passwords from referenced Secrets whose hash this process already checked."""

    def __init__(self) -> None:
        self._salt = os.urandom(16)
        self._known: dict[str, tuple[str, str]] = {}

    def _digest(self, password: str) -> str:
        return hashlib.sha256(self._salt + password.encode()).hexdigest()

    def get(self, address: str, password: str) -> str | None:
        known = self._known.get(address)
        if known is not None and known[0] == self._digest(password):
            return known[1]
        return None

    def changed(self, address: str, password: str) -> bool:
        """True if another password of `address` was verified before: `password` is new."""
        known = self._known.get(address)
        return known is not None and known[0] != self._digest(password)

    def remember(self, address: str, password: str, password_hash: str) -> None:
        self._known[address] = (self._digest(password), password_hash)

    def forget_except(self, addresses: set[str]) -> None:
        for address in self._known.keys() - addresses:
            del self._known[address]


# argon2id hashes at once. Each holds 64 MiB and already runs 4 lanes in threads of its own, so
# a second one buys ~20 % on 2 cores (6.9 -> 8.3 hashes/s) and more buy nothing but memory.
HASH_CONCURRENCY = 2


def hash_concurrency(cpus: int | None) -> int:
    """How many passwords to hash at once. Bounded by memory, not by `cpus`: in a container
    os.cpu_count() is the node's CPU count, and 32 hashes at once would need 2 GiB."""
    return max(1, min(HASH_CONCURRENCY, cpus or 1))


def plain_or_hash(value: str) -> tuple[str | None, str | None]:
    """(hash, None) when a Secret holds a hash, (None, password) when it holds plain text."""
    return (value, None) if is_password_hash(value) else (None, value)


async def bounded_map(
    function: Callable[[T], Awaitable[U]], items: Iterable[T], limit: int
) -> list[U]:
    """`function` over `items` with at most `limit` running at once (CPU-bound hashing runs in
    threads; argon2 releases the GIL, so this uses every core without starving the loop)."""
    semaphore = asyncio.Semaphore(limit)

    async def one(item: T) -> U:
        async with semaphore:
            return await function(item)

    return list(await asyncio.gather(*(one(item) for item in items)))
