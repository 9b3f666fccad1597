"""Password hashing in the operator: bounded by memory, and hashes that match what the pod
accepts."""

from __future__ import annotations

import asyncio
import threading
import time

from letterbox.material import hash_password, password_matches
from letterbox.reconcile import passwords


def test_hash_concurrency_is_bounded_by_memory_not_by_the_node() -> None:
    # os.cpu_count() in a container is the node's: 64 hashes of 64 MiB would be 4 GiB.
    assert passwords.hash_concurrency(64) == passwords.HASH_CONCURRENCY == 2
    assert passwords.hash_concurrency(1) == 1
    assert passwords.hash_concurrency(None) == 1


async def test_bounded_map_never_runs_more_than_its_limit() -> None:
    running, peak = 0, 0
    lock = threading.Lock()

    def hash_one(password: str) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return password.upper()

    async def one(password: str) -> str:
        return await asyncio.to_thread(hash_one, password)

    limit = passwords.hash_concurrency(64)
    results = await passwords.bounded_map(one, [f"p{n}" for n in range(12)], limit)
    assert results == [f"P{n}" for n in range(12)]  # in order
    assert peak == limit


def test_plain_passwords_get_argon2id_hashes_that_verify() -> None:
    hashed, plain = passwords.plain_or_hash("correct horse")
    assert (hashed, plain) == (None, "correct horse")
    value = hash_password("correct horse")
    assert value.startswith("$argon2id$")
    assert passwords.plain_or_hash(value) == (value, None)
    assert password_matches("correct horse", value)
    assert not password_matches("wrong", value)
