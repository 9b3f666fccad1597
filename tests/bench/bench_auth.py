"""Password check costs: argon2id and bcrypt verifies, and a cached login.

Run: .venv/bin/python -m tests.bench.bench_auth   (prints figures; no timed assertions)
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import bcrypt

from mailpod.auth import Authenticator, hash_password, verify_password
from mailpod.config import Mailbox, MailpodConfig, Storage

PASSWORD = "correct horse battery staple"


def _median_ms(action: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def _cached_login_us(stored: str, runs: int) -> tuple[float, float]:
    config = MailpodConfig(
        hostname="mail.example.com",
        listeners=(),
        domains=("example.com",),
        mailboxes=(Mailbox(address="alice@example.com", password_hash=stored),),
        storage=Storage(mail_root=Path("/srv/mail"), queue_dir=Path("/srv/queue")),
    )
    auth = Authenticator(config)
    start = time.perf_counter()
    assert (await auth.authenticate("alice@example.com", PASSWORD, "192.0.2.1")).user
    first_ms = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    for _ in range(runs):
        assert (await auth.authenticate("alice@example.com", PASSWORD, "192.0.2.1")).user
    return first_ms, (time.perf_counter() - start) / runs * 1e6


def main() -> None:
    argon2_hash = hash_password(PASSWORD)
    bcrypt_hashes = {
        cost: bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(cost)).decode() for cost in (10, 12)
    }
    hash_ms = _median_ms(partial(hash_password, PASSWORD), 10)
    verify_ms = _median_ms(partial(verify_password, PASSWORD, argon2_hash), 10)
    print(f"argon2id {argon2_hash.split('$')[3]} (RFC 9106 second recommendation):")
    print(f"  hash_password      {hash_ms:8.1f} ms")
    print(f"  verify             {verify_ms:8.1f} ms")
    for cost, stored in bcrypt_hashes.items():
        ms = _median_ms(partial(verify_password, PASSWORD, stored), 5)
        print(f"bcrypt cost {cost} verify  {ms:8.1f} ms")
    first_ms, cached_us = asyncio.run(_cached_login_us(argon2_hash, 20_000))
    print("Authenticator.authenticate (argon2id user):")
    print(f"  first login        {first_ms:8.1f} ms  (thread hop + verify)")
    print(f"  cached login       {cached_us:8.1f} µs  (HMAC-SHA256 + LRU lookup)")


if __name__ == "__main__":
    main()
